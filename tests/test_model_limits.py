"""Limits per model (issue 18 item 2): `Limits.models`, keyed by the JSON body's model."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    ConfigError,
    Guard,
    Limits,
    Policy,
    Quota,
    RequestInfo,
    TokenBucket,
)
from abuseguard.model_limits import MAX_MODEL_CHARS, model_of
from abuseguard.startup_log import describe_policy
from abuseguard.testing import serve

SLOW = "1/hour"
CHAT = "POST /v1/chat/completions"


def quiet(**kwargs: object) -> Policy:
    kwargs.setdefault("bucket", TokenBucket(SLOW, burst=100))
    return Policy(network=None, scoring=None, unverified_keys=None, **kwargs)  # type: ignore[arg-type]


async def echo_size(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def make_app(policy: Policy) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", echo_size, methods=["POST"]),
            Route("/v1/embeddings", echo_size, methods=["POST"]),
        ]
    )
    app.add_middleware(AbuseGuard, policy=policy)
    return app


def chat_body(model: str | None, prompt: str = "hi") -> bytes:
    # The official SDKs write the messages first, then the model.
    body: dict[str, object] = {"messages": [{"role": "user", "content": prompt}]}
    if model is not None:
        body["model"] = model
    return json.dumps(body).encode()


# -- reading the model -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (b'{"model": "gpt-x", "messages": []}', "gpt-x"),
        (chat_body("gpt-x", "a" * 50_000), "gpt-x"),
        ('{"model": "gpt-é"}', "gpt-é"),  # str bodies (traces) too
        (b'{"messages": [], "model": "gpt-x", "stream": tr', "gpt-x"),  # cut after the model
        (b'{"messages": [{"content": "aaaa', None),  # cut before it
        (b'{"messages": []}', None),
        (b'{"model": 4}', None),
        (b'{"model": ""}', None),
        (b'["model", "gpt-x"]', None),
        (b"model=gpt-x", None),
        (b"", None),
        (None, None),
        (b'{"model": "' + b"m" * (MAX_MODEL_CHARS + 1) + b'"}', None),
        (b"\xff\xfe not utf-8", None),
    ],
)
def test_model_of_reads_the_bodys_model(body: bytes | str | None, model: str | None) -> None:
    assert model_of(body) == model


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_model_of_never_raises(body: bytes | str) -> None:
    found = model_of(body)
    assert found is None or 0 < len(found) <= MAX_MODEL_CHARS


# -- through uvicorn -------------------------------------------------------------------------


def test_each_model_has_its_own_limits_and_an_unlisted_or_missing_model_gets_the_routes() -> None:
    policy = quiet(
        routes={
            CHAT: Limits(
                bucket=TokenBucket(SLOW, burst=6),
                models={
                    "gpt-big": Limits(bucket=TokenBucket(SLOW, burst=2)),
                    "gpt-small": Limits(quotas=(Quota("3/day", name="requests"),)),
                },
            )
        }
    )
    headers = {"authorization": "Bearer sk-one"}
    with serve(make_app(policy)) as url, httpx.Client(base_url=url, headers=headers) as client:

        def post(model: str | None) -> httpx.Response:
            return client.post("/v1/chat/completions", content=chat_body(model))

        big = [post("gpt-big").status_code for _ in range(3)]
        big_refused = post("gpt-big")
        small = [post("gpt-small").status_code for _ in range(4)]
        # 2 big + 3 small served: the route's own bucket (6) has 1 left for anything else
        other = [post("gpt-other").status_code, post(None).status_code]
        served_small = client.post("/v1/chat/completions", content=chat_body("gpt-small"))
    assert big == [200, 200, 429]
    assert small == [200, 200, 200, 429]
    assert other == [200, 429]  # an unlisted model, then no model: the route's limits
    assert big_refused.headers["ratelimit-policy"].count("model-gpt-big") == 1
    assert (
        '"route-POST-v1-chat-completions-model-gpt-big-default";r=0'
        in (big_refused.headers["ratelimit"])
    )
    assert served_small.status_code == 429


def test_the_model_after_a_long_prompt_is_found_and_the_app_gets_the_whole_body() -> None:
    policy = quiet(
        routes={CHAT: Limits(models={"gpt-big": Limits(bucket=TokenBucket(SLOW, burst=1))})}
    )
    body = chat_body("gpt-big", "x" * 200_000)  # far past Scoring.content_max_bytes
    with serve(make_app(policy)) as url, httpx.Client(base_url=url) as client:
        first = client.post("/v1/chat/completions", content=body)
        second = client.post("/v1/chat/completions", content=body)
    assert (first.status_code, first.text) == (200, str(len(body)))
    assert second.status_code == 429


def test_a_model_limit_on_one_route_leaves_other_routes_alone() -> None:
    policy = quiet(
        routes={CHAT: Limits(models={"gpt-big": Limits(bucket=TokenBucket(SLOW, burst=1))})}
    )
    with serve(make_app(policy)) as url, httpx.Client(base_url=url) as client:
        chat = [
            client.post("/v1/chat/completions", content=chat_body("gpt-big")).status_code
            for _ in range(2)
        ]
        embeddings = [
            client.post("/v1/embeddings", content=b'{"model": "gpt-big"}').status_code
            for _ in range(2)
        ]
    assert (chat, embeddings) == ([200, 429], [200, 200])


class PlanFromToken(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        return AuthCredentials(["authenticated"]), SimpleUser(token.split("-")[0])


def test_per_model_limits_per_plan_as_providers_publish_them() -> None:
    def tier(big: int, small: int) -> Limits:
        return Limits(
            models={
                "gpt-big": Limits(bucket=TokenBucket(SLOW, burst=big)),
                "gpt-small": Limits(bucket=TokenBucket(SLOW, burst=small)),
            }
        )

    policy = quiet(
        plans={"free": tier(1, 2), "pro": tier(3, 5)},
        plan_func=lambda conn: conn.user.username,
    )
    app = make_app(policy)
    app.add_middleware(AuthenticationMiddleware, backend=PlanFromToken())
    with serve(app) as url, httpx.Client(base_url=url) as client:
        statuses = {
            (token, model): [
                client.post(
                    "/v1/chat/completions",
                    content=chat_body(model),
                    headers={"authorization": f"Bearer {token}"},
                ).status_code
                for _ in range(4)
            ]
            for token in ("free-a", "pro-b")
            for model in ("gpt-big", "gpt-small")
        }
        embeddings = client.post(
            "/v1/embeddings",
            content=b'{"model": "gpt-big"}',
            headers={"authorization": "Bearer free-a"},
        )
    assert statuses == {
        ("free-a", "gpt-big"): [200] + [429] * 3,
        ("free-a", "gpt-small"): [200] * 2 + [429] * 2,
        ("pro-b", "gpt-big"): [200] * 3 + [429],
        ("pro-b", "gpt-small"): [200] * 4,
    }
    # a plan's model limits hold on every route: the same budget on /v1/embeddings
    assert embeddings.status_code == 429
    assert "plan-free-model-gpt-big-default" in embeddings.headers["ratelimit"]


# -- the core, configuration -------------------------------------------------------------------


def test_a_model_refusal_costs_nothing_and_replayed_str_bodies_count() -> None:
    policy = quiet(
        bucket=TokenBucket(SLOW, burst=10),
        routes={"/v1/chat": Limits(models={"m": Limits(bucket=TokenBucket(SLOW, burst=1))})},
    )
    guard = Guard(policy)

    def chat() -> RequestInfo:
        return RequestInfo(
            "10.0.0.1", key="sk", method="POST", path="/v1/chat", body='{"model":"m"}'
        )

    assert [guard.check(chat()).served for _ in range(3)] == [True, False, False]
    app_wide = guard.check(RequestInfo("10.0.0.1", key="sk", path="/other"))
    assert app_wide.policies[0].remaining == pytest.approx(8, abs=0.01)


def test_the_startup_line_lists_model_limits() -> None:
    policy = quiet(
        routes={CHAT: Limits(models={"gpt-x": Limits(quotas=(Quota("100/minute", name="rpm"),))})}
    )
    assert (
        "route-POST-v1-chat-completions[];route-POST-v1-chat-completions-model-gpt-x[rpm:100/60s]"
        in (describe_policy(Guard(policy)))
    )


def test_model_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"Limits\.models"):
        Limits(models={"": Limits()})
    with pytest.raises(ConfigError, match=r"Limits\.models"):
        Limits(models={3: Limits()})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"Limits\.models\['m'\]"):
        Limits(models={"m": Limits(models={"n": Limits()})})
    with pytest.raises(ConfigError, match=r"Limits\.models\['m'\]"):
        Limits(models={"m": Limits(routes={"/x": Limits()})})
    with pytest.raises(ConfigError, match=r"Limits\.models.*'m'.*expected Limits"):
        Limits(models={"m": 5})  # type: ignore[dict-item]
    same_name = quiet(
        routes={"/v1/chat": Limits(models={"gpt-4.1": Limits(), "gpt-4-1": Limits()})}
    )
    with pytest.raises(ConfigError, match="same limit name"):
        Guard(same_name)
