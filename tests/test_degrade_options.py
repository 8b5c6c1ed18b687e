"""Issue 20: DegradeOptions (per route, per score, effort, the app's step), the filters
in isolation (thinking blocks, chunking), and the replay report's degraded counts."""

from __future__ import annotations

import json
import logging
from types import ModuleType
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard import (
    Action,
    ConfigError,
    Decision,
    DegradeContext,
    DegradeOptions,
    Enforcement,
    Policy,
    Scoring,
)
from abuseguard.degrade import StreamFilter, filter_json_body, rewrite_body, rewrite_request
from abuseguard.replay import run_replay
from abuseguard.report import ReportBuilder, render_table
from abuseguard.testing import serve
from abuseguard.traces import parse_line
from tests.test_examples import load

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
AUTH = {"authorization": "Bearer sk-harvester"}
MESSAGES = [{"role": "system", "content": "be helpful"}, {"role": "user", "content": "hi"}]


def degrade_everyone(options: DegradeOptions) -> Policy:
    return Policy(
        scoring=Scoring(bias=0.0, weak_signals=()),
        enforcement=Enforcement(ladder=((0.4, Action.DEGRADE),), degrade=options),
    )


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load("openai_compatible")


def context(path: str = CHAT, score: float = 0.5) -> DegradeContext:
    decision = Decision(Action.DEGRADE, ("cadence",), score, identity="key:abc")
    return DegradeContext(decision, path, "chat", shadow=False)


# -- options -------------------------------------------------------------------------


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_output_tokens"):
        DegradeOptions(max_output_tokens=0)
    with pytest.raises(ConfigError, match="drop_logprobs"):
        DegradeOptions(drop_logprobs="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reasoning_effort"):
        DegradeOptions(reasoning_effort="tiny")
    with pytest.raises(ConfigError, match="by_score"):
        DegradeOptions(by_score=((0.8, DegradeOptions()), (0.7, DegradeOptions())))
    with pytest.raises(ConfigError, match=r"Enforcement\.degrade"):
        Enforcement(degrade={"max_output_tokens": 5})  # type: ignore[arg-type]


def test_options_per_route_and_per_score() -> None:
    strict = DegradeOptions(max_output_tokens=64)
    mild = DegradeOptions(max_output_tokens=4096, drop_logprobs=False)
    options = DegradeOptions(
        by_score=((0.8, strict),),
        routes={RESPONSES: None, "/v2/chat/completions": mild},
    )
    assert options.for_request(CHAT, 0.6) is options
    assert options.for_request(CHAT, 0.85) is strict
    assert options.for_request(RESPONSES, 0.99) is None
    assert options.for_request("/v2/chat/completions", 0.99) is mild


def test_rewrite_lowers_reasoning_effort_and_never_raises_it() -> None:
    options = DegradeOptions(reasoning_effort="low")
    chat = {"reasoning_effort": "high", "max_tokens": 10}
    assert rewrite_body(chat, options, "chat")
    assert chat == {"reasoning_effort": "low", "max_tokens": 10}
    responses = {"reasoning": {"effort": "xhigh", "summary": "auto"}, "max_output_tokens": 5}
    assert rewrite_body(responses, options, "responses")
    assert responses["reasoning"] == {"effort": "low", "summary": "auto"}
    already_low = {"reasoning_effort": "minimal", "max_tokens": 10}
    assert not rewrite_body(already_low, options, "chat")
    absent = {"max_tokens": 10}
    assert not rewrite_body(absent, options, "chat")
    assert absent == {"max_tokens": 10}  # an effort the client did not ask for stays unset


def test_rewrite_caps_every_token_field_and_adds_the_endpoints_own() -> None:
    options = DegradeOptions(max_output_tokens=100)
    body: dict[str, Any] = {"max_tokens": 500, "max_completion_tokens": 50}
    assert rewrite_body(body, options, "chat")
    assert body == {"max_tokens": 100, "max_completion_tokens": 50}
    for endpoint, name in [
        ("chat", "max_completion_tokens"),
        ("responses", "max_output_tokens"),
        ("completions", "max_tokens"),
    ]:
        empty: dict[str, Any] = {"model": "m"}
        assert rewrite_body(empty, options, endpoint)
        assert empty == {"model": "m", name: 100}
    nothing = DegradeOptions(
        max_output_tokens=None, drop_logprobs=False, drop_logit_bias=False, single_choice=False
    )
    raw = b'{"n": 4, "logprobs": true, "logit_bias": {"1": 2}}'
    assert rewrite_request(raw, nothing, "chat", context()) is None


def test_a_failing_step_leaves_the_built_in_rewrite(caplog: pytest.LogCaptureFixture) -> None:
    def broken(body: dict[str, Any], ctx: DegradeContext) -> None:
        body["model"] = "half-done"
        raise RuntimeError("boom")

    options = DegradeOptions(step=broken)
    raw = b'{"model": "big", "max_tokens": 5000}'
    with caplog.at_level(logging.ERROR, logger="abuseguard.degrade"):
        out = rewrite_request(raw, options, "chat", context())
    assert out is not None and json.loads(out) == {"model": "big", "max_tokens": 1024}
    assert any("degrade step failed" in r.getMessage() for r in caplog.records)


def test_step_routes_to_a_cheaper_model_and_marks_the_cohort(example: ModuleType) -> None:
    seen: list[DegradeContext] = []

    def cheaper(body: dict[str, Any], ctx: DegradeContext) -> None:
        seen.append(ctx)
        body["model"] = "tiny-mini"
        marker = f"[cohort {ctx.cohort or ctx.identity[-8:]}]"
        body["messages"][0]["content"] += " " + marker

    options = DegradeOptions(step=cheaper, routes={RESPONSES: None})
    app = example.create_app(degrade_everyone(options))
    with serve(app) as base:
        chat = httpx.post(base + CHAT, json={"model": "big", "messages": MESSAGES}, headers=AUTH)
        received_chat = json.loads(app.state.received[-1])
        raw = {"model": "big", "input": "hi", "max_output_tokens": 5000}
        responses = httpx.post(base + RESPONSES, json=raw, headers=AUTH)
        received_responses = json.loads(app.state.received[-1])
    assert chat.json()["model"] == "tiny-mini"
    assert received_chat["max_completion_tokens"] == 1024
    (ctx,) = seen
    assert ctx.cohort is None  # nothing assigns cohorts yet
    assert ctx.decision.action is Action.DEGRADE and ctx.identity == ctx.decision.identity
    assert ctx.endpoint == "chat" and ctx.path == CHAT and not ctx.shadow
    assert received_chat["messages"][0]["content"] == f"be helpful [cohort {ctx.identity[-8:]}]"
    # The Responses route was configured out: served exactly as sent, reasoning included.
    assert received_responses == raw
    assert [item["type"] for item in responses.json()["output"]] == ["reasoning", "message"]


def test_withhold_reasoning_off_keeps_the_answer_whole(example: ModuleType) -> None:
    app = example.create_app(degrade_everyone(DegradeOptions(withhold_reasoning=False)))
    with serve(app) as base:
        body = {"model": "m", "messages": MESSAGES, "max_tokens": 3000, "stream": True}
        reply = httpx.post(base + CHAT, json=body, headers=AUTH)
    assert json.loads(app.state.received[-1])["max_tokens"] == 1024
    assert b"reasoning_content" in reply.content


def test_compressed_response_is_passed_through(caplog: pytest.LogCaptureFixture) -> None:
    from abuseguard import AbuseGuard

    payload = b'{"choices": [{"message": {"reasoning_content": "gz"}}]}'

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"br")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    guarded = AbuseGuard(app, policy=degrade_everyone(DegradeOptions()))
    caplog.set_level(logging.INFO, logger="abuseguard.degrade")
    with serve(guarded) as base:
        reply = httpx.post(base + CHAT, json={}, headers={**AUTH, "accept-encoding": "identity"})
    assert reply.status_code == 200
    assert reply.headers["content-encoding"] == "br"
    assert any("compressed" in r.getMessage() for r in caplog.records)


# -- filters -------------------------------------------------------------------------


def test_json_filter_withholds_reasoning_fields_items_and_thinking_blocks() -> None:
    body = {
        "choices": [{"message": {"content": "hi", "reasoning_content": "x", "reasoning": "y"}}],
        "content": [
            {"type": "thinking", "thinking": "secret", "signature": "s"},
            {"type": "redacted_thinking", "data": "zz"},
            {"type": "text", "text": "answer"},
        ],
        "output": [{"type": "reasoning", "summary": []}, {"type": "message", "content": []}],
        "usage": {"completion_tokens_details": {"reasoning_tokens": 7}},
    }
    out = filter_json_body(json.dumps(body).encode())
    assert out is not None
    assert json.loads(out) == {
        "choices": [{"message": {"content": "hi"}}],
        "content": [{"type": "text", "text": "answer"}],
        "output": [{"type": "message", "content": []}],
        "usage": {"completion_tokens_details": {"reasoning_tokens": 7}},
    }
    assert filter_json_body(b'{"choices": [{"message": {"content": "plain"}}]}') is None


def _event(data: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


ANTHROPIC_STREAM = b"".join([
    _event({"type": "message_start", "message": {"id": "m", "content": []}}, "message_start"),
    _event({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": ""}}, "content_block_start"),
    _event({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "plan"}}, "content_block_delta"),
    _event({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig"}}, "content_block_delta"),
    _event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
    _event({"type": "content_block_start", "index": 1,
            "content_block": {"type": "text", "text": ""}}, "content_block_start"),
    _event({"type": "content_block_delta", "index": 1,
            "delta": {"type": "text_delta", "text": "answer"}}, "content_block_delta"),
    _event({"type": "content_block_stop", "index": 1}, "content_block_stop"),
    _event({"type": "message_stop"}, "message_stop"),
])  # fmt: skip


def _filtered(stream: bytes, cuts: list[int]) -> tuple[bytes, int]:
    flt = StreamFilter()
    out = []
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        out.append(flt.feed(stream[last:cut]))
        last = cut
    out.append(flt.close())
    return b"".join(out), flt.withheld


def test_thinking_blocks_are_withheld_and_later_blocks_renumbered() -> None:
    out, withheld = _filtered(ANTHROPIC_STREAM, [])
    events = [json.loads(e.split(b"data: ", 1)[1]) for e in out.split(b"\n\n") if e]
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("message_stop", None),
    ]
    assert b"plan" not in out and b"sig" not in out
    assert withheld == len(ANTHROPIC_STREAM) - len(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(ANTHROPIC_STREAM)), max_size=12))
def test_stream_filter_does_not_depend_on_chunking(cuts: list[int]) -> None:
    assert _filtered(ANTHROPIC_STREAM, cuts) == _filtered(ANTHROPIC_STREAM, [])


def test_crlf_events_keep_their_line_endings() -> None:
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a","reasoning_content":"r"}}]}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    out, _ = _filtered(stream, [5])
    assert (
        out
        == b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\r\n\r\ndata: [DONE]\r\n\r\n'
    )


# -- OpenRouter's structured copy of the reasoning (fails on the code before) ------------


def test_openrouters_reasoning_details_are_withheld_with_the_reasoning() -> None:
    details = [{"type": "reasoning.text", "text": "secret plan", "format": "unknown", "index": 0}]
    delta = {"role": "assistant", "content": "", "reasoning": "secret plan",
             "reasoning_details": details}  # fmt: skip
    chunk = {"id": "gen-1", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
    kept = StreamFilter().feed(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    assert b"secret" not in kept
    assert json.loads(kept.removeprefix(b"data: "))["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
    }
    message = {"role": "assistant", "content": "hi", "reasoning": "secret plan",
               "reasoning_details": details}  # fmt: skip
    body = filter_json_body(json.dumps({"choices": [{"index": 0, "message": message}]}).encode())
    assert body is not None and b"secret" not in body


# -- replay report -------------------------------------------------------------------


class DegradingGuard:
    """A guard that degrades keys starting with "d", shadowed for keys starting with "s"."""

    policy = None
    inflight = 0

    def check(self, info: Any) -> Decision:
        key = info.key or ""
        if key.startswith("d"):
            return Decision(Action.DEGRADE, ("cadence",), 0.7)
        if key.startswith("s"):
            return Decision(Action.DEGRADE, ("cadence",), 0.7, shadow=True)
        return Decision(Action.ALLOW)

    def complete(self, info: Any, decision: Decision, **kwargs: Any) -> None:
        pass


def test_replay_report_counts_degraded_requests_per_label() -> None:
    lines = [
        {"ts": 0, "ip": "1.1.1.1", "key": "d-harvester", "label": "abusive"},
        {"ts": 1, "ip": "1.1.1.1", "key": "d-harvester", "label": "abusive"},
        {"ts": 2, "ip": "1.1.1.2", "key": "s-harvester", "label": "abusive"},
        {"ts": 3, "ip": "2.2.2.2", "key": "d-user", "label": "benign"},
        {"ts": 4, "ip": "2.2.2.3", "key": "ok-user", "label": "benign"},
    ]
    records = [parse_line(json.dumps(line), i + 1) for i, line in enumerate(lines)]
    builder = ReportBuilder()
    run_replay(records, DegradingGuard(), builder)
    report = builder.build()
    abusive, benign = report["labels"]["abusive"], report["labels"]["benign"]
    assert (abusive["degraded"], abusive["shadow_degraded"]) == (2, 1)
    assert (benign["degraded"], benign["shadow_degraded"]) == (1, 0)
    assert "requests degraded: " in render_table(report)


def test_rewritten_request_carries_its_new_content_length() -> None:
    from abuseguard import AbuseGuard

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        reply = json.dumps(
            {"content_length": int(headers[b"content-length"]), "received": json.loads(body)}
        ).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": reply})

    guarded = AbuseGuard(echo, policy=degrade_everyone(DegradeOptions()))
    sent = {"model": "m", "messages": MESSAGES, "max_tokens": 100000, "logit_bias": {"7": 1}}
    with serve(guarded) as base:
        reply = httpx.post(base + CHAT, json=sent, headers=AUTH).json()
    received = reply["received"]
    assert received == {"model": "m", "messages": MESSAGES, "max_tokens": 1024}
    assert reply["content_length"] == len(json.dumps(received, separators=(",", ":")))


# -- what orjson would refuse or change: the standard library's reading is kept ----------


def test_rewrite_keeps_integers_beyond_64_bits_nan_and_lone_surrogates() -> None:
    raw = (
        b'{"max_tokens": 5000, "seed": 123456789012345678901234567890,'
        b' "metadata": {"low": -9223372036854775809, "u64": 18446744073709551615},'
        b' "temperature": NaN, "user": "\\ud800x", "note": "caf\xc3\xa9"}'
    )
    out = rewrite_request(raw, DegradeOptions(), "chat", context())
    assert out is not None
    expected = json.loads(raw)
    expected["max_tokens"] = 1024
    got = json.loads(out)
    assert got.pop("temperature") != got.get("temperature")  # NaN, still NaN
    del expected["temperature"]
    assert got == expected
    assert type(got["seed"]) is int and got["metadata"]["low"] == -9223372036854775809


def test_rewrite_of_a_plain_body_is_compact_utf8() -> None:
    raw = '{"model": "m", "max_tokens": 5000, "messages": [{"role": "user", "content": "café ☕"}]}'
    out = rewrite_request(raw.encode(), DegradeOptions(), "chat", context())
    expected = {
        "model": "m",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "café ☕"}],
    }
    assert out == json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode()


def test_filters_keep_big_integers_in_what_they_rewrite() -> None:
    big = 2**70 + 1
    body = {"id": big, "choices": [{"message": {"content": "hi", "reasoning_content": "x"}}]}
    out = filter_json_body(json.dumps(body).encode())
    assert out is not None and json.loads(out) == {
        "id": big,
        "choices": [{"message": {"content": "hi"}}],
    }
    event = {"id": big, "choices": [{"index": 0, "delta": {"content": "a", "reasoning": "r"}}]}
    stream = b"data: " + json.dumps(event).encode() + b"\n\n"
    kept, _ = _filtered(stream, [])
    assert json.loads(kept.removeprefix(b"data: ")) == {
        "id": big,
        "choices": [{"index": 0, "delta": {"content": "a"}}],
    }


def test_items_whose_type_is_not_a_string_are_kept_not_a_crash() -> None:
    body = {
        "output": [{"type": ["reasoning"], "id": 1}, {"type": "reasoning"}],
        "content": [{"type": {"k": 1}}],
        "reasoning": "r",
    }
    out = filter_json_body(json.dumps(body).encode())
    assert out is not None
    assert json.loads(out) == {
        "output": [{"type": ["reasoning"], "id": 1}],
        "content": [{"type": {"k": 1}}],
    }
    odd = [
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": ["x"]},
         "reasoning": "r"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": {"a": 1}},
         "thinking": "t"},
        {"type": "content_block_delta", "index": 1, "delta": {"type": [1]}, "thinking": "t"},
    ]  # fmt: skip
    kept, _ = _filtered(b"".join(_event(e) for e in odd), [])
    assert [json.loads(e.removeprefix(b"data: ")) for e in kept.split(b"\n\n") if e] == [
        {k: v for k, v in e.items() if k not in ("reasoning", "thinking")} for e in odd
    ]


def test_a_step_that_leaves_an_unencodable_value_falls_back_to_the_built_in_rewrite(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def sets(body: dict[str, Any], ctx: DegradeContext) -> None:
        body["tags"] = {"a", "b"}

    raw = b'{"model": "m", "max_tokens": 5000}'
    with caplog.at_level(logging.ERROR, logger="abuseguard.degrade"):
        out = rewrite_request(raw, DegradeOptions(step=sets), "chat", context())
    assert out is not None and json.loads(out) == {"model": "m", "max_tokens": 1024}
    assert any("degrade step failed" in r.getMessage() for r in caplog.records)


def test_events_that_mention_reasoning_but_carry_none_pass_byte_for_byte() -> None:
    usage = (
        b'data: {"choices": [], "usage": {"completion_tokens_details": '
        b'{"reasoning_tokens": 12}}}\n\n'
    )
    word = b'data: {"choices": [{"index": 0, "delta": {"content": "thinking aloud"}}]}\n\n'
    stream = usage + word + b"data: [DONE]\n\n"
    for cuts in ([], [len(usage)], [3, len(usage) + 5]):
        assert _filtered(stream, cuts) == (stream, 0)


CHAT_STREAM = b"".join([
    _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
    _event({"choices": [{"index": 0, "delta": {"reasoning_content": "plan"}}]}),
    _event({"choices": [{"index": 0, "delta": {"content": "one"}}]}),
    _event({"choices": [{"index": 0, "delta": {"content": "two", "reasoning": "why"}}]}),
    _event({"choices": [{"index": 0, "delta": {"content": "thinking of three"}}]}),
    _event({"choices": [], "usage": {"completion_tokens_details": {"reasoning_tokens": 3}}}),
    b"data: [DONE]\n\n",
])  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(CHAT_STREAM)), max_size=12))
def test_chat_stream_filter_does_not_depend_on_chunking(cuts: list[int]) -> None:
    whole = _filtered(CHAT_STREAM, [])
    assert _filtered(CHAT_STREAM, cuts) == whole
    out = whole[0]
    assert b"plan" not in out and b"why" not in out
    assert b'"thinking of three"' in out and b'"reasoning_tokens": 3' in out
    assert whole[1] == len(CHAT_STREAM) - len(out)
