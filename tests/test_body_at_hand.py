"""A body the server already holds is read before anything is decided and the request is
decided once, with its content (`_Responder._body_at_hand`); only a body that has to be
waited for goes through the pre-check first, which refuses a client over its limits
without reading more. Either way the app receives every message, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from abuseguard import AbuseGuard, Policy, Scoring, TokenBucket
from abuseguard.request import RequestInfo

BODY = b'{"messages":[{"role":"user","content":"explain step by step how tides work"}]}'


def _scope(key: str = "sk-hand") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json"), (b"x-api-key", key.encode())],
        "client": ("203.0.113.9", 5000),
    }


class _App:
    """Reads the whole body message by message, answers 200, remembers what it read."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.messages.append(message)
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _receive(chunks: list[bytes], wait_before: set[int]) -> Any:
    """Hands out ``chunks`` as http.request messages; before those whose index is in
    ``wait_before`` it has to wait (the client has not sent them yet)."""
    index = 0

    async def receive() -> dict[str, Any]:
        nonlocal index
        i = index
        index += 1
        if i in wait_before:
            await asyncio.sleep(0.01)
        return {
            "type": "http.request",
            "body": chunks[i],
            "more_body": i < len(chunks) - 1,
        }

    return receive


def _run(
    chunks: list[bytes], wait_before: set[int], policy: Policy | None = None, key: str = "sk-hand"
) -> tuple[_App, list[int], list[RequestInfo], int]:
    app = _App()
    seen: list[RequestInfo] = []
    middleware = AbuseGuard(
        app,
        policy=policy or Policy(scoring=Scoring()),
        observers=[lambda info, decision: seen.append(info)],
    )
    guard = middleware.guard
    prechecks = 0
    precheck_reading = guard.precheck_reading

    def counted(info: RequestInfo) -> Any:
        nonlocal prechecks
        prechecks += 1
        return precheck_reading(info)

    guard.precheck_reading = counted  # type: ignore[method-assign]
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    asyncio.run(middleware(_scope(key), _receive(chunks, wait_before), send))
    return app, statuses, seen, prechecks


def test_a_body_at_hand_is_decided_once_with_its_content_and_no_precheck() -> None:
    app, statuses, seen, prechecks = _run([BODY[:20], BODY[20:]], set())
    assert statuses == [200]
    assert prechecks == 0
    assert seen[-1].body == BODY
    assert b"".join(m["body"] for m in app.messages) == BODY
    assert [m["more_body"] for m in app.messages] == [True, False]


def test_a_body_that_must_be_waited_for_is_prechecked_then_read_whole() -> None:
    app, statuses, seen, prechecks = _run([BODY[:20], BODY[20:50], BODY[50:]], {1})
    assert statuses == [200]
    assert prechecks == 1
    assert seen[-1].body == BODY  # the part at hand and the part waited for
    assert b"".join(m["body"] for m in app.messages) == BODY
    assert [m["more_body"] for m in app.messages] == [True, True, False]


def test_a_first_message_that_must_be_waited_for_is_prechecked() -> None:
    app, statuses, seen, prechecks = _run([BODY], {0})
    assert (statuses, prechecks, seen[-1].body) == ([200], 1, BODY)
    assert [m["body"] for m in app.messages] == [BODY]


def test_a_refused_client_is_not_waited_for() -> None:
    """Over its bucket, a client whose body is not all there is refused by the pre-check
    without waiting for the rest (the suspended receive is closed, the app never runs)."""
    policy = Policy(bucket=TokenBucket("1/hour", burst=1), scoring=None)
    app = _App()
    middleware = AbuseGuard(app, policy=policy)
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def main() -> None:
        await middleware(_scope("sk-over"), _receive([BODY], set()), send)
        stalled = asyncio.Event()  # the client never sends the rest

        async def never() -> dict[str, Any]:
            await stalled.wait()
            raise AssertionError("unreachable")

        await asyncio.wait_for(middleware(_scope("sk-over"), never, send), 1.0)

    asyncio.run(main())
    assert statuses == [200, 429]
    assert len(app.messages) == 1  # the first request only
