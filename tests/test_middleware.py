"""The middleware end to end: real uvicorn, real HTTP (httpx), and raw ASGI for bad input."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Concurrency, Policy, Scoring, TokenBucket, current_decision
from abuseguard.testing import serve as serve_app


def serve(app: Any) -> Any:
    # The first server of a session may load or compile the Numba kernels at start-up.
    return serve_app(app, timeout=90.0)


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def test_readme_snippet_starlette() -> None:
    # The README example, verbatim apart from the route list.
    from starlette.applications import Starlette

    from abuseguard import AbuseGuard, Policy, TokenBucket

    app = Starlette(routes=[Route("/", homepage)])
    app.add_middleware(AbuseGuard, policy=Policy(bucket=TokenBucket(rate="5/second", burst=10)))
    _burst_then_refill(app)


def test_readme_snippet_fastapi() -> None:
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"hello": "world"}

    app.add_middleware(AbuseGuard, policy=Policy(bucket=TokenBucket(rate="5/second", burst=10)))
    _burst_then_refill(app)


def _burst_then_refill(app: Any) -> None:
    with serve(app) as url, httpx.Client(base_url=url) as client:
        started = time.monotonic()
        responses = []
        for _ in range(40):
            responses.append(client.get("/"))
            if responses[-1].status_code == 429:
                break
        elapsed = time.monotonic() - started
        served = [r for r in responses if r.status_code == 200]
        # 10 immediate requests pass; on a slow machine the bucket refills 5/s meanwhile.
        assert 10 <= len(served) <= 10 + math.ceil(elapsed * 5)
        first = responses[0]
        assert first.headers["ratelimit-policy"] == '"default";q=10;w=2'
        assert first.headers["ratelimit"].startswith('"default";r=9;t=')
        assert "retry-after" not in first.headers
        over = responses[-1]
        assert over.status_code == 429
        assert int(over.headers["retry-after"]) >= 1
        assert over.headers["ratelimit"].startswith('"default";r=0;t=')
        assert over.headers["content-type"] == "application/problem+json"
        problem = over.json()
        assert problem["status"] == 429 and problem["violated_policies"] == ["default"]
        assert problem["reasons"] == ["rate"]
        time.sleep(0.45)  # 5 tokens/s: two tokens back
        assert client.get("/").status_code == 200


def test_concurrent_burst_admits_exactly_the_burst() -> None:
    app = Starlette(routes=[Route("/", homepage)])
    app.add_middleware(AbuseGuard, policy=Policy(bucket=TokenBucket("1/minute", burst=7)))
    with serve(app) as url:

        async def fire() -> list[int]:
            async with httpx.AsyncClient(
                base_url=url, limits=httpx.Limits(max_connections=40)
            ) as c:
                results = await asyncio.gather(*(c.get("/") for _ in range(40)))
            return [r.status_code for r in results]

        codes = asyncio.run(fire())
    assert codes.count(200) == 7 and codes.count(429) == 33


async def slow_stream(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        for i in range(5):
            await asyncio.sleep(0.05)
            yield f"chunk{i}\n".encode()

    return StreamingResponse(chunks())


def test_concurrency_limit_holds_streams_and_releases_on_completion_and_disconnect() -> None:
    app = Starlette(routes=[Route("/stream", slow_stream)])
    app.add_middleware(AbuseGuard, policy=Policy(bucket=None, concurrency=Concurrency(1)))
    with serve(app) as url:

        async def run() -> tuple[int, int, int, int]:
            async with httpx.AsyncClient(base_url=url) as c:
                async with c.stream("GET", "/stream") as first:
                    busy = await c.get("/stream")
                    body = b"".join([chunk async for chunk in first.aiter_bytes()])
                    assert body.count(b"chunk") == 5
                after = await c.get("/stream")
                # Disconnect mid-stream: the slot must come back.
                async with c.stream("GET", "/stream") as partial:
                    async for _ in partial.aiter_bytes():
                        break
                # The slot comes back once the server notices the disconnect (the stream's
                # next send fails): poll for it rather than guess how long that takes.
                for _ in range(100):
                    final = await c.get("/stream")
                    if final.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                return first.status_code, busy.status_code, after.status_code, final.status_code

        assert asyncio.run(run()) == (200, 429, 200, 200)


async def echo_body(request: Request) -> JSONResponse:
    body = await request.body()
    decision = current_decision(request)
    return JSONResponse(
        {"length": len(body), "action": decision.action.value if decision else None}
    )


def test_reading_the_body_for_content_scoring_loses_no_byte() -> None:
    app = Starlette(routes=[Route("/v1/chat", echo_body, methods=["POST"])])
    app.add_middleware(
        AbuseGuard, policy=Policy(scoring=Scoring(content=True, content_max_bytes=1024))
    )
    payload = json.dumps({"messages": [{"role": "user", "content": "x" * 50_000}]}).encode()

    def chunked() -> Any:
        for i in range(0, len(payload), 4096):
            yield payload[i : i + 4096]

    with serve(app) as url, httpx.Client(base_url=url) as client:
        response = client.post("/v1/chat", content=chunked())
        assert response.status_code == 200
        assert response.json() == {"length": len(payload), "action": "allow"}
        small = client.post("/v1/chat", content=b'{"prompt": "hi"}')
        assert small.json()["length"] == 16


def test_cost_header_reconciles_the_bucket() -> None:
    async def expensive(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"x-tokens-used": "40"})

    app = Starlette(routes=[Route("/", expensive)])
    app.add_middleware(
        AbuseGuard,
        policy=Policy(
            bucket=TokenBucket("1/minute", burst=100, cost_header="x-tokens-used"), scoring=None
        ),
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/").headers["ratelimit"].startswith('"default";r=99;')
        assert client.get("/").headers["ratelimit"].startswith('"default";r=59;')
        assert client.get("/").headers["ratelimit"].startswith('"default";r=19;')
        assert client.get("/").status_code == 429


# --- raw ASGI: bad input never becomes a 500 -----------------------------------------------


async def call(
    app: Any, scope: dict[str, Any], body: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    messages: list[dict[str, Any]] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], dict(start.get("headers", [])), payload


def make_scope(
    headers: list[tuple[bytes, bytes]], client: Any = ("192.0.2.10", 5555)
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("127.0.0.1", 8000),
    }
    if client is not ...:
        scope["client"] = client
    return scope


def guarded_app(**policy: Any) -> AbuseGuard:
    app = Starlette(routes=[Route("/", homepage)])
    return AbuseGuard(app, policy=Policy(**policy))


@pytest.mark.parametrize(
    "headers",
    [
        [(b"user-agent", b"\xff\xfe\x80 broken \x00 bytes")],
        [(b"authorization", b"Bearer \xff\xfe")],
        [(b"x-forwarded-for", b"\xff, 1.2.3.4, garbage")],
        [(b"forwarded", b'for="[not-ipv6]";proto=http, for=')],
        [(b"user-agent", b"A" * 100_000), (b"x-api-key", b"k" * 100_000)],
        [(b"X-Mixed-Case", b"v"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
        [],
    ],
)
def test_malformed_headers_are_served_not_500(headers: list[tuple[bytes, bytes]]) -> None:
    status, _, body = asyncio.run(call(guarded_app(), make_scope(headers)))
    assert status == 200 and body == b"hello"


def test_request_info_reads_headers_as_the_core_sees_them() -> None:
    mw = guarded_app(max_header_bytes=64)
    info = mw.request_info(
        make_scope(
            [
                (b"user-agent", b"curl/8.5.0"),
                (b"accept", b"text/html"),
                (b"accept", b"application/json"),  # repeated: joined, in order
                (b"x-api-key", b"k" * 65),  # over max_header_bytes: as if absent
                (b"x-note", b"caf\xe9"),  # not UTF-8: latin-1 never fails
            ]
        )
    )
    assert dict(info.headers) == {
        "user-agent": "curl/8.5.0",
        "accept": "text/html, application/json",
        "x-note": "caf\u00e9",
    }
    assert info.ua == "curl/8.5.0" and info.key is None and info.ip == "192.0.2.10"


def test_request_info_takes_any_iterable_of_header_pairs() -> None:
    mw = guarded_app()
    pairs = [(b"authorization", b"Bearer sk-1"), (b"user-agent", b"ua")]
    for headers in (pairs, tuple(pairs), [list(p) for p in pairs], iter(pairs)):
        scope = make_scope([])
        scope["headers"] = headers
        info = mw.request_info(scope)
        assert info.key == "sk-1" and info.ua == "ua", headers


@pytest.mark.parametrize("client", [..., None, ("not-an-ip", 1), ("fe80::1%eth0", 1), ("", 0)])
def test_missing_or_odd_peer_addresses_are_one_identity(client: Any) -> None:
    app = guarded_app(bucket=TokenBucket("1/minute", burst=2), scoring=None)
    statuses = [asyncio.run(call(app, make_scope([], client)))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored() -> None:
    app = guarded_app(bucket=TokenBucket("1/minute", burst=1), scoring=None)
    spoofs = [make_scope([(b"x-forwarded-for", f"6.6.6.{i}".encode())]) for i in range(3)]
    assert [asyncio.run(call(app, s))[0] for s in spoofs] == [200, 429, 429]


def test_trusted_proxy_forwarded_for_separates_clients() -> None:
    app = guarded_app(
        bucket=TokenBucket("1/minute", burst=1), scoring=None, trusted_proxies=["10.0.0.0/8"]
    )
    scopes = [
        make_scope([(b"x-forwarded-for", f"198.51.100.{i}".encode())], ("10.0.0.2", 1))
        for i in range(3)
    ]
    assert [asyncio.run(call(app, s))[0] for s in scopes] == [200, 200, 200]


def test_guard_failure_fails_open_or_closed_without_500() -> None:
    def broken_key(info: Any) -> str:
        raise RuntimeError("bug in user key function")

    inner = Starlette(routes=[Route("/", homepage)])
    open_app = AbuseGuard(inner, policy=Policy(key_func=broken_key))
    closed_app = AbuseGuard(inner, policy=Policy(key_func=broken_key), fail_open=False)
    assert asyncio.run(call(open_app, make_scope([])))[0] == 200
    status, headers, _ = asyncio.run(call(closed_app, make_scope([])))
    assert status == 503 and headers[b"retry-after"] == b"1"


def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})

    guard = AbuseGuard(app, policy=Policy())

    async def main() -> None:
        queue: list[dict[str, Any]] = [{"type": "lifespan.startup"}]

        async def receive() -> dict[str, Any]:
            return queue.pop(0)

        async def send(message: dict[str, Any]) -> None:
            seen.append(message["type"])

        await guard({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await guard({"type": "custom"}, receive, send)

    asyncio.run(main())
    assert seen == ["lifespan", "lifespan.startup.complete", "custom"]
    assert guard.started
