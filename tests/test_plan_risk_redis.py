"""Redis inline mode measures a plan's client against its plan (`Policy.plans`) as the
memory backend does: the key row is told the plan before the kernel scores the request, so
volume and spend read the plan's allowances (it used to measure every client against the
app-wide ones there). The plan's bucket itself stays in Redis."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from typing import Any

import pytest

from abuseguard import Enforcement, Guard, Limits, Policy, Quota, RequestInfo, Scoring
from abuseguard.backends.redis import RedisBackend
from abuseguard.engine import layout as L
from abuseguard.policy import TokenBucket
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis

SDK_UA = "openai-python/1.40.0"
SCORING = Scoring(volume_rate=(0.9, 1.0))  # volume from 90% of the allowance's rate
_names = itertools.count()


def tiered_policy(**kwargs: Any) -> Policy:
    """Rates a minute rather than a second, so that two hours take few requests."""
    kwargs.setdefault("bucket", TokenBucket("5/minute", burst=50))
    kwargs.setdefault(
        "plans",
        {
            "free": Limits(bucket=TokenBucket("1/minute", burst=10)),
            "pro": Limits(bucket=TokenBucket("10/minute", burst=100)),
        },
    )
    kwargs.setdefault("scoring", SCORING)
    return Policy(
        network=None,
        unverified_keys=None,
        enforcement=Enforcement(ban_at=None),
        plan_func=lambda conn: None,
        max_identities=512,
        **kwargs,
    )


def signal_after(
    guard: Guard,
    plan: str | None,
    per_minute: float,
    seconds: float,
    signal: int,
    usage: float | None = None,
) -> tuple[float, int]:
    """The ``signal``'s contribution to the last request of a client of ``plan`` that sent
    ``per_minute`` requests a minute (jittered) for ``seconds``, each reporting ``usage``
    tokens when given; and how many of its requests were refused."""

    async def main() -> tuple[float, int]:
        await guard.startup()
        rng = random.Random(7)
        t = 1000.0
        refused = 0
        try:
            while t < 1000.0 + seconds:
                info = RequestInfo("198.51.100.7", key=f"sk-{plan}", ts=t, ua=SDK_UA)
                info.plan = plan
                decision = await guard.acheck(info)
                refused += not decision.served
                if usage is not None:
                    guard.complete(info, decision, status=200, usage=usage)
                t += rng.uniform(0.5, 1.5) * 60.0 / per_minute
            return float(guard.engine.io[L.O_CONTRIB + signal]), refused
        finally:
            await guard.shutdown()

    return asyncio.run(main())


def guards(policy: Policy, url: str) -> dict[str, Guard]:
    name = f"pr{os.getpid()}x{next(_names)}"
    # the requests' own times on Redis too: two hours of them are sent in a moment
    redis_backend = RedisBackend(url, prefix=name, budget=0.5, server_time=False)
    return {"memory": Guard(policy), "redis": Guard(policy, redis_backend)}


def test_a_pro_client_at_80_percent_of_its_plans_rate_shows_no_volume_on_redis(
    redis_server: RedisServer,
) -> None:
    """8 a minute: over the app-wide 5, 80% of the pro plan's 10."""
    policy = tiered_policy()
    weight = SCORING.weights["volume"]
    for plan, expected in (("pro", 0.0), (None, weight)):
        found = {
            backend: signal_after(guard, plan, 8.0, 2 * 3600, L.S_VOLUME)
            for backend, guard in guards(policy, redis_server.url).items()
        }
        assert found["redis"][0] == pytest.approx(found["memory"][0])
        assert found["redis"][0] == pytest.approx(expected)
        if plan == "pro":  # within its plan's bucket: every request served
            assert found["redis"][1] == found["memory"][1] == 0


def test_a_free_client_at_its_plans_rate_shows_volume_on_redis(
    redis_server: RedisServer,
) -> None:
    """One a minute: a fifth of the app-wide rate, all of the free plan's."""
    policy = tiered_policy()
    weight = SCORING.weights["volume"]
    found = {
        backend: signal_after(guard, "free", 1.0, 3 * 3600, L.S_VOLUME)[0]
        for backend, guard in guards(policy, redis_server.url).items()
    }
    assert found["redis"] == pytest.approx(found["memory"])
    assert found["redis"] >= 0.8 * weight


def test_spend_is_measured_against_the_plans_by_cost_quota_on_redis(
    redis_server: RedisServer,
) -> None:
    """432,000 tokens a day: over the app-wide allowance (100,000), under half of the pro
    plan's (1,000,000)."""
    policy = tiered_policy(
        bucket=TokenBucket("10/minute", burst=100),
        quotas=(Quota("100000/day", by_cost=True, name="tokens"),),
        plans={"pro": Limits(quotas=(Quota("1000000/day", by_cost=True, name="tokens"),))},
        scoring=Scoring(),
    )
    weight = Scoring().weights["spend"]
    for plan, expected in (("pro", 0.0), (None, weight)):
        found = {
            backend: signal_after(guard, plan, 1.0, 3 * 3600, L.S_SPEND, usage=300.0)[0]
            for backend, guard in guards(policy, redis_server.url).items()
        }
        assert found["redis"] == pytest.approx(found["memory"])
        assert found["redis"] == pytest.approx(expected)


def test_plans_past_the_sixteenth_bucket_are_measured_against_the_app_wide_allowances(
    redis_server: RedisServer,
) -> None:
    """Redis keeps any number of plan buckets, the kernel's parameters 16: a client of the
    17th plan with a bucket gets no slot (the kernel would read past the plans' allowances),
    one of the 16th gets its own."""
    plans = {f"p{i}": Limits(bucket=TokenBucket(f"{i + 1}/minute", burst=10)) for i in range(17)}
    redis_backend = RedisBackend(redis_server.url, prefix=f"pr{os.getpid()}x{next(_names)}")
    guard = Guard(tiered_policy(plans=plans), redis_backend)
    route_limits = guard.route_limits
    assert route_limits is not None

    def slot(plan: str) -> float:
        info = RequestInfo("198.51.100.7", key="sk-x")
        info.plan = plan
        return route_limits.plan_slot(info)

    assert (slot("p15"), slot("p16")) == (16.0, 0.0)
