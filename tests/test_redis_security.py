"""Issue 13, the Redis parts, against real redis-server processes: what one client can
write to Redis, a flood under ``maxmemory`` with ``noeviction``, the fail-open fallback
over a whole outage (one share, one warning), fail-closed recovery once Redis answers, and
the synced mode's bound under its worst schedule (burst, idle, burst across the workers).

No timing assertions: counts and bounds; recovery is polled with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import redis

from abuseguard import Action, Decision, Guard, Policy, RequestInfo, TokenBucket
from abuseguard.backends.redis import UNAVAILABLE
from abuseguard.engine.layout import A_EST, SK_IPS
from abuseguard.policy import FailMode
from tests.conftest import RedisServer
from tests.test_redis import backend, req, run, simple_policy

pytestmark = pytest.mark.redis


def one_shot(i: int) -> RequestInfo:
    """Client i of a flood: its own invented API key, its own IPv4 address."""
    return RequestInfo(ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", key=f"sk-flood-{i}")


def flood_policy() -> Policy:
    # The defaults (scoring and network limits on) with a bucket slow enough that every
    # client's bucket key is still in Redis when the flood ends: its real footprint.
    # Unverified keys off: the flood's keys stand for clients the app accepted (invented
    # keys are refused before they write anything; tests/test_unverified_keys.py).
    return Policy(
        bucket=TokenBucket("1/minute", burst=50), max_identities=4096, unverified_keys=None
    )


async def flood(guard: Guard, clients: range) -> list[Decision]:
    """One request per client, 64 at a time (requests of one loop tick share a pipeline)."""
    out: list[Decision] = []
    for start in range(clients.start, clients.stop, 64):
        batch = range(start, min(start + 64, clients.stop))
        out += await asyncio.gather(*(guard.acheck(one_shot(i)) for i in batch))
    return out


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"])


# -- what one client writes to Redis ------------------------------------------------------------


def test_a_one_shot_client_writes_a_bounded_number_of_bytes(tmp_path: Any) -> None:
    """2,000 clients, one request each: Redis grows by its bucket keys only (about 100 B
    a client, plus its network's), not by an hour of sketch keys (about 800 B before)."""
    server = RedisServer(tmp_path)
    server.start()
    clients = 2000

    async def main() -> tuple[int, list[Decision]]:
        guard = Guard(flood_policy(), backend=backend(server.url))
        await guard.startup()
        before = used_memory(server.url)
        decisions = await flood(guard, range(clients))
        grown = used_memory(server.url) - before
        await guard.shutdown()
        return grown, decisions

    try:
        grown, decisions = run(main())
    finally:
        server.stop()
    assert all(d.action is Action.ALLOW and d.policies for d in decisions)
    assert grown / clients <= 400


def test_a_returning_client_gets_the_items_of_its_first_request_too(
    redis_server: RedisServer,
) -> None:
    """The items held at a client's first request go to Redis with its second: an account
    seen from two addresses counts two in the shared sketch, as before the probation."""

    async def main() -> tuple[float, float]:
        b = backend(redis_server.url)
        guard = Guard(flood_policy(), backend=b)
        await guard.startup()
        await guard.acheck(RequestInfo(ip="192.0.2.1", key="sk-roamer"))
        held = len(b._probation.held)
        await guard.acheck(RequestInfo(ip="198.51.100.1", key="sk-roamer"))
        third = await guard.acheck(RequestInfo(ip="203.0.113.1", key="sk-roamer"))
        accounts = guard.engine.accounts
        ips = float(accounts.data[accounts.index[third.identity], A_EST + SK_IPS])
        await guard.shutdown()
        return held, ips

    held, ips = run(main())
    assert held >= 1  # the account and its networks waited for a second sighting
    assert ips >= 2.5  # the first address was counted (the third's answer: the first two)


def test_a_flood_under_maxmemory_answers_no_request_in_fail_mode(tmp_path: Any) -> None:
    """``maxmemory 48mb`` with ``noeviction``, 42 MB of it already used (the rest of the
    dataset; it lets 10,000 clients stand for the issue's 40,000): the flood fits, so
    Redis never answers OOM and no request is answered in a fail mode."""
    server = RedisServer(
        tmp_path, extra=("--maxmemory", "48mb", "--maxmemory-policy", "noeviction")
    )
    server.start()
    clients = 10_000

    async def main() -> tuple[list[Decision], dict[str, Any]]:
        with redis.Redis.from_url(server.url) as client:
            filler = b"x" * (1 << 20)
            i = 0
            while used_memory(server.url) < 42 * (1 << 20):
                client.set(f"filler:{i}", filler)
                i += 1
        b = backend(server.url)
        guard = Guard(flood_policy(), backend=b)
        await guard.startup()
        decisions = await flood(guard, range(clients))
        stats = b.stats()
        await guard.shutdown()
        return decisions, stats

    try:
        decisions, stats = run(main())
    finally:
        server.stop()
    assert stats["failures"] == 0 and stats["breaker_opened"] == 0
    assert all(d.action is Action.ALLOW and UNAVAILABLE not in d.reasons for d in decisions)


# -- an outage ------------------------------------------------------------------------------


def test_an_outage_gives_the_victim_one_fallback_share_and_one_warning(
    tmp_path: Any, caplog: Any
) -> None:
    """Two workers, burst 50 at 1/minute: the victim spends its burst in Redis, then Redis
    stops while the breaker keeps re-opening (short cooldowns). The fallback gives each
    worker 1/2 of the bucket once for the whole outage, whatever the re-opens."""
    server = RedisServer(tmp_path)
    server.start()
    # unverified_keys off: the test never answers the key, it is about the outage
    policy = simple_policy(bucket=TokenBucket("1/minute", burst=50), unverified_keys=None)
    threshold = 1

    async def main() -> tuple[int, int, int]:
        name = f"outage{time.monotonic_ns()}"
        guards = [
            Guard(
                policy,
                backend=backend(
                    server.url,
                    prefix=name,
                    budget=0.2,
                    fallback_workers=2,
                    breaker_threshold=threshold,
                    breaker_cooldown=0.02,
                    breaker_max_cooldown=0.05,
                    deny_cache_seconds=0,  # every victim request reaches the breaker
                ),
            )
            for _ in range(2)
        ]
        for guard in guards:
            await guard.startup()
        spent = [await guards[i % 2].acheck(req(key="victim")) for i in range(50)]
        assert all(d.action is Action.ALLOW for d in spent)
        assert (await guards[0].acheck(req(key="victim"))).action is Action.THROTTLE
        server.stop()
        admitted = 0
        end = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < end:
            decision = await guards[i % 2].acheck(req(key="victim"))
            admitted += decision.action is Action.ALLOW
            i += 1
            if i % 8 == 0:
                await asyncio.sleep(0.005)  # let the breaker's cooldowns pass
        reopened = min(g.backend.stats()["breaker_opened"] for g in guards)
        for guard in guards:
            await guard.shutdown()
        return admitted, reopened, i

    with caplog.at_level(logging.WARNING, logger="abuseguard"):
        admitted, reopened, sent = run(main())
    assert reopened >= 3, "the breaker should have re-opened several times"
    # One share per outage: 25 per worker (rate 1/minute adds nothing in 1.5 s), plus the
    # requests that failed before the circuit opened (breaker_threshold per worker).
    assert sent > 200
    assert admitted <= 50 + 2 * threshold
    warnings = [r for r in caplog.records if "limiting in-process" in r.message]
    assert len(warnings) == 2  # one per worker
    opened = [r for r in caplog.records if "circuit open" in r.message]
    assert len(opened) == 2


def test_fail_closed_recovers_within_seconds_of_redis_answering(tmp_path: Any) -> None:
    """Redis down for 8 s while requests keep coming (the breaker's cooldown grows), then
    back: the guard serves again within a few seconds, not after a 30 s cooldown."""
    server = RedisServer(tmp_path)
    server.start()
    policy = simple_policy(fail_mode=FailMode(open=False), unverified_keys=None)

    async def main() -> tuple[float, Decision]:
        b = backend(server.url, budget=0.2, breaker_threshold=1, breaker_cooldown=0.25)
        guard = Guard(policy, backend=b)
        await guard.startup()
        assert (await guard.acheck(req())).action is Action.ALLOW
        server.stop()
        end = time.monotonic() + 8.0
        while time.monotonic() < end:
            assert (await guard.acheck(req())).reasons == (UNAVAILABLE,)
            await asyncio.sleep(0.05)
        server.start()
        back = time.monotonic()
        decision = await guard.acheck(req())
        while decision.reasons == (UNAVAILABLE,) and time.monotonic() < back + 20.0:
            await asyncio.sleep(0.05)
            decision = await guard.acheck(req())
        waited = time.monotonic() - back
        await guard.shutdown()
        return waited, decision

    try:
        waited, decision = run(main())
    finally:
        server.stop()
    assert decision.action is Action.ALLOW and decision.policies
    assert waited < 4.0


# -- synced mode: burst, idle, burst ------------------------------------------------------------


def test_synced_burst_idle_burst_stays_within_the_stated_bound(redis_server: RedisServer) -> None:
    """Four workers that all know the client; a burst spread over them (no sync can run
    meanwhile), an idle time long enough for every local bucket to refill (shorter than
    the share window), the same again twice. Each burst gets at most b + W·c from the
    fleet (before: W·b, every worker refilled a whole burst), and the whole run stays
    within b + r·t + W·(r·τ + c): a worker's local refill stops at its share of what the
    shared bucket refilled."""
    from tests.test_redis_synced import BUDGET, policy, shutdown, synced_once_more, workers

    n, rate, burst, interval = 4, 20, 30, 0.005

    async def main() -> tuple[list[int], list[float], float]:
        guards = await workers(redis_server.url, n, policy(f"{rate}/second", burst))
        start = time.monotonic()
        admitted = [0]
        spans = [0.0]
        for _ in range(2):  # every worker syncs the client twice: it knows who shares it
            for guard in guards:
                admitted[0] += (await guard.acheck(req())).action is Action.ALLOW
            await synced_once_more(guards)
        spans[0] = time.monotonic() - start
        for _ in range(3):
            count = 0
            began = time.monotonic()
            for i in range(4 * burst):  # no await that suspends: no sync runs meanwhile
                count += (await guards[i % n].acheck(req())).action is Action.ALLOW
            admitted.append(count)
            spans.append(time.monotonic() - began)
            await synced_once_more(guards)
            await asyncio.sleep(2.0)  # > burst / rate: every local bucket is full again
        elapsed = time.monotonic() - start
        await shutdown(guards)
        return admitted, spans, elapsed

    admitted, spans, elapsed = run(main())
    tau = interval + BUDGET

    def stated(seconds: float) -> float:
        return burst + rate * seconds + n * (rate * tau + 1)

    assert sum(admitted) <= stated(elapsed), (admitted, elapsed)
    # Over the span of each burst alone (the bound holds over any span): about one burst,
    # not one per worker.
    for count, span in zip(admitted[1:], spans[1:], strict=True):
        assert count <= stated(span), (admitted, spans)
        assert count <= burst + n, (admitted, spans)
