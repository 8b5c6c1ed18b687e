"""Identity a client cannot choose (issue 13, and issue 14 item 9).

Each attack is reproduced over real HTTP (uvicorn + httpx): duplicate credential headers,
a client's own ``Forwarded`` behind an X-Forwarded-For proxy, an oversized
X-Forwarded-For, HEAD against a route cost, the cost map of a wrapped app (``app =
AbuseGuard(app)``) and exempt paths matched by prefix. Unit and property tests cover the
parsing edge cases; the exempt rule is also checked against real Redis (inline and synced).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, ConfigError, Guard, Policy, TokenBucket, current_decision
from abuseguard.exempt import ExemptPaths
from abuseguard.identity import client_ip, rightmost_list_items
from abuseguard.request import RequestInfo
from abuseguard.testing import serve as serve_app
from tests.conftest import RedisServer

BURST = 5
ATTEMPTS = 12


def serve(app: Any) -> Any:
    # uvicorn must not rewrite the peer from X-Forwarded-For itself: the guard's own
    # trusted-proxy walk is under test. The first server may compile the Numba kernels.
    return serve_app(app, timeout=90.0, proxy_headers=False)


def policy(**overrides: Any) -> Policy:
    settings_: dict[str, Any] = {
        "bucket": TokenBucket("1/hour", burst=BURST),
        "scoring": None,
        "network": None,
    }
    settings_.update(overrides)
    return Policy(**settings_)


async def whoami(request: Request) -> JSONResponse:
    decision = current_decision(request)
    return JSONResponse(
        {
            "authorization": request.headers.get("authorization"),
            "x-api-key": request.headers.get("x-api-key"),
            "identity": decision.identity if decision is not None else None,
        }
    )


class Handler:
    """A route handler (``endpoint``) that counts how often it ran."""

    def __init__(self) -> None:
        self.runs = 0

    async def endpoint(self, request: Request) -> PlainTextResponse:
        self.runs += 1
        return PlainTextResponse("expensive answer")


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


# --- 1. a duplicate credential header cannot forge a fresh identity ------------------------


@pytest.mark.parametrize(
    ("header", "real", "forged"),
    [
        ("authorization", "Bearer sk-real", "Bearer x{}"),
        ("x-api-key", "sk-real", "x{}"),
    ],
)
def test_duplicate_credential_header_keeps_the_first_value_like_starlette(
    header: str, real: str, forged: str
) -> None:
    app = Starlette(routes=[Route("/", whoami)])
    app.add_middleware(AbuseGuard, policy=policy())
    with serve(app) as url, httpx.Client(base_url=url) as client:
        alone = client.get("/", headers={header: real}).json()
        responses = [
            client.get("/", headers=[(header, real), (header, forged.format(i))])
            for i in range(ATTEMPTS)
        ]
    served = [r for r in responses if r.status_code == 200]
    # The one real key had BURST requests; the first went alone, so BURST - 1 remain.
    assert len(served) == BURST - 1, statuses(responses)
    for response in served:
        seen = response.json()
        assert seen[header] == real  # what the app authenticates...
        assert seen["identity"] == alone["identity"]  # ...is what the guard counted


def test_duplicate_credential_headers_unit_rules() -> None:
    mw = AbuseGuard(Starlette(), policy=policy(max_header_bytes=64))

    def info(headers: list[tuple[bytes, bytes]]) -> RequestInfo:
        scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
        scope["client"] = ("192.0.2.10", 5555)
        return mw.request_info(scope)

    first = info([(b"authorization", b"Bearer sk-1"), (b"authorization", b"Bearer sk-2")])
    assert first.key == "sk-1" and first.headers["authorization"] == "Bearer sk-1"
    keys = info([(b"x-api-key", b"k1"), (b"x-api-key", b"k2"), (b"accept", b"a")])
    assert keys.key == "k1" and keys.headers["x-api-key"] == "k1"
    # Other repeated headers are still joined in order.
    joined = info([(b"accept", b"a"), (b"accept", b"b")])
    assert joined.headers["accept"] == "a, b"
    # The first value is what Starlette hands the app even when it is oversized: the guard
    # then has no credential from that header and never falls back to a later value.
    oversized = info([(b"authorization", b"Bearer " + b"k" * 80), (b"authorization", b"Bearer x")])
    assert oversized.key is None and "authorization" not in oversized.headers


# --- 3. the proxy header to trust is configured, not guessed --------------------------------


def test_clients_forwarded_header_is_ignored_behind_an_x_forwarded_for_proxy() -> None:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(AbuseGuard, policy=policy(trusted_proxies=["127.0.0.0/8"]))
    with serve(app) as url, httpx.Client(base_url=url) as client:
        # nginx's default: it appends the peer to X-Forwarded-For and passes the client's
        # own Forwarded header through untouched.
        responses = [
            client.get(
                "/",
                headers={"x-forwarded-for": "203.0.113.7", "forwarded": f"for=198.51.100.{i}"},
            )
            for i in range(ATTEMPTS)
        ]
        other_client = client.get("/", headers={"x-forwarded-for": "203.0.113.8"})
    assert statuses(responses).count(200) == BURST, statuses(responses)
    assert other_client.status_code == 200


@pytest.mark.parametrize(
    ("proxy_header", "trusted", "spoofed"),
    [
        ("forwarded", "for=203.0.113.7", ("x-forwarded-for", "198.51.100.{}")),
        ("x-real-ip", "203.0.113.7", ("x-forwarded-for", "198.51.100.{}")),
        ("x-forwarded-for", "203.0.113.7", ("x-real-ip", "198.51.100.{}")),
    ],
)
def test_only_the_configured_proxy_header_is_believed(
    proxy_header: str, trusted: str, spoofed: tuple[str, str]
) -> None:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(
        AbuseGuard, policy=policy(trusted_proxies=["127.0.0.0/8"], proxy_header=proxy_header)
    )
    name, template = spoofed
    with serve(app) as url, httpx.Client(base_url=url) as client:
        responses = [
            client.get("/", headers={proxy_header: trusted, name: template.format(i)})
            for i in range(ATTEMPTS)
        ]
    assert statuses(responses).count(200) == BURST, statuses(responses)


def test_proxy_header_unit_rules() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    headers = {
        "forwarded": "for=192.0.2.60",
        "x-forwarded-for": "198.51.100.7",
        "x-real-ip": "203.0.113.1",
    }
    assert client_ip("10.0.0.1", headers, trusted) == "198.51.100.7"
    assert client_ip("10.0.0.1", headers, trusted, "x-forwarded-for") == "198.51.100.7"
    assert client_ip("10.0.0.1", headers, trusted, "forwarded") == "192.0.2.60"
    assert client_ip("10.0.0.1", headers, trusted, "x-real-ip") == "203.0.113.1"
    # A repeated X-Real-IP (the client's and the proxy's): the proxy's, nearest, counts.
    assert client_ip("10.0.0.1", {"x-real-ip": "6.6.6.6, 203.0.113.1"}, trusted, "x-real-ip") == (
        "203.0.113.1"
    )
    # The configured header missing: the peer, never another header.
    assert client_ip("10.0.0.1", {"forwarded": "for=192.0.2.60"}, trusted) == "10.0.0.1"


@pytest.mark.parametrize("value", ["X-Forwarded-For", " forwarded ", "X-REAL-IP"])
def test_policy_proxy_header_is_normalized(value: str) -> None:
    assert Policy(proxy_header=value).proxy_header == value.strip().lower()


@pytest.mark.parametrize("value", ["x-client-ip", "", "x-forwarded-for, forwarded", None, 1])
def test_policy_proxy_header_rejects_anything_else(value: Any) -> None:
    with pytest.raises(ConfigError, match="proxy_header"):
        Policy(proxy_header=value)


# --- an oversized X-Forwarded-For: the right-most hops within max_header_bytes --------------


def test_oversized_x_forwarded_for_cannot_drain_the_proxys_allowance() -> None:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(AbuseGuard, policy=policy(trusted_proxies=["127.0.0.0/8"]))
    padding = ", ".join(f"192.0.2.{i % 250}" for i in range(1000))  # > 8192 bytes
    assert len(padding) > Policy().max_header_bytes
    with serve(app) as url, httpx.Client(base_url=url) as client:
        # The client sends a huge X-Forwarded-For; the proxy appends the real address.
        attack = [
            client.get("/", headers={"x-forwarded-for": f"{padding}, 203.0.113.7"})
            for _ in range(ATTEMPTS)
        ]
        # Another client behind the same proxy, and the proxy itself (its health checks)
        # keep their own allowance.
        neighbour = client.get("/", headers={"x-forwarded-for": "203.0.113.8"})
        proxy_itself = client.get("/")
    assert statuses(attack).count(200) == BURST, statuses(attack)
    assert neighbour.status_code == 200
    assert proxy_itself.status_code == 200


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("1.1.1.1, 2.2.2.2", 100, "1.1.1.1, 2.2.2.2"),  # within the limit: untouched
        ("1.1.1.1, 2.2.2.2", 9, " 2.2.2.2"),  # cut right after a comma: whole items only
        ("1.1.1.1, 2.2.2.2", 8, " 2.2.2.2"),  # cut on the item's start
        ("1.1.1.1, 2.2.2.2", 7, "2.2.2.2"),  # cut in the whitespace before it: still whole
        ("1.1.1.1, 2.2.2.2", 6, ""),  # the last item alone is too long: nothing
        ("1.1.1.1, 22.2.2.2", 7, ""),  # a partial item ("2.2.2.2") is never taken
        ("1.1.1.1,2.2.2.2", 8, "2.2.2.2"),  # the cut falls on the comma itself
        ("", 4, ""),
    ],
)
def test_rightmost_list_items_edges(value: str, limit: int, expected: str) -> None:
    assert rightmost_list_items(value, limit) == expected


_TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)
_hops = st.lists(
    st.one_of(
        st.integers(0, 255).map(lambda n: f"10.0.0.{n}"),  # trusted proxies
        st.integers(0, 255).map(lambda n: f"198.51.100.{n}"),  # clients
        st.sampled_from(["unknown", "garbage", "_hidden"]),  # malformed hops
    ),
    min_size=0,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(hops=_hops, limit=st.integers(1, 600))
def test_rightmost_hops_choose_the_same_client_as_the_whole_header(
    hops: list[str], limit: int
) -> None:
    value = ", ".join(hops)
    kept = rightmost_list_items(value, limit)
    assert len(kept) <= limit
    kept_hops = [h.strip() for h in kept.split(",")] if kept.strip() else []
    # Whole hops only, and the ones nearest the proxy.
    assert kept_hops == (hops[len(hops) - len(kept_hops) :] if kept_hops else [])
    # The walk stops at the first hop from the right that is not a trusted proxy: when
    # that hop is kept, the client is the same as with the whole header.
    stop = next((i for i in range(len(hops) - 1, -1, -1) if not hops[i].startswith("10.")), None)
    if stop is not None and len(hops) - stop <= len(kept_hops):
        whole = client_ip("10.0.0.1", {"x-forwarded-for": value}, _TRUSTED)
        assert client_ip("10.0.0.1", {"x-forwarded-for": kept}, _TRUSTED) == whole


# --- 9. route costs hold for HEAD and for a wrapped app ------------------------------------


def test_head_is_charged_the_get_route_cost() -> None:
    handler = Handler()
    app = Starlette(routes=[Route("/expensive", handler.endpoint)])
    app.add_middleware(
        AbuseGuard,
        policy=policy(bucket=TokenBucket("1/hour", burst=100, cost={"GET /expensive": 50})),
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        responses = [client.head("/expensive") for _ in range(10)]
    assert statuses(responses) == [200, 200] + [429] * 8
    assert handler.runs == 2


@pytest.mark.parametrize("path", ["/expensive", "/items/7"])
def test_route_costs_hold_when_the_app_is_wrapped(path: str) -> None:
    handler = Handler()
    inner = Starlette(
        routes=[Route("/expensive", handler.endpoint), Route("/items/{item}", handler.endpoint)]
    )
    cost = {"GET /expensive": 50, "/items/{item}": 50}
    app = AbuseGuard(inner, policy=policy(bucket=TokenBucket("1/hour", burst=100, cost=cost)))
    with serve(app) as url, httpx.Client(base_url=url) as client:
        responses = [client.get(path) for _ in range(3)]
    assert statuses(responses) == [200, 200, 429]
    assert handler.runs == 2


def test_cost_of_head_unit_rules() -> None:
    cost = {"GET /a": 50, "HEAD /b": 7, "GET /b": 9, "/c": 3}
    guard = Guard(policy(bucket=TokenBucket("1/hour", burst=100, cost=cost)))

    def charged(method: str, route: str) -> float:
        return guard.cost_of(RequestInfo("192.0.2.1", method=method, path=route, route=route))

    assert charged("HEAD", "/a") == 50  # "GET /x" applies to HEAD
    assert charged("HEAD", "/b") == 7  # an explicit HEAD entry wins
    assert charged("HEAD", "/c") == 3 and charged("POST", "/a") == 1


# --- issue 14 item 9: exempt paths match whole path segments -----------------------------


def test_exempt_path_does_not_exempt_a_longer_segment() -> None:
    app = Starlette(
        routes=[Route("/health", ok), Route("/health/live", ok), Route("/healthz-admin", ok)]
    )
    app.add_middleware(
        AbuseGuard, policy=policy(bucket=TokenBucket("1/hour", burst=2), exempt_paths=("/health",))
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        exempt = [client.get(p) for p in ["/health", "/health/live"] * 3]
        admin = [client.get("/healthz-admin") for _ in range(4)]
    assert statuses(exempt) == [200] * 6
    assert statuses(admin) == [200, 200, 429, 429]


@pytest.mark.parametrize(
    ("configured", "path", "exempt"),
    [
        ("/health", "/health", True),
        ("/health", "/health/", True),
        ("/health", "/health/live", True),
        ("/health", "/healthz", False),
        ("/health", "/healthz-admin", False),
        ("/health", "/heal", False),
        ("/health/", "/health", True),
        ("/health/", "/health/live", True),
        ("/health/", "/healthz", False),
        ("/", "/anything", True),
        ("/static/v1", "/static/v10/app.js", False),
    ],
)
def test_exempt_paths_match_whole_segments(configured: str, path: str, exempt: bool) -> None:
    assert ExemptPaths((configured,)).matches(path) is exempt


def test_exempt_paths_of_an_empty_policy_match_nothing() -> None:
    assert ExemptPaths(()).matches("/") is False


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["inline", "synced"])
def test_exempt_paths_match_whole_segments_with_redis(redis_server: RedisServer, mode: str) -> None:
    from abuseguard.backends.redis import RedisBackend
    from abuseguard.backends.redis.synced import SyncedRedisBackend

    prefix = f"sec{os.getpid()}{mode}"
    backend = (
        RedisBackend(redis_server.url, prefix=prefix, budget=0.5)
        if mode == "inline"
        else SyncedRedisBackend(redis_server.url, prefix=prefix, budget=0.5)
    )
    guard = Guard(
        policy(bucket=TokenBucket("1/hour", burst=1), exempt_paths=("/health",)), backend=backend
    )

    async def main() -> tuple[list[bool], list[bool]]:
        await guard.startup()
        try:
            health = [
                (await guard.acheck(RequestInfo("198.51.100.1", path="/health/live"))).served
                for _ in range(3)
            ]
            admin = [
                (await guard.acheck(RequestInfo("198.51.100.1", path="/healthz-admin"))).served
                for _ in range(3)
            ]
            return health, admin
        finally:
            await guard.shutdown()

    health, admin = asyncio.run(main())
    assert health == [True, True, True]
    assert admin == [True, False, False]


# --- WebSocket handshakes follow the same rules -------------------------------------------


def _websocket_app(**policy_fields: Any) -> Starlette:
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from abuseguard.policy import WebSocketPolicy

    async def accept_and_close(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app = Starlette(
        routes=[
            WebSocketRoute("/ws", accept_and_close),
            WebSocketRoute("/ws/{room}", accept_and_close),
            WebSocketRoute("/ws-admin", accept_and_close),
        ]
    )
    limits = WebSocketPolicy(
        connect=TokenBucket("1/hour", burst=2, name="ws-connect"),
        messages=None,
        guard_handshake=False,
    )
    app.add_middleware(AbuseGuard, policy=policy(websocket=limits, **policy_fields))
    return app


def _handshakes(base: str, path: str, headers: list[list[tuple[str, str]]]) -> list[bool]:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    accepted = []
    for extra in headers:
        try:
            with connect(base.replace("http://", "ws://") + path, additional_headers=extra):
                accepted.append(True)
        except InvalidStatus:
            accepted.append(False)
    return accepted


def test_websocket_handshake_counts_the_first_credential() -> None:
    forged = [
        [("Authorization", "Bearer sk-real"), ("Authorization", f"Bearer x{i}")] for i in range(4)
    ]
    with serve(_websocket_app()) as base:
        assert _handshakes(base, "/ws", forged) == [True, True, False, False]


def test_websocket_exempt_paths_match_whole_segments() -> None:
    with serve(_websocket_app(exempt_paths=("/ws",))) as base:
        assert _handshakes(base, "/ws/lobby", [[]] * 4) == [True] * 4
        assert _handshakes(base, "/ws-admin", [[]] * 4) == [True, True, False, False]


def test_fail_mode_routes_match_whole_path_segments() -> None:
    # "/v1/admin" closed must not decide "/v1/administrator" (nor "/v1/admin-public"):
    # the same whole-segment rule as exempt paths.
    from abuseguard.policy import FailMode

    mode = FailMode(open=True, routes={"/v1/admin": False, "POST /v1/chat": False})
    assert not mode.fails_open("GET", "/v1/admin")
    assert not mode.fails_open("GET", "/v1/admin/")
    assert not mode.fails_open("GET", "/v1/admin/users")
    assert mode.fails_open("GET", "/v1/administrator")
    assert mode.fails_open("GET", "/v1/admin-public")
    assert not mode.fails_open("POST", "/v1/chat/completions")
    assert mode.fails_open("POST", "/v1/chatter")
    root = FailMode(open=True, routes={"/": False})
    assert not root.fails_open("GET", "/anything")


def test_a_banned_key_sent_with_a_second_credential_header_stays_banned() -> None:
    """The issue's second case: a banned key plus a random second Authorization value was
    served (the joined header hashed to a fresh identity)."""
    from abuseguard.testing import ManualClock
    from tests.test_ban_eviction import HEADLESS, SDK, ban_policy, guarded_app, http, is_ban

    app, _ = guarded_app(ban_policy(1000), clock=ManualClock())
    with http(app) as client:
        banned = client.get(
            "/", headers={"user-agent": HEADLESS, "authorization": "Bearer sk-real"}
        )
        assert banned.status_code == 403  # the ladder's block, which bans
        for i in range(3):
            response = client.get(
                "/",
                headers=[
                    ("user-agent", SDK),
                    ("authorization", "Bearer sk-real"),
                    ("authorization", f"Bearer x{i}"),
                ],
            )
            assert is_ban(response), (i, response.status_code, response.text)
