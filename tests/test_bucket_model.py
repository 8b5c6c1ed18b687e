"""The kernel's token bucket against a plain-Python reference model (hypothesis), and the
risk-scaled refill and NAT multiplier of engine/bucket_rules.py against the kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard import Guard, NetworkPolicy, Policy, RequestInfo, Scoring, TokenBucket
from abuseguard.engine import layout as L
from abuseguard.engine.bucket_rules import nat_multiplier, risk_refill_factor
from abuseguard.engine.engine import Engine
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


# -- the risk-scaled refill and the NAT multiplier: engine/bucket_rules.py against the kernel


def _kernel_call(
    engine: Engine, key_row: int, ip_row: int, acc_row: int, ts: float, cost: float, nat: float
) -> None:
    inputs: dict[str, Any] = {name: 0 if vec == "iv" else 0.0 for name, vec, _ in L.KERNEL_INPUTS}
    inputs.update(
        r_key=key_row, r_ip=ip_row, r_pfx=-1, r_asn=-1, r_per=-1, r_acc=acc_row, ts=ts, cost=cost
    )
    inputs.update(load=1.0, distrust=1.0, nat=nat, scored=True)
    engine.decide_with(engine.state, *(inputs[name] for name, _, _ in L.KERNEL_INPUTS))


@settings(max_examples=100, deadline=None)
@given(
    rate=rates,
    burst=st.sampled_from([1.0, 3.0, 10.0]),
    coupling=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    floor=st.sampled_from([0.0, 0.3, 0.6]),
    min_factor=st.sampled_from([0.05, 0.1, 0.5, 1.0]),
    events=st.lists(
        st.tuples(
            st.floats(0.0, 5.0, allow_nan=False),
            st.sampled_from([0.5, 1.0, 2.0]),
            st.floats(0.0, 1.0, allow_nan=False),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_kernel_risk_scaled_refill_matches_the_python_rule(
    rate: float,
    burst: float,
    coupling: float,
    floor: float,
    min_factor: float,
    events: list[tuple[float, float, float, bool]],
) -> None:
    """The key bucket refills at ``rate * risk_refill_factor(coupling score)``: the kernel
    and `bucket_rules` agree on every request, whatever the score and its corroboration."""
    bucket = TokenBucket(
        rate, burst=burst, risk_coupling=coupling, risk_floor=floor, min_refill_factor=min_factor
    )
    engine = Engine(Policy(bucket=bucket, network=None, scoring=None))
    key = engine.tables[L.KIND_KEY].data
    ts = 1000.0
    model = ReferenceBucket(rate, burst, burst, ts + events[0][0])  # the row's first request
    for gap, cost, score, strong in events:
        ts += gap
        key[0, L.F_SCORE] = score
        key[0, L.F_STRONG_UNTIL] = ts + 1.0 if strong else 0.0
        _kernel_call(engine, 0, -1, -1, ts, cost, 0.0)
        coupling_score = float(key[0, L.F_COUPLING_SCORE])
        if not strong:
            assert coupling_score == 0.0  # weak signals alone leave the refill alone
        model.rate = rate * risk_refill_factor(coupling_score, floor, coupling, min_factor)
        admitted = model.take(ts, cost)
        assert (engine.io[L.O_DENIED_KINDS] == 0.0) == admitted, (ts, cost, model)
        assert key[0, L.F_TOKENS] == pytest.approx(model.tokens, rel=1e-9, abs=1e-9)


def test_risk_refill_factor_examples() -> None:
    assert risk_refill_factor(0.3, 0.3, 0.8, 0.1) == 1.0  # at the floor: untouched
    assert risk_refill_factor(0.65, 0.3, 0.8, 0.1) == pytest.approx(0.6)
    assert risk_refill_factor(1.0, 0.3, 1.0, 0.1) == 0.1  # never below the floor factor


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([0.5, 2.0, 10.0]),
    burst=st.sampled_from([1.0, 2.0, 5.0]),
    per_account=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    nat_max=st.sampled_from([1.0, 2.5, 50.0]),
    eligible=st.booleans(),
    events=st.lists(
        st.tuples(
            st.floats(0.0, 2.0, allow_nan=False),
            st.integers(0, 11),
            st.sampled_from([0.5, 1.0, 3.0]),
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_kernel_nat_multiplier_matches_the_python_rule(
    rate: float,
    burst: float,
    per_account: float,
    nat_max: float,
    eligible: bool,
    events: list[tuple[float, int, float]],
) -> None:
    """An IP bucket shared by accounts grows (rate and burst) by ``nat_multiplier`` of the
    accounts seen behind it: the kernel and `bucket_rules` agree on every request."""
    network = NetworkPolicy(
        per_ip=TokenBucket(rate, burst=burst),
        nat_fairness=True,
        nat_per_account=per_account,
        nat_max=nat_max,
    )
    engine = Engine(Policy(bucket=None, network=network, scoring=None))
    ip = engine.tables[L.KIND_IP].data
    ts = 1000.0
    # The row is created full (the configured burst) by its first request.
    model = ReferenceBucket(rate, burst, burst, ts + events[0][0])
    for gap, account, cost in events:
        ts += gap
        # Account n is key row n and account row n; all share IP row 0.
        _kernel_call(engine, account, 0, account, ts, cost, 1.0 if eligible else 0.0)
        fan_in = float(engine.io[L.O_FANIN])
        multiplier = nat_multiplier(fan_in, per_account, nat_max) if eligible else 1.0
        model.rate, model.burst = rate * multiplier, burst * multiplier
        admitted = model.take(ts, cost)
        assert (engine.io[L.O_DENIED_KINDS] == 0.0) == admitted, (ts, account, cost, model)
        assert ip[0, L.F_TOKENS] == pytest.approx(model.tokens, rel=1e-9, abs=1e-9)


def test_nat_multiplier_examples() -> None:
    assert nat_multiplier(1.0, 0.5, 50.0) == 1.0  # one account: no growth
    assert nat_multiplier(5.0, 0.5, 50.0) == 3.0
    assert nat_multiplier(500.0, 0.5, 50.0) == 50.0
