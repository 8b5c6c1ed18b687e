"""A plan's bucket replaces the app-wide bucket for the plan's clients (issue 18), on the
memory backend (the kernel reads the plan's bucket through the key row) and on Redis
inline (the plan's bucket is asked in the app-wide one's place)."""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import pytest

from abuseguard import (
    ConfigError,
    Decision,
    Guard,
    Limits,
    Policy,
    Quota,
    RequestInfo,
    TokenBucket,
)
from abuseguard.engine import layout as L

SLOW = "1/hour"
_names = itertools.count()


def plans_policy(**kwargs: Any) -> Policy:
    kwargs.setdefault("bucket", TokenBucket(SLOW, burst=10))
    kwargs.setdefault(
        "plans",
        {
            "free": Limits(bucket=TokenBucket(SLOW, burst=2)),
            "pro": Limits(bucket=TokenBucket(SLOW, burst=30)),
            "team": Limits(quotas=(Quota("1000/day", name="daily"),)),  # no bucket of its own
        },
    )
    return Policy(
        network=None,
        scoring=None,
        unverified_keys=None,
        max_identities=512,
        plan_func=lambda conn: None,
        **kwargs,
    )


def on_plan(plan: str | None, key: str) -> RequestInfo:
    info = RequestInfo("198.51.100.9", key=key, method="GET", path="/v1/models")
    info.plan = plan
    return info


def decide_all(policy: Policy, backend: str | None, requests: list[RequestInfo]) -> list[Decision]:
    if backend is None:
        guard = Guard(policy, clock=lambda: 1000.0)
        return [guard.check(info) for info in requests]

    async def main() -> list[Decision]:
        guard = Guard(policy, backend)
        await guard.startup()
        out = [await guard.acheck(info) for info in requests]
        await guard.shutdown()
        return out

    return asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    server = request.getfixturevalue("redis_server")
    return f"{server.url}?budget=0.5&deny_cache_seconds=0&prefix=pl{os.getpid()}x{next(_names)}"


def test_a_plans_bucket_replaces_the_app_wide_bucket(backend: str | None) -> None:
    plans = ("pro", "free", "team", "gold", None)
    requests = [on_plan(plan, f"sk-{plan}") for plan in plans for _ in range(32)]
    decisions = decide_all(plans_policy(), backend, requests)
    served = {
        plan: sum(d.served for d in decisions[i * 32 : i * 32 + 32]) for i, plan in enumerate(plans)
    }
    # pro's bucket is larger than the app-wide one and is not capped by it
    assert served == {"pro": 30, "free": 2, "team": 10, "gold": 10, None: 10}
    pro_first, pro_refused = decisions[0], decisions[30]
    names = [s.name for s in pro_first.policies]
    assert "plan-pro-default" in names and "default" not in names
    state = next(s for s in pro_first.policies if s.name == "plan-pro-default")
    assert state.quota == 30 and state.remaining == pytest.approx(29, abs=1e-3)
    assert pro_refused.reasons == ("rate",)
    refused_state = next(s for s in pro_refused.policies if s.name == "plan-pro-default")
    assert refused_state.violated
    # a plan without a bucket of its own keeps the app-wide bucket, beside its quota
    team = decisions[64]
    assert {"default", "plan-team-daily"} <= {s.name for s in team.policies}


def test_a_plans_bucket_applies_without_an_app_wide_bucket(backend: str | None) -> None:
    requests = [on_plan("free", "sk-free")] * 4 + [on_plan(None, "sk-none")] * 4
    decisions = decide_all(plans_policy(bucket=None), backend, requests)
    assert [d.served for d in decisions] == [True, True, False, False] + [True] * 4
    assert [s.name for s in decisions[0].policies] == ["plan-free-default"]


def test_changing_plan_changes_the_bucket_and_keeps_the_tokens() -> None:
    clock = [1000.0]
    policy = plans_policy(
        plans={
            "free": Limits(bucket=TokenBucket(SLOW, burst=2)),
            "pro": Limits(bucket=TokenBucket("30/minute", burst=30)),
        }
    )
    guard = Guard(policy, clock=lambda: clock[0])
    assert [guard.check(on_plan("free", "sk-up")).served for _ in range(3)] == [True, True, False]
    # upgraded: what the free plan spent stays spent, the pro plan's refill and burst apply
    assert not guard.check(on_plan("pro", "sk-up")).served
    clock[0] += 60.0
    upgraded = [guard.check(on_plan("pro", "sk-up")).served for _ in range(31)]
    assert upgraded == [True] * 30 + [False]


def test_precheck_refuses_on_the_plans_bucket_and_names_it() -> None:
    guard = Guard(plans_policy(), clock=lambda: 1000.0)
    info = on_plan("free", "sk-pre")
    assert guard.check(info).served and guard.check(info).served
    refusal = guard.precheck(info)
    assert refusal is not None and refusal.reasons == ("rate",)
    assert refusal.policies[0].name == "plan-free-default" and refusal.policies[0].quota == 2
    pro = on_plan("pro", "sk-pre-pro")
    for _ in range(12):  # more than the app-wide burst: still the plan's bucket
        assert guard.precheck(pro) is None
        assert guard.check(pro).served


def test_the_key_row_holds_the_plans_bucket_slot() -> None:
    guard = Guard(plans_policy(), clock=lambda: 1000.0)
    decision = guard.check(on_plan("pro", "sk-row"))
    row = guard.engine.tables[L.KIND_KEY].index[decision.identity]
    assert guard.engine.tables[L.KIND_KEY].data[row, L.F_PLAN] == 2.0  # free 1, pro 2
    slot = L.P_PLAN_BUCKET + 2 * (2 - 1)
    assert tuple(guard.engine.params[slot : slot + 2]) == (1 / 3600, 30.0)
    guard.check(on_plan(None, "sk-row"))
    assert guard.engine.tables[L.KIND_KEY].data[row, L.F_PLAN] == 0.0


def test_more_plan_buckets_than_the_kernel_holds_is_a_config_error() -> None:
    plans = {f"tier{i}": Limits(bucket=TokenBucket(SLOW, burst=i + 1)) for i in range(17)}
    with pytest.raises(ConfigError, match=r"^Policy\.plans: at most 16 plans"):
        Guard(plans_policy(plans=plans))
    del plans["tier16"]
    Guard(plans_policy(plans=plans))  # 16 fit


def test_plans_with_only_quotas_take_the_slots_left_and_are_never_an_error() -> None:
    """Slots go to the plans with a bucket first; plans with only quotas take what is left
    (their clients' signals use the plan's allowance) and any beyond are measured against
    the app-wide allowances, never refused at construction."""
    from abuseguard.engine.params import plan_slots

    plans: dict[str, Limits] = {
        f"q{i}": Limits(quotas=(Quota("1000/day", by_cost=True, name="tokens"),)) for i in range(20)
    }
    plans["own"] = Limits(bucket=TokenBucket(SLOW, burst=5))
    policy = plans_policy(plans=plans)
    slots = plan_slots(policy)
    assert slots["own"] == 1
    assert [slots[f"q{i}"] for i in range(15)] == list(range(2, 17))
    assert all(f"q{i}" not in slots for i in range(15, 20))
    Guard(policy)  # no ConfigError


def test_a_refund_fills_a_plans_bucket_up_to_its_own_burst() -> None:
    guard = Guard(plans_policy(), clock=lambda: 1000.0)
    info = on_plan("pro", "sk-refund")
    info.cost = 20.0
    decision = guard.check(info)
    guard.complete(info, decision, status=200, cost=1.0)  # 19 given back
    after = guard.check(on_plan("pro", "sk-refund"))
    state = next(s for s in after.policies if s.name == "plan-pro-default")
    assert state.remaining == pytest.approx(30 - 1 - 1, abs=1e-6)  # not capped at the app's 10
