"""The middleware order docs/middleware-order.md recommends, through real uvicorn.

Outermost first: GZip, CORS, AbuseGuard, Authentication, then the app.
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from abuseguard import AbuseGuard, Action, Decision, Policy, TokenBucket, current_decision
from abuseguard.testing import serve

ORIGIN = "https://app.example"
USERS = {"sk-alice-0001": "alice"}


class BearerKeys(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        header = conn.headers.get("authorization")
        if header is None:
            return None
        user = USERS.get(header.removeprefix("Bearer "))
        if user is None:
            raise AuthenticationError("unknown API key")
        return AuthCredentials(["authenticated"]), SimpleUser(user)


def unauthorized(conn: HTTPConnection, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=401)


async def chat(request: Request) -> PlainTextResponse:
    decision = current_decision(request)
    assert decision is not None
    # Long enough for GZipMiddleware (500 bytes minimum) to compress it.
    return PlainTextResponse(f"hello {request.user.display_name} " + "lorem ipsum " * 100)


POLICY = Policy(bucket=TokenBucket("1/minute", burst=2), scoring=None, network=None)
CORS = Middleware(
    CORSMiddleware,
    allow_origins=[ORIGIN],
    allow_methods=["*"],
    allow_headers=["authorization", "content-type"],
    expose_headers=["RateLimit", "RateLimit-Policy", "Retry-After"],
)
AUTH = Middleware(AuthenticationMiddleware, backend=BearerKeys(), on_error=unauthorized)


def recommended_app(policy: Policy = POLICY, **guard: Any) -> Starlette:
    return Starlette(
        routes=[Route("/v1/chat", chat, methods=["GET", "POST"])],
        middleware=[
            Middleware(GZipMiddleware),
            CORS,
            Middleware(AbuseGuard, policy=policy, **guard),
            AUTH,
        ],
    )


def test_recommended_order_preflights_cors_gzip_and_ratelimit_headers() -> None:
    with serve(recommended_app()) as url, httpx.Client(base_url=url) as client:
        preflight = {
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization",
        }
        answers = [client.options("/v1/chat", headers=preflight) for _ in range(5)]
        # CORS answers preflights itself: they never reach the guard, never spend a token.
        assert [r.status_code for r in answers] == [200] * 5
        assert all("ratelimit" not in r.headers for r in answers)

        headers = {
            "origin": ORIGIN,
            "authorization": "Bearer sk-alice-0001",
            "accept-encoding": "gzip",
        }
        served = [client.post("/v1/chat", headers=headers) for _ in range(2)]
        refused = client.post("/v1/chat", headers=headers)

    for response in served:
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"  # GZip outside the guard ...
        assert response.headers["ratelimit-policy"] == '"default";q=2;w=120'
        assert response.headers["ratelimit"].startswith('"default";r=')  # ... keeps them
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "ratelimit" in response.headers["access-control-expose-headers"].lower()
        assert response.text.startswith("hello alice ")  # the app sees the auth's user
    # The refusal passes back through CORS: a browser can read the 429 and its headers.
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
    assert float(refused.headers["retry-after"]) > 0
    assert refused.headers["ratelimit"].startswith('"default";r=0')


def test_recommended_order_the_guard_sees_the_auth_refusals_of_invented_keys() -> None:
    policy = Policy(bucket=TokenBucket("10/second", burst=50), scoring=None, network=None)
    with serve(recommended_app(policy)) as url, httpx.Client(base_url=url) as client:
        statuses = [
            client.post("/v1/chat", headers={"authorization": f"Bearer sk-invented-{i:04}"})
            for i in range(6)
        ]
    codes = [r.status_code for r in statuses]
    # Auth answers 401 for each invented key it sees; the guard, outside auth, charges them
    # to the client's address and soon refuses invented keys before auth even runs.
    assert codes[0] == 401
    assert 429 in codes
    assert set(codes) == {401, 429}
    assert codes[-1] == 429
    assert statuses[-1].json()["reasons"] == ["unverified_key"]


class UserAwareThrottle:
    """A throttle that names the signed-in user: it reads the scope the guard receives."""

    async def __call__(
        self, scope: Any, receive: Any, send: Any, decision: Decision, app: Any
    ) -> None:
        user = scope["user"].display_name if "user" in scope else "<no user in scope>"
        response = PlainTextResponse(f"slow down, {user}", status_code=429)
        await response(scope, receive, send)


def test_guard_inside_auth_sees_scope_user() -> None:
    guard = Middleware(AbuseGuard, policy=POLICY, enforcers={Action.THROTTLE: UserAwareThrottle()})
    inside = Starlette(
        routes=[Route("/v1/chat", chat, methods=["POST"])],
        middleware=[Middleware(GZipMiddleware), CORS, AUTH, guard],
    )
    outside = Starlette(
        routes=[Route("/v1/chat", chat, methods=["POST"])],
        middleware=[Middleware(GZipMiddleware), CORS, guard, AUTH],
    )
    headers = {"authorization": "Bearer sk-alice-0001"}
    bodies = []
    for app in (inside, outside):
        with serve(app) as url, httpx.Client(base_url=url) as client:
            responses = [client.post("/v1/chat", headers=headers) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        bodies.append(responses[2].text)
    assert bodies == ["slow down, alice", "slow down, <no user in scope>"]
