"""`Policy.key_func` sees the request (issue 18 item 1): RequestInfo.connection."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Guard, Limits, Policy, RequestInfo, TokenBucket
from abuseguard.testing import serve

SLOW = "1/hour"


class UserFromToken(AuthenticationBackend):
    """The bearer token "<team>-<n>" authenticates the user "<team>": several tokens of
    one team are one user."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        return AuthCredentials(["authenticated"]), SimpleUser(token.split("-")[0])


def quiet(**kwargs: object) -> Policy:
    return Policy(network=None, scoring=None, unverified_keys=None, **kwargs)  # type: ignore[arg-type]


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_key_func_reads_the_user_set_by_authentication_middleware() -> None:
    seen: list[object] = []

    def by_user(info: RequestInfo) -> str | None:
        seen.append(type(info.connection).__name__)
        return "user:" + info.connection.user.username if info.connection else None

    app = Starlette(routes=[Route("/v1/models", ok)])
    app.add_middleware(
        AbuseGuard, policy=quiet(bucket=TokenBucket(SLOW, burst=3), key_func=by_user)
    )
    app.add_middleware(AuthenticationMiddleware, backend=UserFromToken())  # outside the guard
    with serve(app) as url, httpx.Client(base_url=url) as client:
        # two tokens of team "acme" share one budget; "zeta" has its own
        acme = [
            client.get("/v1/models", headers={"authorization": f"Bearer acme-{i}"}).status_code
            for i in range(5)
        ]
        zeta = client.get("/v1/models", headers={"authorization": "Bearer zeta-1"})
    assert acme == [200] * 3 + [429] * 2
    assert zeta.status_code == 200
    assert set(seen) == {"HTTPConnection"}


def test_key_func_and_plan_func_share_one_connection_and_its_state() -> None:
    connections: list[object] = []

    def key_func(info: RequestInfo) -> str | None:
        connections.append(info.connection)
        return info.key

    def plan_func(conn: HTTPConnection) -> str:
        connections.append(conn)
        return "free"

    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(
        AbuseGuard,
        policy=quiet(key_func=key_func, plans={"free": Limits()}, plan_func=plan_func),
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/").status_code == 200
    assert len(connections) == 2 and connections[0] is connections[1]


def test_an_old_key_func_reading_headers_still_works_and_replay_has_no_connection() -> None:
    def by_header(info: RequestInfo) -> str | None:
        assert info.connection is None  # driven directly, as replay does
        return info.headers.get("x-tenant")

    guard = Guard(quiet(bucket=TokenBucket(SLOW, burst=1), key_func=by_header))
    first = guard.check(RequestInfo("10.0.0.1", headers={"x-tenant": "t1"}))
    second = guard.check(RequestInfo("10.0.0.2", headers={"x-tenant": "t1"}))
    assert (first.served, second.served) == (True, False)
    assert first.identity.startswith("k:")


def test_without_key_func_or_plan_func_no_connection_is_built() -> None:
    infos: list[RequestInfo] = []
    app = Starlette(routes=[Route("/", ok)])
    mw = AbuseGuard(app, policy=quiet(), observers=[lambda info, d: infos.append(info)])
    with serve(mw) as url, httpx.Client(base_url=url) as client:
        assert client.get("/").status_code == 200
    assert infos and infos[0].connection is None
