"""The kernel's token bucket against a plain-Python reference model (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard import Guard, Policy, RequestInfo, Scoring, TokenBucket
from tests.test_guard import FIREFOX, FIREFOX_HEADERS


@dataclass
class ReferenceBucket:
    """Refill ``rate`` tokens/s up to ``burst``; admit when tokens >= min(cost, burst); a
    request costing more than the burst empties a full bucket into debt."""

    rate: float
    burst: float
    tokens: float
    last: float

    def take(self, ts: float, cost: float) -> bool:
        if ts > self.last:
            self.tokens = min(self.burst, self.tokens + (ts - self.last) * self.rate)
            self.last = ts
        if self.tokens < min(cost, self.burst):
            return False
        self.tokens -= cost
        return True


rates = st.sampled_from([0.05, 0.2, 1.0, 3.0, 12.5, 100.0])
steps = st.lists(
    st.tuples(
        st.floats(0.0, 5.0, allow_nan=False), st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5, 40.0])
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(rate=rates, burst=st.sampled_from([1.0, 2.0, 5.0, 10.0, 33.0]), events=steps)
def test_kernel_bucket_matches_reference(
    rate: float, burst: float, events: list[tuple[float, float]]
) -> None:
    policy = Policy(bucket=TokenBucket(rate, burst=burst), network=None, scoring=None)
    guard = Guard(policy)
    ts = 1000.0
    model = ReferenceBucket(rate, burst, burst, ts)
    for gap, cost in events:
        ts += gap
        decision = guard.check(RequestInfo(ip="192.0.2.1", ts=ts, cost=cost))
        admitted = model.take(ts, cost)
        assert (decision.action.value == "allow") == admitted, (ts, cost, model)
        assert decision.remaining is not None
        assert abs(decision.remaining - max(0.0, model.tokens)) < 1e-6
        if not admitted:
            assert decision.reasons == ("rate",)
            expected_wait = (min(cost, burst) - model.tokens) / rate
            assert decision.retry_after is not None
            assert abs(decision.retry_after - expected_wait) < 1e-6


def test_fractional_refill_below_one_per_second() -> None:
    guard = Guard(Policy(bucket=TokenBucket("1/10 seconds", burst=1), network=None, scoring=None))
    assert guard.check(RequestInfo(ip="192.0.2.1", ts=0.0)).action.value == "allow"
    denied = guard.check(RequestInfo(ip="192.0.2.1", ts=4.0))
    assert denied.action.value == "throttle"
    assert denied.retry_after is not None and abs(denied.retry_after - 6.0) < 1e-9
    assert guard.check(RequestInfo(ip="192.0.2.1", ts=9.99)).action.value == "throttle"
    assert guard.check(RequestInfo(ip="192.0.2.1", ts=10.0)).action.value == "allow"


def test_out_of_order_timestamps_never_refill_backwards() -> None:
    guard = Guard(Policy(bucket=TokenBucket(1.0, burst=2), network=None, scoring=None))
    assert guard.check(RequestInfo(ip="192.0.2.1", ts=100.0)).action.value == "allow"
    assert guard.check(RequestInfo(ip="192.0.2.1", ts=100.0)).action.value == "allow"
    assert guard.check(RequestInfo(ip="192.0.2.1", ts=50.0)).action.value == "throttle"


def test_risk_slows_the_refill_of_that_identity_only() -> None:
    """A scripted client (no User-Agent, metronome timing) earns risk and refills slower.
    Its signals are weak ones, which slow no refill by default: here none is weak."""
    policy = Policy(
        bucket=TokenBucket(2.0, burst=5, risk_floor=0.0, risk_coupling=0.9),
        scoring=Scoring(weak_signals=()),
    )
    guard = Guard(policy)
    ts = 0.0
    risky = calm = None
    for _ in range(30):
        ts += 1.0
        risky = guard.check(RequestInfo(ip="192.0.2.1", key="bot", ts=ts, ua=None))
        calm = guard.check(
            RequestInfo(ip="192.0.2.2", key="person", ts=ts, ua=FIREFOX, headers=FIREFOX_HEADERS)
        )
    assert risky is not None and calm is not None
    assert risky.score > calm.score
    # Same tokens left, but the risky identity's bucket takes longer to fill again.
    assert risky.remaining == calm.remaining
    assert risky.policies[0].reset > calm.policies[0].reset * 1.1
