"""When several limits refuse one request and some of them are in shadow mode, Redis inline
decides as the memory backend does: the refusal is enforced when any violated limit is not
shadowed, reported only when every one is; the reasons and the limits the decision names
are the same; a refused request costs nothing on either."""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import pytest

from abuseguard import Decision, Guard, Limits, Policy, Quota, RequestInfo, TokenBucket
from abuseguard.backends.redis import RedisBackend
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis

SLOW = "1/hour"
_names = itertools.count()


def quiet_policy(**kwargs: Any) -> Policy:
    kwargs.setdefault("bucket", TokenBucket(SLOW, burst=100))
    return Policy(network=None, scoring=None, unverified_keys=None, max_identities=512, **kwargs)


def quota(name: str, shadow: bool) -> Quota:
    return Quota("1/day", name=name, shadow=shadow)


def chat(plan: str | None = None) -> RequestInfo:
    return RequestInfo("198.51.100.7", key="sk-one", method="POST", path="/v1/chat", plan=plan)


def models() -> RequestInfo:
    return RequestInfo("198.51.100.7", key="sk-one", method="GET", path="/v1/models")


Seen = tuple[bool, bool, tuple[str, ...], tuple[str, ...]]


def seen(decision: Decision) -> Seen:
    """What a client and the operator see of a decision: served, shadowed, the reasons and
    the limits it names as violated."""
    violated = tuple(sorted(s.name for s in decision.policies if s.violated))
    return decision.served, decision.shadow, decision.reasons, violated


async def run_requests(guard: Guard, plan: str | None) -> tuple[list[Seen], float]:
    """Three requests on the limited route, then the app-wide bucket's tokens left as a
    request on another route sees them (what the refused requests cost)."""
    await guard.startup()
    try:
        decisions = [seen(await guard.acheck(chat(plan))) for _ in range(3)]
        other = await guard.acheck(models())
    finally:
        await guard.shutdown()
    left = next(s.remaining for s in other.policies if s.name == "default")
    return decisions, round(left, 3)


def on_both(policy: Policy, url: str, plan: str | None = None) -> tuple[Any, Any]:
    now = 1_000_000.0
    memory = asyncio.run(run_requests(Guard(policy, clock=lambda: now), plan))
    name = f"sh{os.getpid()}x{next(_names)}"
    redis_backend = RedisBackend(url, prefix=name, budget=0.5, deny_cache_seconds=0)
    on_redis = asyncio.run(run_requests(Guard(policy, redis_backend, clock=lambda: now), plan))
    return memory, on_redis


@pytest.mark.parametrize("app_shadowed", [True, False], ids=["app-shadowed", "route-shadowed"])
def test_an_app_wide_and_a_route_quota_one_shadowed(
    redis_server: RedisServer, app_shadowed: bool
) -> None:
    policy = quiet_policy(
        quotas=(quota("app", app_shadowed),),
        routes={"/v1/chat": Limits(quotas=(quota("daily", not app_shadowed),))},
    )
    memory, on_redis = on_both(policy, redis_server.url)
    assert on_redis == memory
    decisions, left = memory
    assert [d[:3] for d in decisions[1:]] == [(False, False, ("quota",))] * 2
    # the first request took a token, the refused ones none; the request on another
    # route took one when the app-wide quota, in shadow mode, let it through
    assert left == (98 if app_shadowed else 99)


@pytest.mark.parametrize("first_shadowed", [True, False], ids=["shadowed-first", "enforced-first"])
def test_two_route_quotas_one_shadowed(redis_server: RedisServer, first_shadowed: bool) -> None:
    policy = quiet_policy(
        routes={
            "/v1/chat": Limits(
                quotas=(quota("one", first_shadowed), quota("two", not first_shadowed))
            )
        },
    )
    memory, on_redis = on_both(policy, redis_server.url)
    assert on_redis == memory
    decisions, left = memory
    assert decisions[1] == (False, False, ("quota",), ("route-v1-chat-one", "route-v1-chat-two"))
    assert left == 98


@pytest.mark.parametrize("route_shadowed", [True, False], ids=["route-shadowed", "plan-shadowed"])
def test_a_route_and_a_plan_quota_one_shadowed(
    redis_server: RedisServer, route_shadowed: bool
) -> None:
    policy = quiet_policy(
        routes={"/v1/chat": Limits(quotas=(quota("daily", route_shadowed),))},
        plans={"pro": Limits(quotas=(quota("daily", not route_shadowed),))},
        plan_func=lambda conn: None,
    )
    memory, on_redis = on_both(policy, redis_server.url, plan="pro")
    assert on_redis == memory
    decisions, left = memory
    assert decisions[1] == (False, False, ("quota",), ("plan-pro-daily", "route-v1-chat-daily"))
    assert left == 98


def test_a_shadowed_route_bucket_and_an_enforced_quota(redis_server: RedisServer) -> None:
    policy = quiet_policy(
        routes={
            "/v1/chat": Limits(
                bucket=TokenBucket(SLOW, burst=1, shadow=True), quotas=(quota("daily", False),)
            )
        },
    )
    memory, on_redis = on_both(policy, redis_server.url)
    assert on_redis == memory
    decisions, left = memory
    assert decisions[1] == (
        False,
        False,
        ("rate", "quota"),
        ("route-v1-chat-daily", "route-v1-chat-default"),
    )
    assert left == 98


def test_an_enforced_route_bucket_and_a_shadowed_quota(redis_server: RedisServer) -> None:
    policy = quiet_policy(
        routes={
            "/v1/chat": Limits(bucket=TokenBucket(SLOW, burst=1), quotas=(quota("daily", True),))
        },
    )
    memory, on_redis = on_both(policy, redis_server.url)
    assert on_redis == memory
    decisions, left = memory
    assert decisions[1][:3] == (False, False, ("rate", "quota"))
    assert left == 98


def test_two_route_quotas_with_the_same_rate_keep_their_own_counts() -> None:
    """Memory backend: a route's requests and tokens quotas of one rate used to share one
    counter (the key named the route, not the quota), so one request spent both."""
    policy = quiet_policy(
        routes={
            "/v1/chat": Limits(
                quotas=(Quota("3/day", name="requests"), Quota("3/day", name="tokens"))
            )
        },
    )
    guard = Guard(policy, clock=lambda: 1_000_000.0)
    decision = guard.check(chat())
    left = {s.name: s.remaining for s in decision.policies}
    assert left["route-v1-chat-requests"] == left["route-v1-chat-tokens"] == 2


def test_a_route_bucket_and_concurrency_both_refusing(redis_server: RedisServer) -> None:
    """The first request holds the route's one slot (it never completes): the next ones
    meet its empty bucket and its full concurrency, and the refusal names both."""
    policy = quiet_policy(
        routes={"/v1/chat": Limits(bucket=TokenBucket(SLOW, burst=1), concurrency=1)},
    )
    memory, on_redis = on_both(policy, redis_server.url)
    assert on_redis == memory
    decisions, left = memory
    assert decisions[1] == (
        False,
        False,
        ("rate", "concurrency"),
        ("route-v1-chat-concurrency", "route-v1-chat-default"),
    )
    assert left == 98


def test_an_empty_app_wide_bucket_and_an_exhausted_route_quota(redis_server: RedisServer) -> None:
    """The route's quota refuses first on both backends (the memory backend tests route
    limits before the kernel; Redis used to skip them once the app-wide bucket refused,
    answering ``rate`` where memory answers ``quota``)."""
    policy = quiet_policy(
        bucket=TokenBucket(SLOW, burst=1),
        routes={"/v1/chat": Limits(quotas=(quota("daily", False),))},
    )
    memory, on_redis = on_both(policy, redis_server.url)
    assert on_redis == memory
    decisions, _ = memory
    assert decisions[1] == (False, False, ("quota",), ("route-v1-chat-daily",))


async def run_app_wide(guard: Guard) -> tuple[list[Seen], float, dict[str, float]]:
    """`run_requests` (no plan), with what each quota has left as the last request sees it."""
    await guard.startup()
    try:
        decisions = [seen(await guard.acheck(chat())) for _ in range(3)]
        other = await guard.acheck(models())
    finally:
        await guard.shutdown()
    left = next(s.remaining for s in other.policies if s.name == "default")
    quotas_left = {s.name: s.remaining for s in other.policies if s.name != "default"}
    return decisions, round(left, 3), quotas_left


def app_wide_on_both(policy: Policy, url: str) -> tuple[Any, Any]:
    now = 1_000_000.0
    memory = asyncio.run(run_app_wide(Guard(policy, clock=lambda: now)))
    name = f"sh{os.getpid()}x{next(_names)}"
    redis_backend = RedisBackend(url, prefix=name, budget=0.5, deny_cache_seconds=0)
    on_redis = asyncio.run(run_app_wide(Guard(policy, redis_backend, clock=lambda: now)))
    return memory, on_redis


@pytest.mark.parametrize(
    "shadows",
    [(True, False), (False, True), (True, True)],
    ids=["shadowed-first", "enforced-first", "both-shadowed"],
)
def test_two_app_wide_quotas_one_or_both_shadowed(
    redis_server: RedisServer, shadows: tuple[bool, bool]
) -> None:
    """A request both app-wide quotas refuse is refused when either is enforced, whichever
    is listed first (the first violated one used to decide, on both backends), and served
    in shadow only when both are shadowed. A third quota, never violated, shows that a
    refused request is counted nowhere."""
    policy = quiet_policy(
        quotas=(quota("one", shadows[0]), quota("two", shadows[1]), Quota("10/day", name="all"))
    )
    memory, on_redis = app_wide_on_both(policy, url=redis_server.url)
    assert on_redis == memory
    decisions, left, quotas_left = memory
    refused = (False, False, ("quota",), ("one", "two"))
    if all(shadows):
        assert decisions[1] == (True, True, ("quota",), ("one", "two"))
        assert (left, quotas_left["all"]) == (96, 6)
    else:
        assert decisions[1:] == [refused, refused]
        assert (left, quotas_left["all"]) == (99, 9)


def test_retry_after_comes_from_the_enforced_quota(redis_server: RedisServer) -> None:
    """A shadowed daily quota and an enforced hourly one both refuse: the client is told
    to come back when the hourly one resets, not the daily one listed first."""
    policy = quiet_policy(
        quotas=(Quota("1/day", name="daily", shadow=True), Quota("1/hour", name="hourly"))
    )

    async def second_retry_after(guard: Guard) -> tuple[bool, float | None]:
        await guard.startup()
        try:
            await guard.acheck(chat())
            second = await guard.acheck(chat())
        finally:
            await guard.shutdown()
        retry = second.retry_after
        return second.served, None if retry is None else round(retry)

    now = 1_000_000.0
    memory = asyncio.run(second_retry_after(Guard(policy, clock=lambda: now)))
    redis_backend = RedisBackend(
        redis_server.url, prefix=f"sh{os.getpid()}x{next(_names)}", deny_cache_seconds=0
    )
    on_redis = asyncio.run(second_retry_after(Guard(policy, redis_backend, clock=lambda: now)))
    assert memory == on_redis == (False, 3600)


SAME_RATE = (Quota("10/day", name="requests"), Quota("10/day", by_cost=True, name="tokens"))


def test_two_app_wide_quotas_with_the_same_rate_keep_their_own_counts(
    redis_server: RedisServer,
) -> None:
    """Memory backend: app-wide quotas of one rate used to share one counter (keyed by the
    rate and the identity), so a request of cost 4 spent 5 of both; Redis keeps one per
    quota."""
    policy = quiet_policy(quotas=SAME_RATE)

    async def left_after_one(guard: Guard) -> dict[str, float]:
        await guard.startup()
        try:
            info = chat()
            info.cost = 4
            decision = await guard.acheck(info)
        finally:
            await guard.shutdown()
        return {s.name: s.remaining for s in decision.policies if s.name != "default"}

    now = 1_000_000.0
    memory = asyncio.run(left_after_one(Guard(policy, clock=lambda: now)))
    redis_backend = RedisBackend(
        redis_server.url, prefix=f"sh{os.getpid()}x{next(_names)}", deny_cache_seconds=0
    )
    on_redis = asyncio.run(left_after_one(Guard(policy, redis_backend, clock=lambda: now)))
    assert memory == on_redis == {"requests": 9, "tokens": 6}


def test_real_cost_is_reconciled_in_its_own_app_wide_quota() -> None:
    """Memory backend: the real cost reported after the response lands in the by-cost
    quota only, not in the requests quota of the same rate; the pre-check and the check
    then refuse on the tokens quota alone."""
    guard = Guard(quiet_policy(quotas=SAME_RATE), clock=lambda: 1_000_000.0)

    def costing(cost: float) -> RequestInfo:
        info = chat()
        info.cost = cost
        return info

    first = costing(4)
    guard.complete(first, guard.check(first), status=200, cost=7)
    refusal = guard.precheck(costing(4))
    second = guard.check(costing(4))
    assert refusal is not None and not refusal.served
    assert (second.served, second.reasons) == (False, ("quota",))
    left = {s.name: (s.remaining, s.violated) for s in second.policies if s.name != "default"}
    assert left == {"requests": (9, False), "tokens": (3, True)}
