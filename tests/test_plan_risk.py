"""The risk signals measure a plan's client against its plan's limits (`Policy.plans`),
not the app-wide ones: volume and burst against the plan's bucket, spend against the
plan's by-cost quotas. Memory backend; the kernel reads the plan through the key row's
``F_PLAN`` (Redis synced mode refuses plans; Redis inline mode: test_plan_risk_redis)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from abuseguard import Enforcement, Guard, Limits, Policy, Quota, RequestInfo, Scoring
from abuseguard.engine import kernel_set
from abuseguard.engine import layout as L
from abuseguard.engine.params import build_params, plan_slots, spend_allowance
from abuseguard.policy import TokenBucket

SDK_UA = "openai-python/1.40.0"
# A client below 90% of its plan's rate is not suspicious for its volume.
SCORING = Scoring(volume_rate=(0.9, 1.0))


def tiered_policy(**kwargs: Any) -> Policy:
    kwargs.setdefault("bucket", TokenBucket("300/minute", burst=50))  # 5 a second
    kwargs.setdefault(
        "plans",
        {
            "free": Limits(bucket=TokenBucket("60/minute", burst=10)),  # 1 a second
            "pro": Limits(bucket=TokenBucket("600/minute", burst=100)),  # 10 a second
        },
    )
    kwargs.setdefault("scoring", SCORING)
    return Policy(
        network=None,
        unverified_keys=None,
        enforcement=Enforcement(ban_at=None),
        plan_func=lambda conn: None,
        **kwargs,
    )


def contribution(guard: Guard, signal: int) -> float:
    return float(guard.engine.io[L.O_CONTRIB + signal])


def volume_after(policy: Policy, plan: str | None, per_second: float, seconds: float) -> float:
    """The volume signal's contribution to the last request of a client of ``plan`` that
    sent ``per_second`` requests a second (jittered) for ``seconds``."""
    guard = Guard(policy)
    rng = random.Random(7)
    t = 1000.0
    end = t + seconds
    while t < end:
        info = RequestInfo("198.51.100.7", key=f"sk-{plan}", ts=t, ua=SDK_UA)
        info.plan = plan
        guard.check(info)
        t += rng.uniform(0.5, 1.5) / per_second
    return contribution(guard, L.S_VOLUME)


def test_a_pro_client_at_80_percent_of_its_plans_rate_shows_no_volume() -> None:
    policy = tiered_policy()
    weight = SCORING.weights["volume"]
    pro = volume_after(policy, "pro", 8.0, 2 * 3600)
    free = volume_after(policy, "free", 8.0, 2 * 3600)
    assert pro == 0.0
    assert free == pytest.approx(weight)


def test_a_free_client_at_its_plans_limit_shows_volume() -> None:
    """One request a second is a fifth of the app-wide rate, and all of the free plan's."""
    policy = tiered_policy()
    weight = SCORING.weights["volume"]
    assert volume_after(policy, "free", 1.0, 3 * 3600) >= 0.8 * weight
    assert volume_after(policy, None, 1.0, 3 * 3600) == 0.0  # the app-wide limits


def test_a_plan_without_a_bucket_is_measured_against_the_app_wide_bucket() -> None:
    quotas_only = Limits(quotas=(Quota("100000/day", name="daily"),))
    policy = tiered_policy(plans={"team": quotas_only})
    weight = SCORING.weights["volume"]
    assert volume_after(policy, "team", 6.0, 2 * 3600) == pytest.approx(weight)
    assert volume_after(policy, "team", 4.0, 2 * 3600) == 0.0


def test_the_burst_signal_measures_against_the_plans_bucket() -> None:
    """A client that idles at a tenth of a request a second for an hour then sends 6 a
    second: a burst against the free plan's bucket, not against the pro plan's."""
    policy = tiered_policy(scoring=Scoring())
    values: dict[str, float] = {}
    for plan in ("free", "pro"):
        guard = Guard(policy)
        rng = random.Random(3)
        t = 1000.0
        while t < 1000.0 + 3600.0:
            info = RequestInfo("198.51.100.8", key=f"sk-b-{plan}", ts=t, ua=SDK_UA)
            info.plan = plan
            guard.check(info)
            t += rng.uniform(5.0, 15.0)
        for _ in range(60):
            info = RequestInfo("198.51.100.8", key=f"sk-b-{plan}", ts=t, ua=SDK_UA)
            info.plan = plan
            guard.check(info)
            t += rng.uniform(0.1, 0.23)
        values[plan] = contribution(guard, L.S_BURST)
    assert values["pro"] == 0.0
    assert values["free"] == pytest.approx(Scoring().weights["burst"])


def spend_after(policy: Policy, plan: str | None, every: float, usage: float) -> float:
    """The spend signal's contribution after three hours of one request every ``every``
    seconds, each reporting ``usage`` tokens."""
    guard = Guard(policy)
    t = 0.0
    while t < 3 * 3600:
        info = RequestInfo("198.51.100.9", key=f"sk-s-{plan}", ts=t, ua=SDK_UA)
        info.plan = plan
        decision = guard.check(info)
        assert decision.served
        guard.complete(info, decision, status=200, usage=usage)
        t += every
    return contribution(guard, L.S_SPEND)


def spend_policy() -> Policy:
    return tiered_policy(
        quotas=(Quota("10000000/day", by_cost=True, name="tokens"),),
        plans={
            "free": Limits(quotas=(Quota("1000000/day", by_cost=True, name="tokens"),)),
            "pro": Limits(quotas=(Quota("100000000/day", by_cost=True, name="tokens"),)),
        },
        scoring=Scoring(),
    )


def test_spend_is_measured_against_the_plans_by_cost_quota() -> None:
    policy = spend_policy()
    weight = Scoring().weights["spend"]
    # 43.2M tokens a day: over the app-wide allowance, under half of the pro plan's
    assert spend_after(policy, None, 4.0, 2000.0) == pytest.approx(weight)
    assert spend_after(policy, "pro", 4.0, 2000.0) == 0.0
    # 2M tokens a day: a fifth of the app-wide allowance, twice the free plan's
    assert spend_after(policy, None, 60.0, 1400.0) == 0.0
    assert spend_after(policy, "free", 60.0, 1400.0) == pytest.approx(weight)


def test_a_plans_by_cost_quotas_give_its_spend_allowance() -> None:
    policy = spend_policy()
    assert spend_allowance(policy) == pytest.approx(10_000_000.0)
    assert spend_allowance(policy, "free") == pytest.approx(1_000_000.0)
    assert spend_allowance(policy, "pro") == pytest.approx(100_000_000.0)


def test_a_plans_quotas_without_a_by_cost_one_leave_no_spend_allowance() -> None:
    """The plan's quotas replace the app-wide ones, by-cost ones included."""
    requests_only = Limits(quotas=(Quota("100000/day", name="daily"),))
    policy = tiered_policy(
        quotas=(Quota("10000000/day", by_cost=True, name="tokens"),),
        plans={"team": requests_only},
    )
    assert spend_allowance(policy, "team") == 0.0
    prm = build_params(policy)
    slot = L.P_PLAN_ALLOWANCE + L.PLAN_ALLOWANCE_WIDTH * (plan_slots(policy)["team"] - 1)
    assert prm[slot + L.PA_SPEND] == 0.0
    assert (prm[slot + L.PA_RATE], prm[slot + L.PA_BURST]) == (5.0, 50.0)


def test_a_cost_header_bucket_gives_the_plans_bucket_rate_as_its_spend_allowance() -> None:
    policy = tiered_policy(bucket=TokenBucket("300/minute", burst=50, cost_header="x-tokens"))
    assert spend_allowance(policy) == pytest.approx(5.0 * 86400)
    assert spend_allowance(policy, "pro") == pytest.approx(10.0 * 86400)


def test_the_plan_allowances_are_set_when_a_shared_backend_holds_the_buckets() -> None:
    policy = tiered_policy()
    local = build_params(policy)
    shared = build_params(policy, local_buckets=False)
    allowances = slice(
        L.P_PLAN_ALLOWANCE, L.P_PLAN_ALLOWANCE + L.PLAN_ALLOWANCE_WIDTH * L.MAX_PLAN_BUCKETS
    )
    assert np.array_equal(local[allowances], shared[allowances])
    pro = L.P_PLAN_ALLOWANCE + L.PLAN_ALLOWANCE_WIDTH * (plan_slots(policy)["pro"] - 1)
    assert (local[pro + L.PA_RATE], local[pro + L.PA_BURST]) == (10.0, 100.0)


def test_a_policy_without_plans_has_no_plan_allowances() -> None:
    prm = build_params(Policy(scoring=SCORING))
    end = L.P_PLAN_ALLOWANCE + L.PLAN_ALLOWANCE_WIDTH * L.MAX_PLAN_BUCKETS
    assert not prm[L.P_PLAN_ALLOWANCE : end].any()


def test_the_python_twin_measures_plans_exactly_as_the_compiled_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = tiered_policy(
        quotas=(Quota("10000000/day", by_cost=True, name="tokens"),),
        plans={
            "free": Limits(
                bucket=TokenBucket("60/minute", burst=10),
                quotas=(Quota("1000000/day", by_cost=True, name="tokens"),),
            ),
            "pro": Limits(bucket=TokenBucket("600/minute", burst=100)),
            "team": Limits(quotas=(Quota("100000/day", name="daily"),)),
        },
        scoring=Scoring(),
    )
    compiled = Guard(policy)
    assert compiled.kernels_compiled
    monkeypatch.setattr(kernel_set, "cached", lambda: False)
    monkeypatch.setattr(kernel_set, "compile_in_background", lambda on_ready: None)
    twin = Guard(policy)
    assert not twin.kernels_compiled
    np.copyto(twin.engine.index_vector, compiled.engine.index_vector)
    rng = random.Random(11)
    plans = ("free", "pro", "team", None)
    t = 1000.0
    spend_seen = volume_seen = False
    for _ in range(4000):
        t += rng.choice((0.0, 0.05, 0.3, 1.0)) * rng.random()
        n = 0 if rng.random() < 0.4 else rng.randrange(12)  # sk-0, on the free plan, is hot
        info = RequestInfo(f"198.51.100.{n}", key=f"sk-{n}", ts=t, ua=SDK_UA)
        info.plan = plans[n % 4]
        expected, got = compiled.check(info), twin.check(info)
        assert got == expected
        assert got.policies == expected.policies
        spend_seen |= contribution(compiled, L.S_SPEND) > 0.0
        volume_seen |= contribution(compiled, L.S_VOLUME) > 0.0
        usage = rng.uniform(100.0, 5000.0)
        compiled.complete(info, expected, status=200, usage=usage)
        twin.complete(info, got, status=200, usage=usage)
    assert spend_seen and volume_seen
    assert np.array_equal(twin.engine.state, compiled.engine.state, equal_nan=True)
