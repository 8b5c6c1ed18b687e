"""Route-local limits in FastAPI and Starlette (issue 18 item 3), over real uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import abuseguard.fastapi
import abuseguard.starlette
from abuseguard import AbuseGuard, ConfigError, Enforcement, Policy, TokenBucket
from abuseguard.route_local import find_route_limits
from abuseguard.testing import serve

SLOW = "1/hour"
KEY = {"authorization": "Bearer sk-local"}


def quiet(**kwargs: object) -> Policy:
    kwargs.setdefault("bucket", TokenBucket(SLOW, burst=20))
    return Policy(network=None, scoring=None, unverified_keys=None, **kwargs)  # type: ignore[arg-type]


def fastapi_app(policy: Policy | None, rate: str = "3/hour", **limit: object) -> FastAPI:
    app = FastAPI()
    search_limit = abuseguard.fastapi.limit(rate, **limit)  # type: ignore[arg-type]

    @app.get("/search", dependencies=[Depends(search_limit)])
    async def search() -> dict[str, str]:
        return {"ok": "search"}

    @app.get("/other")
    async def other() -> dict[str, str]:
        return {"ok": "other"}

    router = APIRouter(dependencies=[Depends(abuseguard.fastapi.limit("1/hour", burst=2))])

    @router.get("/report")
    async def report() -> dict[str, str]:
        return {"ok": "report"}

    app.include_router(router, prefix="/admin")
    if policy is not None:
        app.add_middleware(AbuseGuard, policy=policy)
    return app


def test_a_fastapi_dependency_limits_its_route_and_the_headers_name_every_limit() -> None:
    with (
        serve(fastapi_app(quiet())) as url,
        httpx.Client(base_url=url, headers=KEY) as client,
    ):
        served = [client.get("/search") for _ in range(3)]
        refused = [client.get("/search") for _ in range(2)]
        other = client.get("/other")
        other_key = client.get("/search", headers={"authorization": "Bearer sk-other"})
    assert [r.status_code for r in served + refused] == [200] * 3 + [429] * 2
    policy_header = served[0].headers["ratelimit-policy"]
    assert '"default"' in policy_header and '"local-3-hour-default"' in policy_header
    assert '"local-3-hour-default";r=0' in served[2].headers["ratelimit"]
    refusal = refused[0]
    assert refusal.json() == {"detail": "Request limit exceeded; retry later."}
    assert 1 <= int(refusal.headers["retry-after"]) <= 1200  # 1 token of 3 an hour
    assert '"local-3-hour-default";r=0' in refusal.headers["ratelimit"]
    assert other.status_code == 200
    assert "local-" not in other.headers["ratelimit-policy"]
    # the middleware served (and charged) all 5 /search requests before the route ran
    assert '"default";r=14' in other.headers["ratelimit"]
    assert other_key.status_code == 200  # its own state per identity


def test_a_router_dependency_limits_every_route_of_the_included_router() -> None:
    app = fastapi_app(quiet())
    assert {limit.name for limit in find_route_limits(app)} >= {"local-1-hour"}
    with serve(app) as url, httpx.Client(base_url=url, headers=KEY) as client:
        statuses = [client.get("/admin/report").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_concurrent_requests_against_a_dependency_burst_admit_exactly_the_burst() -> None:
    app = fastapi_app(quiet(bucket=TokenBucket(SLOW, burst=1000)), rate=SLOW, burst=7)

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=url, headers=KEY, limits=httpx.Limits(max_connections=40)
        ) as client:
            return await asyncio.gather(*(client.get("/search") for _ in range(40)))

    with serve(app) as url:
        responses = asyncio.run(send_all(url))
    assert [r.status_code for r in responses].count(200) == 7
    assert {r.status_code for r in responses} == {200, 429}


def test_a_starlette_decorator_limits_sync_and_async_endpoints() -> None:
    two = abuseguard.starlette.limit(SLOW, burst=2, name="search")

    @two
    async def search(request: Request) -> PlainTextResponse:
        return PlainTextResponse("search")

    @abuseguard.starlette.limit(SLOW, burst=1)
    def export(request: Request) -> PlainTextResponse:  # a sync endpoint, run in a thread
        return PlainTextResponse("export")

    async def free(request: Request) -> PlainTextResponse:
        return PlainTextResponse("free")

    app = Starlette(
        routes=[
            Route("/search", search),
            Route("/free", free),
            Mount("/api", routes=[Route("/export", export)]),
        ]
    )
    app.add_middleware(AbuseGuard, policy=quiet())
    with serve(app) as url, httpx.Client(base_url=url, headers=KEY) as client:
        searches = [client.get("/search") for _ in range(3)]
        exports = [client.get("/api/export") for _ in range(2)]
        free_one = client.get("/free")
    assert [r.status_code for r in searches] == [200, 200, 429]
    assert searches[0].text == "search"
    assert '"local-search-default";r=1' in searches[0].headers["ratelimit"]
    assert searches[2].text == "Request limit exceeded; retry later."
    assert "retry-after" in searches[2].headers
    assert [r.status_code for r in exports] == [200, 429]
    assert free_one.status_code == 200


def test_shadow_reports_a_route_local_refusal_and_serves() -> None:
    policy = quiet(enforcement=Enforcement(shadow_actions=("throttle",)))
    with (
        serve(fastapi_app(policy, rate=SLOW, burst=1)) as url,
        httpx.Client(base_url=url, headers=KEY) as client,
    ):
        statuses = [client.get("/search") for _ in range(2)]
    assert [r.status_code for r in statuses] == [200, 200]
    assert '"local-1-hour' in statuses[1].headers["ratelimit"]
    assert ";r=0" in statuses[1].headers["ratelimit"]


def test_an_exempt_path_is_not_counted() -> None:
    with (
        serve(fastapi_app(quiet(exempt_paths=("/search",)), rate=SLOW, burst=1)) as url,
        httpx.Client(base_url=url, headers=KEY) as client,
    ):
        assert [client.get("/search").status_code for _ in range(3)] == [200] * 3


@pytest.fixture
def uvicorn_errors(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """uvicorn's error log in caplog, whatever logging config an earlier server left."""
    monkeypatch.setattr(logging.getLogger("uvicorn.error"), "propagate", True)
    caplog.set_level(logging.ERROR)
    return caplog


NO_MIDDLEWARE = "needs the AbuseGuard middleware in front of the app"


def test_a_fastapi_app_with_route_local_limits_and_no_middleware_fails_startup(
    uvicorn_errors: pytest.LogCaptureFixture,
) -> None:
    with (
        pytest.raises(RuntimeError, match="did not start"),
        serve(fastapi_app(None), log_config=None),
    ):
        pass
    assert "abuseguard.fastapi.limit " + NO_MIDDLEWARE in uvicorn_errors.text


def test_the_startup_check_covers_included_routers_and_a_custom_lifespan(
    uvicorn_errors: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ran.append("lifespan")
        yield

    def app_of(middleware: bool) -> FastAPI:
        app = FastAPI(lifespan=lifespan)
        router = APIRouter()

        @router.get("/report", dependencies=[Depends(abuseguard.fastapi.limit("1/hour"))])
        async def report() -> dict[str, str]:
            return {}

        app.include_router(router, prefix="/admin")
        if middleware:
            app.add_middleware(AbuseGuard, policy=quiet())
        return app

    with pytest.raises(RuntimeError, match="did not start"), serve(app_of(False), log_config=None):
        pass
    assert NO_MIDDLEWARE in uvicorn_errors.text
    ran.clear()
    with serve(app_of(True)) as url:
        served = httpx.get(url + "/admin/report", headers=KEY)
    assert ran == ["lifespan"]
    assert served.status_code == 200
    assert '"local-1-hour-default"' in served.headers["ratelimit-policy"]


def test_a_starlette_endpoint_without_the_middleware_fails_with_a_message_naming_the_fix(
    uvicorn_errors: pytest.LogCaptureFixture,
) -> None:
    """Starlette reads nothing of an endpoint while a route is made: no startup check."""

    async def search(request: Request) -> PlainTextResponse:
        return PlainTextResponse("search")

    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse("other")

    app = Starlette(
        routes=[
            Route("/search", abuseguard.starlette.limit("3/hour")(search)),
            Route("/other", other),
        ]
    )
    with serve(app, log_config=None) as url, httpx.Client(base_url=url) as client:
        try:
            failed: object = httpx.get(url + "/search").status_code
        except httpx.HTTPError as exc:  # uvicorn may drop the connection after the 500
            failed = type(exc).__name__
        other_page = client.get("/other")
    assert failed in (500, "ReadError", "RemoteProtocolError")
    assert "abuseguard.starlette.limit " + NO_MIDDLEWARE in uvicorn_errors.text
    assert other_page.status_code == 200


def test_a_backend_that_cannot_keep_route_local_limits_fails_startup(
    redis_server: object, uvicorn_errors: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()

    @app.get("/search", dependencies=[Depends(abuseguard.fastapi.limit("5/minute"))])
    async def search() -> dict[str, str]:
        return {}

    app.add_middleware(AbuseGuard, policy=quiet(), backend=redis_server.url)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="did not start"), serve(app, log_config=None):
        pass
    assert "route-local limits" in uvicorn_errors.text
    assert "not supported by the Redis backend" in uvicorn_errors.text


def test_route_local_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"TokenBucket\.rate"):
        abuseguard.fastapi.limit("often")
    with pytest.raises(ConfigError, match=r"limit\.cost"):
        abuseguard.fastapi.limit("5/minute", cost=-1)
    with pytest.raises(ConfigError, match=r"limit\.name"):
        abuseguard.fastapi.limit("5/minute", name="")
    with pytest.raises(ConfigError, match="request/response function"):
        abuseguard.starlette.limit("5/minute")(PlainTextResponse)  # type: ignore[arg-type]


def app_with(*limits: object) -> FastAPI:
    app = FastAPI()
    for i, dependency in enumerate(limits):
        app.add_api_route(f"/r{i}", lambda: {}, dependencies=[Depends(dependency)])
    app.add_middleware(AbuseGuard, policy=quiet())
    return app


def test_repeated_names_are_numbered_in_route_order() -> None:
    app = app_with(abuseguard.fastapi.limit("7/day"), abuseguard.fastapi.limit("7/day"))
    with serve(app) as url, httpx.Client(base_url=url, headers=KEY) as client:
        first, second = client.get("/r0"), client.get("/r1")
    assert '"local-7-day-default"' in first.headers["ratelimit-policy"]
    assert '"local-7-day-2-default"' in second.headers["ratelimit-policy"]


def test_a_name_given_to_two_limits_fails_startup(
    uvicorn_errors: pytest.LogCaptureFixture,
) -> None:
    twice = app_with(
        abuseguard.fastapi.limit("5/minute", name="search"),
        abuseguard.fastapi.limit("9/minute", name="search"),
    )
    with pytest.raises(RuntimeError, match="did not start"), serve(twice, log_config=None):
        pass
    assert "'local-search' names two route-local limits" in uvicorn_errors.text


def test_importing_the_helpers_imports_no_fastapi_and_the_core_no_starlette() -> None:
    import subprocess
    import sys

    code = (
        "import sys, abuseguard.guard;"
        "assert not [m for m in sys.modules if m.startswith('starlette')];"
        "import abuseguard.fastapi, abuseguard.starlette;"
        "assert 'fastapi' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
