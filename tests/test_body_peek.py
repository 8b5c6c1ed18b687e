"""The middleware's body read before deciding (`_Responder._peek_body`): a ``receive`` that
answers at once is read without a timer; one that has to wait is awaited to its end under
the content-read timeout, with its values, exceptions and cancellation passed through as a
plain ``await`` would."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from abuseguard import AbuseGuard, Policy, Scoring
from abuseguard.request import RequestInfo

BODY = b'{"messages":[{"role":"user","content":"hello there"}]}'


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json"), (b"x-api-key", b"sk-peek")],
        "client": ("203.0.113.5", 5000),
    }


class _App:
    """Reads the whole body, answers 200 and remembers what it read."""

    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _middleware(app: _App, seen: list[RequestInfo], timeout: float = 1.5) -> AbuseGuard:
    return AbuseGuard(
        app,
        policy=Policy(scoring=Scoring(content_read_timeout=timeout)),
        observers=[lambda info, decision: seen.append(info)],
    )


async def _collect(message: dict[str, Any], statuses: list[int]) -> None:
    if message["type"] == "http.response.start":
        statuses.append(message["status"])


def test_a_receive_that_waits_is_awaited_to_its_answer() -> None:
    async def main() -> None:
        chunks = [BODY[:10], BODY[10:]]

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.01)  # the body arrives later, in two messages
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        app, seen, statuses = _App(), [], []
        await _middleware(app, seen)(_scope(), receive, lambda m: _collect(m, statuses))
        assert statuses == [200] and app.body == BODY
        assert seen[0].body == BODY  # decided with the body read

    asyncio.run(main())


def test_a_receive_answering_with_a_future_is_awaited_too() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def receive() -> asyncio.Future[dict[str, Any]]:  # an awaitable, not a coroutine
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            message = {"type": "http.request", "body": BODY, "more_body": False}
            loop.call_later(0.01, future.set_result, message)
            return future

        app, seen, statuses = _App(), [], []
        await _middleware(app, seen)(_scope(), receive, lambda m: _collect(m, statuses))
        assert statuses == [200] and app.body == BODY and seen[0].body == BODY

    asyncio.run(main())


def test_a_receive_slower_than_the_timeout_is_decided_without_the_body_and_loses_nothing() -> None:
    async def main() -> None:
        arrived = asyncio.Event()
        cut_short = []

        async def receive() -> dict[str, Any]:
            try:
                await arrived.wait()
            except asyncio.CancelledError:
                cut_short.append(True)  # the timeout reached the receive itself
                raise
            return {"type": "http.request", "body": BODY, "more_body": False}

        asyncio.get_running_loop().call_later(0.3, arrived.set)
        app, seen, statuses = _App(), [], []
        mw = _middleware(app, seen, timeout=0.05)
        await mw(_scope(), receive, lambda m: _collect(m, statuses))
        assert cut_short == [True]
        assert seen[0].body is None  # decided without its content
        assert statuses == [200] and app.body == BODY  # the app still read all of it

    asyncio.run(main())


def test_cancelling_the_request_while_its_body_is_awaited_cancels_the_receive() -> None:
    async def main() -> None:
        waiting = asyncio.Event()
        cancelled = []

        async def receive() -> dict[str, Any]:
            waiting.set()
            try:
                await asyncio.Event().wait()  # never answers
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            raise AssertionError("unreachable")

        app, seen, statuses = _App(), [], []
        task = asyncio.ensure_future(
            _middleware(app, seen)(_scope(), receive, lambda m: _collect(m, statuses))
        )
        await waiting.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled() and cancelled == [True]
        assert statuses == [] and seen == []

    asyncio.run(main())
