"""The Redis backend's synced mode against a real redis-server: URI options, several
workers sharing one bucket within the documented overshoot bound, convergence after a
sync, bans, reconciliation, and a Redis that dies, pauses and comes back while serving.

No timing assertions: counts and bounds, and polling with a deadline for convergence.
The bound (see abuseguard.backends.redis.synced): over t seconds W workers admit at most
b + r·t + (W-1)·b + b/2 + W·(r·τ + c), τ = sync_interval + one sync's round trip (at most
``budget`` here), c = one request's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
import redis

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
from abuseguard.backends.redis import RedisBackend
from abuseguard.backends.redis.synced import SyncedRedisBackend
from abuseguard.engine import layout as L
from abuseguard.errors import ConfigError
from tests.conftest import RedisClusterServers, RedisServer
from tests.test_redis import req, run

pytestmark = pytest.mark.redis

T = TypeVar("T")
_prefixes = itertools.count()
BUDGET = 0.5  # a loaded 2-core machine: only the fault tests use a tight one


def prefix() -> str:
    return f"s{os.getpid()}x{next(_prefixes)}"


def synced(url: str, **kwargs: Any) -> SyncedRedisBackend:
    kwargs.setdefault("prefix", prefix())
    kwargs.setdefault("budget", BUDGET)
    kwargs.setdefault("sync_interval", 0.005)
    return SyncedRedisBackend(url, **kwargs)


def policy(rate: str = "1/hour", burst: int = 30, **kw: Any) -> Policy:
    kw.setdefault("scoring", None)
    kw.setdefault("network", None)
    kw.setdefault("max_identities", 256)
    # These limits are per key: keys are never answered here, so none is ever accepted.
    kw.setdefault("unverified_keys", None)
    return Policy(bucket=TokenBucket(rate, burst=burst), **kw)


async def workers(url: str, n: int, pol: Policy, **kwargs: Any) -> list[Guard]:
    name = prefix()
    guards = [Guard(pol, backend=synced(url, prefix=name, workers=n, **kwargs)) for _ in range(n)]
    for guard in guards:
        await guard.startup()
    return guards


async def shutdown(guards: list[Guard]) -> None:
    for guard in guards:
        await guard.shutdown()


def stats(guard: Guard) -> dict[str, Any]:
    backend = guard.backend
    assert isinstance(backend, SyncedRedisBackend)
    return backend.stats()


async def until(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    """Poll ``condition`` (yielding to the sync tasks) until it holds or the deadline."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


async def synced_once_more(guards: list[Guard]) -> None:
    """Wait until every worker completed a sync that started after this call."""
    marks = [stats(g)["syncs"] for g in guards]
    await until(lambda: all(stats(g)["syncs"] >= m + 2 for g, m in zip(guards, marks, strict=True)))


def bound(burst: float, rate: float, seconds: float, n: int, interval: float) -> float:
    """The documented most a fleet of n workers admits in ``seconds`` (requests cost 1)."""
    tau = interval + BUDGET
    return burst + rate * seconds + (n - 1) * burst + burst / 2 + n * (rate * tau + 1)


# -- configuration ------------------------------------------------------------------------


def test_the_uri_selects_the_mode() -> None:
    b = backend_from_uri("redis://127.0.0.1:1/0?mode=synced&sync_interval=0.005&workers=4")
    assert isinstance(b, SyncedRedisBackend) and b.mode == "synced"
    assert b.sync_interval == 0.005 and b.workers == 4 and not b.cluster
    inline = backend_from_uri("redis://127.0.0.1:1/0")
    assert type(inline) is RedisBackend and inline.mode == "inline"
    assert type(backend_from_uri("redis://127.0.0.1:1/0?mode=inline")) is RedisBackend
    for uri, cluster in (
        ("rediss://127.0.0.1:1/0?mode=synced&ssl_cert_reqs=none", False),
        ("unix:///tmp/redis.sock?db=0&mode=synced", False),
        ("redis+cluster://127.0.0.1:1?mode=synced&sync_max_pending=100", True),
    ):
        b = backend_from_uri(uri)
        assert isinstance(b, SyncedRedisBackend) and b.cluster is cluster, uri
        assert "mode" not in b.url, b.url
    assert SyncedRedisBackend().sync_interval == 0.01


def test_the_share_window_defaults_to_five_seconds_and_can_be_set() -> None:
    assert SyncedRedisBackend().share_window == 5.0
    # Never shorter than 20 intervals, so that a busy worker is always counted.
    assert SyncedRedisBackend(sync_interval=0.5).share_window == 10.0
    b = backend_from_uri("redis://127.0.0.1:1/0?mode=synced&share_window=1.5")
    assert isinstance(b, SyncedRedisBackend) and b.share_window == 1.5
    assert b.syncer is None  # attached by a Guard, which sets the quiet clients' wait:
    guard = Guard(policy(), backend=b)
    assert b.syncer is not None and b.syncer.defer == 1.5
    assert guard.backend is b


@pytest.mark.parametrize(
    ("uri", "field"),
    [
        ("redis://h/0?mode=eventual", "RedisBackend.mode"),
        ("redis://h/0?mode=synced&sync_interval=0", "RedisBackend.sync_interval"),
        ("redis://h/0?mode=synced&sync_interval=soon", "RedisBackend.sync_interval"),
        ("redis://h/0?mode=synced&sync_interval=nan", "RedisBackend.sync_interval"),
        ("redis://h/0?mode=synced&workers=0", "RedisBackend.workers"),
        ("redis://h/0?mode=synced&workers=two", "RedisBackend.workers"),
        ("redis://h/0?mode=synced&sync_max_pending=0", "RedisBackend.sync_max_pending"),
        ("redis://h/0?workers=2", "RedisBackend.workers"),
        ("redis://h/0?mode=inline&sync_max_pending=9", "RedisBackend.sync_max_pending"),
        ("redis://h/0?mode=synced&budget=-1", "RedisBackend.budget"),
        ("redis://h/0?mode=synced&share_window=0", "RedisBackend.share_window"),
        ("redis://h/0?mode=synced&share_window=-5", "RedisBackend.share_window"),
        ("redis://h/0?mode=synced&share_window=nan", "RedisBackend.share_window"),
        ("redis://h/0?mode=synced&share_window=inf", "RedisBackend.share_window"),
        ("redis://h/0?mode=synced&share_window=later", "RedisBackend.share_window"),
        # Shorter than two intervals: a busy worker could drop out of the sharing count.
        ("redis://h/0?mode=synced&sync_interval=0.5&share_window=0.9", "RedisBackend.share_window"),
        ("redis://h/0?share_window=5", "RedisBackend.share_window"),
    ],
)
def test_bad_synced_options_fail_at_construction_naming_the_field(uri: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_uri(uri)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quotas": (Quota("100/day"),)}, "Policy.quotas"),
        ({"concurrency": Concurrency(2)}, "Policy.concurrency"),
    ],
)
def test_quotas_and_concurrency_need_the_inline_mode(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Guard(policy(**kwargs), backend="redis://127.0.0.1:1/0?mode=synced")
    assert info.value.field == field


def test_a_synced_guard_decides_without_any_redis() -> None:
    async def main() -> list[Decision]:
        guard = Guard(policy(burst=3), backend=synced("redis://127.0.0.1:1/0", budget=0.05))
        await guard.startup()
        decisions = [await asyncio.wait_for(guard.acheck(req()), 5.0) for _ in range(5)]
        await guard.shutdown()
        return decisions

    decisions = run(main())
    assert [d.action for d in decisions] == [Action.ALLOW] * 3 + [Action.THROTTLE] * 2
    assert decisions[-1].reasons == ("rate",) and decisions[-1].retry_after


def test_share_window_of_the_wrong_type_names_the_field() -> None:
    for value in (True, "5", [1]):  # (None is the default)
        with pytest.raises(ConfigError) as info:
            SyncedRedisBackend(share_window=value)  # type: ignore[arg-type]
        assert info.value.field == "RedisBackend.share_window"


def test_guard_check_is_synchronous_in_synced_mode(redis_server: RedisServer) -> None:
    """Synced mode decides in-process: `Guard.check` works outside any event loop and
    inside one, where the first call starts the sync task; what was admitted either way
    reaches Redis."""
    guard = Guard(policy("1/hour", 5), backend=synced(redis_server.url))
    outside = [guard.check(req(key="outside")) for _ in range(6)]
    assert [d.action for d in outside] == [Action.ALLOW] * 5 + [Action.THROTTLE]

    async def main() -> tuple[list[Decision], list[float]]:
        inside = [guard.check(req(key="inside")) for _ in range(3)]  # no startup() first
        await until(lambda: stats(guard)["syncs"] > 0 and stats(guard)["pending"] == 0)
        shared = [shared_tokens(redis_server.url, guard, req(key=k)) for k in ("outside", "inside")]
        await guard.shutdown()
        return inside, shared

    inside, shared = run(main())
    assert [d.action for d in inside] == [Action.ALLOW] * 3
    assert shared == pytest.approx([0.0, 2.0], abs=0.01)


# -- several workers, one bucket ----------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
def test_workers_share_one_bucket_within_the_bound(redis_server: RedisServer, n: int) -> None:
    """A client hammering every worker for about a second gets the shared budget: no
    more than the documented bound, and (the bucket's debt aside) no less."""
    rate, burst, interval = 20.0, 30, 0.005

    async def main() -> tuple[int, float, list[Guard]]:
        guards = await workers(redis_server.url, n, policy("20/second", burst))
        admitted = 0
        start = time.monotonic()
        for i in range(300 * n):
            d = await guards[i % n].acheck(req())
            admitted += d.action == Action.ALLOW
            if i % n == n - 1:
                await asyncio.sleep(0.003)  # the loop runs the sync tasks
        elapsed = time.monotonic() - start
        await shutdown(guards)
        return admitted, elapsed, guards

    admitted, elapsed, guards = run(main())
    assert admitted <= bound(burst, rate, elapsed, n, interval), (admitted, elapsed)
    # The typical case, well inside the bound: every worker syncs the client each interval,
    # so only the local refills between syncs add up (no extra burst).
    assert admitted <= burst + rate * elapsed + n * (rate * (interval + BUDGET) + 1), (
        admitted,
        elapsed,
    )
    # Every admission is charged in Redis, so an overshoot is paid back; what stays unused
    # is at most one request per worker (a share smaller than a cost) and the debt left.
    assert admitted >= burst + rate * elapsed - bound(0, rate, 0, n, interval) - n, (
        admitted,
        elapsed,
    )
    assert all(stats(g)["flushes"] > 0 and stats(g)["dropped"] == 0 for g in guards)


def test_a_burst_spread_over_every_worker_is_one_burst_plus_the_cold_start(
    redis_server: RedisServer,
) -> None:
    """Worst case for the cold start: one worker knows the client, then it bursts on all
    of them at once, before any sync: the known worker spends its share (the whole
    bucket), each other one ``burst / workers``. Then everyone agrees on the debt."""
    n, burst = 4, 40

    async def main() -> tuple[int, int, list[float], float]:
        guards = await workers(redis_server.url, n, policy("1/hour", burst))
        for _ in range(2):  # a first sync, then one that knows nobody else shares it
            assert (await guards[0].acheck(req())).action == Action.ALLOW
            await synced_once_more(guards[:1])
        burst_admitted = 2
        for i in range(4 * burst):  # no await that suspends: no sync runs meanwhile
            d = await guards[i % n].acheck(req())
            burst_admitted += d.action == Action.ALLOW
        later = 0
        for _ in range(3):  # each worker touches the client again, so it syncs it again
            for guard in guards:
                later += (await guard.acheck(req())).action == Action.ALLOW
            await synced_once_more(guards)
        tokens = [local_tokens(g, req()) for g in guards]
        shared = shared_tokens(redis_server.url, guards[0], req())
        await shutdown(guards)
        return burst_admitted, later, tokens, shared

    burst_admitted, later, tokens, shared = run(main())
    assert burst_admitted == burst + (n - 1) * burst // n  # 2 + 38 + 3 * 10
    admitted = burst_admitted + later
    assert admitted <= burst + (n - 1) * burst  # the hard bound (the refill is 1/hour)
    # Redis charged every admission: the shared bucket holds the burst minus all of them,
    # and every worker holds that same debt now.
    assert shared == pytest.approx(burst - admitted, abs=0.05)
    assert tokens == pytest.approx([shared] * n, abs=0.05)


@pytest.mark.parametrize("seed", range(8))
def test_random_traffic_stays_within_the_bound_and_every_admission_is_charged(
    redis_server: RedisServer, seed: int
) -> None:
    """Seeded random traffic over 2-4 workers (one of them favoured), with random pauses:
    the admitted count respects the bound, and once every worker has sent what it holds
    (shutdown), Redis has charged exactly what was admitted."""
    rnd = random.Random(seed)
    n, burst = 2 + seed % 3, 20

    async def main() -> tuple[int, float, float]:
        guards = await workers(redis_server.url, n, policy("1/hour", burst))
        admitted = 0
        start = time.monotonic()
        for _ in range(rnd.randint(50, 300)):
            guard = guards[0] if rnd.random() < 0.3 else guards[rnd.randrange(n)]
            admitted += (await guard.acheck(req())).action == Action.ALLOW
            pause = rnd.random()
            if pause < 0.05:
                await asyncio.sleep(rnd.random() * 0.03)
            elif pause < 0.3:
                await asyncio.sleep(0)
        elapsed = time.monotonic() - start
        await shutdown(guards)  # the last sync sends everything pending
        return admitted, elapsed, shared_tokens(redis_server.url, guards[0], req())

    admitted, elapsed, shared = run(main())
    # Below the burst only by what split shares strand: less than a request per worker.
    assert burst - n < admitted <= bound(burst, 1 / 3600, elapsed, n, 0.005), admitted
    assert shared == pytest.approx(burst - admitted, abs=0.05)


def shared_tokens(url: str, guard: Guard, info: RequestInfo) -> float:
    backend = guard.backend
    assert isinstance(backend, SyncedRedisBackend)
    client = redis.Redis.from_url(url)
    try:
        raw = client.get(backend.keys.of(guard.identity_of(info)[0]).bucket)
    finally:
        client.close()
    return float(raw.split()[0]) if raw is not None else float("inf")


def local_tokens(guard: Guard, info: RequestInfo) -> float:
    table = guard.engine.tables[L.KIND_KEY]
    row = table.find(guard.identity_of(info)[0])
    assert row is not None
    return float(table.data[row, L.F_TOKENS])


def test_workers_converge_on_the_shared_bucket_after_each_sync(redis_server: RedisServer) -> None:
    """Requests alternate between two workers with a sync in between: the fleet admits
    the burst (a split share can strand less than one request's cost), Redis holds what is
    left, and each worker holds half of it."""
    burst = 10

    async def main() -> tuple[int, float, list[float]]:
        guards = await workers(redis_server.url, 2, policy("1/hour", burst))
        admitted = 0
        for i in range(4 * burst):
            admitted += (await guards[i % 2].acheck(req())).action == Action.ALLOW
            await synced_once_more(guards)
        shared = shared_tokens(redis_server.url, guards[0], req())
        tokens = [local_tokens(g, req()) for g in guards]
        await shutdown(guards)
        return admitted, shared, tokens

    admitted, shared, tokens = run(main())
    assert burst - 1 <= admitted <= burst
    assert shared == pytest.approx(burst - admitted, abs=0.01)
    assert tokens == pytest.approx([shared / 2] * 2, abs=0.01)


def test_network_buckets_are_synced_too(redis_server: RedisServer) -> None:
    """Two accounts behind one IP on two workers: the per-IP bucket is shared."""
    net = NetworkPolicy(per_ip=TokenBucket("1/hour", burst=6), nat_fairness=False)
    pol = Policy(
        bucket=TokenBucket("1/hour", burst=100),
        network=net,
        scoring=None,
        max_identities=256,
    )

    async def main() -> tuple[int, float]:
        a, b = await workers(redis_server.url, 2, pol)
        admitted = 0
        for i in range(20):
            guard = (a, b)[i % 2]
            d = await guard.acheck(req(key=f"sk-account-{i % 2}", ip="203.0.113.9"))
            admitted += d.action == Action.ALLOW
            await synced_once_more([a, b])
        backend = a.backend
        assert isinstance(backend, SyncedRedisBackend)
        client = redis.Redis.from_url(redis_server.url)
        raw = client.get(backend.keys.network_base(L.KIND_IP, "203.0.113.9") + ":b")
        client.close()
        assert raw is not None
        await shutdown([a, b])
        return admitted, float(raw.split()[0])

    admitted, shared = run(main())
    assert 5 <= admitted <= 6 + 1  # the IP's burst, give or take a split share
    assert shared == pytest.approx(6 - admitted, abs=0.01)


def test_quiet_clients_go_early_when_half_of_the_pending_room_is_taken(
    redis_server: RedisServer,
) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        (guard,) = await workers(redis_server.url, 1, policy("1/hour", 100), sync_max_pending=16)
        for i in range(12):  # quiet: each uses 1 of 100
            await guard.acheck(req(key=f"quiet-{i}"))
        before = stats(guard)
        await synced_once_more([guard])
        after = stats(guard)
        await shutdown([guard])
        return before, after

    before, after = run(main())
    assert before["pending"] == 12 and before["entries_synced"] == 0
    assert after["entries_synced"] >= 12 - 8 and after["pending"] <= 8
    assert after["dropped"] == 0


def test_fan_in_and_fan_out_sketches_are_shared_when_asked(redis_server: RedisServer) -> None:
    """``shared_sketches=True``: accounts behind one IP, and one account roaming over many
    networks, split over two workers. A worker's items reach Redis with its next sync and
    the shared count comes back with the answer to its next new item."""
    pol = Policy(
        bucket=TokenBucket("100/second", burst=100),
        network=NetworkPolicy(nat_fairness=False),
        max_identities=256,
    )

    async def main() -> tuple[float, float, dict[str, Any]]:
        guards = await workers(redis_server.url, 2, pol, shared_sketches=True)
        for i in range(6):
            await guards[i % 2].acheck(req(key=f"acct-{i}", ip="203.0.113.9", asn=16509))
        for i in range(16):
            await guards[i % 2].acheck(req(key="roamer", ip=f"10.{i}.0.1", asn=1000 + i))
        await synced_once_more(guards)  # both workers' items are in Redis now
        await guards[0].acheck(req(key="acct-6", ip="203.0.113.9", asn=16509))
        await guards[0].acheck(req(key="roamer", ip="10.99.0.1", asn=9999))
        await synced_once_more(guards[:1])
        ips = guards[0].engine.tables[L.KIND_IP]
        fan_in = float(ips.data[ips.index["203.0.113.9"], L.F_SKETCH_EST])
        accounts = guards[0].engine.accounts
        roamer = guards[0].identity_of(req(key="roamer"))[0]
        fan_out = float(accounts.data[accounts.index[roamer], L.A_EST + L.SK_ASNS])
        state = stats(guards[0])
        await shutdown(guards)
        return fan_in, fan_out, state

    fan_in, fan_out, state = run(main())
    assert fan_in >= 6  # worker 0 saw 4 of the 7 accounts itself
    assert fan_out >= 15  # and 9 of the 17 ASNs
    assert state["sketches_synced"] > 0 and state["sketches_dropped"] == 0


def test_sketches_stay_per_worker_by_default(redis_server: RedisServer) -> None:
    async def main() -> tuple[float, dict[str, Any]]:
        guards = await workers(
            redis_server.url,
            2,
            Policy(bucket=TokenBucket("100/second", burst=100), max_identities=256),
        )
        for i in range(6):
            await guards[i % 2].acheck(req(key=f"acct-{i}", ip="203.0.113.9", asn=16509))
        await synced_once_more(guards)
        ips = guards[0].engine.tables[L.KIND_IP]
        fan_in = float(ips.data[ips.index["203.0.113.9"], L.F_SKETCH_EST])
        state = stats(guards[0])
        await shutdown(guards)
        return fan_in, state

    fan_in, state = run(main())
    assert fan_in == pytest.approx(3, abs=0.5)  # what worker 0 saw
    assert state["sketches_synced"] == 0


def test_a_ban_reaches_the_other_workers(redis_server: RedisServer) -> None:
    pol = Policy(
        bucket=TokenBucket("100/second", burst=100),
        network=None,
        # Every client scores high: banned at once (no weak signals: the bias alone may ban).
        scoring=Scoring(bias=2.0, weak_signals=()),
        enforcement=Enforcement(ladder=((0.5, Action.BLOCK),), ban_at="block", ban_seconds=60),
        max_identities=256,
        unverified_keys=None,  # the key is never answered: about the ban, not the key
    )

    async def main() -> tuple[Decision, Decision, Decision]:
        name = prefix()
        a = Guard(pol, backend=synced(redis_server.url, prefix=name))
        b = Guard(
            Policy(**{**pol.__dict__, "scoring": None}),
            backend=synced(redis_server.url, prefix=name),
        )
        for g in (a, b):
            await g.startup()
        banned_here = await a.acheck(req())  # a ban is synced with the next flush
        await synced_once_more([a])
        first_there = await b.acheck(req())  # b does not know yet; a quiet client...
        seen_there = first_there
        deadline = time.monotonic() + 10
        while seen_there.action == Action.ALLOW:  # ...is synced within the share window
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            seen_there = await b.acheck(req())
        await shutdown([a, b])
        return banned_here, first_there, seen_there

    banned_here, first_there, seen_there = run(main())
    assert banned_here.action == Action.BLOCK
    assert first_there.action == Action.ALLOW
    assert seen_there.action == Action.BLOCK and seen_there.reasons == ("banned",)
    assert seen_there.retry_after is not None and 50 < seen_there.retry_after <= 60


def test_inline_and_synced_workers_share_the_same_bucket(redis_server: RedisServer) -> None:
    """An inline worker spends the whole bucket; a synced worker that never saw the client
    admits from its own (stale) view while the client is quiet there, at most half the
    burst and one request, then learns the debt. Every admission is charged in Redis."""
    burst = 6

    async def main() -> tuple[list[Decision], list[Decision], float]:
        name = prefix()
        inline = Guard(policy("1/hour", burst), backend=RedisBackend(redis_server.url, prefix=name))
        sync = Guard(policy("1/hour", burst), backend=synced(redis_server.url, prefix=name))
        for g in (inline, sync):
            await g.startup()
        spent = [await inline.acheck(req()) for _ in range(burst + 1)]
        there: list[Decision] = []
        deadline = time.monotonic() + 10
        while not there or there[-1].action == Action.ALLOW:
            assert time.monotonic() < deadline
            there.append(await sync.acheck(req()))
            await synced_once_more([sync])
        shared = shared_tokens(redis_server.url, sync, req())
        await shutdown([inline, sync])
        return spent, there, shared

    spent, there, shared = run(main())
    assert [d.action for d in spent] == [Action.ALLOW] * burst + [Action.THROTTLE]
    admitted = [d.action for d in there].count(Action.ALLOW)
    assert 1 <= admitted <= burst // 2 + 1
    assert shared == pytest.approx(-admitted, abs=0.01)


def test_a_quiet_client_waits_for_the_share_window(redis_server: RedisServer) -> None:
    """A client far from its limits is not sent with every sync: its consumption reaches
    Redis once its wait reaches ``share_window``, while a client that crossed b/(2W) goes
    with the next sync."""
    window = 1.0

    async def main() -> dict[str, float]:
        guard = Guard(policy("1/hour", 100), backend=synced(redis_server.url, share_window=window))
        await guard.startup()
        quiet, busy = req(key="quiet"), req(key="busy")
        started = time.monotonic()
        await guard.acheck(quiet)  # 1 of 100
        for _ in range(60):  # 60 of 100: past half the burst
            await guard.acheck(busy)
        await synced_once_more([guard])
        await synced_once_more([guard])
        seen: dict[str, float] = {
            "quiet_early": shared_tokens(redis_server.url, guard, quiet),
            "busy_early": shared_tokens(redis_server.url, guard, busy),
            "early_at": time.monotonic() - started,
        }
        await until(lambda: shared_tokens(redis_server.url, guard, quiet) < 100)
        seen["quiet_at"] = time.monotonic() - started
        seen["quiet_late"] = shared_tokens(redis_server.url, guard, quiet)
        await guard.shutdown()
        return seen

    seen = run(main())
    assert seen["busy_early"] == pytest.approx(40.0, abs=0.01)  # sent with the next sync
    if seen["early_at"] < window:  # (a very slow machine may already be past the window)
        assert seen["quiet_early"] == float("inf")  # not in Redis yet: it waits
    assert seen["quiet_late"] == pytest.approx(99.0, abs=0.01)
    assert seen["quiet_at"] >= window  # sent once its wait reached the window, not before


def test_reconciled_cost_is_charged_here_and_in_redis(redis_server: RedisServer) -> None:
    async def main() -> tuple[float, float]:
        (guard,) = await workers(redis_server.url, 1, policy("1/hour", 100))
        info = req()
        decision = await guard.acheck(info)
        guard.complete(info, decision, status=200, cost=41.0)  # 40 more than charged
        local = local_tokens(guard, info)
        # 41 of 100 is a quiet client: synced within the share window.
        await until(lambda: shared_tokens(redis_server.url, guard, info) < 100)
        shared = shared_tokens(redis_server.url, guard, info)
        await shutdown([guard])
        return local, shared

    local, shared = run(main())
    assert local == pytest.approx(59.0, abs=0.01)
    assert shared == pytest.approx(59.0, abs=0.01)


# -- faults --------------------------------------------------------------------------------


def test_redis_killed_and_restarted_while_serving(tmp_path: Any, caplog: Any) -> None:
    """Decisions continue locally (1/W of the bucket per worker), one warning per
    worker, and syncing resumes by itself when Redis is back on the same port."""
    server = RedisServer(tmp_path)
    server.start()
    kw = {"budget": 0.05, "breaker_threshold": 2, "breaker_cooldown": 0.05}

    async def main() -> tuple[list[list[Decision]], list[dict[str, Any]], list[float]]:
        guards = await workers(server.url, 2, policy("1/hour", 40), breaker_max_cooldown=0.2, **kw)
        before = [await g.acheck(req(key=f"k{i}")) for i, g in enumerate(guards)]
        await synced_once_more(guards)
        server.stop()
        during: list[Decision] = []
        deadline = time.monotonic() + 20
        while not all(stats(g)["outage"] for g in guards):
            assert time.monotonic() < deadline, [stats(g) for g in guards]
            for i, g in enumerate(guards):
                during.append(await asyncio.wait_for(g.acheck(req(key=f"k{i}")), 5.0))
            await asyncio.sleep(0.01)
        # In the outage: each worker holds 1/2 of the burst for a new client.
        outage = [await guards[0].acheck(req(key="new")) for _ in range(30)]
        server.start()
        await until(lambda: not any(stats(g)["outage"] for g in guards), 20.0)
        after = []
        for i, g in enumerate(guards):
            after.append(await g.acheck(req(key=f"k{i}")))
        await synced_once_more(guards)
        client = redis.Redis.from_url(server.url)
        backend = guards[0].backend
        assert isinstance(backend, SyncedRedisBackend)
        raw = client.get(backend.keys.of(guards[0].identity_of(req(key="k0"))[0]).bucket)
        client.close()
        state = [stats(g) for g in guards]
        await shutdown(guards)
        return [before, during, outage, after], state, [float(raw.split()[0]) if raw else 40.0]

    with caplog.at_level(logging.WARNING, logger="abuseguard"):
        try:
            (before, during, outage, after), state, (shared,) = run(main())
        finally:
            server.stop()
    assert all(d.action == Action.ALLOW for d in before + during + after)
    assert [d.action for d in outage].count(Action.ALLOW) == 20  # 40 / 2 workers
    assert all(s["outages"] == 1 and s["flushes"] > 0 for s in state), state
    down = [r for r in caplog.records if "is not answering" in r.message]
    back = [r for r in caplog.records if "answers again" in r.message]
    assert len(down) == 2 and len(back) == 2, [r.message for r in caplog.records]
    assert "password" not in caplog.text
    assert shared < 40.0  # syncing resumed: the restarted (empty) Redis has the bucket again


def test_a_paused_redis_never_holds_a_request_and_pending_stays_bounded(tmp_path: Any) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def main() -> tuple[list[Decision], dict[str, Any], dict[str, Any]]:
        (guard,) = await workers(
            server.url,
            1,
            policy("1/hour", 5),
            budget=0.05,
            breaker_threshold=1000,  # stay in the "blip" state: entries are put back
            sync_max_pending=8,
        )
        await guard.acheck(req())
        await synced_once_more([guard])
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            decisions = [
                await asyncio.wait_for(guard.acheck(req(key=f"k{i}")), 5.0) for i in range(50)
            ]
            failed = stats(guard)["failed_syncs"]
            await until(lambda: stats(guard)["failed_syncs"] >= failed + 2)
            paused = stats(guard)
        finally:
            server.process.send_signal(signal.SIGCONT)
        await until(lambda: stats(guard)["failed_syncs"] == 0 and stats(guard)["pending"] == 0)
        resumed = stats(guard)
        await shutdown([guard])
        return decisions, paused, resumed

    try:
        decisions, paused, resumed = run(main())
    finally:
        server.stop()
    assert all(d.action == Action.ALLOW for d in decisions)
    assert paused["pending"] <= 8 and paused["dropped"] >= 50 - 8
    assert resumed["outage"] is False and resumed["outages"] == 0


def test_synced_mode_on_a_redis_cluster(redis_cluster: RedisClusterServers) -> None:
    """One script call per identity (its keys share a slot): the account's bucket and the
    IP's bucket, on different nodes, are both shared."""
    pol = Policy(
        bucket=TokenBucket("1/hour", burst=8),
        network=NetworkPolicy(per_ip=TokenBucket("1/hour", burst=5), nat_fairness=False),
        scoring=None,
        max_identities=256,
    )
    uri = redis_cluster.url + "?mode=synced&sync_interval=0.005&budget=0.5&workers=2"

    async def main() -> tuple[list[Action], list[Action], dict[str, Any]]:
        name = prefix()
        guards = [Guard(pol, backend=backend_from_uri(uri + f"&prefix={name}")) for _ in range(2)]
        for guard in guards:
            await guard.startup()
        account = []
        for i in range(12):  # one account, two workers: its own bucket (8) limits
            d = await guards[i % 2].acheck(req(key="sk-one", ip=f"198.51.100.{i + 1}"))
            account.append(d.action)
            await synced_once_more(guards)
        network = []
        for i in range(10):  # many accounts behind one IP: the IP's bucket (5) limits
            d = await guards[i % 2].acheck(req(key=f"sk-many-{i}", ip="203.0.113.50"))
            network.append(d.action)
            await synced_once_more(guards)
        state = stats(guards[0])
        await shutdown(guards)
        return account, network, state

    account, network, state = run(main())
    assert 7 <= account.count(Action.ALLOW) <= 8
    assert 4 <= network.count(Action.ALLOW) <= 5
    assert state["outages"] == 0 and state["entries_synced"] > 0


def test_three_uvicorn_servers_share_one_bucket_over_http(redis_server: RedisServer) -> None:
    """Real uvicorn servers (each its own event loop and backend) and a real HTTP client:
    one API key's requests spread over them are admitted within the bound, and after the
    servers stop (their last sync) Redis has charged exactly what they admitted."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from abuseguard import AbuseGuard
    from abuseguard.testing import serve

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    n, burst = 3, 30
    uri = (
        redis_server.url
        + f"?mode=synced&sync_interval=0.005&workers={n}&budget={BUDGET}&prefix={prefix()}"
    )
    apps = [
        AbuseGuard(Starlette(routes=[Route("/", ok)]), policy=policy("1/hour", burst), backend=uri)
        for _ in range(n)
    ]
    statuses: list[int] = []
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(serve(app)) for app in apps]
        with httpx.Client(timeout=10.0) as client:
            for i in range(3 * burst):
                response = client.get(urls[i % n] + "/", headers={"x-api-key": "sk-e2e"})
                statuses.append(response.status_code)
    elapsed = time.monotonic() - start
    guard = apps[0].guard
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert burst - n < admitted <= bound(burst, 1 / 3600, elapsed, n, 0.005), statuses
    info = RequestInfo(ip="127.0.0.1", key="sk-e2e")
    assert shared_tokens(redis_server.url, guard, info) == pytest.approx(burst - admitted, abs=0.05)
