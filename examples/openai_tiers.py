"""An OpenAI-style API with per-model limits per plan: the app of docs/tutorials/openai-api.md.

What it shows:

* **per-model RPM and TPM per plan**, the way LLM providers publish them: requests and
  tokens per minute for each model, for the free and the pro plan (`Limits.models`,
  keyed by the ``model`` of the JSON body);
* the plan from **authentication middleware** (``conn.user``), and an identity that
  depends on it (``key_func`` reads ``info.connection``): a pro key has its own budget,
  the **free tier shares one budget per address**, so a pile of free keys from one
  address gets no more than one;
* **token cost reported after the response**: the app-wide token bucket is charged an
  estimate up front and the real usage afterwards, from a response header or, for a
  **streamed** answer, from ``request.state.abuseguard_cost`` once the stream ends;
* a route with **its own bucket** (embeddings), and a **route-local limit** declared on
  the endpoint (``Depends(abuseguard.fastapi.limit(...))``, moderations);
* **shadow first**: the module's ``app`` runs in shadow mode (every decision made and
  reported in the headers and logs, none enforced) unless ``ABUSEGUARD_ENFORCE=1``.

The "models" are stand-ins writing placeholder words, so the example runs anywhere::

    uvicorn openai_tiers:app --app-dir examples --no-proxy-headers
    curl -s localhost:8000/v1/chat/completions -H 'Authorization: Bearer sk-free-alice' \\
      -H 'content-type: application/json' \\
      -d '{"model": "gpt-mini", "messages": [{"role": "user", "content": "hi"}]}'
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

import abuseguard.fastapi
from abuseguard import AbuseGuard, Limits, Policy, Quota, RequestInfo, TokenBucket

USAGE_HEADER = "x-usage-total-tokens"
DEFAULT_MAX_TOKENS = 16
EMBEDDING_COST = 100  # tokens charged up front for an embeddings call

# Your user database: API key -> plan.
API_KEYS = {"sk-free-alice": "free", "sk-free-bob": "free", "sk-pro-carol": "pro"}


class KeyUser(BaseUser):
    def __init__(self, key: str, plan: str) -> None:
        self.key = key
        self.plan = plan

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.key


class APIKeyAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        key = conn.headers.get("authorization", "").removeprefix("Bearer ").strip()
        plan = API_KEYS.get(key)
        if plan is None:
            return None  # anonymous: conn.user is an UnauthenticatedUser
        return AuthCredentials(["authenticated"]), KeyUser(key, plan)


def plan_of(conn: HTTPConnection) -> str:
    """The plan set by the authentication middleware; anonymous clients are free."""
    user = conn.user
    return user.plan if isinstance(user, KeyUser) else "free"


def identity_of(info: RequestInfo) -> str | None:
    """A pro key is its own identity; free and anonymous clients share one budget per
    address (None: the guard uses the client address). Replay has no connection: it
    reads the trace's ``plan``."""
    conn = info.connection
    plan = plan_of(conn) if conn is not None else info.plan
    return info.key if plan == "pro" else None


def estimated_tokens(info: RequestInfo) -> float:
    """What a request costs up front, in tokens: the prompt (4 bytes a token) plus the
    output it asks for. The real usage replaces it after the response."""
    if info.path == "/v1/embeddings":
        return EMBEDDING_COST
    if info.path != "/v1/chat/completions":
        return 1
    body = info.body or b""
    try:
        max_tokens = int(json.loads(body).get("max_tokens") or DEFAULT_MAX_TOKENS)
    except (ValueError, AttributeError, TypeError):
        max_tokens = DEFAULT_MAX_TOKENS
    return len(body) // 4 + max_tokens


def per_model(rpm: int, tpm: int) -> Limits:
    """One model's published limits: requests and tokens per minute."""
    return Limits(
        quotas=(
            Quota(f"{rpm}/minute", name="rpm"),
            Quota(f"{tpm}/minute", by_cost=True, name="tpm"),
        )
    )


def example_policy(*, shadow: bool = False) -> Policy:
    return Policy(
        # app-wide: tokens per identity, reconciled with the real usage after the response
        bucket=TokenBucket(
            "40000/minute",
            burst=20000,
            cost=estimated_tokens,
            cost_header=USAGE_HEADER,
            name="tokens",
        ),
        routes={"POST /v1/embeddings": Limits(bucket=TokenBucket("600/minute", burst=300))},
        plans={
            "free": Limits(
                models={"gpt-mini": per_model(3, 2000), "gpt-large": per_model(1, 1000)}
            ),
            "pro": Limits(
                models={"gpt-mini": per_model(60, 200000), "gpt-large": per_model(20, 50000)}
            ),
        },
        plan_func=plan_of,
        key_func=identity_of,
        shadow=shadow,
    )


def completion_words(body: dict[str, Any]) -> list[str]:
    return ["lorem"] * min(int(body.get("max_tokens") or DEFAULT_MAX_TOKENS), 64)


def create_app(*, shadow: bool = False) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        words = completion_words(body)
        prompt_tokens = len(json.dumps(body.get("messages", []))) // 4
        total = prompt_tokens + len(words)
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                for word in words:
                    chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                yield b"data: [DONE]\n\n"
                # Known only now: the guard reads it once the response is complete.
                request.state.abuseguard_cost = total

            return StreamingResponse(events(), media_type="text/event-stream")
        reply = {
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words)},
        }
        return JSONResponse(reply, headers={USAGE_HEADER: str(total)})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"object": "list", "model": body.get("model"), "data": [{"embedding": [0.0]}]}

    @app.post(
        "/v1/moderations",
        dependencies=[Depends(abuseguard.fastapi.limit("10/minute", burst=2))],
    )
    async def moderations() -> dict[str, Any]:
        return {"results": [{"flagged": False}]}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"data": [{"id": "gpt-mini"}, {"id": "gpt-large"}]}

    app.add_middleware(AbuseGuard, policy=example_policy(shadow=shadow))
    # Added last, so it runs first: the guard's plan_func and key_func see conn.user.
    app.add_middleware(AuthenticationMiddleware, backend=APIKeyAuth())
    return app


app = create_app(shadow=os.environ.get("ABUSEGUARD_ENFORCE") != "1")
