"""AbuseGuard: the pure-ASGI middleware around a Guard.

Per request a :class:`_Responder` builds the RequestInfo from the scope, asks the guard,
runs the enforcer of the decided action, and wraps ``send`` to add the RateLimit headers,
track the status and the real cost, and release concurrency when the response ends,
fails or the client goes away. Lifespan startup/shutdown connect and close the backend.
WebSocket scopes go to a :class:`WebSocketLimiter` when the policy has a ``websocket``
part; other scopes pass through untouched.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any

from abuseguard.account import AccountFacts, as_facts
from abuseguard.backends.base import Backend
from abuseguard.config_check import check_callables
from abuseguard.decision import Action, Decision, PlainAllow, plain_allow_decision
from abuseguard.enforce import (
    DECISION_STATE_KEY,
    Allow,
    ASGIApp,
    Degrade,
    Enforcer,
    Message,
    Receive,
    Scope,
    Send,
    decision_in_state,
    default_enforcers,
)
from abuseguard.errors import ConfigError
from abuseguard.guard import Guard, Observer
from abuseguard.headers import plain_allow_header_items, rate_limit_header_items
from abuseguard.identity import (
    CREDENTIAL_HEADERS,
    api_key_from_headers,
    api_key_from_values,
    client_ip,
    peer_is_trusted,
    rightmost_list_items,
)
from abuseguard.intel.geo import GeoIntel
from abuseguard.keyprobe import INVALID_KEY_STATE_KEY
from abuseguard.model_limits import MODEL_BODY_BYTES, has_models
from abuseguard.policy import Policy, Scoring
from abuseguard.request import RequestInfo
from abuseguard.route_local import GUARD_STATE_KEY, find_route_limits
from abuseguard.route_local import prepare as prepare_route_local
from abuseguard.routes import RouteResolver, route_templates, unmatched_patterns
from abuseguard.scope_headers import ScopeHeaders
from abuseguard.websocket import WebSocketLimiter

logger = logging.getLogger("abuseguard")

COST_STATE_KEY = "abuseguard_cost"
_MAX_CACHED_CHAIN = 256  # proxy header values up to this long are cached per chain
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_ALLOW = Action.ALLOW
_DEGRADE = Action.DEGRADE


class AbuseGuard:
    """ASGI middleware: ``app.add_middleware(AbuseGuard, policy=Policy(...))``.

    ``backend`` is a Backend or a URI ("memory://", "redis://host:6379/0", ...).
    ``enforcers`` replaces the built-in enforcer of any action. ``observers`` see every
    decision (sync or async callables of ``(info, decision)``). ``fail_open``: when the
    guard itself fails (a bug, a backend outage it cannot absorb) the request is served
    (True) or refused with 503 (False); either way it is logged and never a 500.
    ``freeze_gc``: `Guard`'s (ignored with ``guard``, which has its own): after start-up,
    ``gc.freeze()`` the process's objects so full collections skip them.
    """

    def __init__(
        self,
        app: ASGIApp,
        policy: Policy | None = None,
        backend: Backend | str | None = None,
        *,
        guard: Guard | None = None,
        enforcers: Mapping[Action | str, Enforcer] | None = None,
        observers: Iterable[Observer] = (),
        clock: Callable[[], float] | None = None,
        intel: GeoIntel | None = None,
        fail_open: bool = True,
        freeze_gc: bool = True,
    ) -> None:
        self.app = app
        if not isinstance(fail_open, bool):
            raise ConfigError("fail_open", f"expected a bool, got {fail_open!r}")
        if guard is not None and not isinstance(guard, Guard):
            raise ConfigError("guard", f"expected a Guard or None, got {guard!r}")
        observers = check_callables("observers", observers)
        self.guard = (
            guard
            if guard is not None
            else Guard(
                policy,
                backend,
                clock=clock,
                intel=intel,
                observers=observers,
                freeze_gc=freeze_gc,
            )
        )
        if guard is not None:
            self.guard.observers.extend(observers)
        policy = self.guard.policy
        self.policy = policy
        self.enforcers: dict[Action, Enforcer] = default_enforcers(
            delay_seconds=policy.enforcement.delay_seconds,
            legacy_headers=policy.legacy_headers,
            reveal_reasons=policy.enforcement.reveal_reasons,
            degrade=policy.enforcement.degrade,
        )
        if enforcers is not None and not isinstance(enforcers, Mapping):
            raise ConfigError(
                "enforcers", f"expected a mapping of action to enforcer, got {enforcers!r}"
            )
        for action, enforcer in (enforcers or {}).items():
            if action not in set(Action):
                known = ", ".join(a.value for a in Action)
                raise ConfigError("enforcers", f"unknown action {action!r}; use one of {known}")
            if not callable(enforcer):
                raise ConfigError(
                    f"enforcers[{action!r}]", f"expected an Enforcer, got {enforcer!r}"
                )
            self.enforcers[Action(action)] = enforcer
        self.fail_open = fail_open
        self.routes = RouteResolver(app=app)
        bucket = policy.bucket
        self.needs_route = (
            (bucket is not None and isinstance(bucket.cost, Mapping))
            or bool(policy.routes)
            or any(limits.routes for limits in policy.plans.values())
        )
        self.plan_func = policy.plan_func
        self.edge_headers = policy.edge.reader().headers if policy.edge is not None else ()
        self.edge_names = tuple(name.encode("latin-1") for name in self.edge_headers)
        self._trusted_peers: dict[str | None, bool] = {}
        self.account_facts = policy.accounts.facts if policy.accounts is not None else None
        # key_func and plan_func see the request as a Starlette HTTPConnection
        # (RequestInfo.connection); the core never imports Starlette.
        self.connection_type: Callable[[Scope], Any] | None = None
        if policy.key_func is not None or policy.plan_func is not None:
            from starlette.requests import HTTPConnection

            self.connection_type = HTTPConnection
        self.cost_header = (
            bucket.cost_header.lower().encode() if bucket and bucket.cost_header else None
        )
        scoring = policy.scoring
        self.read_body = bool(scoring and scoring.enabled and scoring.content)
        self.max_body = scoring.content_max_bytes if scoring else 0
        self.body_timeout = scoring.content_read_timeout if scoring else 0.0
        if has_models(policy):
            # Model limits read the body's model, often written after the prompt.
            self.read_body = True
            self.max_body = max(self.max_body, MODEL_BODY_BYTES)
            self.body_timeout = self.body_timeout or Scoring().content_read_timeout
        self.max_header = policy.max_header_bytes
        self.trusted = policy.trusted_networks
        self.proxy_header = policy.proxy_header
        self.proxy_name = policy.proxy_header.encode("latin-1")
        self._proxied: dict[tuple[str | None, str | None], str | None] = {}
        self.started = False
        # The built-in Allow enforcer just calls the app: skip the indirection then.
        self.plain_allow = type(self.enforcers[Action.ALLOW]) is Allow
        # A shadowed degrade is still computed and counted, by the built-in degrade's shadow.
        degrade = self.enforcers[Action.DEGRADE]
        self.degrade_shadow: Enforcer | None = (
            degrade.shadow if isinstance(degrade, Degrade) else None
        )
        backend = self.guard.backend
        # Only a backend that waits for I/O is awaited (synced mode decides in-process).
        self.shared = backend.shared and not backend.decides_locally
        self.legacy_headers = policy.legacy_headers
        # A plain allow runs the app with no Decision built (`Guard.check_lazily`) when
        # nothing needs one up front: the built-in Allow, headers without the legacy ones,
        # and a Guard whose `check` and `complete` are its own (a subclass may decide or
        # settle otherwise).
        guard_type = type(self.guard)
        self.lazy_allow = (
            self.plain_allow
            and not policy.legacy_headers
            and not self.shared
            and guard_type.check is Guard.check
            and guard_type.complete is Guard.complete
        )
        self.websocket = WebSocketLimiter(self, policy.websocket) if policy.websocket else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await _Responder(self, scope, receive, send).run()
        elif kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
        elif kind == "websocket" and self.websocket is not None:
            await self.websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.check_routes()
                await self.startup()
            elif message["type"] == "lifespan.shutdown":
                await self.guard.shutdown()
            return message

        return wrapped

    async def startup(self) -> None:
        if not self.started:
            self.started = True
            await self.guard.startup()

    def check_routes(self) -> None:
        """Fail startup when a route pattern (`Policy.routes`) or a cost-map key names no
        route of the wrapped app: a typo would otherwise never apply (or cost 1)."""
        if find_route_limits(self.app):
            prepare_route_local(self.app, self.guard)
        templates = route_templates(self.app)
        if templates is None:
            return
        policy = self.policy
        missing = unmatched_patterns(templates, policy.routes)
        if missing:
            raise ConfigError("Policy.routes", f"no route of the app matches {missing}")
        for plan, limits in policy.plans.items():
            missing = unmatched_patterns(templates, limits.routes)
            if missing:
                raise ConfigError(
                    f"Policy.plans[{plan!r}].routes", f"no route of the app matches {missing}"
                )
        bucket = policy.bucket
        if bucket is not None and isinstance(bucket.cost, Mapping):
            missing = unmatched_patterns(templates, bucket.cost)
            if missing:
                raise ConfigError("TokenBucket.cost", f"no route of the app matches {missing}")

    async def plan_of(self, scope: Scope, connection: Any = None) -> str | None:
        """The request's plan from `Policy.plan_func` (sync or async), which gets the
        request as a Starlette ``HTTPConnection``; anything but a str is no plan."""
        from starlette.requests import HTTPConnection

        assert self.plan_func is not None
        plan = self.plan_func(connection if connection is not None else HTTPConnection(scope))
        if inspect.isawaitable(plan):
            plan = await plan
        return plan if isinstance(plan, str) else None

    async def account_of(self, scope: Scope) -> AccountFacts | None:
        """The request's account facts from `Accounts.facts` (sync or async), which gets the
        request as a Starlette ``HTTPConnection``. A hook that raises is logged and the
        request goes on without facts: the app's lookup failing must not fail requests."""
        from starlette.requests import HTTPConnection

        assert self.account_facts is not None
        try:
            facts = self.account_facts(HTTPConnection(scope))
            if inspect.isawaitable(facts):
                facts = await facts
        except Exception:
            logger.exception("abuseguard: Accounts.facts raised; the request has no account facts")
            return None
        return as_facts(facts)

    def _peer_is_trusted(self, peer: str | None) -> bool:
        """Whether the direct peer is one of `Policy.trusted_proxies` (cached per peer)."""
        known = self._trusted_peers.get(peer)
        if known is None:
            if len(self._trusted_peers) >= 4096:
                self._trusted_peers.clear()
            known = self._trusted_peers[peer] = peer_is_trusted(peer, self.trusted)
        return known

    def _client_ip(self, peer: str | None, chain: str | None) -> str | None:
        """client_ip behind trusted proxies from the proxy header's value ``chain``, cached
        per (peer, chain): parsing every hop with ``ipaddress`` costs microseconds, and the
        same chains repeat."""
        key = (peer, chain)
        if key in self._proxied:
            return self._proxied[key]
        proxy_header = self.proxy_header
        headers = {proxy_header: chain} if chain is not None else {}
        ip = client_ip(peer, headers, self.trusted, proxy_header)
        if chain is not None and len(chain) > _MAX_CACHED_CHAIN:
            return ip  # long chains are rare: caching them would let clients fill memory
        if len(self._proxied) >= 65536:
            self._proxied.clear()
        self._proxied[key] = ip
        return ip

    def request_info(self, scope: Scope) -> RequestInfo:
        raw: Sequence[tuple[bytes, bytes]] = scope.get("headers") or ()
        if not isinstance(raw, list | tuple):
            raw = list(raw)  # any iterable of pairs is valid ASGI
        client = scope.get("client")
        peer = client[0] if client else None
        # One C-level pass over the raw pairs; the few headers the guard needs are read
        # from it and the others are decoded only if something asks (ScopeHeaders).
        by_name: dict[bytes, bytes] = dict(raw)
        limit = self.max_header
        if len(by_name) != len(raw) or (
            len(b"".join(by_name.values())) > limit and max(map(len, by_name.values())) > limit
        ):
            return self._request_info_joined(scope, raw, peer)
        get = by_name.get
        if self.trusted:
            chain = get(self.proxy_name)
            ip = self._client_ip(peer, chain.decode("latin-1") if chain is not None else None)
        else:
            ip = peer
        if self.edge_names and not self._peer_is_trusted(peer):
            for name in self.edge_names:  # a client could send its own
                by_name.pop(name, None)
        auth = get(b"authorization")
        api_key = get(b"x-api-key")
        ua = get(b"user-agent")
        info = RequestInfo(
            ip or "unknown",
            None,
            api_key_from_values(
                auth.decode("latin-1") if auth else None,
                api_key.decode("latin-1") if api_key else None,
            ),
            scope.get("method", "GET"),
            scope.get("path", "/"),
            None,
            ua.decode("latin-1") if ua is not None else None,
            ScopeHeaders(by_name),
        )
        if self.needs_route:
            info.route = self.routes.template(scope)
        if self.connection_type is not None:
            info.connection = self.connection_type(scope)
        return info

    def _request_info_joined(
        self, scope: Scope, raw: Sequence[tuple[bytes, bytes]], peer: str | None
    ) -> RequestInfo:
        """`request_info` when a name repeats or a value is over the size limit: the
        headers decoded into a dict by `_joined_headers`."""
        headers = _joined_headers(raw, self.max_header, self.proxy_header)
        ip = self._client_ip(peer, headers.get(self.proxy_header)) if self.trusted else peer
        if self.edge_headers and not self._peer_is_trusted(peer):
            for name in self.edge_headers:  # a client could send its own
                headers.pop(name, None)
        info = RequestInfo(
            ip or "unknown",
            None,
            api_key_from_headers(headers),
            scope.get("method", "GET"),
            scope.get("path", "/"),
            None,
            headers.get("user-agent"),
            headers,
        )
        if self.needs_route:
            info.route = self.routes.template(scope)
        if self.connection_type is not None:
            info.connection = self.connection_type(scope)
        return info


def _joined_headers(
    raw: Iterable[tuple[bytes, bytes]], limit: int, proxy_header: str
) -> dict[str, str]:
    """The headers dict when a name repeats or a value is over ``limit`` bytes.

    Repeated values are joined with ", " and oversized ones left out, except:
    a credential header keeps its first value only (the one Starlette's
    ``request.headers.get`` hands the app to authenticate; an oversized first value means
    no credential from it, never a later value); the proxy header is joined whole and then
    cut to its right-most hops within ``limit`` (the hops the trusted proxies added)."""
    headers: dict[str, str] = {}
    credentials_seen: set[str] = set()
    proxy_chain: list[str] = []
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1")
        if name == proxy_header:
            proxy_chain.append(raw_value.decode("latin-1"))
            headers.setdefault(name, "")  # keeps its place in the header order
            continue
        if name in CREDENTIAL_HEADERS:
            if name in credentials_seen:
                continue
            credentials_seen.add(name)
        if len(raw_value) > limit:
            continue
        value = raw_value.decode("latin-1")
        if name in headers:
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value
    if proxy_chain:
        chain = rightmost_list_items(", ".join(proxy_chain), limit)
        if chain:
            headers[proxy_header] = chain
        else:
            del headers[proxy_header]
    return headers


class _Responder:
    """Per-request state: the decision, the status sent, the real cost, the release."""

    __slots__ = (
        "buffered",
        "decision",
        "guard_mw",
        "info",
        "plain",
        "real_cost",
        "receive",
        "released",
        "scope",
        "send",
        "status",
        "suspended",
    )

    def __init__(self, guard_mw: AbuseGuard, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard_mw = guard_mw
        self.scope = scope
        self.receive = receive
        self.send = send
        self.status: int | None = None
        self.real_cost: float | None = None
        self.buffered: list[Message] = []
        self.decision: Decision | None = None
        # A plain allow, when `Guard.check_lazily` answered one (then ``decision`` is None).
        self.plain: PlainAllow | None = None
        self.info: RequestInfo | None = None
        self.released = False
        # A receive stepped by hand that had to wait (`_body_at_hand`): (its iterator, what
        # it waits on), for `_peek_body` (or the app, through `_replaying_receive`).
        self.suspended: tuple[Any, Any] | None = None

    async def run(self) -> None:
        mw = self.guard_mw
        guard = mw.guard
        if not mw.started:
            await mw.startup()
        scope = self.scope
        try:
            info = self.info = mw.request_info(scope)
            if mw.plan_func is not None:
                info.plan = await mw.plan_of(scope, info.connection)
            if mw.account_facts is not None:
                info.account = await mw.account_of(scope)
            refusal = read_without_body = None
            if mw.read_body and info.method in _BODY_METHODS:
                try:
                    body = self._body_at_hand(mw.max_body)
                except _ClientGone:
                    return  # nothing decided, nothing charged
                if body is not None:
                    # The server already holds the whole body (the common case for a small
                    # one): there is nothing to trickle, so the request is decided once,
                    # with its content, and the pre-check is not needed.
                    info.body = body
                else:
                    # What needs no body first: a client over a limit cannot hold its
                    # decision open by trickling its body, and its refusal reads no more.
                    refusal, read_without_body = guard.precheck_reading(info)
                    if refusal is None:
                        try:
                            info.body = await self._peek_body(mw.max_body, mw.body_timeout)
                        except _ClientGone:
                            return  # nothing decided, nothing charged
                    elif self.suspended is not None:
                        self.suspended[0].close()  # refused: the rest is never read
                        self.suspended = None
            decided: Decision | PlainAllow
            if refusal is not None:
                decided = refusal
            elif mw.lazy_allow:
                decided = guard.check_lazily(info, read_without_body)
            elif mw.shared:
                decided = await guard.acheck(info, read_without_body)
            else:
                decided = guard.check(info, read_without_body)
        except Exception:
            logger.exception(
                "abuseguard failed to decide; failing %s", "open" if mw.fail_open else "closed"
            )
            if mw.fail_open:
                scope.setdefault("state", {})[GUARD_STATE_KEY] = mw
                await mw.app(scope, self._replaying_receive, self.send)
            else:
                await self._send_unavailable()
            return
        state = scope.setdefault("state", {})
        # A plain allow's Decision is built if the app asks for it (`current_decision`).
        state[DECISION_STATE_KEY] = decided
        state[GUARD_STATE_KEY] = mw  # for route-local limits (abuseguard.route_local)
        receive = self._replaying_receive if self.buffered or self.suspended else self.receive
        engine_run = guard.engine_run  # it counts the requests in flight (load factor)
        engine_run.inflight += 1
        try:
            if isinstance(decided, tuple):
                self.plain = decided
                await mw.app(scope, receive, self._send_plain)
                return
            decision = self.decision = decided
            if decision.action is _ALLOW and mw.plain_allow:
                await mw.app(scope, receive, self._send)
            else:
                action = decision.enforced_action
                enforcer = mw.enforcers[action]
                if decision.shadow and decision.action is _DEGRADE and mw.degrade_shadow:
                    enforcer = mw.degrade_shadow
                await enforcer(scope, receive, self._send, decision, mw.app)
        finally:
            engine_run.inflight -= 1
            self._complete()

    def _complete(self) -> None:
        guard = self.guard_mw.guard
        info = self.info
        decision = self.decision
        plain = self.plain
        if info is None or (decision is None and plain is None):
            return
        cost = self.real_cost
        invalid_key = False
        state = self.scope.get("state")
        # A cost or an invalid key is what the app may have set in the state.
        if isinstance(state, dict):
            if cost is None and COST_STATE_KEY in state:
                try:
                    cost = float(state[COST_STATE_KEY])
                except (TypeError, ValueError):
                    logger.warning("scope['state'][%r] is not a number", COST_STATE_KEY)
            invalid_key = state.get(INVALID_KEY_STATE_KEY) is True
        if plain is not None:
            if cost is None and not invalid_key:
                # The common end: nothing but the status to learn, and no Decision built.
                try:
                    guard.settlement.complete_plain_allow(info, plain[0], self.status)
                except Exception:
                    logger.exception("abuseguard failed to record the outcome")
                return
            decision = self._asked_decision() or plain_allow_decision(plain)
        assert decision is not None
        try:
            guard.complete(
                info,
                decision,
                status=self.status,
                cost=cost,
                release=not self.released,
                invalid_key=invalid_key,
            )
        except Exception:
            logger.exception("abuseguard failed to record the outcome")

    def _read_cost(self, message: Message, cost_header: bytes) -> None:
        """The real cost from the response's cost header (`TokenBucket.cost_header`)."""
        for name, value in message.get("headers") or ():
            if name.lower() == cost_header:
                try:
                    self.real_cost = float(value.decode("latin-1"))
                except ValueError:
                    logger.warning("bad cost header value %r", value[:64])

    def _asked_decision(self) -> Decision | None:
        """The Decision of a plain allow when the app asked for it (`current_decision`):
        what the app did with it (route-local limits add their states) is in it."""
        state = self.scope.get("state")
        found = state.get(DECISION_STATE_KEY) if isinstance(state, dict) else None
        return found if isinstance(found, Decision) else None

    async def _send_plain(self, message: Message) -> None:
        """`_send` for a plain allow (`plain`): its prebuilt headers, nothing to release."""
        if message["type"] == "http.response.start":
            self.status = message.get("status")
            cost_header = self.guard_mw.cost_header
            if cost_header:
                self._read_cost(message, cost_header)
            state = self.scope.get("state")
            asked = state.get(DECISION_STATE_KEY) if isinstance(state, dict) else None
            plain = self.plain
            assert plain is not None
            # The app built the Decision (current_decision): its route-local states count.
            if not isinstance(asked, Decision):
                asked = None
            extra = (
                plain_allow_header_items(plain) if asked is None else rate_limit_header_items(asked)
            )
            if extra:
                message = {**message, "headers": [*(message.get("headers") or ()), *extra]}
        await self.send(message)

    async def _send(self, message: Message) -> None:
        decision = self.decision
        assert decision is not None
        if message["type"] == "http.response.start":
            self.status = message.get("status")
            mw = self.guard_mw
            cost_header = mw.cost_header
            if cost_header:
                self._read_cost(message, cost_header)
            # Refusals were answered by an enforcer that already sent these headers. The
            # app's message and header list may be reused (a module-level message): copies.
            if decision.served:
                extra = rate_limit_header_items(decision, legacy=mw.legacy_headers)
                if extra:
                    message = {**message, "headers": [*(message.get("headers") or ()), *extra]}
        elif (
            decision.held
            and message["type"] == "http.response.body"
            and not message.get("more_body", False)
            and not self.released
        ):
            # The response is complete: its concurrency slot is free before the client sees
            # the end, not after the app's task winds down (a streaming response may yield
            # to the event loop first, and the client's next request would find it taken).
            self.released = True
            self.guard_mw.guard.release(decision)
        await self.send(message)

    def _body_at_hand(self, limit: int) -> bytes | None:
        """The body (its first ``limit`` bytes) when the server hands it over without
        waiting; else None, with what was read kept (``buffered``) and a ``receive`` left
        suspended (``suspended``) for `_peek_body` to go on with. Raises _ClientGone when
        the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            waiting = self.receive().__await__()
            try:
                pending = waiting.send(None)
            except StopIteration as answered:
                message = answered.value
            else:
                self.suspended = (waiting, pending)
                return None
            if self._keep(message, chunks):
                break
            size += len(chunks[-1])
        return b"".join(chunks)[:limit]

    async def _peek_body(self, limit: int, timeout: float) -> bytes | None:
        """Read up to ``limit`` bytes of the body for at most ``timeout`` seconds; the app
        later receives every message. None when the time ran out first: the request is
        decided without its content (the bytes read are replayed, the rest streams).
        Raises _ClientGone when the client disconnected meanwhile.

        A timer is armed only once a ``receive`` has to wait: a small body the server
        already holds (the common case) is read without scheduling one."""
        # What `_body_at_hand` read already, and the receive it left waiting.
        chunks: list[bytes] = [
            m.get("body", b"") for m in self.buffered if m["type"] == "http.request"
        ]
        size = sum(map(len, chunks))
        deadline: float | None = None
        suspended, self.suspended = self.suspended, None
        while size < limit:
            if suspended is not None:
                waiting, pending = suspended
                suspended = None
                answered_now = False
            else:
                waiting = self.receive().__await__()
                try:
                    pending = waiting.send(None)
                    answered_now = False
                except StopIteration as answered:
                    message = answered.value  # answered without waiting
                    answered_now = True
            if not answered_now:
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + timeout
                # A receive cut short by the timeout loses nothing: the server keeps the
                # bytes it has not handed out yet (uvicorn does; tests/test_slow_body.py).
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await _Resumed(waiting, pending)
                except TimeoutError:
                    return None
            if self._keep(message, chunks):
                break
            size += len(chunks[-1])
        return b"".join(chunks)[:limit]

    def _keep(self, message: Message, chunks: list[bytes]) -> bool:
        """Keep a message read before deciding for the app (``buffered``) and its body part
        in ``chunks``; True when the body ends with it. Raises _ClientGone on a
        disconnect."""
        if message["type"] == "http.disconnect":
            raise _ClientGone
        self.buffered.append(message)
        if message["type"] != "http.request":
            return True
        chunks.append(message.get("body", b""))
        return not message.get("more_body", False)

    async def _replaying_receive(self) -> Message:
        if self.buffered:
            return self.buffered.pop(0)
        suspended = self.suspended
        if suspended is not None:
            self.suspended = None
            message: Message = await _Resumed(*suspended)
            return message
        return await self.receive()

    async def _send_unavailable(self) -> None:
        body = b'{"type":"about:blank","title":"Service Unavailable","status":503}'
        await self.send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body})


class _ClientGone(Exception):
    """The client disconnected before the guard decided."""


class _Resumed:
    """Awaits the rest of an awaitable's iterator (``__await__()``) that was stepped once by
    hand and is suspended on ``pending``: what ``await`` would have done from its start
    (values and exceptions, cancellation included, are passed through to it)."""

    __slots__ = ("coroutine", "pending")

    def __init__(self, coroutine: Any, pending: Any) -> None:
        self.coroutine = coroutine
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine = self.coroutine
        pending = self.pending
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # thrown in (a cancellation): the coroutine's to handle
                try:
                    pending = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coroutine.send(sent)
                except StopIteration as done:
                    return done.value


def current_decision(scope_or_request: Any) -> Decision | None:
    """The guard's decision for a request (a Starlette Request or an ASGI scope)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    state = scope.get("state") if isinstance(scope, dict) else None
    return decision_in_state(state) if isinstance(state, dict) else None
