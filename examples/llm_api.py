"""An OpenAI-style LLM API on FastAPI, guarded by abuseguard.

What it shows:

* a token bucket measured in **model tokens**, not requests: each route is charged an
  estimate up front (``cost``), and the real usage is reconciled after the response,
  either from a response header (``cost_header``, used by chat completions) or from
  ``request.state.abuseguard_cost`` (used by embeddings);
* the **degrade** hook: when the guard marks a risky client with
  ``request.state.abuseguard_degraded``, the API caps ``max_tokens`` instead of refusing;
* a concurrency limit and a daily token quota beside the bucket, and a risk ladder; the
  quota counts model tokens too (``by_cost``): the real usage replaces the estimate there
  as in the bucket, and a refused request costs neither anything;
* trusted proxies: ``X-Forwarded-For`` is believed only from the CIDRs in
  ``ABUSEGUARD_TRUSTED_PROXIES`` (comma-separated; none by default).

The "model" is a stand-in that writes placeholder words and takes a little time per token,
so the example runs anywhere. Run it with::

    uvicorn llm_api:app --app-dir examples --no-proxy-headers

and call it like the OpenAI API::

    curl -s localhost:8000/v1/chat/completions -H 'Authorization: Bearer sk-test' \\
      -H 'content-type: application/json' \\
      -d '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}'
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from abuseguard import (
    AbuseGuard,
    Action,
    Enforcement,
    Enforcer,
    Policy,
    Quota,
    TokenBucket,
)

USAGE_HEADER = "x-usage-total-tokens"
DEGRADED_MAX_TOKENS = 64
SECONDS_PER_TOKEN = 0.0002  # the stand-in model "generates" 5,000 tokens a second
MODELS = ("tiny", "tiny-instruct")


def trusted_proxies_from_env() -> tuple[str, ...]:
    raw = os.environ.get("ABUSEGUARD_TRUSTED_PROXIES", "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def example_policy(trusted_proxies: Iterable[str] = ()) -> Policy:
    """The policy of this example: model tokens per key, concurrency, a daily quota."""
    return Policy(
        bucket=TokenBucket(
            rate="3000/minute",  # model tokens per API key
            burst=2000,
            cost={
                "POST /v1/chat/completions": 300,  # an estimate, reconciled after the reply
                "POST /v1/embeddings": 20,
                "GET /v1/models": 1,
            },
            cost_header=USAGE_HEADER,
            name="tokens",
        ),
        quotas=(Quota("200000/day", by_cost=True, name="daily-tokens"),),
        concurrency=4,
        enforcement=Enforcement(
            ladder=(
                (0.5, Action.LOG),
                (0.6, Action.DEGRADE),
                (0.8, Action.THROTTLE),
                (0.9, Action.BLOCK),
            )
        ),
        trusted_proxies=tuple(trusted_proxies),
    )


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str = "tiny"
    messages: list[Message] = Field(min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=4096)


class EmbeddingRequest(BaseModel):
    model: str = "tiny"
    input: str | list[str]


def count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def require_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith("sk-"):
        raise HTTPException(401, "missing or malformed API key")
    return token


def create_app(
    policy: Policy | None = None,
    *,
    observers: Iterable[Callable[..., Any]] = (),
    enforcers: Mapping[Action | str, Enforcer] | None = None,
    backend: str | None = None,
    clock: Callable[[], float] | None = None,
    trusted_proxies: Iterable[str] | None = None,
) -> FastAPI:
    """The API with its guard. Arguments override the example's defaults (tests use them)."""
    app = FastAPI(title="tiny LLM API")
    proxies = trusted_proxies_from_env() if trusted_proxies is None else tuple(trusted_proxies)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler fails on a body that is not UTF-8; never answer 500 to that.
        safe = {bytes: lambda raw: raw.decode("utf-8", "replace")}
        return JSONResponse({"detail": jsonable_encoder(exc.errors(), custom_encoder=safe)}, 422)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        require_key(request)
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, response: Response) -> dict[str, Any]:
        require_key(request)
        max_tokens = body.max_tokens
        degraded = bool(getattr(request.state, "abuseguard_degraded", False))
        if degraded:  # the guard found this client risky: serve less instead of refusing
            max_tokens = min(max_tokens, DEGRADED_MAX_TOKENS)
            response.headers["x-max-tokens-capped"] = str(DEGRADED_MAX_TOKENS)
        prompt_tokens = sum(count_tokens(m.content) for m in body.messages)
        completion_tokens = max_tokens  # the stand-in model always writes its full budget
        await asyncio.sleep(completion_tokens * SECONDS_PER_TOKEN)
        total = prompt_tokens + completion_tokens
        response.headers[USAGE_HEADER] = str(total)  # read by the guard: the real cost
        return {
            "id": f"chatcmpl-{time.monotonic_ns():x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(["lorem"] * max_tokens)},
                "finish_reason": "length",
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": total},
        }  # fmt: skip

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        require_key(request)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        tokens = sum(count_tokens(text) for text in inputs)
        request.state.abuseguard_cost = tokens  # the other way to report the real cost
        return {
            "object": "list",
            "model": body.model,
            "data": [{"object": "embedding", "index": i, "embedding": [0.0] * 8}
                     for i in range(len(inputs))],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }  # fmt: skip

    app.add_middleware(
        AbuseGuard,
        policy=policy if policy is not None else example_policy(proxies),
        backend=backend,
        observers=list(observers),
        enforcers=enforcers,
        clock=clock,
    )
    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    # Our trusted_proxies decide who may set X-Forwarded-For; keep uvicorn's own off.
    uvicorn.run(app, host="127.0.0.1", port=8000, proxy_headers=False)
