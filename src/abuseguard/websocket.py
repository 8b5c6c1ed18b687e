"""WebSocket limits at the ASGI level: connection attempts, open connections, messages.

:class:`WebSocketLimiter` serves the ``websocket`` scopes of an :class:`AbuseGuard` whose
policy has a :class:`~abuseguard.policy.WebSocketPolicy`. Per connection attempt it

1. runs the handshake through the guard like an HTTP GET (``guard_handshake``): bans,
   deny lists, scoring and the main bucket apply, and observers see the decision;
2. charges the ``connect`` bucket of the identity and checks ``max_connections``;
3. refuses the handshake, when one of these says no, with an HTTP 429 (limits) or 403
   (risk) response through the ASGI denial-response extension
   (``websocket.http.response``) when the server offers it, else with ``websocket.close``
   before accept (1013 "try again later" for limits, 1008 "policy violation" for risk);
4. otherwise passes the connection to the app with ``receive`` wrapped: every
   ``websocket.receive`` costs the ``messages`` bucket of this connection; over the limit
   the client gets ``websocket.close`` with ``message_close_code`` (1009 for an oversized
   message) and the app gets ``websocket.disconnect`` with the same code.

Every refusal and every close is reported to the guard's observers as a Decision
(reasons ``rate`` or ``concurrency``, a policy named after the bucket), so metrics and
logs see WebSocket limits like HTTP ones. The state lives in the process (per worker).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from abuseguard.decision import DENIAL_ACTIONS, Action, Decision, PolicyState
from abuseguard.enforce import (
    DECISION_STATE_KEY,
    ASGIApp,
    Enforcer,
    Message,
    Receive,
    Scope,
    Send,
)
from abuseguard.headers import problem_body, rate_limit_headers, retry_after_value
from abuseguard.policy import Policy, TokenBucket, WebSocketPolicy
from abuseguard.request import RequestInfo

if TYPE_CHECKING:
    from abuseguard.guard import Guard

logger = logging.getLogger("abuseguard.websocket")

DENIAL_EXTENSION = "websocket.http.response"
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

_DENIALS = DENIAL_ACTIONS


class WebSocketHost(Protocol):
    """What the limiter needs from the middleware it serves (``AbuseGuard`` is one)."""

    @property
    def app(self) -> ASGIApp: ...
    @property
    def guard(self) -> Guard: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def enforcers(self) -> Mapping[Action, Enforcer]: ...
    @property
    def fail_open(self) -> bool: ...
    @property
    def started(self) -> bool: ...
    async def startup(self) -> None: ...
    def request_info(self, scope: Scope) -> RequestInfo: ...


class Bucket:
    """A plain token bucket on an external clock (no risk adaptation).

    Starts full; refills ``per_second`` up to ``capacity``. ``take`` answers whether
    ``cost`` tokens were taken and, when not, how many seconds until they would be.
    """

    __slots__ = ("capacity", "per_second", "tokens", "ts")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.tokens = capacity
        self.ts = now

    def take(self, cost: float, now: float) -> tuple[bool, float]:
        if now > self.ts:
            self.tokens = min(self.capacity, self.tokens + (now - self.ts) * self.per_second)
            self.ts = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True, 0.0
        return False, (cost - self.tokens) / self.per_second

    def state(self, name: str, violated: bool) -> PolicyState:
        reset = (self.capacity - self.tokens) / self.per_second
        return PolicyState(
            name, self.capacity, self.capacity / self.per_second, self.tokens, reset, violated
        )


class ConnectionTable:
    """Connect buckets and open-connection counts per identity, bounded in size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buckets: dict[str, Bucket] = {}
        self.open: dict[str, int] = {}

    def bucket(self, identity: str, spec: TokenBucket, now: float) -> Bucket:
        bucket = self.buckets.pop(identity, None)
        if bucket is None:
            if len(self.buckets) >= self.capacity:
                # Evict the least recently used: dicts keep insertion order and every hit
                # re-inserts, so the first key is the stalest.
                del self.buckets[next(iter(self.buckets))]
            bucket = Bucket(spec.capacity, spec.per_second, now)
        self.buckets[identity] = bucket
        return bucket

    def enter(self, identity: str) -> None:
        self.open[identity] = self.open.get(identity, 0) + 1

    def leave(self, identity: str) -> None:
        count = self.open.get(identity, 0) - 1
        if count > 0:
            self.open[identity] = count
        else:
            self.open.pop(identity, None)


class WebSocketLimiter:
    """Applies a :class:`WebSocketPolicy` to the websocket scopes of one AbuseGuard."""

    def __init__(self, middleware: WebSocketHost, policy: WebSocketPolicy) -> None:
        self.middleware = middleware
        self.policy = policy
        self.table = ConnectionTable(middleware.policy.max_identities)

    def reset(self) -> None:
        """Forget every connect bucket and open-connection count."""
        self.table = ConnectionTable(self.middleware.policy.max_identities)

    @property
    def _shadow(self) -> bool:
        return self.policy.shadow or self.middleware.policy.shadow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mw = self.middleware
        guard = mw.guard
        if not mw.started:
            await mw.startup()
        policy = self.policy
        try:
            info = mw.request_info(scope)
            info.method = "GET"
            exempt = guard.exempt_paths
            if exempt and exempt.matches(info.path):
                await mw.app(scope, receive, send)
                return
            decision = await guard.acheck(info) if policy.guard_handshake else None
            identity, _, address = guard.identity_of(info)
            if policy.per == "ip":
                identity = "i:" + address.ip_key
        except Exception:
            logger.exception(
                "abuseguard failed to decide a WebSocket handshake; failing %s",
                "open" if mw.fail_open else "closed",
            )
            if mw.fail_open:
                await mw.app(scope, receive, send)
            else:
                await _refuse(
                    scope, receive, send, 503, CLOSE_INTERNAL_ERROR, Decision(Action.BLOCK)
                )
            return

        if decision is not None and decision.enforced_action in _DENIALS:
            await self._refuse_and_release(scope, receive, send, info, decision)
            return
        refusal = self._admit(guard, info, identity)
        if refusal is not None:
            self._notify(guard, info, refusal)
            if not refusal.shadow:
                if decision is not None:
                    guard.complete(info, decision)
                await _refuse(scope, receive, send, 429, CLOSE_TRY_AGAIN_LATER, refusal)
                return

        if decision is not None:  # current_decision(websocket) works as for HTTP
            scope.setdefault("state", {})[DECISION_STATE_KEY] = decision
        connection = _Connection(self, guard, info, identity, receive, send, decision)
        self.table.enter(identity)
        try:
            if decision is None:
                await mw.app(scope, connection.receive, connection.send)
            else:
                enforcer = mw.enforcers[decision.enforced_action]
                await enforcer(scope, connection.receive, connection.send, decision, mw.app)
        finally:
            self.table.leave(identity)
            if decision is not None:
                try:
                    guard.complete(info, decision)
                except Exception:
                    logger.exception("abuseguard failed to record a WebSocket outcome")

    async def _refuse_and_release(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        info: RequestInfo,
        decision: Decision,
    ) -> None:
        try:
            self.middleware.guard.complete(info, decision)
        except Exception:
            logger.exception("abuseguard failed to record a WebSocket outcome")
        status = decision.enforced_action.refusal_status or 403
        code = CLOSE_TRY_AGAIN_LATER if status == 429 else CLOSE_POLICY_VIOLATION
        reveal = self.middleware.policy.enforcement.reveal_reasons
        await _refuse(scope, receive, send, status, code, decision, reveal)

    def _admit(self, guard: Guard, info: RequestInfo, identity: str) -> Decision | None:
        """Charge the connect bucket and check open connections; a Decision when refused."""
        policy = self.policy
        now = guard.clock()
        spec = policy.connect
        if spec is not None:
            bucket = self.table.bucket(identity, spec, now)
            cost = _numeric_cost(spec)
            ok, wait = bucket.take(cost, now)
            if not ok:
                return Decision(
                    Action.THROTTLE,
                    ("rate",),
                    retry_after=wait,
                    remaining=bucket.tokens,
                    shadow=self._shadow or spec.shadow,
                    identity=identity,
                    policies=(bucket.state(spec.name, True),),
                    cost=cost,
                )
        limit = policy.max_connections
        if limit is not None and self.table.open.get(identity, 0) >= limit:
            state = PolicyState("ws-connections", limit, 1.0, 0.0, 1.0, True)
            return Decision(
                Action.THROTTLE,
                ("concurrency",),
                retry_after=1.0,
                remaining=0.0,
                shadow=self._shadow,
                identity=identity,
                policies=(state,),
                cost=0.0,
            )
        return None

    def _notify(self, guard: Guard, info: RequestInfo, decision: Decision) -> None:
        if guard.observers:
            guard.notify(info, decision)


class _Connection:
    """One accepted connection: counts messages, adds headers to accept, closes on abuse."""

    __slots__ = (
        "bucket",
        "closed_with",
        "decision",
        "guard",
        "identity",
        "info",
        "limiter",
        "max_bytes",
        "message_cost",
        "raw_receive",
        "raw_send",
        "spec",
    )

    def __init__(
        self,
        limiter: WebSocketLimiter,
        guard: Guard,
        info: RequestInfo,
        identity: str,
        receive: Receive,
        send: Send,
        decision: Decision | None,
    ) -> None:
        self.limiter = limiter
        self.guard = guard
        self.info = info
        self.identity = identity
        self.raw_receive = receive
        self.raw_send = send
        self.decision = decision
        self.spec = limiter.policy.messages
        self.message_cost = _numeric_cost(self.spec) if self.spec is not None else 0.0
        self.bucket = (
            Bucket(self.spec.capacity, self.spec.per_second, guard.clock())
            if self.spec is not None
            else None
        )
        self.max_bytes = limiter.policy.max_message_bytes
        self.closed_with: int | None = None

    async def receive(self) -> Message:
        if self.closed_with is not None:
            return {"type": "websocket.disconnect", "code": self.closed_with}
        message = await self.raw_receive()
        if message["type"] != "websocket.receive":
            return message
        code = self._violation(message)
        if code is None:
            return message
        await self.raw_send(
            {
                "type": "websocket.close",
                "code": code,
                "reason": "message limit exceeded"
                if code != CLOSE_MESSAGE_TOO_BIG
                else "message too big",
            }
        )
        self.closed_with = code
        return {"type": "websocket.disconnect", "code": code}

    def _violation(self, message: Message) -> int | None:
        """The close code when this message breaks a limit that is enforced, else None."""
        limiter = self.limiter
        if self.max_bytes is not None and _size_over(message, self.max_bytes):
            state = PolicyState("ws-message-bytes", self.max_bytes, 1.0, 0.0, 0.0, True)
            decision = Decision(
                Action.BLOCK,
                ("message_size",),
                identity=self.identity,
                shadow=limiter._shadow,
                policies=(state,),
                cost=0.0,
            )
            limiter._notify(self.guard, self.info, decision)
            return None if decision.shadow else CLOSE_MESSAGE_TOO_BIG
        bucket = self.bucket
        if bucket is None or self.spec is None:
            return None
        ok, wait = bucket.take(self.message_cost, self.guard.clock())
        if ok:
            return None
        decision = Decision(
            Action.THROTTLE,
            ("rate",),
            retry_after=wait,
            remaining=bucket.tokens,
            shadow=limiter._shadow or self.spec.shadow,
            identity=self.identity,
            policies=(bucket.state(self.spec.name, True),),
            cost=self.message_cost,
        )
        limiter._notify(self.guard, self.info, decision)
        return None if decision.shadow else limiter.policy.message_close_code

    async def send(self, message: Message) -> None:
        if self.closed_with is not None:
            return  # the guard closed the connection; the app's late messages go nowhere
        if message["type"] == "websocket.accept" and self.decision is not None:
            extra = rate_limit_headers(
                self.decision, legacy=self.limiter.middleware.policy.legacy_headers
            )
            if extra:
                message = {**message, "headers": [*(message.get("headers") or []), *extra]}
        await self.raw_send(message)


def _numeric_cost(bucket: TokenBucket) -> float:
    """A WebSocket bucket's cost: always a number (`WebSocketPolicy` refuses the others)."""
    cost = bucket.cost
    if not isinstance(cost, int | float):
        raise TypeError(f"a WebSocket bucket's cost must be a number, got {cost!r}")
    return float(cost)


def _size_over(message: Message, limit: int) -> bool:
    data = message.get("bytes")
    if data is not None:
        return len(data) > limit
    text = message.get("text")
    if text is None:
        return False
    if len(text) > limit:
        return True  # every character is at least one byte
    return len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: int,
    decision: Decision,
    reveal_reasons: bool = False,
) -> None:
    """Refuse a handshake: an HTTP response when the server can send one, else a close.
    The body names limit reasons only, unless ``reveal_reasons``."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client is gone already
    extensions = scope.get("extensions") or {}
    if DENIAL_EXTENSION in extensions:
        body = problem_body(status, decision, reveal_reasons=reveal_reasons)
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status in (429, 503):
            headers.append((b"retry-after", retry_after_value(decision.retry_after).encode()))
        headers += rate_limit_headers(decision)
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": code})


__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TRY_AGAIN_LATER",
    "Bucket",
    "ConnectionTable",
    "WebSocketLimiter",
]
