"""Bans and refusals outlive eviction: a client cannot get a banned or refused identity's
row pushed out of the bounded key table with a flood of fresh identities (random API keys,
unique IPv6 /64s) and come back to a clean slate.

Attacks over real HTTP (uvicorn + httpx), with the memory backend and with Redis in
synced mode (a real redis-server); the bound of the held rows on the guard directly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    Action,
    Enforcement,
    Guard,
    Policy,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.backends.redis.synced import SyncedRedisBackend
from abuseguard.engine import layout as L
from abuseguard.engine.held import HeldRows
from abuseguard.testing import ManualClock
from abuseguard.testing import serve as serve_app
from tests.conftest import RedisServer

# Only the client class scores: a headless browser is banned on its first request, an
# official SDK is never refused by the ladder.
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36"
)
SDK = "OpenAI/Python 1.40.0"
BAN_SECONDS = 600.0
_prefixes = itertools.count()


def ban_policy(max_identities: int, **kw: Any) -> Policy:
    kw.setdefault("bucket", TokenBucket("100/second", burst=100))
    return Policy(
        # A headless browser alone bans: `client` is made a strong signal for this test.
        scoring=Scoring(bias=-4.0, weights={"client": 10.0}, weak_signals=()),
        enforcement=Enforcement(
            ladder=((0.9, Action.BLOCK),),
            ban_at="block",
            ban_seconds=BAN_SECONDS,
            reveal_reasons=True,  # is_ban reads "banned" from the refusal body
        ),
        network=None,
        max_identities=max_identities,
        unverified_keys=None,  # the flood's fresh keys stand for clients the app accepted
        **kw,
    )


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def guarded_app(policy: Policy, **kw: Any) -> tuple[AbuseGuard, AbuseGuard]:
    """The app to serve (the middleware around a Starlette app) and the middleware."""
    middleware = AbuseGuard(Starlette(routes=[Route("/", ok)]), policy, **kw)
    return middleware, middleware


@contextmanager
def http(app: Any) -> Iterator[httpx.Client]:
    # The first server of a session may load or compile the Numba kernels at start-up.
    with serve_app(app, timeout=90.0) as url, httpx.Client(base_url=url, timeout=30.0) as client:
        yield client


def get(client: httpx.Client, ua: str, **headers: str) -> httpx.Response:
    return client.get("/", headers={"user-agent": ua, **headers})


def flood(
    client: httpx.Client,
    n: int,
    headers_of: Callable[[int], dict[str, str]],
    tick: Callable[[], Any],
) -> None:
    """``n`` fresh identities, one request each, all served; ``tick`` moves the clock a
    little between requests, so that the waiting client is the least recently seen."""
    for i in range(n):
        tick()
        response = get(client, SDK, **headers_of(i))
        assert response.status_code == 200, (i, response.status_code, response.text)


def is_ban(response: httpx.Response) -> bool:
    return response.status_code == 403 and "banned" in response.text


# -- memory backend, over HTTP --------------------------------------------------------------


@pytest.mark.parametrize(("max_identities", "clients"), [(1000, 5000), (16, 400)])
def test_a_banned_key_stays_banned_through_a_flood_of_unique_keys(
    max_identities: int, clients: int
) -> None:
    clock = ManualClock()
    app, middleware = guarded_app(ban_policy(max_identities), clock=clock)
    with http(app) as client:
        first = get(client, HEADLESS, **{"x-api-key": "sk-target"})
        assert first.status_code == 403  # the ladder's block, which bans
        assert is_ban(get(client, SDK, **{"x-api-key": "sk-target"}))
        flood(
            client, clients, lambda i: {"x-api-key": f"sk-fresh-{i}"}, lambda: clock.advance(0.001)
        )
        table = middleware.guard.engine.tables[L.KIND_KEY]
        assert table.evictions >= clients - max_identities
        # Behaving now does not help: the identity is banned until the ban ends.
        for _ in range(3):
            assert is_ban(get(client, SDK, **{"x-api-key": "sk-target"}))
        clock.advance(BAN_SECONDS)
        assert get(client, SDK, **{"x-api-key": "sk-target"}).status_code == 200


def test_a_ban_outlives_a_flood_of_identities_that_are_refused_too() -> None:
    """Every fresh key spends its one token and is refused, so every row of the table
    refuses and eviction has to push refusing rows out: they are held, up to the bound,
    where the refusals give way and the ban stays."""
    clock = ManualClock()
    policy = ban_policy(16, bucket=TokenBucket("1/hour", burst=1))
    app, middleware = guarded_app(policy, clock=clock)
    key = {"x-api-key": "sk-target"}
    with http(app) as client:
        assert get(client, HEADLESS, **key).status_code == 403
        for i in range(300):
            clock.advance(0.001)
            fresh = {"x-api-key": f"sk-fresh-{i}"}
            assert [get(client, SDK, **fresh).status_code for _ in range(2)] == [200, 429]
        assert is_ban(get(client, SDK, **key))
        held = middleware.guard.engine.key_table.held
        assert held.dropped > 0  # the bound was reached
        clock.advance(BAN_SECONDS)
        assert get(client, SDK, **key).status_code == 200


def test_a_banned_ipv6_client_stays_banned_through_a_flood_of_unique_prefixes() -> None:
    clock = ManualClock()
    app, middleware = guarded_app(ban_policy(64), clock=clock)
    target = {"x-forwarded-for": "2001:db8:ffff:1::7"}
    with http(app) as client:
        assert get(client, HEADLESS, **target).status_code == 403
        flood(
            client,
            1000,
            lambda i: {"x-forwarded-for": f"2001:db8:{i // 65536:x}:{i % 65536:x}::1"},
            lambda: clock.advance(0.001),
        )
        assert middleware.guard.engine.tables[L.KIND_KEY].evictions >= 900
        assert is_ban(get(client, SDK, **target))
        clock.advance(BAN_SECONDS)
        assert get(client, SDK, **target).status_code == 200


def test_a_long_refusal_is_not_reset_to_a_full_bucket_by_eviction() -> None:
    """A key that spent its burst and was told to come back in an hour does not get a
    fresh bucket by pushing its row out."""
    clock = ManualClock()
    policy = Policy(
        bucket=TokenBucket("1/hour", burst=3),
        scoring=None,
        network=None,
        max_identities=32,
        unverified_keys=None,  # the flood's fresh keys stand for clients the app accepted
    )
    app, middleware = guarded_app(policy, clock=clock)
    key = {"x-api-key": "sk-target"}
    with http(app) as client:
        codes = [get(client, SDK, **key).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        flood(client, 500, lambda i: {"x-api-key": f"sk-fresh-{i}"}, lambda: clock.advance(0.01))
        assert middleware.guard.engine.tables[L.KIND_KEY].evictions >= 400
        refused = get(client, SDK, **key)
        assert refused.status_code == 429
        assert 0 < int(refused.headers["retry-after"]) <= 3600
        clock.advance(3600)
        assert [get(client, SDK, **key).status_code for _ in range(2)] == [200, 429]


# -- the bound -------------------------------------------------------------------------------


def test_held_rows_are_bounded_and_give_up_refusals_before_bans() -> None:
    """Every row of a tiny table refuses; the rows pushed out are held up to the bound,
    and past it the held refusals make room before the held bans do."""
    policy = ban_policy(16, bucket=TokenBucket("1/hour", burst=1))
    guard = Guard(policy)
    table = guard.engine.tables[L.KIND_KEY]
    held = table.held
    ts = 1000.0
    banned = [f"banned-{i}" for i in range(held.capacity // 2)]
    for key in banned:
        ts += 0.01
        assert guard.check(RequestInfo(ip="192.0.2.1", key=key, ua=HEADLESS, ts=ts)).action == (
            Action.BLOCK
        )
    # Many more refused keys than the held rows can take: each spends its one token and
    # is refused for an hour.
    for i in range(held.capacity * 4):
        ts += 0.01
        key = f"refused-{i}"
        guard.check(RequestInfo(ip="192.0.2.1", key=key, ua=SDK, ts=ts))
        refused = guard.check(RequestInfo(ip="192.0.2.1", key=key, ua=SDK, ts=ts))
        assert refused.reasons == ("rate",)
        assert len(held) <= held.capacity
    assert len(held) == held.capacity
    assert held.dropped > 0
    for key in banned:
        decision = guard.check(RequestInfo(ip="192.0.2.1", key=key, ua=SDK, ts=ts + 1))
        assert decision.reasons == ("banned",), key


def held_row(banned_until: float = 0.0, wait_until: float = 0.0) -> np.ndarray:
    row = np.zeros(L.KEY_WIDTH)
    row[L.F_COUNT] = 1.0
    row[L.F_BANNED_UNTIL] = banned_until
    row[L.F_WAIT_UNTIL] = wait_until
    return row


def test_at_the_bound_an_ended_hold_goes_first_then_refusals_then_bans() -> None:
    held = HeldRows(3, L.KEY_WIDTH)
    held.hold("ban", held_row(banned_until=100.0), now=0.0)
    held.hold("long", held_row(wait_until=50.0), now=0.0)
    held.hold("short", held_row(wait_until=10.0), now=0.0)
    held.hold("new-1", held_row(wait_until=90.0), now=20.0)  # "short" ended: it goes
    assert set(held.index) == {"ban", "long", "new-1"} and held.dropped == 0
    held.hold("new-2", held_row(wait_until=95.0), now=20.0)  # the refusal ending first
    assert set(held.index) == {"ban", "new-1", "new-2"} and held.dropped == 1
    held.hold("ban-2", held_row(banned_until=200.0), now=20.0)
    held.hold("ban-3", held_row(banned_until=300.0), now=20.0)
    assert set(held.index) == {"ban", "ban-2", "ban-3"} and held.dropped == 3
    held.hold("ban-4", held_row(banned_until=400.0), now=20.0)  # the ban ending first
    assert set(held.index) == {"ban-2", "ban-3", "ban-4"} and held.dropped == 4
    held.hold("ban-5", held_row(banned_until=500.0), now=250.0)  # "ban-2" ended
    assert set(held.index) == {"ban-3", "ban-4", "ban-5"} and held.dropped == 4
    into = np.zeros(L.KEY_WIDTH)
    assert held.restore("ban-4", into) and into[L.F_BANNED_UNTIL] == 400.0
    assert not held.restore("ban-4", into) and len(held) == 2


# -- Redis, synced mode ------------------------------------------------------------------------


def synced_backend(url: str, **kw: Any) -> SyncedRedisBackend:
    kw.setdefault("prefix", f"be{os.getpid()}x{next(_prefixes)}")
    kw.setdefault("budget", 0.5)
    kw.setdefault("sync_interval", 0.005)
    kw.setdefault("workers", 1)
    return SyncedRedisBackend(url, **kw)


@pytest.mark.redis
def test_synced_a_banned_key_stays_banned_through_a_flood_over_http(
    redis_server: RedisServer,
) -> None:
    """The ban holds on the very next request after the flood, not after a re-sync."""
    app, middleware = guarded_app(ban_policy(64), backend=synced_backend(redis_server.url))
    key = {"x-api-key": "sk-target"}
    with http(app) as client:
        assert get(client, HEADLESS, **key).status_code == 403
        flood(client, 1000, lambda i: {"x-api-key": f"sk-fresh-{i}"}, lambda: None)
        assert middleware.guard.engine.tables[L.KIND_KEY].evictions >= 900
        after = [get(client, SDK, **key) for _ in range(20)]
        assert [r.status_code for r in after] == [403] * 20
        assert all(is_ban(r) for r in after)


@pytest.mark.redis
def test_synced_a_ban_learned_from_redis_for_an_evicted_row_is_kept(
    redis_server: RedisServer,
) -> None:
    """Worker A bans a key; worker B had seen the key, but its row was pushed out before
    B's sync brought the ban back: B still refuses the key at once."""
    name = f"bl{os.getpid()}x{next(_prefixes)}"
    policy = ban_policy(16)

    async def main() -> tuple[Any, ...]:
        a = Guard(policy, backend=synced_backend(redis_server.url, prefix=name))
        b = Guard(
            policy,
            backend=synced_backend(redis_server.url, prefix=name, share_window=120.0),
        )
        for g in (a, b):
            await g.startup()
        seen_on_b = b.check(RequestInfo(ip="192.0.2.1", key="sk-target", ua=SDK))
        banned_on_a = a.check(RequestInfo(ip="192.0.2.1", key="sk-target", ua=HEADLESS))
        backend_a = a.backend
        assert isinstance(backend_a, SyncedRedisBackend) and backend_a.syncer is not None
        await backend_a.syncer.flush(everything=True)  # the ban is in Redis now
        for i in range(200):
            b.check(RequestInfo(ip="192.0.2.1", key=f"sk-fresh-{i}", ua=SDK))
        evicted = b.engine.tables[L.KIND_KEY].find(banned_on_a.identity) is None
        backend_b = b.backend
        assert isinstance(backend_b, SyncedRedisBackend) and backend_b.syncer is not None
        await backend_b.syncer.flush(everything=True)  # B learns the ban, without a row
        await asyncio.sleep(0)
        after = b.check(RequestInfo(ip="192.0.2.1", key="sk-target", ua=SDK))
        for g in (a, b):
            await g.shutdown()
        return seen_on_b, banned_on_a, evicted, after

    seen_on_b, banned_on_a, evicted, after = asyncio.run(main())
    assert seen_on_b.action == Action.ALLOW
    assert banned_on_a.action == Action.BLOCK
    assert evicted
    assert after.reasons == ("banned",) and after.action == Action.BLOCK
    assert after.retry_after is not None and 0 < after.retry_after <= BAN_SECONDS
