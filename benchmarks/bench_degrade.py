"""Cost of the built-in degrade (issue 20): request rewriting and stream filtering.

Prints medians, in microseconds:

* ``rewrite``: ``rewrite_request`` on an OpenAI chat body of about 300 bytes (parse, cap
  ``max_tokens``, drop ``logprobs``/``top_logprobs``/``logit_bias``, ``n`` to 1, encode);
* ``enforcer``: one whole ASGI exchange through the ``Degrade`` enforcer minus the same
  through ``Allow`` (request read and rewritten, JSON response with reasoning filtered), on
  a do-nothing app: what degrading adds to a request. Requests that are not degraded never
  reach this code (their enforcer is another one), so they pay nothing;
* ``filter``: ``StreamFilter`` per Server-Sent Event, for chat chunks without reasoning,
  chat chunks that carry only reasoning (a run of alike chunks, withheld without a parse
  after the first; the same each with its own padding field, as OpenAI's
  ``obfuscation``, withheld by a template with holes; the same each with its own ``id``,
  which no template covers: all parsed), chat chunks that carry content and reasoning (the
  reasoning cut from the bytes after the first; with their own ``id``: parsed,
  re-encoded), Responses API text deltas after a withheld reasoning item (renumbered in
  place) and Anthropic thinking deltas (withheld like the run of chat chunks), fed one
  event per chunk; and the same chat stream through the enforcer's ``send`` wrapper, one
  event per ASGI message.

    .venv/bin/python benchmarks/bench_degrade.py [--quick] [--json out.json]

Times are CPU time of this process (``time.process_time``), not wall time, so that waiting
for a core on a shared machine does not count; medians over several repeats, each with the
spread of its repeats. The yardsticks (a stdlib JSON parse and encode of the same bytes) say
how fast this machine and interpreter are: compare figures taken in one run. run_all.py
runs it as its ``degrade`` part; budgets.py holds the budgets of issue 20.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abuseguard import Action, Decision
from abuseguard.degrade import DegradeContext, DegradeOptions, StreamFilter, rewrite_request
from abuseguard.enforce import Allow, Degrade

BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": "Explain, step by step, how a hash map resolves "
                "collisions, and compare open addressing with separate chaining.",
            },
        ],
        "max_tokens": 4096,
        "temperature": 0.7,
        "logprobs": True,
        "top_logprobs": 5,
        "logit_bias": {"50256": -100},
        "n": 4,
    }
).encode()

DECISION = Decision(Action.DEGRADE, ("cadence",), 0.7, identity="key:bench")


def chat_event(delta: dict[str, Any], **extra: Any) -> bytes:
    chunk = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        **extra,
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def responses_event(sequence: int) -> bytes:
    event = {
        "type": "response.output_text.delta",
        "sequence_number": sequence,
        "item_id": "msg_123",
        "output_index": 1,
        "content_index": 0,
        "delta": "word ",
        "logprobs": [],
    }
    data = json.dumps(event, separators=(",", ":"))
    return f"event: response.output_text.delta\ndata: {data}\n\n".encode()


SPREADS: dict[str, tuple[float, float]] = {}  # figure -> (min, max) µs over the repeats


def best_of(
    repeats: int, number: int, func: Callable[[], object], name: str = "", per: int = 1
) -> float:
    """Median CPU seconds per call (per ``per`` items of a call) over ``repeats`` runs of
    ``number`` calls; the min and max go to SPREADS[name]."""
    runs = [
        run / number / per
        for run in timeit.repeat(func, number=number, repeat=repeats, timer=time.process_time)
    ]
    if name:
        SPREADS[name] = (min(runs) * 1e6, max(runs) * 1e6)
    return statistics.median(runs)


def bench_rewrite(repeats: int, number: int) -> float:
    options = DegradeOptions()
    context = DegradeContext(DECISION, "/v1/chat/completions", "chat", shadow=False)
    out = rewrite_request(BODY, options, "chat", context)
    assert out is not None and json.loads(out)["max_tokens"] == 1024
    return best_of(
        repeats, number, lambda: rewrite_request(BODY, options, "chat", context), "rewrite_us"
    )


def bench_filter(events: list[bytes], repeats: int, name: str, prime: bytes = b"") -> float:
    """Seconds per event of a StreamFilter fed ``events`` one per chunk."""

    def run() -> None:
        flt = StreamFilter()
        if prime:
            flt.feed(prime)
        for event in events:
            flt.feed(event)

    return best_of(repeats, 1, run, name, per=len(events))


REPLY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "hello " * 40,
                    "reasoning_content": "thinking " * 20,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60},
    }
).encode()


def exchange_cost(enforcer: Any, repeats: int, number: int, stream: list[bytes] | None) -> float:
    """Seconds per ASGI exchange through ``enforcer`` on an app that reads the body and
    answers ``REPLY`` (or streams ``stream``, one event per message)."""
    scope_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]
    sse = [(b"content-type", b"text/event-stream")]
    json_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(REPLY))]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if stream is None:
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": REPLY})
            return
        await send({"type": "http.response.start", "status": 200, "headers": sse})
        for event in stream:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def many() -> float:
        clock = time.process_time
        runs = []
        for _ in range(repeats):
            started = clock()
            for _ in range(number):
                scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                         "headers": list(scope_headers)}  # fmt: skip
                await enforcer(scope, receive, send, DECISION, app)
            runs.append((clock() - started) / number)
        return statistics.median(runs)

    return asyncio.run(many())


def measure(quick: bool) -> dict[str, Any]:
    """Every figure, in µs, with the sizes they were taken on."""
    repeats, number = (5, 2000) if quick else (9, 20000)
    events = 2000 if quick else 20000
    out: dict[str, Any] = {"body_bytes": len(BODY), "reply_bytes": len(REPLY)}
    # Yardsticks for this machine and interpreter: the stdlib parse and encode of the same
    # bytes, what the rewrite cost before orjson.
    out["yardstick_stdlib_roundtrip_us"] = 1e6 * best_of(
        repeats, number, lambda: json.dumps(json.loads(BODY)), "yardstick_stdlib_roundtrip_us"
    )
    out["rewrite_us"] = 1e6 * bench_rewrite(repeats, number)

    n_exchange = max(number // 10, 200)
    degrade, allow = Degrade(), Allow()
    out["exchange_json_us"] = 1e6 * (
        exchange_cost(degrade, repeats, n_exchange, None)
        - exchange_cost(allow, repeats, n_exchange, None)
    )

    content = [chat_event({"content": f"word{i} "}) for i in range(events)]
    reasoning = [chat_event({"reasoning_content": f"step{i} "}) for i in range(events)]
    # Each with its own envelope: a per-chunk padding field, as OpenAI's "obfuscation" (a
    # hole of the template), or its own id (before the reasoning: no template fits, each
    # is parsed).
    pads = [f"{i * 2654435761 % 2**32:x}" for i in range(events)]
    reasoning_parsed = [
        chat_event({"reasoning_content": f"step{i} "}, obfuscation=pads[i]) for i in range(events)
    ]
    reasoning_unmatched = [
        chat_event({"reasoning_content": f"step{i} "}, id=f"chatcmpl-{pads[i]}")
        for i in range(events)
    ]
    mixed = [
        chat_event({"content": f"word{i} ", "reasoning_content": f"step{i} "})
        for i in range(events)
    ]
    mixed_unmatched = [
        chat_event({"content": f"word{i} ", "reasoning_content": f"step{i} "}, id=f"c-{pads[i]}")
        for i in range(events)
    ]
    withheld_item = (
        b'event: response.output_item.added\ndata: {"type":"response.output_item.added",'
        b'"output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[]}}\n\n'
    )
    responses = [responses_event(i) for i in range(events)]
    thinking_block = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"thinking","thinking":""}}\n\n'
    )
    thinking = [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"thinking_delta","thinking":"step%d "}}\n\n' % i
        for i in range(events)
    ]
    out["chat_chunk_bytes"] = len(content[0])
    out["responses_delta_bytes"] = len(responses[0])
    chunk_json = content[0][6:]
    out["yardstick_stdlib_parse_chunk_us"] = 1e6 * best_of(
        repeats, number, lambda: json.loads(chunk_json), "yardstick_stdlib_parse_chunk_us"
    )
    for name, stream, prime in (
        ("filter_content_us", content, b""),
        ("filter_reasoning_us", reasoning, b""),
        ("filter_reasoning_parsed_us", reasoning_parsed, b""),
        ("filter_reasoning_unmatched_us", reasoning_unmatched, b""),
        ("filter_mixed_us", mixed, b""),
        ("filter_mixed_unmatched_us", mixed_unmatched, b""),
        ("filter_responses_renumbered_us", responses, withheld_item),
        ("filter_thinking_us", thinking, thinking_block),
    ):
        out[name] = 1e6 * bench_filter(stream, repeats, name, prime)
    n_stream = 100
    stream_events = content[:n_stream]
    per_stream = exchange_cost(degrade, repeats, 20, stream_events) - exchange_cost(
        allow, repeats, 20, stream_events
    )
    out["exchange_stream_per_event_us"] = 1e6 * per_stream / n_stream
    out["stream_events_per_exchange"] = n_stream
    out["spreads_us"] = {name: list(spread) for name, spread in SPREADS.items()}
    return out


LABELS = {
    "yardstick_stdlib_roundtrip_us": "yardstick: json.dumps(json.loads(body)) (stdlib)",
    "rewrite_us": "rewrite_request, per request",
    "exchange_json_us": "Degrade - Allow, JSON reply, per request",
    "yardstick_stdlib_parse_chunk_us": "yardstick: json.loads(one chat chunk) (stdlib)",
    "filter_content_us": "filter, chat content chunks, per event",
    "filter_reasoning_us": "filter, chat reasoning chunks (withheld), per event",
    "filter_reasoning_parsed_us": "filter, same, own pad each (template), per event",
    "filter_reasoning_unmatched_us": "filter, same, own id each (parsed), per event",
    "filter_mixed_us": "filter, chat content + reasoning (cut), per event",
    "filter_mixed_unmatched_us": "filter, same, own id each (re-encoded), per event",
    "filter_responses_renumbered_us": "filter, Responses deltas (renumbered), per event",
    "filter_thinking_us": "filter, Anthropic thinking deltas (withheld), per event",
    "exchange_stream_per_event_us": "Degrade - Allow, chat stream, per event",
}


def report(result: dict[str, Any]) -> None:
    print(
        f"degrade cost (CPU µs; request body {result['body_bytes']} B, JSON reply "
        f"{result['reply_bytes']} B, chat chunk {result['chat_chunk_bytes']} B, Responses "
        f"delta {result['responses_delta_bytes']} B, {result['stream_events_per_exchange']} "
        "events a stream, one per ASGI message)"
    )
    spreads = result["spreads_us"]
    for name, label in LABELS.items():
        spread = spreads.get(name)
        extra = f"  (repeats {spread[0]:.2f}-{spread[1]:.2f})" if spread else ""
        print(f"  {label:55s} {result[name]:7.2f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    result = measure(args.quick)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
