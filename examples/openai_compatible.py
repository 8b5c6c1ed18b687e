"""An OpenAI-compatible API with a reasoning "model", guarded by the built-in degrade.

What it shows: the ``degrade`` action acting on its own, with no code in the app. When the
guard degrades a client, abuseguard rewrites the request before the app reads it (output
tokens capped at 1,024, ``logprobs``/``top_logprobs``/``logit_bias`` dropped, ``n`` forced
to 1) and withholds the reasoning from the answer (``reasoning_content`` in chat
completions and their stream deltas, reasoning items in the Responses API and its events).
The ``openai`` SDK parses the degraded answers as any other.

The stand-in model answers ``/v1/chat/completions`` and ``/v1/responses``, streaming
(``"stream": true``) or not. It thinks a few words, then writes one placeholder word per
output token allowed (``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``,
default 16), ``n`` choices, and log-probabilities when asked. Its replies are
reproducible (fixed ids and timestamps), and ``app.state.received`` keeps the last request
bodies exactly as the app received them. Run it with::

    uvicorn openai_compatible:app --app-dir examples --no-proxy-headers

and point the SDK at it: ``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-x")``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from abuseguard import AbuseGuard, Action, Enforcement, Enforcer, Policy

CREATED = 1_700_000_000  # a fixed timestamp: the same request gets the same bytes
DEFAULT_OUTPUT_TOKENS = 16
MAX_OUTPUT_TOKENS = 8192
THOUGHTS = ("let", "me", "think", "step", "by", "step")


def example_policy() -> Policy:
    """Risky clients are degraded rather than refused, up to the ladder's throttle."""
    return Policy(
        enforcement=Enforcement(
            ladder=((0.5, Action.LOG), (0.6, Action.DEGRADE), (0.9, Action.THROTTLE))
        )
    )


def output_tokens(body: Mapping[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, MAX_OUTPUT_TOKENS)
    return DEFAULT_OUTPUT_TOKENS


def chat_logprobs(words: list[str], top: int) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": word,
                "logprob": -0.25,
                "bytes": list(word.encode()),
                "top_logprobs": [{"token": word, "logprob": -0.25, "bytes": list(word.encode())}]
                * top,
            }
            for word in words
        ]
    }


def sse(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def chat_reply(body: Mapping[str, Any]) -> dict[str, Any]:
    tokens = output_tokens(body)
    words = ["lorem"] * tokens
    choices = []
    for index in range(int(body.get("n") or 1)):
        choice: dict[str, Any] = {
            "index": index,
            "message": {
                "role": "assistant",
                "content": " ".join(words),
                "reasoning_content": " ".join(THOUGHTS),
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "length",
        }
        if body.get("logprobs"):
            choice["logprobs"] = chat_logprobs(words, int(body.get("top_logprobs") or 0))
        choices.append(choice)
    return {
        "id": "chatcmpl-example",
        "object": "chat.completion",
        "created": CREATED,
        "model": str(body.get("model", "tiny")),
        "choices": choices,
        "usage": {
            "prompt_tokens": 4,
            "completion_tokens": tokens * len(choices),
            "total_tokens": 4 + tokens * len(choices),
            "completion_tokens_details": {"reasoning_tokens": len(THOUGHTS)},
        },
    }


async def chat_stream(body: Mapping[str, Any]) -> AsyncIterator[bytes]:
    head = {
        "id": "chatcmpl-example",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": str(body.get("model", "tiny")),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**head, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    for thought in THOUGHTS:
        yield chunk({"reasoning_content": thought + " "})
    for _ in range(output_tokens(body)):
        yield chunk({"content": "lorem "})
    yield chunk({}, "length")
    yield sse("[DONE]")


def responses_reply(body: Mapping[str, Any]) -> dict[str, Any]:
    tokens = output_tokens(body)
    return {
        "id": "resp_example",
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "model": str(body.get("model", "tiny")),
        "max_output_tokens": body.get("max_output_tokens"),
        "reasoning": body.get("reasoning") or {"effort": "medium", "summary": None},
        "output": [
            {
                "type": "reasoning",
                "id": "rs_example",
                "summary": [{"type": "summary_text", "text": " ".join(THOUGHTS)}],
            },
            {
                "type": "message",
                "id": "msg_example",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": " ".join(["lorem"] * tokens), "annotations": []}
                ],
            },
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 4,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens,
            "output_tokens_details": {"reasoning_tokens": len(THOUGHTS)},
            "total_tokens": 4 + tokens,
        },
    }


async def responses_stream(body: Mapping[str, Any]) -> AsyncIterator[bytes]:
    final = responses_reply(body)
    reasoning, message = final["output"]
    text = message["content"][0]["text"]
    sequence = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, "sequence_number": next(sequence), **fields}, kind)

    yield event("response.created", response={**final, "status": "in_progress", "output": []})
    yield event("response.output_item.added", output_index=0, item={**reasoning, "summary": []})
    part = {"type": "summary_text", "text": ""}
    yield event("response.reasoning_summary_part.added", item_id="rs_example", output_index=0,
                summary_index=0, part=part)  # fmt: skip
    for thought in THOUGHTS:
        yield event("response.reasoning_summary_text.delta", item_id="rs_example",
                    output_index=0, summary_index=0, delta=thought + " ")  # fmt: skip
    yield event("response.output_item.done", output_index=0, item=reasoning)
    empty = {**message, "status": "in_progress", "content": []}
    yield event("response.output_item.added", output_index=1, item=empty)
    blank = {"type": "output_text", "text": "", "annotations": []}
    yield event("response.content_part.added", item_id="msg_example", output_index=1,
                content_index=0, part=blank)  # fmt: skip
    for word in text.split(" "):
        yield event("response.output_text.delta", item_id="msg_example", output_index=1,
                    content_index=0, delta=word + " ", logprobs=[])  # fmt: skip
    yield event("response.output_text.done", item_id="msg_example", output_index=1,
                content_index=0, text=text, logprobs=[])  # fmt: skip
    yield event("response.content_part.done", item_id="msg_example", output_index=1,
                content_index=0, part=message["content"][0])  # fmt: skip
    yield event("response.output_item.done", output_index=1, item=message)
    yield event("response.completed", response=final)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": None}}, status
    )


def create_app(
    policy: Policy | None = None,
    *,
    guarded: bool = True,
    backend: str | None = None,
    enforcers: Mapping[Action | str, Enforcer] | None = None,
    observers: Iterable[Callable[..., Any]] = (),
) -> FastAPI:
    """The API, behind AbuseGuard unless ``guarded`` is False (tests compare the bytes)."""
    app = FastAPI(title="OpenAI-compatible reasoning API")
    received: deque[bytes] = deque(maxlen=32)
    app.state.received = received

    async def read(request: Request) -> dict[str, Any] | JSONResponse:
        raw = await request.body()
        received.append(raw)
        try:
            body = json.loads(raw)
        except ValueError:
            return error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        return body

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Any:
        body = await read(request)
        if isinstance(body, JSONResponse):
            return body
        if body.get("stream"):
            return StreamingResponse(chat_stream(body), media_type="text/event-stream")
        return JSONResponse(chat_reply(body))

    @app.post("/v1/responses", response_model=None)
    async def responses(request: Request) -> Any:
        body = await read(request)
        if isinstance(body, JSONResponse):
            return body
        if body.get("stream"):
            return StreamingResponse(responses_stream(body), media_type="text/event-stream")
        return JSONResponse(responses_reply(body))

    if guarded:
        app.add_middleware(
            AbuseGuard,
            policy=policy if policy is not None else example_policy(),
            backend=backend,
            enforcers=enforcers,
            observers=list(observers),
        )
    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000, proxy_headers=False)
