"""Route limits on the routes of FastAPI's included routers (``app.include_router``),
which recent FastAPI keeps as one lazily resolved route object per router."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from starlette.routing import Route

from abuseguard import AbuseGuard, Limits, Policy, TokenBucket
from abuseguard.routes import route_templates
from abuseguard.testing import serve

SLOW = "1/hour"


def routers_app(policy: Policy | None = None) -> FastAPI:
    api = APIRouter()
    inner = APIRouter()

    @api.get("/models/{model}")
    async def model(model: str) -> dict[str, str]:
        return {"id": model}

    @inner.post("/chat")
    async def chat() -> dict[str, str]:
        return {}

    async def plain(request: object) -> None:  # a Starlette route inside a FastAPI router
        raise AssertionError("not called")

    inner.routes.append(Route("/plain", plain))
    api.include_router(inner, prefix="/v2")
    app = FastAPI()
    app.include_router(api, prefix="/api")
    if policy is not None:
        app.add_middleware(AbuseGuard, policy=policy)
    return app


def quiet(**kwargs: object) -> Policy:
    return Policy(network=None, scoring=None, unverified_keys=None, **kwargs)  # type: ignore[arg-type]


def test_the_templates_of_included_routers_are_listed() -> None:
    templates = route_templates(routers_app())
    assert templates is not None
    assert {
        ("GET", "/api/models/{model}"),
        ("HEAD", "/api/models/{model}"),
        ("POST", "/api/v2/chat"),
        ("GET", "/api/v2/plain"),
    } <= templates
    assert (None, "") not in templates  # not a catch-all that hides every typo


def test_route_limits_apply_to_the_routes_of_included_routers() -> None:
    policy = quiet(
        routes={
            "GET /api/models/{model}": Limits(bucket=TokenBucket(SLOW, burst=2)),
            "POST /api/v2/chat": Limits(bucket=TokenBucket(SLOW, burst=1)),
        }
    )
    with serve(routers_app(policy)) as url, httpx.Client(base_url=url) as client:
        models = [client.get(f"/api/models/m{i}").status_code for i in range(3)]
        chats = [client.post("/api/v2/chat").status_code for _ in range(2)]
    assert models == [200, 200, 429]
    assert chats == [200, 429]


@pytest.mark.parametrize("pattern", ["GET /api/model/{model}", "POST /api/chat", "/api/v2/plan"])
def test_a_typo_under_an_included_router_fails_startup(
    pattern: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("uvicorn.error"), "propagate", True)
    caplog.set_level(logging.ERROR)
    app = routers_app(quiet(routes={pattern: Limits(concurrency=1)}))
    with pytest.raises(RuntimeError, match="did not start"), serve(app, log_config=None):
        pass
    assert pattern in caplog.text
