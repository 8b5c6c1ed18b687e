"""A slow body must not hold the decision (issue 13, item 8).

With content scoring on, a request that would be refused whatever its body says (over its
bucket, out of quota, banned, on a deny list) is refused before its body is read, and
costs nothing; a request that could be served gets its body read for at most
``Scoring.content_read_timeout`` seconds, then is decided without the content and the app
still receives every byte. The attacks run over real uvicorn with a raw socket that
trickles the body; each test sends only part of the body before it reads the answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    Concurrency,
    ConfigError,
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
from abuseguard.backends.memory import APP_WIDE, quota_counter
from abuseguard.engine import layout as L
from abuseguard.testing import ManualClock
from abuseguard.testing import serve as serve_app
from tests.conftest import RedisServer

BODY = json.dumps(
    {"messages": [{"role": "user", "content": "Summarise the attached report, please. " * 60}]}
).encode()
HALF = len(BODY) // 2
ANSWER_TIMEOUT = 10.0  # the old code never answers before the body ends: bounded, not timed


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


HOLDING = threading.Event()  # a /hold request is inside the app
LET_GO = threading.Event()  # and may finish


async def hold(request: Request) -> PlainTextResponse:
    HOLDING.set()
    for _ in range(int(ANSWER_TIMEOUT / 0.01)):
        if LET_GO.is_set():
            break
        await asyncio.sleep(0.01)
    return PlainTextResponse("held")


def make_app() -> Starlette:
    return Starlette(
        routes=[Route("/echo", echo, methods=["POST"]), Route("/", home), Route("/hold", hold)]
    )


class Observed:
    """What the guard decided (info, decision), and a count of finished HTTP calls, read
    from the test's thread while uvicorn runs the guard in its own."""

    def __init__(self) -> None:
        self.decisions: list[tuple[RequestInfo, Decision]] = []
        self.decided = threading.Event()
        self.finished = threading.Semaphore(0)

    def __call__(self, info: RequestInfo, decision: Decision) -> None:
        self.decisions.append((info, decision))
        self.decided.set()

    def wait_finished(self, calls: int = 1) -> None:
        for _ in range(calls):
            assert self.finished.acquire(timeout=ANSWER_TIMEOUT), "the request never finished"


def guarded(policy: Policy, backend: Any = None) -> tuple[Any, AbuseGuard, Observed]:
    """The echo app behind AbuseGuard, wrapped so that the test knows when a call ended."""
    observed = Observed()
    middleware = AbuseGuard(make_app(), policy=policy, backend=backend, observers=[observed])

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        try:
            await middleware(scope, receive, send)
        finally:
            if scope["type"] == "http":
                observed.finished.release()

    return outer, middleware, observed


@contextmanager
def serve(app: Any) -> Iterator[str]:
    # The first server of a session may load or compile the Numba kernels at start-up.
    with serve_app(app, timeout=90.0) as base:
        yield base


def open_post(
    base: str, path: str = "/echo", headers: dict[str, str] | None = None
) -> socket.socket:
    """A raw connection that sent a POST's head announcing BODY, and none of the body."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=ANSWER_TIMEOUT)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {url.hostname}",
        "Content-Type: application/json",
        f"Content-Length: {len(BODY)}",
        "User-Agent: python-httpx/0.28.1",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except TimeoutError:
        pytest.fail("no answer while the body was still on its way")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    return int(lines[0].split()[1]), headers, body


def refused_half_way(
    base: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """Send half of BODY, then read the answer (the other half is never sent)."""
    with open_post(base, headers=headers) as sock:
        sock.sendall(BODY[:HALF])
        status, response_headers, body = read_response(sock)
    return status, response_headers, json.loads(body)


def content_policy(**parts: Any) -> Policy:
    """Content scoring on (the default Scoring), no network policy unless given."""
    budget = parts.pop("content_read_timeout", None)
    scoring = Scoring() if budget is None else Scoring(content_read_timeout=budget)
    return Policy(network=parts.pop("network", None), scoring=scoring, **parts)


def key_row(guard: Guard, identity: str = "i:127.0.0.1") -> Any:
    return guard.engine.tables[L.KIND_KEY].data[guard.engine.tables[L.KIND_KEY].index[identity]]


# -- over a limit: refused before the body, at no cost -----------------------------------------


def test_over_limit_client_trickling_its_body_gets_429_at_once_and_pays_nothing() -> None:
    app, middleware, observed = guarded(content_policy(bucket=TokenBucket("1/minute", burst=1)))
    with serve(app) as base:
        assert httpx.post(base + "/echo", content=BODY).status_code == 200
        observed.wait_finished()
        state = middleware.guard.engine.state.copy()
        status, headers, problem = refused_half_way(base)
        observed.wait_finished()
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit"].startswith('"default";r=0;t=')
    assert problem["reasons"] == ["rate"]
    # A refused request costs nothing: no token, no arrival, no signal moved.
    assert np.array_equal(middleware.guard.engine.state, state, equal_nan=True)
    info, decision = observed.decisions[-1]
    assert decision.action.value == "throttle" and info.body is None


def test_exhausted_quota_refuses_a_trickling_body_at_once_without_a_hit() -> None:
    policy = content_policy(quotas=(Quota("1/hour", name="hourly"),))
    app, middleware, observed = guarded(policy)
    with serve(app) as base:
        assert httpx.post(base + "/echo", content=BODY).status_code == 200
        observed.wait_finished()
        status, headers, problem = refused_half_way(base)
        observed.wait_finished()
    assert status == 429
    assert problem["reasons"] == ["quota"]
    assert '"hourly";r=0;t=' in headers["ratelimit"]
    backend = middleware.guard.backend
    item = backend._item("1/hour")  # type: ignore[attr-defined]
    counter = quota_counter(APP_WIDE, policy.quotas[0], "i:127.0.0.1")
    stats = backend._limiter("fixed-window").get_window_stats(item, counter)  # type: ignore[attr-defined]
    assert stats.remaining == 0  # one hit: the refused request was not counted


def test_full_concurrency_refuses_a_trickling_body_at_once() -> None:
    app, middleware, observed = guarded(content_policy(concurrency=Concurrency(limit=1)))
    HOLDING.clear()
    LET_GO.clear()
    with serve(app) as base:
        holder = threading.Thread(target=httpx.get, args=(base + "/hold",), daemon=True)
        holder.start()
        try:
            assert HOLDING.wait(ANSWER_TIMEOUT)
            status, headers, problem = refused_half_way(base)
        finally:
            LET_GO.set()
            holder.join(ANSWER_TIMEOUT)
        observed.wait_finished(2)
    assert status == 429
    assert problem["reasons"] == ["concurrency"]
    assert headers["retry-after"] == "1"
    assert middleware.guard.backend.inflight == {}  # type: ignore[attr-defined]


def test_banned_client_trickling_its_body_is_refused_at_once() -> None:
    policy = content_policy(
        bucket=TokenBucket("10/second"),
        enforcement=Enforcement(ban_at="block", ban_seconds=600.0),
    )
    app, middleware, observed = guarded(policy)
    with serve(app) as base:
        assert httpx.post(base + "/echo", content=BODY).status_code == 200
        observed.wait_finished()
        guard = middleware.guard
        # A ban as the ladder (or another worker's sync) leaves it in the key row.
        key_row(guard)[L.F_BANNED_UNTIL] = guard.clock() + 600.0
        state = guard.engine.state.copy()
        status, _, problem = refused_half_way(base)
        observed.wait_finished()
    assert status == 403
    assert problem["reasons"] == []  # risk reasons stay server-side (reveal_reasons=False)
    _, decision = observed.decisions[-1]
    assert decision.reasons == ("banned",)
    assert decision.retry_after is not None and decision.retry_after > 500
    assert np.array_equal(middleware.guard.engine.state, state, equal_nan=True)


def test_deny_listed_network_is_refused_before_its_body() -> None:
    policy = content_policy(network=NetworkPolicy(deny_cidrs=("127.0.0.0/8",)))
    app, middleware, observed = guarded(policy)
    with serve(app) as base:
        status, _, problem = refused_half_way(base)
        observed.wait_finished()
    assert status == 403
    assert problem["reasons"] == []  # risk reasons stay server-side (reveal_reasons=False)
    assert observed.decisions[-1][1].reasons == ("deny_list",)
    assert len(middleware.guard.engine.tables[L.KIND_KEY]) == 0  # no row: nothing recorded


# -- within its limits: the body is read with a time budget ------------------------------------


def test_slow_body_within_limits_is_decided_after_the_budget_and_served_whole() -> None:
    policy = content_policy(bucket=TokenBucket("10/second"), content_read_timeout=0.2)
    app, _, observed = guarded(policy)
    with serve(app) as base, open_post(base) as sock:
        sock.sendall(BODY[:HALF])
        # Decided while half the body is still missing, once the budget ran out.
        assert observed.decided.wait(ANSWER_TIMEOUT), "no decision before the body ended"
        for start in range(HALF, len(BODY), 200):
            sock.sendall(BODY[start : start + 200])
        status, _, body = read_response(sock)
        observed.wait_finished()
    assert status == 200
    assert json.loads(body) == {"sha256": hashlib.sha256(BODY).hexdigest(), "size": len(BODY)}
    info, decision = observed.decisions[0]
    assert decision.action.value == "allow"
    assert info.body is None  # decided without the content: no content signal for it


def test_client_gone_while_the_body_is_read_is_neither_decided_nor_charged() -> None:
    app, middleware, observed = guarded(content_policy(bucket=TokenBucket("1/minute", burst=5)))
    with serve(app) as base:
        assert httpx.post(base + "/echo", content=BODY).status_code == 200
        observed.wait_finished()
        state = middleware.guard.engine.state.copy()
        with open_post(base) as sock:
            sock.sendall(BODY[:HALF])
        observed.wait_finished()
    assert len(observed.decisions) == 1
    assert np.array_equal(middleware.guard.engine.state, state, equal_nan=True)


# -- the pre-check itself ----------------------------------------------------------------------


def _snapshot(guard: Guard) -> tuple[Any, ...]:
    backend: Any = guard.backend
    storage = backend._storage
    return (
        guard.engine.state.copy(),
        dict(storage.counters),
        dict(storage.expirations),
        dict(backend.inflight),
        guard.request_time.now,
    )


def test_precheck_of_a_request_that_is_served_changes_no_state() -> None:
    clock = ManualClock()
    policy = Policy(
        bucket=TokenBucket("1/second", burst=3),
        quotas=(Quota("5/hour"),),
        network=NetworkPolicy(per_ip=TokenBucket("5/second")),
    )
    seen: list[Decision] = []
    guard = Guard(policy, clock=clock, observers=[lambda info, d: seen.append(d)])
    post = RequestInfo(ip="198.51.100.7", key="acct-1", method="POST", path="/v1/chat")
    assert guard.check(post).action.value == "allow"
    clock.advance(0.25)
    before = _snapshot(guard)
    assert guard.precheck(post) is None  # could be served: the body decides
    after = _snapshot(guard)
    assert np.array_equal(before[0], after[0], equal_nan=True) and before[1:] == after[1:]
    assert len(seen) == 1  # a pre-check that refuses nothing tells no observer
    post.body = BODY
    assert guard.check(post).action.value == "allow"
    decided = [d.remaining for d in seen]
    assert decided[1] is not None and decided[0] is not None
    assert abs(decided[1] - (decided[0] + 0.25 - 1.0)) < 1e-9  # charged once, by check


def test_precheck_refusal_matches_the_full_decision() -> None:
    clock = ManualClock()
    guard = Guard(Policy(bucket=TokenBucket("1/second", burst=2), scoring=None), clock=clock)
    post = RequestInfo(ip="198.51.100.7", method="POST")
    for _ in range(2):
        assert guard.check(post).action.value == "allow"
    clock.advance(0.5)
    early = guard.precheck(post)
    assert early is not None
    full = guard.check(post)
    assert (early.action, early.reasons, early.retry_after, early.remaining) == (
        full.action,
        full.reasons,
        full.retry_after,
        full.remaining,
    )
    assert early.policies == full.policies


@pytest.mark.parametrize(
    "policy",
    [
        Policy(bucket=TokenBucket("1/minute", burst=1, shadow=True), scoring=None),
        Policy(bucket=TokenBucket("1/minute", burst=1), scoring=None, shadow=True),
    ],
    ids=["shadow bucket", "shadow policy"],
)
def test_precheck_refuses_nothing_the_full_decision_serves(policy: Policy) -> None:
    guard = Guard(policy, clock=ManualClock())
    post = RequestInfo(ip="198.51.100.7", method="POST")
    assert guard.check(post).action.value == "allow"
    assert guard.precheck(post) is None
    over = guard.check(post)
    assert over.reasons == ("rate",) and over.served


def test_precheck_leaves_a_callable_cost_alone() -> None:
    calls: list[RequestInfo] = []

    def cost(info: RequestInfo) -> float:
        calls.append(info)
        return len(info.body or b"") / 100

    guard = Guard(Policy(bucket=TokenBucket("1/second", burst=2, cost=cost)), clock=ManualClock())
    assert guard.precheck(RequestInfo(ip="198.51.100.7", method="POST")) is None
    assert calls == []  # the body it may price is not there yet


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_content_read_timeout_is_validated(bad: Any) -> None:
    with pytest.raises(ConfigError, match="content_read_timeout"):
        Scoring(content_read_timeout=bad)


# -- Redis -------------------------------------------------------------------------------------


def test_inline_redis_refuses_a_trickling_client_it_refused_before(
    redis_server: RedisServer,
) -> None:
    from abuseguard.backends.redis import RedisBackend

    backend = RedisBackend(redis_server.url, prefix="slowbody-inline")
    app, _, observed = guarded(content_policy(bucket=TokenBucket("1/minute", burst=1)), backend)
    with serve(app) as base, httpx.Client(base_url=base) as http:
        assert http.get("/").status_code == 200
        assert http.get("/").status_code == 429  # Redis refused: the deny cache knows
        observed.wait_finished(2)
        round_trips = backend.stats()["round_trips"]
        status, headers, problem = refused_half_way(base)
        observed.wait_finished()
        assert backend.stats()["round_trips"] == round_trips  # decided locally
    assert status == 429
    assert problem["reasons"] == ["rate"]
    assert int(headers["retry-after"]) >= 1


def test_synced_redis_refuses_a_trickling_client_over_its_bucket(
    redis_server: RedisServer,
) -> None:
    from abuseguard.backends.redis.synced import SyncedRedisBackend

    backend = SyncedRedisBackend(redis_server.url, prefix="slowbody-synced", workers=1)
    app, _, observed = guarded(content_policy(bucket=TokenBucket("1/minute", burst=1)), backend)
    with serve(app) as base:
        assert httpx.post(base + "/echo", content=BODY).status_code == 200
        observed.wait_finished()
        status, _, problem = refused_half_way(base)
        observed.wait_finished()
    assert status == 429
    assert problem["reasons"] == ["rate"]
    assert backend.syncer is not None
    assert len(observed.decisions) == 2


def test_inline_precheck_reads_only_what_this_worker_holds(redis_server: RedisServer) -> None:
    from abuseguard.backends.redis import RedisBackend

    policy = Policy(
        bucket=TokenBucket("1/minute", burst=5),
        quotas=(Quota("1/hour", name="hourly"),),
        network=None,
    )
    post = RequestInfo(ip="198.51.100.7", key="acct-1", method="POST", path="/v1/chat")

    async def main() -> tuple[Decision | None, bool, Decision, Decision | None, bool]:
        backend = RedisBackend(redis_server.url, prefix="slowbody-precheck", budget=0.5)
        guard = Guard(policy, backend=backend)
        await guard.startup()
        try:
            assert (await guard.acheck(post)).action.value == "allow"
            before = (guard.engine.state.copy(), backend.stats(), dict(backend.deny.quotas))
            unknown = guard.precheck(post)  # nothing refused yet: Redis decides, with the body
            after = (guard.engine.state.copy(), backend.stats(), dict(backend.deny.quotas))
            unchanged = (
                np.array_equal(before[0], after[0], equal_nan=True) and before[1:] == after[1:]
            )
            refused = await guard.acheck(post)  # Redis: the quota is spent (noted locally)
            trips = backend.stats()["round_trips"]
            early = guard.precheck(post)
            local = backend.stats()["round_trips"] == trips
            return unknown, unchanged, refused, early, local
        finally:
            await guard.shutdown()

    unknown, unchanged, refused, early, local = asyncio.run(main())
    assert unknown is None and unchanged
    assert refused.reasons == ("quota",)
    assert early is not None and local
    assert (early.action, early.reasons) == (refused.action, refused.reasons)
    assert early.retry_after is not None and refused.retry_after is not None
    assert abs(early.retry_after - refused.retry_after) < 5.0
