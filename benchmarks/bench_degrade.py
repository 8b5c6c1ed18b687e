"""Cost of the built-in degrade (issue 20): request rewriting and stream filtering.

Prints medians, in microseconds:

* ``rewrite``: ``rewrite_request`` on an OpenAI chat body of about 300 bytes (parse, cap
  ``max_tokens``, drop ``logprobs``/``top_logprobs``/``logit_bias``, ``n`` to 1, encode);
* ``enforcer``: one whole ASGI exchange through the ``Degrade`` enforcer minus the same
  through ``Allow`` (request read and rewritten, JSON response with reasoning filtered), on
  a do-nothing app: what degrading adds to a request. Requests that are not degraded never
  reach this code (their enforcer is another one), so they pay nothing;
* ``filter``: ``StreamFilter`` per Server-Sent Event, for chat chunks without reasoning,
  chat chunks that carry only reasoning (parsed and withheld), and Responses API text
  deltas after a withheld reasoning item (renumbered), fed one event per chunk; and the
  same chat stream through the enforcer's ``send`` wrapper, one event per ASGI message.

    .venv/bin/python benchmarks/bench_degrade.py [--quick]

Medians over several repeats; these machines are shared and noisy, so compare figures taken
in one run rather than across runs. Not part of run_all.py: run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import timeit
from collections.abc import Callable
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


def chat_event(delta: dict[str, Any]) -> bytes:
    chunk = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
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


def best_of(repeats: int, number: int, func: Callable[[], object]) -> float:
    """Median seconds per call over ``repeats`` runs of ``number`` calls."""
    runs = timeit.repeat(func, number=number, repeat=repeats)
    return statistics.median(runs) / number


def bench_rewrite(repeats: int, number: int) -> float:
    options = DegradeOptions()
    context = DegradeContext(DECISION, "/v1/chat/completions", "chat", shadow=False)
    out = rewrite_request(BODY, options, "chat", context)
    assert out is not None and json.loads(out)["max_tokens"] == 1024
    return best_of(repeats, number, lambda: rewrite_request(BODY, options, "chat", context))


def bench_filter(events: list[bytes], repeats: int, prime: bytes = b"") -> float:
    """Seconds per event of a StreamFilter fed ``events`` one per chunk."""

    def run() -> None:
        flt = StreamFilter()
        if prime:
            flt.feed(prime)
        for event in events:
            flt.feed(event)

    return best_of(repeats, 1, run) / len(events)


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
        loop = asyncio.get_running_loop()
        runs = []
        for _ in range(repeats):
            started = loop.time()
            for _ in range(number):
                scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                         "headers": list(scope_headers)}  # fmt: skip
                await enforcer(scope, receive, send, DECISION, app)
            runs.append((loop.time() - started) / number)
        return statistics.median(runs)

    return asyncio.run(many())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats, number = (5, 2000) if args.quick else (9, 20000)
    events = 2000 if args.quick else 20000

    print(f"request body: {len(BODY)} bytes")
    # A yardstick for this machine and interpreter: any rewrite must parse and re-encode.
    floor = best_of(repeats, number, lambda: json.dumps(json.loads(BODY)))
    print(f"yardstick: json.dumps(json.loads(body)) {floor * 1e6:7.2f} µs")
    rewrite = bench_rewrite(repeats, number)
    print(f"rewrite_request                          {rewrite * 1e6:7.2f} µs per request")

    n_exchange = number // 10
    degrade, allow = Degrade(), Allow()
    cost_json = exchange_cost(degrade, repeats, n_exchange, None) - exchange_cost(
        allow, repeats, n_exchange, None
    )
    print(f"Degrade - Allow, JSON reply ({len(REPLY)} B)     {cost_json * 1e6:7.2f} µs per request")

    content = [chat_event({"content": f"word{i} "}) for i in range(events)]
    reasoning = [chat_event({"reasoning_content": f"step{i} "}) for i in range(events)]
    withheld_item = (
        b'event: response.output_item.added\ndata: {"type":"response.output_item.added",'
        b'"output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[]}}\n\n'
    )
    responses = [responses_event(i) for i in range(events)]
    print(f"chat chunk: {len(content[0])} bytes, Responses delta: {len(responses[0])} bytes")
    chunk_json = content[0][6:]
    parse = best_of(repeats, number, lambda: json.loads(chunk_json))
    print(f"yardstick: json.loads(one chat chunk)    {parse * 1e6:7.2f} µs")
    for title, stream, prime in (
        ("filter, chat content chunks", content, b""),
        ("filter, chat reasoning chunks (withheld)", reasoning, b""),
        ("filter, Responses deltas (renumbered)", responses, withheld_item),
    ):
        per_event = bench_filter(stream, repeats, prime)
        print(f"{title:40} {per_event * 1e6:7.2f} µs per event")

    n_stream = 100
    stream_events = content[:n_stream]
    per_stream = exchange_cost(degrade, repeats, 20, stream_events) - exchange_cost(
        allow, repeats, 20, stream_events
    )
    print(
        f"Degrade - Allow, chat stream             {per_stream / n_stream * 1e6:7.2f} µs per event"
        f" ({n_stream} events a stream, one per ASGI message)"
    )


if __name__ == "__main__":
    main()
