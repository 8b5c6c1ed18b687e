"""Route and plan limits (issue 18) on Redis: inline mode keeps them in Redis, tested and
counted in the request's one script call; synced mode refuses them at construction."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
import redis

from abuseguard import (
    Action,
    ConfigError,
    Decision,
    Guard,
    Limits,
    Policy,
    Quota,
    RequestInfo,
    TokenBucket,
)
from abuseguard.backends.redis import RedisBackend
from tests.conftest import RedisClusterServers, RedisServer

pytestmark = pytest.mark.redis

T = TypeVar("T")
SLOW = "1/hour"
_names = itertools.count()


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def new_name() -> str:
    return f"rl{os.getpid()}x{next(_names)}"


def backend(url: str, name: str | None = None, **kwargs: Any) -> RedisBackend:
    kwargs.setdefault("budget", 0.5)
    kwargs.setdefault("deny_cache_seconds", 0)
    return RedisBackend(url, prefix=name or new_name(), **kwargs)


def quiet_policy(**kwargs: Any) -> Policy:
    kwargs.setdefault("bucket", TokenBucket(SLOW, burst=100))
    return Policy(network=None, scoring=None, unverified_keys=None, max_identities=512, **kwargs)


def chat(key: str = "sk-one", ip: str = "198.51.100.7", **kwargs: Any) -> RequestInfo:
    return RequestInfo(ip, key=key, method="POST", path="/v1/chat", **kwargs)


def models(key: str = "sk-one") -> RequestInfo:
    return RequestInfo("198.51.100.7", key=key, method="GET", path="/v1/models")


def state(decision: Decision, name: str) -> Any:
    return next(s for s in decision.policies if s.name == name)


def test_a_routes_bucket_refuses_while_another_route_serves_and_refusals_cost_nothing(
    redis_server: RedisServer,
) -> None:
    policy = quiet_policy(
        bucket=TokenBucket(SLOW, burst=10),
        routes={"POST /v1/chat": Limits(bucket=TokenBucket(SLOW, burst=3))},
    )

    async def main() -> tuple[list[Decision], Decision, Decision]:
        guard = Guard(policy, backend(redis_server.url))
        await guard.startup()
        chats = [await guard.acheck(chat()) for _ in range(6)]
        other_route = await guard.acheck(models())
        other_key = await guard.acheck(chat("sk-two"))
        await guard.shutdown()
        return chats, other_route, other_key

    chats, other_route, other_key = run(main())
    assert [d.action for d in chats] == [Action.ALLOW] * 3 + [Action.THROTTLE] * 3
    assert chats[3].reasons == ("rate",)
    refused = state(chats[3], "route-POST-v1-chat-default")
    assert refused.violated and refused.remaining == pytest.approx(0, abs=1e-3)
    assert chats[3].retry_after is not None and 3000 < chats[3].retry_after <= 3600
    assert state(chats[2], "route-POST-v1-chat-default").remaining == pytest.approx(0, abs=1e-3)
    assert other_route.action == Action.ALLOW
    # 3 chats and this request took from the app-wide bucket; the 3 refusals took nothing
    assert state(other_route, "default").remaining == pytest.approx(6, abs=1e-3)
    assert not any(s.name.startswith("route-") for s in other_route.policies)
    assert other_key.action == Action.ALLOW  # its own state per identity


def test_route_quota_and_concurrency_count_only_served_requests(
    redis_server: RedisServer,
) -> None:
    policy = quiet_policy(
        bucket=TokenBucket(SLOW, burst=50),
        routes={"/v1/chat": Limits(quotas=(Quota("2/day", name="daily"),), concurrency=1)},
    )

    async def main() -> list[Decision]:
        guard = Guard(policy, backend(redis_server.url))
        await guard.startup()
        first = await guard.acheck(chat())
        busy = await guard.acheck(chat())
        guard.complete(chat(), first, status=200)
        await asyncio.sleep(0.05)  # the release goes in the background
        second = await guard.acheck(chat())
        guard.complete(chat(), second, status=200)
        await asyncio.sleep(0.05)
        third = await guard.acheck(chat())
        app_wide = await guard.acheck(models())
        await guard.shutdown()
        return [first, busy, second, third, app_wide]

    first, busy, second, third, app_wide = run(main())
    assert first.served and first.held == ("c:" + first.identity + ":route-v1-chat",)
    assert (busy.served, busy.reasons) == (False, ("concurrency",))
    assert busy.policies[0].name == "route-v1-chat-concurrency"
    assert (second.served, third.served, third.reasons) == (True, False, ("quota",))
    assert third.policies[0].name == "route-v1-chat-daily" and third.policies[0].violated
    assert state(second, "route-v1-chat-daily").remaining == 0
    # 2 served and this one; the 2 refusals took nothing from the app-wide bucket
    assert state(app_wide, "default").remaining == pytest.approx(47, abs=1e-3)


def test_free_and_pro_plans_get_their_own_limits(redis_server: RedisServer) -> None:
    policy = quiet_policy(
        plans={
            "free": Limits(bucket=TokenBucket(SLOW, burst=2)),
            "pro": Limits(bucket=TokenBucket(SLOW, burst=5)),
        },
        plan_func=lambda conn: None,
    )

    def on_plan(plan: str | None, key: str) -> RequestInfo:
        info = models(key)
        info.plan = plan
        return info

    async def main() -> dict[str, list[bool]]:
        guard = Guard(policy, backend(redis_server.url))
        await guard.startup()
        out = {
            plan or "none": [
                (await guard.acheck(on_plan(plan, f"sk-{plan}"))).served for _ in range(7)
            ]
            for plan in ("free", "pro", "gold", None)
        }
        await guard.shutdown()
        return out

    served = run(main())
    assert served["free"] == [True] * 2 + [False] * 5
    assert served["pro"] == [True] * 5 + [False] * 2
    assert served["gold"] == served["none"] == [True] * 7  # no known plan: app-wide only


def test_real_cost_is_reconciled_in_a_route_quota(redis_server: RedisServer) -> None:
    tokens = (Quota("1000/day", by_cost=True, name="tokens"),)
    policy = quiet_policy(
        bucket=TokenBucket("1000/second", burst=100_000),
        routes={"POST /v1/chat": Limits(quotas=tokens)},
    )

    async def main() -> list[Decision]:
        guard = Guard(policy, backend(redis_server.url))
        await guard.startup()
        out = []
        for _ in range(2):
            decision = await guard.acheck(chat())
            guard.complete(chat(), decision, status=200, cost=600)
            await asyncio.sleep(0.05)  # the reconciliation goes in the background
            out.append(decision)
        out.append(await guard.acheck(chat()))
        await guard.shutdown()
        return out

    first, second, third = run(main())
    assert first.served and second.served
    assert state(second, "route-POST-v1-chat-tokens").remaining == 1000 - 600 - 1
    assert (third.served, third.reasons) == (False, ("quota",))


def test_shadow_reports_a_route_refusal_and_serves(redis_server: RedisServer) -> None:
    policy = quiet_policy(shadow=True, routes={"/v1/chat": Limits(bucket=TokenBucket(SLOW, 1))})

    async def main() -> list[Decision]:
        guard = Guard(policy, backend(redis_server.url))
        await guard.startup()
        out = [await guard.acheck(chat()) for _ in range(2)]
        await guard.shutdown()
        return out

    first, second = run(main())
    assert first.served and not first.shadow
    assert (second.served, second.shadow, second.reasons) == (True, True, ("rate",))


def test_route_keys_share_the_identitys_slot_and_expire(redis_server: RedisServer) -> None:
    name = new_name()
    policy = quiet_policy(
        routes={
            "/v1/chat": Limits(
                bucket=TokenBucket(SLOW, 5),
                quotas=(Quota("5/day", name="daily"), Quota("9/day", per="ip", name="by-ip")),
                concurrency=2,
            )
        }
    )

    async def main() -> Decision:
        guard = Guard(policy, backend(redis_server.url, name))
        await guard.startup()
        decision = await guard.acheck(chat())  # held: its lease stays until released
        await guard.shutdown()
        return decision

    decision = run(main())
    client = redis.Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in client.scan_iter(f"{name}:*"))
    identity = decision.identity
    assert f"{name}:{{{identity}}}:r:route-v1-chat:b" in keys
    assert f"{name}:{{{identity}}}:r:route-v1-chat:q:daily" in keys
    assert f"{name}:{{{identity}}}:r:route-v1-chat:c" in keys
    assert f"{name}:{{i:198.51.100.7}}:r:route-v1-chat:q:by-ip" in keys
    assert all(client.pttl(key) > 0 for key in keys)


def test_moving_window_route_quotas_are_refused_at_construction(redis_server: RedisServer) -> None:
    policy = quiet_policy(
        routes={"/v1/chat": Limits(quotas=(Quota("5/day", strategy="moving-window"),))}
    )
    with pytest.raises(ConfigError, match=r"Policy\.routes\['/v1/chat'\]\.quotas\[0\]\.strategy"):
        Guard(policy, backend(redis_server.url))


def test_synced_mode_refuses_route_and_plan_limits_naming_the_part(
    redis_server: RedisServer,
) -> None:
    url = f"{redis_server.url}?mode=synced"
    routes = quiet_policy(routes={"/v1/models": Limits(bucket=TokenBucket(SLOW, 2))})
    with pytest.raises(ConfigError, match=r"^Policy\.routes: .*synced mode.*mode=inline"):
        Guard(routes, url)
    plans = quiet_policy(plans={"pro": Limits(concurrency=1)}, plan_func=lambda conn: "pro")
    with pytest.raises(ConfigError, match=r"^Policy\.plans: .*synced mode.*mode=inline"):
        Guard(plans, url)


def test_route_limits_are_exact_across_workers_on_a_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    name = new_name()
    policy = quiet_policy(
        routes={
            "POST /v1/chat": Limits(
                bucket=TokenBucket(SLOW, burst=4), quotas=(Quota("3/day", per="ip", name="ip"),)
            )
        }
    )

    async def main() -> list[Decision]:
        guards = [
            Guard(policy, RedisBackend.from_uri(redis_cluster.url + f"?prefix={name}&budget=0.5"))
            for _ in range(3)
        ]
        for g in guards:
            await g.startup()
        # one account on its own addresses, 12 requests over 3 workers: its route bucket
        # (burst 4) admits 4
        calls = [guards[i % 3].acheck(chat("acct-x", f"203.0.113.{i}")) for i in range(12)]
        # 6 accounts behind one address: the address's route quota (3, in the address's
        # slot) is shared by all of them
        calls += [guards[i % 3].acheck(chat(f"acct-{i}")) for i in range(6)]
        calls += [guards[j % 3].acheck(models("acct-0")) for j in range(3)]
        out = list(await asyncio.gather(*calls))
        for g in guards:
            await g.shutdown()
        return out

    decisions = run(main())
    one_account, behind_one_address, others = decisions[:12], decisions[12:18], decisions[18:]
    assert sum(d.served for d in one_account) == 4
    assert {d.reasons for d in one_account if not d.served} == {("rate",)}
    assert sum(d.served for d in behind_one_address) == 3
    assert {d.reasons for d in behind_one_address if not d.served} == {("quota",)}
    assert all(d.served for d in others)


def test_more_than_99_quotas_in_one_call_is_a_config_error(redis_server: RedisServer) -> None:
    def quotas(n: int, prefix: str) -> tuple[Quota, ...]:
        return tuple(Quota(f"{i + 1}/day", name=f"{prefix}{i}") for i in range(n))

    policy = quiet_policy(
        quotas=quotas(50, "app"),
        routes={"/v1/chat": Limits(quotas=quotas(30, "route"))},
        plans={"pro": Limits(quotas=quotas(20, "plan"))},
        plan_func=lambda conn: "pro",
    )
    with pytest.raises(ConfigError, match=r"^Policy\.routes: .*at most 99 quotas per request"):
        Guard(policy, backend(redis_server.url))
    fits = quiet_policy(
        quotas=quotas(50, "app"),
        routes={"/v1/chat": Limits(quotas=quotas(29, "route"))},
        plans={"pro": Limits(quotas=quotas(20, "plan"))},
        plan_func=lambda conn: "pro",
    )
    Guard(fits, backend(redis_server.url))


def test_per_model_limits_on_redis_inline(redis_server: RedisServer) -> None:
    """`Limits.models` on Redis in inline mode: each model of the body has its own state,
    a body naming another model gets the route's limits only."""
    policy = quiet_policy(
        bucket=TokenBucket(SLOW, burst=50),
        routes={
            "POST /v1/chat": Limits(
                models={"mini": Limits(bucket=TokenBucket(SLOW, burst=2))},
            )
        },
    )

    def body(model: str) -> bytes:
        return json.dumps({"model": model, "messages": []}).encode()

    async def main() -> tuple[list[Decision], list[Decision]]:
        guard = Guard(policy, backend(redis_server.url))
        await guard.startup()
        minis = [await guard.acheck(chat(body=body("mini"))) for _ in range(4)]
        others = [await guard.acheck(chat(body=body("large"))) for _ in range(4)]
        await guard.shutdown()
        return minis, others

    minis, others = run(main())
    assert [d.action for d in minis] == [Action.ALLOW] * 2 + [Action.THROTTLE] * 2
    assert [d.action for d in others] == [Action.ALLOW] * 4
    assert state(minis[1], "route-POST-v1-chat-model-mini-default").remaining == pytest.approx(
        0, abs=1e-3
    )


def test_a_route_bucket_in_shadow_mode_reports_and_serves(redis_server: RedisServer) -> None:
    """``TokenBucket(shadow=True)`` on a route is shadowed in Redis' script too (it used to
    be enforced there: only the policy's shadow mode reached the route's bucket)."""
    policy = quiet_policy(
        routes={"/v1/chat": Limits(bucket=TokenBucket(SLOW, 1, shadow=True))},
    )

    async def main() -> list[Decision]:
        guard = Guard(policy, backend(redis_server.url))
        await guard.startup()
        out = [await guard.acheck(chat()) for _ in range(3)]
        await guard.shutdown()
        return out

    decisions = run(main())
    assert all(d.served for d in decisions)
    assert [(d.shadow, d.reasons) for d in decisions] == [
        (False, ()),
        (True, ("rate",)),
        (True, ("rate",)),
    ]
