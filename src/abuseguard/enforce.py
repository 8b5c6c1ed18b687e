"""Enforcers: what each action does to a request, and the protocols for your own.

An :class:`Enforcer` gets the ASGI triple, the decision and ``call_next`` (the app,
wrapped so that rate-limit headers and outcome tracking still apply). It either answers
the client itself or calls ``call_next``. Observers (see ``Guard(observers=...)``) only
watch decisions and never change them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol, runtime_checkable

from abuseguard.decision import Action, Decision, plain_allow_decision
from abuseguard.degrade import DegradeOptions, serve_degraded
from abuseguard.headers import problem_body, rate_limit_headers, retry_after_value

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("abuseguard.enforce")

DEGRADED_STATE_KEY = "abuseguard_degraded"
DECISION_STATE_KEY = "abuseguard_decision"


def decision_in_state(state: MutableMapping[str, Any]) -> Decision | None:
    """The decision the middleware left in a request's state (``scope["state"]``), or
    None. A plain allow is left there as a `PlainAllow` tuple: its Decision is built on
    this first call and kept in its place, so every later reader gets the same object."""
    found = state.get(DECISION_STATE_KEY)
    if isinstance(found, tuple):
        found = state[DECISION_STATE_KEY] = plain_allow_decision(found)
    return found if isinstance(found, Decision) else None


def _refusal_status(action: Action) -> int:
    status = action.refusal_status
    if status is None:
        raise ValueError(f"{action} serves the request; it has no refusal status")
    return status


_CHALLENGE_STATUS = _refusal_status(Action.CHALLENGE)
_THROTTLE_STATUS = _refusal_status(Action.THROTTLE)
_BLOCK_STATUS = _refusal_status(Action.BLOCK)


@runtime_checkable
class Enforcer(Protocol):
    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None: ...


async def send_problem(
    send: Send,
    status: int,
    decision: Decision,
    *,
    legacy: bool = False,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    reveal_reasons: bool = False,
) -> None:
    body = problem_body(status, decision, reveal_reasons=reveal_reasons)
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if status in (429, 503):
        headers.append((b"retry-after", retry_after_value(decision.retry_after).encode()))
    headers += rate_limit_headers(decision, legacy=legacy)
    headers += extra_headers or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Allow:
    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        await call_next(scope, receive, send)


class Log:
    """Serve the request; log the decision (the default for the mildest ladder step)."""

    def __init__(self, logger_name: str = "abuseguard") -> None:
        self.logger = logging.getLogger(logger_name)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        self.logger.info(
            "abuseguard %s identity=%s score=%.3f reasons=%s",
            decision.action.value,
            decision.identity,
            decision.score,
            ",".join(decision.reasons),
        )
        await call_next(scope, receive, send)


class Delay:
    """Tarpit: wait, then serve. Slows scripted clients at little cost to a person."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        await asyncio.sleep(self.seconds)
        await call_next(scope, receive, send)


class Degrade:
    """Serve less: rewrite OpenAI-style requests and withhold reasoning from their
    responses as ``options`` say (see :mod:`abuseguard.degrade`; the default caps output
    tokens at 1,024, drops log-probabilities and logit bias, forces ``n`` to 1 and
    withholds reasoning). It also marks ``request.state.abuseguard_degraded`` so the app
    can serve less on its own terms."""

    def __init__(self, options: DegradeOptions | None = None) -> None:
        self.options = options if options is not None else DegradeOptions()

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        scope.setdefault("state", {})[DEGRADED_STATE_KEY] = True
        await serve_degraded(scope, receive, send, decision, call_next, self.options)

    async def shadow(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        """A shadowed degrade: computed and counted, the request served as it came."""
        await serve_degraded(scope, receive, send, decision, call_next, self.options, apply=False)


ChallengeResponder = Callable[[Scope, Receive, Send, Decision], Awaitable[None]]


class Challenge:
    """Answer with a challenge instead of the resource.

    ``responder`` is an ASGI-like callable ``(scope, receive, send, decision)`` that sends
    the challenge (a CAPTCHA page, a proof-of-work task, a re-authentication demand).
    Without one there is nothing to solve, so the client gets what it can act on: the
    throttle's answer, 429 with Retry-After, RateLimit headers and a problem+json body.
    """

    def __init__(
        self,
        responder: ChallengeResponder | None = None,
        *,
        legacy_headers: bool = False,
        reveal_reasons: bool = False,
    ) -> None:
        self.responder = responder
        self.legacy_headers = legacy_headers
        self.reveal_reasons = reveal_reasons

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        if self.responder is not None:
            await self.responder(scope, receive, send, decision)
            return
        await send_problem(
            send,
            _CHALLENGE_STATUS,
            decision,
            legacy=self.legacy_headers,
            reveal_reasons=self.reveal_reasons,
        )


class Throttle:
    """429 Too Many Requests with Retry-After, RateLimit headers and a problem+json body."""

    def __init__(self, *, legacy_headers: bool = False, reveal_reasons: bool = False) -> None:
        self.legacy_headers = legacy_headers
        self.reveal_reasons = reveal_reasons

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        await send_problem(
            send,
            _THROTTLE_STATUS,
            decision,
            legacy=self.legacy_headers,
            reveal_reasons=self.reveal_reasons,
        )


class Block:
    """403 Forbidden with a problem+json body (bans included)."""

    def __init__(self, *, reveal_reasons: bool = False) -> None:
        self.reveal_reasons = reveal_reasons

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, call_next: ASGIApp
    ) -> None:
        await send_problem(send, _BLOCK_STATUS, decision, reveal_reasons=self.reveal_reasons)


def default_enforcers(
    *,
    delay_seconds: float = 1.0,
    legacy_headers: bool = False,
    reveal_reasons: bool = False,
    degrade: DegradeOptions | None = None,
) -> dict[Action, Enforcer]:
    """The built-in enforcer of every action. ``reveal_reasons`` puts every reason in the
    refusal bodies (`Enforcement.reveal_reasons`); by default they name limit reasons only.
    ``degrade`` is what the degrade action does (`Enforcement.degrade`)."""
    return {
        Action.ALLOW: Allow(),
        Action.LOG: Log(),
        Action.DELAY: Delay(delay_seconds),
        Action.DEGRADE: Degrade(degrade),
        Action.CHALLENGE: Challenge(legacy_headers=legacy_headers, reveal_reasons=reveal_reasons),
        Action.THROTTLE: Throttle(legacy_headers=legacy_headers, reveal_reasons=reveal_reasons),
        Action.BLOCK: Block(reveal_reasons=reveal_reasons),
    }
