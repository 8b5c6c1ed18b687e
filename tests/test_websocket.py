"""WebSocket limits: real uvicorn, the `websockets` client library, a manual clock."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from abuseguard import (
    AbuseGuard,
    ConfigError,
    Decision,
    NetworkPolicy,
    Policy,
    RequestInfo,
    TokenBucket,
    current_decision,
)
from abuseguard.policy import WebSocketPolicy
from abuseguard.testing import ManualClock, reset_guards, serve
from abuseguard.websocket import Bucket, ConnectionTable

CLOSES: list[int] = []


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect as exc:
        CLOSES.append(exc.code)


async def show_decision(websocket: WebSocket) -> None:
    await websocket.accept()
    decision = current_decision(websocket)
    await websocket.send_text("none" if decision is None else decision.action.value)
    await websocket.close()


async def home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_app(
    ws: WebSocketPolicy | None, observers: list[Any] | None = None, **policy: Any
) -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/ws", echo), WebSocketRoute("/decision", show_decision),
                            Route("/", home)])  # fmt: skip
    policy.setdefault("scoring", None)
    policy.setdefault("network", None)
    app.add_middleware(AbuseGuard, policy=Policy(websocket=ws, **policy), observers=observers or [])
    return app


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def ws_url(base: str, path: str = "/ws") -> str:
    return base.replace("http://", "ws://") + path


@pytest.fixture
def clock() -> ManualClock:
    CLOSES.clear()
    return ManualClock()


@pytest.fixture
def limited(clock: ManualClock) -> Iterator[tuple[str, list[tuple[RequestInfo, Decision]]]]:
    seen: list[tuple[RequestInfo, Decision]] = []
    policy = WebSocketPolicy(
        connect=TokenBucket("6/minute", burst=2, name="ws-connect"),
        messages=TokenBucket("1/second", burst=3, name="ws-messages"),
    )
    app = make_app(policy, observers=[lambda info, d: seen.append((info, d))])
    reset_guards(app, clock)
    with serve(app) as base:
        yield base, seen


def test_messages_over_the_limit_close_with_1008(limited: Any, clock: ManualClock) -> None:
    base, seen = limited
    with connect(ws_url(base)) as ws:
        for i in range(3):
            ws.send(f"m{i}")
            assert ws.recv(timeout=5) == f"m{i}"
        ws.send("one too many")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    wait_until(lambda: CLOSES == [1008])  # the app got websocket.disconnect with the code
    refusals = [d for _, d in seen if d.reasons == ("rate",)]
    assert refusals and refusals[-1].policies[0].name == "ws-messages"


def test_message_bucket_refills_on_the_clock(limited: Any, clock: ManualClock) -> None:
    base, _ = limited
    with connect(ws_url(base)) as ws:
        for i in range(3):
            ws.send(f"m{i}")
            ws.recv(timeout=5)
        clock.advance(2.0)  # two more tokens at 1/second
        for i in range(2):
            ws.send(f"again{i}")
            assert ws.recv(timeout=5) == f"again{i}"


def test_connection_attempts_over_the_limit_get_429(limited: Any, clock: ManualClock) -> None:
    base, seen = limited
    for _ in range(2):
        with connect(ws_url(base)) as ws:
            ws.send("hi")
            ws.recv(timeout=5)
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(base))
    response = refused.value.response
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["RateLimit-Policy"] == '"ws-connect";q=2;w=20'
    assert json.loads(response.body or b"{}")["violated_policies"] == ["ws-connect"]
    assert any(d.policies and d.policies[0].name == "ws-connect" for _, d in seen)
    clock.advance(10.0)  # 6/minute: one token every 10 s
    with connect(ws_url(base)) as ws:
        ws.send("back")
        assert ws.recv(timeout=5) == "back"


def test_connect_limit_is_per_api_key(limited: Any) -> None:
    base, _ = limited
    for key in ("sk-a", "sk-a", "sk-b", "sk-b"):
        with connect(ws_url(base), additional_headers={"Authorization": f"Bearer {key}"}):
            pass
    with pytest.raises(InvalidStatus):
        connect(ws_url(base), additional_headers={"Authorization": "Bearer sk-a"})


def test_accept_carries_ratelimit_headers_of_the_handshake(clock: ManualClock) -> None:
    app = make_app(WebSocketPolicy(), bucket=TokenBucket("5/second", burst=10))
    reset_guards(app, clock)
    with serve(app) as base, connect(ws_url(base)) as ws:
        assert ws.response is not None
        assert ws.response.headers["RateLimit-Policy"] == '"default";q=10;w=2'
        assert ws.response.headers["RateLimit"].startswith('"default";r=9')


def test_the_app_sees_the_handshake_decision(clock: ManualClock) -> None:
    app = make_app(WebSocketPolicy())
    reset_guards(app, clock)
    with serve(app) as base, connect(ws_url(base, "/decision")) as ws:
        assert ws.recv(timeout=5) == "allow"


def test_handshake_goes_through_the_guard_bucket(clock: ManualClock) -> None:
    app = make_app(WebSocketPolicy(connect=None), bucket=TokenBucket("1/minute", burst=1))
    reset_guards(app, clock)
    with serve(app) as base:
        with connect(ws_url(base)):
            pass
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(base))
        assert refused.value.response.status_code == 429


def test_denied_network_gets_403(clock: ManualClock) -> None:
    app = make_app(WebSocketPolicy(), network=NetworkPolicy(deny_cidrs=["127.0.0.0/8"]))
    reset_guards(app, clock)
    with serve(app) as base, pytest.raises(InvalidStatus) as refused:
        connect(ws_url(base))
    assert refused.value.response.status_code == 403


def test_max_connections_per_identity(clock: ManualClock) -> None:
    app = make_app(WebSocketPolicy(connect=None, max_connections=1))
    reset_guards(app, clock)
    with serve(app) as base:
        with connect(ws_url(base)) as first:
            with pytest.raises(InvalidStatus) as refused:
                connect(ws_url(base))
            assert refused.value.response.status_code == 429
            first.send("still here")
            assert first.recv(timeout=5) == "still here"
        with connect(ws_url(base)) as again:  # the slot was released on close
            again.send("x")
            assert again.recv(timeout=5) == "x"


def test_oversized_message_closes_with_1009(clock: ManualClock) -> None:
    app = make_app(WebSocketPolicy(max_message_bytes=16))
    reset_guards(app, clock)
    with serve(app) as base, connect(ws_url(base)) as ws:
        ws.send("é" * 8)  # 16 bytes: allowed
        assert ws.recv(timeout=5) == "é" * 8
        ws.send("é" * 9)  # 18 bytes in 9 characters
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_shadow_reports_without_enforcing(clock: ManualClock) -> None:
    seen: list[Decision] = []
    policy = WebSocketPolicy(
        messages=TokenBucket("1/minute", burst=1, name="ws-messages"), shadow=True
    )
    app = make_app(policy, observers=[lambda info, d: seen.append(d)])
    reset_guards(app, clock)
    with serve(app) as base, connect(ws_url(base)) as ws:
        for i in range(4):
            ws.send(str(i))
            assert ws.recv(timeout=5) == str(i)
    shadowed = [d for d in seen if d.reasons == ("rate",)]
    assert len(shadowed) == 3 and all(d.shadow for d in shadowed)


def test_without_a_websocket_policy_scopes_pass_through(clock: ManualClock) -> None:
    app = make_app(None)
    reset_guards(app, clock)
    with serve(app) as base, connect(ws_url(base)) as ws:
        for i in range(100):
            ws.send(str(i))
            assert ws.recv(timeout=5) == str(i)


def test_exempt_paths_skip_websocket_limits(clock: ManualClock) -> None:
    app = make_app(
        WebSocketPolicy(connect=TokenBucket("1/minute", burst=1, name="c")), exempt_paths=("/ws",)
    )
    reset_guards(app, clock)
    with serve(app) as base:
        for _ in range(3):
            with connect(ws_url(base)):
                pass


# -- the ASGI contract without a server: no denial-response extension ---------------------


def _asgi_attempt(app: Any, scope_extra: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [],
        "client": ("10.0.0.1", 5000),
        "server": ("test", 80),
        "scheme": "ws",
        "subprotocols": [],
        "asgi": {"version": "3.0"},
        **scope_extra,
    }

    async def attempt() -> None:
        await asyncio.wait_for(app(scope, receive, send), timeout=5)

    asyncio.run(attempt())
    return sent


def test_without_denial_extension_refusal_is_close_1013(clock: ManualClock) -> None:
    policy = WebSocketPolicy(connect=TokenBucket("1/minute", burst=1, name="c"))
    mw = AbuseGuard(
        make_app(None), policy=Policy(websocket=policy, scoring=None, network=None), clock=clock
    )
    mw.app = _RejectingApp()
    _asgi_attempt(mw, {})
    sent = _asgi_attempt(mw, {})
    assert sent == [{"type": "websocket.close", "code": 1013}]


def test_with_denial_extension_refusal_is_http_429(clock: ManualClock) -> None:
    policy = WebSocketPolicy(connect=TokenBucket("1/minute", burst=1, name="c"))
    mw = AbuseGuard(
        _RejectingApp(), policy=Policy(websocket=policy, scoring=None, network=None), clock=clock
    )
    ext = {"extensions": {"websocket.http.response": {}}}
    _asgi_attempt(mw, ext)
    sent = _asgi_attempt(mw, ext)
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert sent[0]["status"] == 429
    assert json.loads(sent[1]["body"])["status"] == 429


def test_client_gone_before_connect_is_quiet(clock: ManualClock) -> None:
    policy = WebSocketPolicy(connect=TokenBucket("1/minute", burst=1, name="c"))
    mw = AbuseGuard(
        _RejectingApp(), policy=Policy(websocket=policy, scoring=None, network=None), clock=clock
    )
    _asgi_attempt(mw, {})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("10.0.0.1", 1)}
    asyncio.run(mw(scope, receive, send))
    assert sent == []


class _RejectingApp:
    """An app that closes every connection at once (what it does is beside the point)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1000})


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_connections": 0}, "WebSocketPolicy.max_connections"),
        ({"max_connections": True}, "WebSocketPolicy.max_connections"),
        ({"max_message_bytes": -5}, "WebSocketPolicy.max_message_bytes"),
        ({"per": "account"}, "WebSocketPolicy.per"),
        ({"message_close_code": 1006}, "WebSocketPolicy.message_close_code"),
        ({"message_close_code": "1008"}, "WebSocketPolicy.message_close_code"),
        ({"connect": "10/minute"}, "WebSocketPolicy.connect"),
        (
            {"messages": TokenBucket("1/second", cost=lambda info: 2.0)},
            "WebSocketPolicy.messages.cost",
        ),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        WebSocketPolicy(**kwargs)
    assert error.value.field == field


def test_policy_rejects_a_non_websocket_policy() -> None:
    with pytest.raises(ConfigError) as error:
        Policy(websocket={"connect": None})  # type: ignore[arg-type]
    assert error.value.field == "Policy.websocket"


def test_custom_close_codes_are_accepted() -> None:
    assert WebSocketPolicy(message_close_code=1013).message_close_code == 1013
    assert WebSocketPolicy(message_close_code=4000).message_close_code == 4000


# -- the bucket and the table -------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(0.5, 50),
    rate=st.floats(0.01, 20),
    steps=st.lists(st.tuples(st.floats(0, 5), st.floats(0, 3)), max_size=60),
)
def test_bucket_never_admits_more_than_burst_plus_refill(
    capacity: float, rate: float, steps: list[tuple[float, float]]
) -> None:
    bucket = Bucket(capacity, rate, 0.0)
    now = admitted = 0.0
    for dt, cost in steps:
        now += dt
        ok, wait = bucket.take(cost, now)
        assert 0.0 <= bucket.tokens <= capacity + 1e-9
        if ok:
            admitted += cost
            assert wait == 0.0
        else:
            assert wait > 0.0
            assert bucket.tokens < cost
    assert admitted <= capacity + rate * now + 1e-6


def test_bucket_ignores_a_clock_going_back() -> None:
    bucket = Bucket(2.0, 1.0, 100.0)
    assert bucket.take(2.0, 100.0)[0]
    assert not bucket.take(1.0, 50.0)[0]  # no refill from a backwards step
    assert bucket.take(1.0, 101.0)[0]


def test_connection_table_is_bounded() -> None:
    table = ConnectionTable(capacity=16)
    spec = TokenBucket("1/second", name="c")
    for i in range(1000):
        table.bucket(f"i:10.0.{i // 256}.{i % 256}", spec, 0.0)
    assert len(table.buckets) == 16
    table.enter("a")
    table.enter("a")
    table.leave("a")
    assert table.open == {"a": 1}
    table.leave("a")
    table.leave("a")  # one leave too many does not go negative
    assert table.open == {}
