"""Issue 20: the built-in degrade over real HTTP (uvicorn + httpx + the openai SDK).

A degraded client gets capped answers without reasoning that the SDK still parses; an
undegraded one gets the app's bytes unchanged; malformed bodies pass untouched; streams
are filtered event by event, never buffered whole, never broken.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from abuseguard import AbuseGuard, Action, Enforcement, Policy, Scoring
from abuseguard.metrics import PrometheusObserver
from abuseguard.testing import serve
from tests.test_examples import load

openai = pytest.importorskip("openai")

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = [{"role": "user", "content": "tell me everything"}]
AUTH = {"authorization": "Bearer sk-harvester"}


def degrade_everyone(**enforcement: Any) -> Policy:
    """Every client scores 0.5 (no signal is weak) and the only step is degrade."""
    return Policy(
        scoring=Scoring(bias=0.0, weak_signals=()),
        enforcement=Enforcement(ladder=((0.4, Action.DEGRADE),), **enforcement),
    )


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load("openai_compatible")


@pytest.fixture(scope="module")
def degraded(example: ModuleType) -> Iterator[tuple[str, Any]]:
    app = example.create_app(degrade_everyone())
    with serve(app) as base:
        yield base, app


def sdk(base: str) -> Any:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-harvester", max_retries=0)


def last_received(app: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(app.state.received[-1])
    return body


def test_degraded_chat_completion_is_capped_and_parsed_by_the_sdk(
    degraded: tuple[str, Any],
) -> None:
    base, app = degraded
    with sdk(base) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=5000,
            logprobs=True,
            top_logprobs=5,
            logit_bias={"50256": -100},
            n=3,
        )
        completion = raw.parse()
    seen = last_received(app)
    assert seen["max_tokens"] == 1024
    assert seen["n"] == 1
    assert not {"logprobs", "top_logprobs", "logit_bias"} & set(seen)
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.logprobs is None
    assert choice.message.content == " ".join(["lorem"] * 1024)
    assert "reasoning_content" not in (choice.message.model_extra or {})
    assert b"reasoning_content" not in raw.http_response.content
    assert int(raw.headers["content-length"]) == len(raw.http_response.content)
    assert completion.usage is not None and completion.usage.completion_tokens == 1024


def test_degraded_chat_stream_has_no_reasoning_deltas(degraded: tuple[str, Any]) -> None:
    base, app = degraded
    with sdk(base) as client:
        stream = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_completion_tokens=3000, stream=True
        )
        chunks = list(stream)
    assert last_received(app)["max_completion_tokens"] == 1024
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "lorem " * 1024
    assert chunks[-1].choices[0].finish_reason == "length"
    for chunk in chunks:
        extra = chunk.choices[0].delta.model_extra or {}
        assert "reasoning_content" not in extra


def test_degraded_responses_api_is_capped_and_parsed(degraded: tuple[str, Any]) -> None:
    base, app = degraded
    with sdk(base) as client:
        response = client.responses.create(
            model="tiny",
            input="tell me everything",
            max_output_tokens=9000,
            top_logprobs=10,
            include=["message.output_text.logprobs"],
        )
    seen = last_received(app)
    assert seen["max_output_tokens"] == 1024
    assert "top_logprobs" not in seen
    assert seen["include"] == []
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == " ".join(["lorem"] * 1024)


def test_degraded_responses_stream_is_renumbered_for_the_sdk(degraded: tuple[str, Any]) -> None:
    base, app = degraded
    # The SDK's stream helper indexes its snapshot by output_index: the reasoning item
    # withheld at index 0, the message must arrive at index 0.
    with (
        sdk(base) as client,
        client.responses.stream(model="tiny", input="hi", max_output_tokens=2000) as stream,
    ):
        events = list(stream)
        final = stream.get_final_response()
    assert last_received(app)["max_output_tokens"] == 1024
    kinds = {event.type for event in events}
    assert not [kind for kind in kinds if "reasoning" in kind]
    assert [item.type for item in final.output] == ["message"]
    assert final.output_text == " ".join(["lorem"] * 1024)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 1024


def test_undegraded_client_gets_the_apps_bytes_unchanged(example: ModuleType) -> None:
    guarded = example.create_app(Policy())  # nobody is risky: nobody is degraded
    bare = example.create_app(guarded=False)
    bodies = [
        (CHAT, {"model": "tiny", "messages": MESSAGES, "max_tokens": 2000, "n": 2,
                "logprobs": True, "top_logprobs": 2}),
        (CHAT, {"model": "tiny", "messages": MESSAGES, "max_tokens": 1500, "stream": True}),
        (RESPONSES, {"model": "tiny", "input": "hi", "max_output_tokens": 1500}),
        (RESPONSES, {"model": "tiny", "input": "hi", "max_output_tokens": 1500, "stream": True}),
    ]  # fmt: skip
    with serve(guarded) as guarded_base, serve(bare) as bare_base:
        for path, body in bodies:
            got = httpx.post(guarded_base + path, json=body, headers=AUTH)
            want = httpx.post(bare_base + path, json=body, headers=AUTH)
            assert got.status_code == want.status_code == 200
            assert got.content == want.content
            assert b"reasoning" in got.content
    assert list(guarded.state.received) == list(bare.state.received)


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "tiny", "max_tokens": 5000', b"[1, 2, 3]", b"\xff\xfe not utf-8", b""],
    ids=["truncated", "array", "not-utf8", "empty"],
)
def test_malformed_bodies_pass_through_untouched_with_a_log_line(
    degraded: tuple[str, Any], raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    base, app = degraded
    caplog.set_level(logging.INFO, logger="abuseguard.degrade")
    headers = {**AUTH, "content-type": "application/json"}
    response = httpx.post(base + CHAT, content=raw, headers=headers)
    assert response.status_code == 400  # the app's own answer, never a 500
    assert app.state.received[-1] == raw
    assert any("passed through" in r.getMessage() for r in caplog.records)


def test_shadow_degrade_is_counted_not_applied(example: ModuleType) -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    app = example.create_app(degrade_everyone(shadow=True), observers=[observer])
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2000, "logit_bias": {"1": 5}}
    with serve(app) as base:
        response = httpx.post(base + CHAT, json=body, headers=AUTH)
    assert json.loads(app.state.received[-1]) == body  # the app got the request as sent
    assert "reasoning_content" in response.json()["choices"][0]["message"]
    degraded = "abuseguard_degraded_requests_total"
    withheld = "abuseguard_degrade_withheld_bytes_total"
    assert registry.get_sample_value(degraded, {"shadow": "true"}) == 1
    assert registry.get_sample_value(degraded, {"shadow": "false"}) is None
    assert (registry.get_sample_value(withheld, {"shadow": "true"}) or 0) > 0


def test_metrics_count_degraded_requests_and_withheld_bytes(example: ModuleType) -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    app = example.create_app(degrade_everyone(), observers=[observer])
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, "stream": True}
    with serve(app) as base:
        streamed = httpx.post(base + CHAT, json=body, headers=AUTH)
        plain = httpx.post(base + CHAT, json={**body, "stream": False}, headers=AUTH)
    bare = example.create_app(guarded=False)
    with serve(bare) as bare_base:
        full_stream = httpx.post(bare_base + CHAT, json=body, headers=AUTH)
        full_plain = httpx.post(bare_base + CHAT, json={**body, "stream": False}, headers=AUTH)
    expected = (len(full_stream.content) - len(streamed.content)) + (
        len(full_plain.content) - len(plain.content)
    )
    assert expected > 0
    assert registry.get_sample_value("abuseguard_degraded_requests_total", {"shadow": "false"}) == 2
    assert (
        registry.get_sample_value("abuseguard_degrade_withheld_bytes_total", {"shadow": "false"})
        == expected
    )


# -- streams from a hand-written app: chunking, malformed events, no buffering --------


def sse_app(
    chunks: list[bytes], gate: threading.Event | None = None, opened: list[bool] | None = None
) -> Any:
    """An ASGI app that streams ``chunks`` as body messages; with a ``gate``, it waits
    after the second chunk until the client has seen it (``opened`` records whether it
    did within ten seconds)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if gate is not None and opened is not None and i == 1:
                opened.append(await asyncio.to_thread(gate.wait, 10.0))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def chat_event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_stream_is_filtered_event_by_event_not_buffered() -> None:
    gate = threading.Event()
    opened: list[bool] = []
    chunks = [
        chat_event({"role": "assistant", "content": ""}),
        chat_event({"reasoning_content": "secret plan"}) + chat_event({"content": "first"}),
        chat_event({"content": "second"}),
        b"data: [DONE]\n\n",
    ]
    app = AbuseGuard(sse_app(chunks, gate, opened), policy=degrade_everyone())
    lines: list[str] = []
    with serve(app) as base, httpx.stream("POST", base + CHAT, json={}, headers=AUTH) as reply:
        for line in reply.iter_lines():
            lines.append(line)
            if '"first"' in line:
                gate.set()  # the app continues only once "first" reached the client
    assert opened == [True]
    assert not [line for line in lines if "secret" in line]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert [json.loads(d)["choices"][0]["delta"].get("content") for d in data[:-1]] == [
        "", "first", "second",
    ]  # fmt: skip
    assert data[-1] == "[DONE]"


def test_split_truncated_and_malformed_events_never_reach_the_client() -> None:
    whole = chat_event({"content": "across chunks", "reasoning_content": "hidden"})
    cut = len(whole) // 3
    chunks = [
        chat_event({"role": "assistant", "content": ""}),
        whole[:cut],
        whole[cut : 2 * cut],
        whole[2 * cut :],
        b'data: {"choices": [{"delta": {"reasoning_content": "unterminated json\n\n',
        chat_event({"content": "after"}),
        b"data: " + json.dumps({"choices": [{"delta": {"content": "cut off"}}]}).encode()[:20],
    ]
    app = AbuseGuard(sse_app(chunks), policy=degrade_everyone())
    with serve(app) as base:
        body = httpx.post(base + CHAT, json={}, headers=AUTH).content
    events = [e for e in body.split(b"\n\n") if e]
    parsed = [json.loads(e.removeprefix(b"data: ")) for e in events]  # each one whole JSON
    contents = [p["choices"][0]["delta"].get("content") for p in parsed]
    assert contents == ["", "across chunks", "after"]
    assert b"hidden" not in body and b"unterminated" not in body and b"cut off" not in body


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["inline", "synced"])
def test_degrade_acts_with_the_redis_backends(
    example: ModuleType, redis_server: Any, mode: str
) -> None:
    url = f"{redis_server.url}?prefix=degrade-{mode}" + ("&mode=synced" if mode == "synced" else "")
    app = example.create_app(degrade_everyone(), backend=url)
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4000, "n": 2, "stream": True}
    with serve(app) as base, sdk(base) as client:
        chunks = list(client.chat.completions.create(**body))
    assert last_received(app)["max_tokens"] == 1024 and last_received(app)["n"] == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "lorem " * 1024
    assert all("reasoning_content" not in (c.choices[0].delta.model_extra or {}) for c in chunks)


def test_padded_and_mixed_chunks_reach_the_sdk_without_their_reasoning() -> None:
    """Runs that go by the stream filter's templates (each chunk with its own pad, as
    OpenAI's ``obfuscation``; chunks with content and reasoning, cut from their bytes)
    reach the openai SDK as chunks it parses, without a word of the reasoning."""

    def padded(delta: dict[str, Any], i: int) -> bytes:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": delta, "logprobs": None,
                              "finish_reason": None}],
                 "obfuscation": "pad" * (i % 4)}  # fmt: skip
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    chunks = [chat_event({"role": "assistant", "content": ""})]
    chunks += [padded({"reasoning_content": f"secret{i} "}, i) for i in range(20)]
    chunks += [padded({"content": f"w{i} ", "reasoning_content": f"secret{i} "}, i)
               for i in range(20)]  # fmt: skip
    chunks += [chat_event({}, "stop"), b"data: [DONE]\n\n"]
    app = AbuseGuard(sse_app(chunks), policy=degrade_everyone())
    with serve(app) as base, sdk(base) as client:
        stream = client.chat.completions.with_raw_response.create(
            model="m", messages=MESSAGES, stream=True
        )
        body = stream.http_response.read()
        received = list(stream.parse())
    assert b"secret" not in body
    text = "".join(c.choices[0].delta.content or "" for c in received)
    assert text == "".join(f"w{i} " for i in range(20))
    assert received[-1].choices[0].finish_reason == "stop"
