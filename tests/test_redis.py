"""RedisBackend against the session's real redis-server: semantics, sharing, deny cache,
scripts, keys, and faults (a port with nothing behind it, a paused server)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import signal
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abuseguard import (
    Action,
    Concurrency,
    Decision,
    Enforcement,
    Guard,
    NetworkPolicy,
    Policy,
    Quota,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.backends.base import backend_from_uri
from abuseguard.backends.redis import UNAVAILABLE, RedisBackend
from abuseguard.backends.redis.pipe import pack_commands
from abuseguard.engine.layout import A_EST, F_SKETCH_EST, SK_ASNS
from abuseguard.errors import ConfigError
from abuseguard.policy import FailMode
from tests.conftest import RedisServer, free_port

pytestmark = pytest.mark.redis

T = TypeVar("T")
_prefixes = itertools.count()


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def prefix() -> str:
    return f"t{os.getpid()}x{next(_prefixes)}"


def backend(url: str, **kwargs: Any) -> RedisBackend:
    kwargs.setdefault("prefix", prefix())
    kwargs.setdefault("budget", 0.5)  # a loaded CI machine: only fault tests use a tight one
    return RedisBackend(url, **kwargs)


def req(key: str | None = "sk-live-1", ip: str = "198.51.100.7", **kw: Any) -> RequestInfo:
    return RequestInfo(ip=ip, key=key, **kw)


def simple_policy(**kw: Any) -> Policy:
    kw.setdefault("bucket", TokenBucket("1/hour", burst=5))
    kw.setdefault("scoring", None)
    kw.setdefault("network", None)
    kw.setdefault("max_identities", 256)
    return Policy(**kw)


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


# -- configuration ------------------------------------------------------------------------


def test_uri_options_are_parsed_and_the_rest_reaches_redis_py() -> None:
    b = backend_from_uri(
        "redis://127.0.0.1:1/2?budget=0.02&fail_open=false&prefix=x&breaker_threshold=3"
        "&deny_cache_seconds=0&health_check_interval=5"
    )
    assert isinstance(b, RedisBackend)
    assert b.budget == 0.02 and b.fail_open_override is False and b.prefix == "x"
    assert b.breaker.threshold == 3 and not b.deny.enabled
    assert b.url == "redis://127.0.0.1:1/2?health_check_interval=5"
    assert b.socket_connect_timeout == 0.02
    cluster = backend_from_uri("redis+cluster://127.0.0.1:7000?sync_interval=0.1")
    assert isinstance(cluster, RedisBackend) and cluster.cluster
    assert cluster.url == "redis://127.0.0.1:7000" and cluster.sync_interval == 0.1
    unix = backend_from_uri("unix:///tmp/redis.sock?db=1&budget=0.1")
    assert isinstance(unix, RedisBackend) and unix.url == "unix:///tmp/redis.sock?db=1"
    tls = backend_from_uri("rediss://h:6380/0")
    assert isinstance(tls, RedisBackend) and tls.url.startswith("rediss://")


@pytest.mark.parametrize(
    ("uri", "field"),
    [
        ("redis://h/0?budget=abc", "RedisBackend.budget"),
        ("redis://h/0?budget=0", "RedisBackend.budget"),
        ("redis://h/0?budget=-1", "RedisBackend.budget"),
        ("redis://h/0?budget=inf", "RedisBackend.budget"),
        ("redis://h/0?fail_open=maybe", "RedisBackend.fail_open"),
        ("redis://h/0?breaker_threshold=0", "RedisBackend.breaker_threshold"),
        ("redis://h/0?deny_cache_seconds=-1", "RedisBackend.deny_cache_seconds"),
        ("redis://h/0?prefix=a{b}", "RedisBackend.prefix"),
        ("redis://h/0?fallback_workers=0", "RedisBackend.fallback_workers"),
        ("redis://h/0?lease_ttl=0", "RedisBackend.lease_ttl"),
    ],
)
def test_bad_backend_options_fail_at_construction_naming_the_field(uri: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_uri(uri)
    assert info.value.field == field


def test_moving_window_quota_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match="moving-window") as info:
        Guard(
            simple_policy(quotas=(Quota("10/minute", strategy="moving-window"),)),
            backend=RedisBackend("redis://127.0.0.1:1/0"),
        )
    assert info.value.field == "Policy.quotas[0].strategy"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"open": "yes"}, "FailMode.open"),
        ({"fallback": 1}, "FailMode.fallback"),
        ({"routes": "/x"}, "FailMode.routes"),
        ({"routes": {"/x": "no"}}, "FailMode.routes"),
        ({"routes": {"x": False}}, "FailMode.routes"),
        ({"routes": {"GE7 /x": False}}, "FailMode.routes"),
    ],
)
def test_bad_fail_mode_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        FailMode(**kwargs)
    assert info.value.field == field
    with pytest.raises(ConfigError, match=r"Policy\.fail_mode"):
        Policy(fail_mode=True)  # type: ignore[arg-type]


def test_fail_mode_routes_longest_prefix_and_method_win() -> None:
    mode = FailMode(open=True, routes={"/v1": False, "/v1/health": True, "POST /v1/health": False})
    assert mode.fails_open("GET", "/other")
    assert not mode.fails_open("GET", "/v1/chat")
    assert mode.fails_open("GET", "/v1/health")
    assert not mode.fails_open("POST", "/v1/health/deep")


def test_sync_check_is_refused_with_the_redis_backend() -> None:
    guard = Guard(simple_policy(), backend=RedisBackend("redis://127.0.0.1:1/0"))
    with pytest.raises(RuntimeError, match="acheck"):
        guard.check(req())


@given(
    st.lists(
        st.lists(
            st.one_of(
                st.text(max_size=20),
                st.binary(max_size=20),
                st.integers(-(2**63), 2**63 - 1),
                st.floats(allow_nan=False, allow_infinity=False),
            ),
            max_size=6,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_packed_commands_are_what_redis_py_would_send(commands: list[list[Any]]) -> None:
    from redis.connection import Connection

    # (redis-py splits a first argument with spaces: command names come first, fixed)
    reference = Connection().pack_commands([["EVALSHA", *c] for c in commands])
    assert pack_commands([("EVALSHA", *c) for c in commands]) == b"".join(reference)


# -- limits ---------------------------------------------------------------------------------


def test_bucket_admits_the_burst_then_throttles_with_headers(redis_server: RedisServer) -> None:
    async def main() -> list[Decision]:
        guard = Guard(simple_policy(), backend=backend(redis_server.url))
        await guard.startup()
        out = [await guard.acheck(req()) for _ in range(7)]
        await guard.shutdown()
        return out

    decisions = run(main())
    assert [d.action for d in decisions] == [Action.ALLOW] * 5 + [Action.THROTTLE] * 2
    assert decisions[5].reasons == ("rate",)
    assert decisions[5].retry_after is not None and 3000 < decisions[5].retry_after <= 3600
    first = decisions[0].policies[0]
    assert (first.name, first.quota, first.remaining) == ("default", 5.0, 4.0)
    assert decisions[5].policies[0].violated


def test_two_workers_share_one_bucket_exactly(redis_server: RedisServer) -> None:
    """Two guards (as two worker processes would) on one loop, requests interleaved."""

    async def main() -> list[Decision]:
        url = redis_server.url
        name = prefix()
        guards = [Guard(simple_policy(), backend=backend(url, prefix=name)) for _ in range(2)]
        for g in guards:
            await g.startup()
        tasks = [g.acheck(req()) for _ in range(6) for g in guards]
        out = list(await asyncio.gather(*tasks))
        for g in guards:
            await g.shutdown()
        return out

    decisions = run(main())
    assert sum(d.action == Action.ALLOW for d in decisions) == 5


def test_cost_weighted_requests_and_reconciliation(redis_server: RedisServer) -> None:
    async def main() -> tuple[Decision, Decision, Decision]:
        guard = Guard(
            simple_policy(bucket=TokenBucket("1/hour", burst=10)), backend=backend(redis_server.url)
        )
        await guard.startup()
        first = await guard.acheck(req(cost=4.0))
        guard.complete(req(), first, status=200, cost=1.0)  # refund 3 in the background
        await asyncio.sleep(0.05)
        second = await guard.acheck(req(cost=2.0))
        third = await guard.acheck(req(cost=100.0))  # more than the burst: needs a full bucket
        await guard.shutdown()
        return first, second, third

    first, second, third = run(main())
    assert first.remaining == pytest.approx(6.0, abs=1e-3)
    assert second.remaining == pytest.approx(7.0, abs=1e-3)
    assert third.action == Action.THROTTLE


def test_quotas_fixed_and_sliding_window(redis_server: RedisServer) -> None:
    policy = simple_policy(
        bucket=None,
        quotas=(
            Quota("3/minute", name="fixed"),
            Quota("4/minute", strategy="sliding-window-counter", name="sliding"),
        ),
    )

    async def main() -> list[Decision]:
        guard = Guard(policy, backend=backend(redis_server.url, deny_cache_seconds=0))
        await guard.startup()
        out = [await guard.acheck(req()) for _ in range(5)]
        await guard.shutdown()
        return out

    decisions = run(main())
    assert [d.action for d in decisions] == [Action.ALLOW] * 3 + [Action.THROTTLE] * 2
    assert decisions[3].reasons == ("quota",)
    fixed, sliding = decisions[3].policies
    assert fixed.violated and fixed.remaining == 0 and 0 < fixed.reset <= 60
    # a refused request is counted in no quota (issue 14): the sliding window holds the 3
    # served requests only
    assert not sliding.violated and sliding.remaining == 1


def test_concurrency_leases_release_and_expire_when_a_worker_dies(
    redis_server: RedisServer,
) -> None:
    policy = simple_policy(bucket=None, concurrency=Concurrency(1))

    async def main() -> tuple[Decision, ...]:
        name = prefix()
        alive = Guard(policy, backend=backend(redis_server.url, prefix=name, lease_ttl=0.3))
        dead = Guard(policy, backend=backend(redis_server.url, prefix=name, lease_ttl=0.3))
        for g in (alive, dead):
            await g.startup()
        held = await alive.acheck(req())
        refused = await dead.acheck(req())
        alive.complete(req(), held, status=200)
        await asyncio.sleep(0.05)
        taken = await dead.acheck(req())  # the "dead" worker takes the slot and never releases
        await dead.shutdown()  # its renewal task stops with it
        refused_again = await alive.acheck(req())
        await asyncio.sleep(0.5)  # past the lease TTL
        after_expiry = await alive.acheck(req())
        alive.complete(req(), after_expiry, status=200)
        await alive.shutdown()
        return held, refused, taken, refused_again, after_expiry

    held, refused, taken, refused_again, after_expiry = run(main())
    assert held.action == Action.ALLOW and held.held
    assert refused.action == Action.THROTTLE and refused.reasons == ("concurrency",)
    assert taken.action == Action.ALLOW
    assert refused_again.reasons == ("concurrency",)
    assert after_expiry.action == Action.ALLOW


def test_a_held_lease_is_renewed_past_its_ttl(redis_server: RedisServer) -> None:
    policy = simple_policy(bucket=None, concurrency=Concurrency(1))

    async def main() -> tuple[Decision, Decision]:
        name = prefix()
        a = Guard(policy, backend=backend(redis_server.url, prefix=name, lease_ttl=0.3))
        b = Guard(policy, backend=backend(redis_server.url, prefix=name, lease_ttl=0.3))
        for g in (a, b):
            await g.startup()
        held = await a.acheck(req())
        await asyncio.sleep(0.7)  # a streaming response, longer than the TTL
        other = await b.acheck(req())
        a.complete(req(), held)
        for g in (a, b):
            await g.shutdown()
        return held, other

    held, other = run(main())
    assert held.action == Action.ALLOW
    assert other.reasons == ("concurrency",)


def test_network_buckets_and_fan_in_are_shared_on_a_standalone_server(
    redis_server: RedisServer,
) -> None:
    policy = Policy(
        bucket=TokenBucket("1/hour", burst=100),
        network=NetworkPolicy(per_ip=TokenBucket("1/hour", burst=4), nat_fairness=False),
        scoring=Scoring(),
        max_identities=256,
    )

    async def main() -> tuple[list[Decision], float]:
        name = prefix()
        guards = [Guard(policy, backend=backend(redis_server.url, prefix=name)) for _ in range(2)]
        for g in guards:
            await g.startup()
        out = [
            await guards[i % 2].acheck(req(key=f"acct-{i}", ip="203.0.113.9", asn=16509))
            for i in range(6)
        ]
        table = guards[0].engine.tables[1]
        fan_in = float(table.data[table.index["203.0.113.9"], F_SKETCH_EST])
        for g in guards:
            await g.shutdown()
        return out, fan_in

    decisions, fan_in = run(main())
    assert [d.action for d in decisions[:4]] == [Action.ALLOW] * 4
    assert all(d.action == Action.THROTTLE and "rate" in d.reasons for d in decisions[4:])
    assert fan_in >= 4  # worker 0 saw 3 accounts itself; Redis counted those of both


def test_fan_out_estimates_come_from_every_worker(redis_server: RedisServer) -> None:
    policy = Policy(bucket=TokenBucket("100/second", burst=100), max_identities=256)

    async def main() -> float:
        name = prefix()
        guards = [Guard(policy, backend=backend(redis_server.url, prefix=name)) for _ in range(2)]
        for g in guards:
            await g.startup()
        for i in range(16):
            await guards[i % 2].acheck(req(key="roamer", ip=f"10.{i}.0.1", asn=1000 + i))
        last = await guards[0].acheck(req(key="roamer", ip="10.99.0.1", asn=9999))
        table = guards[0].engine.accounts
        asns = float(table.data[table.index[last.identity], A_EST + SK_ASNS])
        for g in guards:
            await g.shutdown()
        return asns

    assert run(main()) >= 12  # worker 0 alone saw 9 ASNs


# -- bans and the local deny cache ----------------------------------------------------------


def test_a_ban_reaches_other_workers_then_costs_no_round_trip(redis_server: RedisServer) -> None:
    policy = Policy(
        bucket=TokenBucket("100/second", burst=100),
        network=None,
        # Every client scores high: climbs at once (no weak signals: the bias alone may ban).
        scoring=Scoring(bias=2.0, weak_signals=()),
        enforcement=Enforcement(ladder=((0.5, Action.BLOCK),), ban_at="block", ban_seconds=60),
        max_identities=256,
        unverified_keys=None,  # a key never answered draws (a call) each time
    )

    async def main() -> tuple[Decision, Decision, Decision, int]:
        name = prefix()
        a = Guard(policy, backend=backend(redis_server.url, prefix=name))
        b = Guard(
            Policy(**{**policy.__dict__, "scoring": None}),
            backend=backend(redis_server.url, prefix=name),
        )
        for g in (a, b):
            await g.startup()
        banned_here = await a.acheck(req())
        seen_there = await b.acheck(req())
        trips = b.backend.stats()["round_trips"]  # type: ignore[attr-defined]
        again = await b.acheck(req())
        extra = b.backend.stats()["round_trips"] - trips  # type: ignore[attr-defined]
        for g in (a, b):
            await g.shutdown()
        return banned_here, seen_there, again, extra

    banned_here, seen_there, again, extra = run(main())
    assert banned_here.action == Action.BLOCK
    assert seen_there.action == Action.BLOCK and seen_there.reasons == ("banned",)
    assert seen_there.retry_after is not None and 50 < seen_there.retry_after <= 60
    assert again.reasons == ("banned",)
    assert extra == 0


def test_deny_cache_refuses_locally_until_the_bucket_may_pay(redis_server: RedisServer) -> None:
    policy = simple_policy(
        bucket=TokenBucket("5/second", burst=2),
        unverified_keys=None,  # a key never answered draws (a call) each time
    )

    async def main() -> tuple[list[Decision], int, Decision]:
        guard = Guard(policy, backend=backend(redis_server.url))
        await guard.startup()
        stats = guard.backend.stats  # type: ignore[attr-defined]
        out = [await guard.acheck(req()) for _ in range(3)]
        trips = stats()["round_trips"]
        out += [await guard.acheck(req()) for _ in range(5)]
        local = stats()["round_trips"] - trips
        await asyncio.sleep(0.5)  # refilled: Redis is asked again
        later = await guard.acheck(req())
        await guard.shutdown()
        return out, local, later

    decisions, local, later = run(main())
    assert [d.action for d in decisions] == [Action.ALLOW] * 2 + [Action.THROTTLE] * 6
    assert all(d.reasons == ("rate",) and d.retry_after for d in decisions[2:])
    assert local == 0
    assert later.action == Action.ALLOW


def test_an_exhausted_quota_is_refused_locally_with_its_reset(redis_server: RedisServer) -> None:
    policy = simple_policy(
        bucket=None,
        quotas=(Quota("2/minute"),),
        unverified_keys=None,  # a key never answered draws (a call) each time
    )

    async def main() -> tuple[list[Decision], int]:
        guard = Guard(policy, backend=backend(redis_server.url))
        await guard.startup()
        out = [await guard.acheck(req()) for _ in range(3)]
        trips = guard.backend.stats()["round_trips"]  # type: ignore[attr-defined]
        out.append(await guard.acheck(req()))
        local = guard.backend.stats()["round_trips"] - trips  # type: ignore[attr-defined]
        await guard.shutdown()
        return out, local

    decisions, local = run(main())
    assert [d.action for d in decisions] == [Action.ALLOW] * 2 + [Action.THROTTLE] * 2
    cached = decisions[3]
    assert cached.reasons == ("quota",) and local == 0
    assert cached.retry_after is not None and 50 < cached.retry_after <= 60
    assert cached.policies[0].violated


# -- scripts, keys, secrets -----------------------------------------------------------------


def test_script_flush_is_survived(redis_server: RedisServer) -> None:
    async def main() -> tuple[Decision, Decision, int]:
        guard = Guard(simple_policy(), backend=backend(redis_server.url))
        await guard.startup()
        before = await guard.acheck(req())
        sync_client(redis_server.url).script_flush()
        after = await guard.acheck(req())
        reloads = guard.backend.stats()["script_reloads"]  # type: ignore[attr-defined]
        await guard.shutdown()
        return before, after, reloads

    before, after, reloads = run(main())
    assert before.action == after.action == Action.ALLOW
    assert after.remaining == pytest.approx(3.0, abs=1e-3)
    assert reloads == 1


def test_every_key_has_a_ttl_and_no_raw_key_reaches_redis(redis_server: RedisServer) -> None:
    raw = "sk-live-SECRET-0123456789"
    name = prefix()
    policy = Policy(
        bucket=TokenBucket("1/hour", burst=3),
        quotas=(Quota("100/day"), Quota("50/hour", strategy="sliding-window-counter", per="ip")),
        concurrency=Concurrency(4),
        network=NetworkPolicy(per_ip=TokenBucket("10/second"), per_prefix=TokenBucket("20/second")),
        enforcement=Enforcement(ban_at="block", ban_seconds=30),
        max_identities=256,
    )

    async def main() -> None:
        guard = Guard(policy, backend=backend(redis_server.url, prefix=name))
        await guard.startup()
        for i in range(5):
            d = await guard.acheck(req(key=raw, ip=f"192.0.2.{i}", asn=3320, country="DE"))
            guard.complete(req(key=raw), d, status=200, cost=2.0)
        await asyncio.sleep(0.05)
        await guard.shutdown()

    run(main())
    client = sync_client(redis_server.url)
    keys = list(client.scan_iter(f"{name}:*"))
    assert len(keys) >= 8
    for key in keys:
        assert client.pttl(key) > 0, key
        assert raw.encode() not in key
        kind = client.type(key)
        if kind == b"string":
            assert raw.encode() not in (client.get(key) or b"")
        elif kind == b"zset":
            assert all(raw.encode() not in m for m in client.zrange(key, 0, -1))


# -- equivalence with the memory backend ----------------------------------------------------

EQUIVALENCE_POLICIES = {
    "limits": simple_policy(
        bucket=TokenBucket("2/second", burst=5),
        quotas=(
            Quota("9/minute", name="fixed"),
            Quota(
                "7/minute",
                strategy="sliding-window-counter",
                per="ip",
                name="sliding",
                by_cost=True,
            ),
        ),
        concurrency=Concurrency(2),
        max_identities=4096,
    ),
    "ladder": Policy(
        bucket=TokenBucket("3/second", burst=4, risk_floor=0.2),
        quotas=(Quota("12/minute", name="fixed"),),
        concurrency=Concurrency(3, shadow=True),
        network=None,
        scoring=Scoring(bias=-2.2, min_events=2, weak_signals=()),  # UA and cadence refuse
        enforcement=Enforcement(
            ladder=((0.3, Action.LOG), (0.45, Action.CHALLENGE), (0.6, Action.BLOCK)),
            hysteresis=0.05,
        ),
        max_identities=4096,
    ),
}

events = st.lists(
    st.tuples(
        st.sampled_from(["req", "req", "req", "done"]),
        st.integers(0, 2),  # key
        st.integers(0, 1),  # ip
        st.floats(0.0, 0.8),  # gap (virtual seconds)
        st.sampled_from([1.0, 1.0, 2.5, 0.0]),  # cost
        st.sampled_from([None, "python-requests/2.31", "Mozilla/5.0 (X11; Linux x86_64)"]),
    ),
    min_size=1,
    max_size=24,
)


def _comparable(d: Decision) -> tuple[Any, ...]:
    return (d.action, d.reasons, d.shadow, bool(d.held), d.identity)


_equivalence: dict[str, tuple[Guard, Guard]] = {}
_examples = itertools.count()
_clock = [0.0]


def _equivalent_pair(name: str, url: str) -> tuple[Guard, Guard]:
    """One memory guard and one Redis guard per policy, kept across examples (a Guard
    costs megabytes of native memory); every example gets identities of its own."""
    if name not in _equivalence:
        policy = EQUIVALENCE_POLICIES[name]
        redis_backend = backend(url, server_time=False, deny_cache_seconds=0, budget=5.0)
        _equivalence[name] = (Guard(policy), Guard(policy, backend=redis_backend))
    return _equivalence[name]


@pytest.mark.parametrize("name", list(EQUIVALENCE_POLICIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trace=events)
def test_redis_decides_like_the_memory_backend(
    redis_server: RedisServer, name: str, trace: list[tuple[Any, ...]]
) -> None:
    """One worker, virtual time sent to the script: every decision equals the memory one."""
    memory, guard = _equivalent_pair(name, redis_server.url)
    n = next(_examples)
    _clock[0] = ts = max(time.time(), _clock[0]) + 1.0

    async def main() -> None:
        nonlocal ts
        await guard.startup()
        held: list[tuple[Decision, Decision]] = []
        for kind, key, ip, gap, cost, ua in trace:
            if kind == "done":
                if held:
                    mine, theirs = held.pop(0)
                    memory.complete(req(), mine, status=200)
                    guard.complete(req(), theirs, status=200)
                continue
            ts += gap
            info = RequestInfo(
                ip=f"10.{n >> 8 & 255}.{n & 255}.{ip}", key=f"x{n}k{key}", ts=ts, cost=cost, ua=ua
            )
            expected = memory.check(info)
            got = await guard.acheck(info)
            assert _comparable(got) == _comparable(expected)
            assert got.score == pytest.approx(expected.score, abs=1e-9)
            if expected.remaining is not None:
                assert got.remaining == pytest.approx(expected.remaining, abs=1e-6)
            if "quota" not in expected.reasons:
                assert (got.retry_after is None) == (expected.retry_after is None)
                if expected.retry_after is not None:
                    assert got.retry_after == pytest.approx(expected.retry_after, abs=1e-6)
            assert len(got.policies) == len(expected.policies)
            for g, e in zip(got.policies, expected.policies, strict=True):
                assert (g.name, g.quota, g.window, g.violated) == (
                    e.name,
                    e.quota,
                    e.window,
                    e.violated,
                )
                assert g.remaining == pytest.approx(e.remaining, abs=1e-6)
                if g.name != "fixed":  # a fixed window's reset is Redis' real-time TTL
                    assert g.reset == pytest.approx(e.reset, abs=2e-3)
            if expected.held:
                held.append((expected, got))
        for mine, theirs in held:
            memory.complete(req(), mine, status=200)
            guard.complete(req(), theirs, status=200)
        await guard.shutdown()
        _clock[0] = max(_clock[0], ts)

    run(main())


# -- faults ---------------------------------------------------------------------------------


def _dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def test_nothing_listening_fails_open_then_limits_in_process(caplog: Any) -> None:
    policy = simple_policy(bucket=TokenBucket("1/hour", burst=3))

    async def main() -> tuple[list[Decision], RedisBackend]:
        b = backend(_dead_url(), breaker_threshold=2, breaker_cooldown=30, fallback_workers=1)
        guard = Guard(policy, backend=b)
        await guard.startup()
        out = [await guard.acheck(req()) for _ in range(6)]
        await guard.shutdown()
        return out, b

    with caplog.at_level(logging.WARNING, logger="abuseguard"):
        decisions, b = run(main())
    assert b.breaker.state == "open"
    # Served while failing open; once the circuit is open the fallback buckets count
    # (startup failed once, the first request's failure opened the circuit)
    assert decisions[0].action == Action.ALLOW and not decisions[0].policies
    assert [d.action for d in decisions[1:]] == [Action.ALLOW] * 3 + [Action.THROTTLE] * 2
    assert decisions[-1].reasons == ("rate",)
    assert any("circuit open" in r.message for r in caplog.records)


def test_fail_closed_and_per_route_modes() -> None:
    policy = simple_policy(fail_mode=FailMode(open=False, routes={"/health": True}))

    async def main() -> tuple[Decision, Decision, Decision]:
        guard = Guard(policy, backend=backend(_dead_url(), breaker_threshold=1))
        await guard.startup()
        closed = await guard.acheck(req(path="/v1/chat"))
        still_closed = await guard.acheck(req(path="/v1/chat"))
        open_route = await guard.acheck(req(path="/health/live"))
        await guard.shutdown()
        return closed, still_closed, open_route

    closed, still_closed, open_route = run(main())
    assert closed.action == Action.THROTTLE and closed.reasons == (UNAVAILABLE,)
    assert closed.retry_after is not None and closed.retry_after >= 1
    assert still_closed.reasons == (UNAVAILABLE,)
    assert open_route.action == Action.ALLOW


def test_uri_fail_open_overrides_the_policy_default_not_its_routes() -> None:
    async def main() -> tuple[Decision, Decision]:
        policy = simple_policy(fail_mode=FailMode(open=True, routes={"/health": True}))
        guard = Guard(policy, backend=backend_from_uri(_dead_url() + "?fail_open=false"))
        await guard.startup()
        chat = await guard.acheck(req(path="/v1/chat"))
        health = await guard.acheck(req(path="/health"))
        await guard.shutdown()
        return chat, health

    chat, health = run(main())
    assert chat.reasons == (UNAVAILABLE,)
    assert health.action == Action.ALLOW


def test_breaker_half_opens_and_recovers_when_redis_returns(tmp_path: Any) -> None:
    server = RedisServer(tmp_path)

    async def main() -> tuple[str, Decision, str, Decision]:
        b = backend(server.url, breaker_threshold=1, breaker_cooldown=0.2)
        guard = Guard(simple_policy(), backend=b)
        await guard.startup()  # nothing there yet
        down = await guard.acheck(req())
        state_down = b.breaker.state
        server.start()
        await asyncio.sleep(0.3)
        up = await guard.acheck(req())  # the probe
        state_up = b.breaker.state
        await guard.shutdown()
        return state_down, down, state_up, up

    try:
        state_down, down, state_up, up = run(main())
    finally:
        server.stop()
    assert state_down == "open" and down.action == Action.ALLOW
    assert state_up == "closed" and up.policies and up.remaining == pytest.approx(4.0, abs=1e-3)


def test_a_paused_redis_costs_at_most_the_budget_then_nothing(tmp_path: Any) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def main() -> tuple[list[Decision], dict[str, Any]]:
        b = backend(server.url, budget=0.03, breaker_threshold=3, breaker_cooldown=10)
        guard = Guard(simple_policy(fail_mode=FailMode(open=False)), backend=b)
        await guard.startup()
        ok = await guard.acheck(req())
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            paused = await asyncio.wait_for(
                asyncio.gather(*(guard.acheck(req(key=f"k{i}")) for i in range(8))), 5.0
            )
            after = [await asyncio.wait_for(guard.acheck(req()), 5.0) for _ in range(3)]
        finally:
            server.process.send_signal(signal.SIGCONT)
        stats = b.stats()
        await guard.shutdown()
        return [ok, *paused, *after], stats

    try:
        decisions, stats = run(main())
    finally:
        server.stop()
    assert decisions[0].action == Action.ALLOW
    assert all(d.reasons == (UNAVAILABLE,) for d in decisions[1:])
    assert stats["breaker"] == "open" and stats["failures"] == 11


def test_memory_backend_warns_once_under_several_workers(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from abuseguard.backends import workers
    from abuseguard.backends.memory import MemoryBackend

    monkeypatch.setattr(workers, "_warned", False)
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    with caplog.at_level(logging.WARNING, logger="abuseguard"):
        MemoryBackend()
        MemoryBackend()
    warnings = [r for r in caplog.records if "worker processes" in r.message]
    assert len(warnings) == 1 and "WEB_CONCURRENCY" in warnings[0].message


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        ({}, ["uvicorn", "app:app"], 1),
        ({}, ["uvicorn", "app:app", "--workers", "4"], 4),
        ({}, ["uvicorn", "app:app", "--workers=3"], 3),
        ({}, ["/usr/bin/gunicorn", "-w", "5", "app:app"], 5),
        ({}, ["/usr/bin/gunicorn", "-w6", "app:app"], 6),
        ({}, ["python", "-w", "5"], 1),  # -w means workers only for gunicorn
        ({"GUNICORN_CMD_ARGS": "--bind 0.0.0.0 --workers 8"}, ["gunicorn"], 8),
        ({"GUNICORN_CMD_ARGS": "--workers 'x"}, ["gunicorn"], 1),  # bad quoting: ignored
        ({"WEB_CONCURRENCY": "2"}, ["uvicorn"], 2),
        ({"WEB_CONCURRENCY": "many"}, ["uvicorn"], 1),
        ({}, ["uvicorn", "--workers", "nope"], 1),
        ({}, ["uvicorn", "--workers"], 1),
    ],
)
def test_worker_detection(env: dict[str, str], argv: list[str], expected: int) -> None:
    from abuseguard.backends.workers import detect_workers

    assert detect_workers(env, argv)[0] == expected


def test_breaker_state_machine() -> None:
    from abuseguard.backends.breaker import CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker(
        threshold=2, cooldown=1.0, max_cooldown=3.0, probe_timeout=0.5, clock=lambda: now[0]
    )
    assert breaker.allow()
    breaker.failure()
    assert breaker.allow() and breaker.closed
    breaker.failure()
    assert not breaker.allow() and breaker.retry_after() == 1.0
    now[0] = 1.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one
    breaker.failure()  # the probe failed: open for twice as long
    now[0] = 2.9
    assert not breaker.allow()
    now[0] = 3.0
    assert breaker.allow()
    now[0] = 3.6  # the probe never reported back: another one may go
    assert breaker.allow()
    breaker.success()
    assert breaker.closed and breaker.cooldown == 1.0 and breaker.opened == 2
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)


@given(
    tokens=st.floats(-50, 50),
    rate=st.floats(0.01, 100),
    burst=st.floats(0.5, 100),
    elapsed=st.floats(0, 10),
    cost=st.floats(0, 200),
)
def test_deny_cache_never_refuses_what_the_bucket_could_pay(
    tokens: float, rate: float, burst: float, elapsed: float, cost: float
) -> None:
    from abuseguard.backends.redis.deny_cache import DenyCache

    now = [100.0]
    cache = DenyCache(max_seconds=60, clock=lambda: now[0])
    cache.note_bucket("k", min(tokens, burst), rate * 0.5, rate, burst)
    now[0] += elapsed
    elapsed = now[0] - 100.0  # as the cache sees it (float absorption included)
    short = cache.bucket_short("k", cost)
    best = min(burst, min(tokens, burst) + elapsed * rate)  # no other worker spent anything
    if short is not None:
        assert best < min(cost, burst)
        assert short[1] >= 0 and math.isfinite(short[1])
    if best >= min(cost, burst):
        assert short is None


def test_bad_request_inputs_reach_redis_as_defined_values(redis_server: RedisServer) -> None:
    async def main() -> list[Decision]:
        guard = Guard(simple_policy(), backend=backend(redis_server.url))
        await guard.startup()
        out = [
            await guard.acheck(RequestInfo(ip="not an ip", key="a b\r\nc")),
            await guard.acheck(RequestInfo(ip="::ffff:1.2.3.4", key="x" * 10_000)),
            await guard.acheck(RequestInfo(ip="", key=None)),
        ]
        await guard.shutdown()
        return out

    decisions = run(main())
    assert all(d.action == Action.ALLOW and d.policies for d in decisions)


def test_a_closed_socket_mid_session_is_a_failure_not_an_exception(tmp_path: Any) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def main() -> tuple[Decision, Decision]:
        guard = Guard(simple_policy(), backend=backend(server.url, breaker_threshold=5))
        await guard.startup()
        first = await guard.acheck(req())
        server.stop()
        second = await guard.acheck(req())
        await guard.shutdown()
        return first, second

    first, second = run(main())
    assert first.action == Action.ALLOW and first.policies
    assert second.action == Action.ALLOW and not second.policies


def test_a_unix_socket_url_works_end_to_end(tmp_path: Any) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(
        tmp_path, extra=("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    )
    server.start()

    async def main() -> list[Decision]:
        guard = Guard(simple_policy(), backend=backend_from_uri(f"unix://{socket_path}?db=0"))
        await guard.startup()
        out = [await guard.acheck(req()) for _ in range(6)]
        await guard.shutdown()
        return out

    try:
        decisions = run(main())
    finally:
        server.stop()
    assert [d.action for d in decisions] == [Action.ALLOW] * 5 + [Action.THROTTLE]
