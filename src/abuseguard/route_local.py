"""Route-local limits declared beside the endpoint, on the middleware's guard and state.

`RouteLimit` is what `abuseguard.fastapi.limit` (a FastAPI dependency) and
`abuseguard.starlette.limit` (an endpoint decorator) check. It runs after the
`AbuseGuard` middleware decided to serve the request, and counts the request against its
own token bucket for the identity the middleware found (the same API key or address),
kept by the guard the middleware uses. Its state joins the middleware's decision, so
the response's ``RateLimit`` and ``RateLimit-Policy`` headers name every limit that
applied, the middleware's and the route's. A refusal raises Starlette's
``HTTPException(429)`` with ``Retry-After``; under shadow (``Policy.shadow`` or a
shadowed throttle) it is reported in the headers and the request is served.

At lifespan startup the middleware finds the route-local limits of the app it wraps
(`find_route_limits`) and prepares their state, so a backend that cannot keep them
fails startup. A FastAPI app whose limits no middleware prepared fails its own lifespan
startup with a `RuntimeError` naming the fix (`route_local_startup`); elsewhere (a
Starlette endpoint, a FastAPI app mounted inside another) the request reaching the
limit raises it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from abuseguard.backends.memory import MemoryBackend
from abuseguard.decision import Action
from abuseguard.enforce import decision_in_state
from abuseguard.errors import ConfigError
from abuseguard.policy import Limits, Policy, TokenBucket
from abuseguard.route_limits import NamedLimits, RouteLimiter, limit_name

if TYPE_CHECKING:
    from abuseguard.guard import Guard

GUARD_STATE_KEY = "abuseguard_guard"
ROUTE_LIMIT_ATTRIBUTE = "__abuseguard_limit__"

_NO_MIDDLEWARE = (
    "{what} needs the AbuseGuard middleware in front of the app "
    "(app.add_middleware(AbuseGuard, policy=...)): it counts the request for the identity "
    "the middleware found, in the middleware's guard"
)
_limiters: weakref.WeakKeyDictionary[Guard, RouteLimiter] = weakref.WeakKeyDictionary()


def no_middleware_error(what: str) -> RuntimeError:
    """The error of a route-local limit that no `AbuseGuard` middleware serves."""
    return RuntimeError(_NO_MIDDLEWARE.format(what=what))


class RouteLimit:
    """A token bucket for the requests of the routes that declare it, per identity.

    ``rate`` is "N/period" (as `TokenBucket`), ``burst`` its capacity (default: N),
    ``cost`` what one request takes from it. ``name`` names it in the RateLimit headers
    ("local-<name>-default"); by default "local-<rate>", numbered in route order when
    several limits of one app have the same rate ("local-5-minute", "local-5-minute-2").
    One object used on several routes is one budget across them.
    """

    def __init__(
        self,
        rate: str,
        *,
        burst: float | None = None,
        cost: float = 1.0,
        name: str | None = None,
        what: str = "a route-local limit",
    ) -> None:
        bucket = TokenBucket(rate, burst=burst)
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not cost >= 0:
            raise ConfigError("limit.cost", f"expected a number >= 0, got {cost!r}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError("limit.name", f"expected a non-empty str, got {name!r}")
        self.base_name = limit_name("local", name if name is not None else rate)
        self.named = name is not None
        self.limits = NamedLimits(self.base_name, Limits(bucket=bucket))
        self.name = self.base_name
        self.cost = float(cost)
        self.what = what
        self.prepared = False  # a middleware's startup found it (`prepare`)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def check(self, scope: Mapping[str, Any]) -> float | None:
        """Count the request of ``scope``; the seconds to wait when it is refused, None
        when it is served. Raises RuntimeError without the middleware in front."""
        state = scope.get("state")
        if not isinstance(state, dict) or (mw := state.get(GUARD_STATE_KEY)) is None:
            raise no_middleware_error(self.what)
        decision = decision_in_state(state)
        if decision is None or not decision.identity:
            return None  # the guard failed open, or the path is exempt
        guard: Guard = mw.guard
        limiter = _limiters.get(guard)
        if limiter is None:  # no lifespan startup ran
            limiter = prepare(mw.app, guard)
        applied = (self.limits,)
        now = guard.clock()
        verdict = limiter.test_limits(applied, decision.identity, "", self.cost, now)
        if verdict.violated:
            decision.policies = decision.policies + verdict.violated
            policy = guard.policy
            if policy.shadow or Action.THROTTLE in policy.enforcement.shadow_actions:
                return None
            return verdict.retry_after
        states, _ = limiter.count(verdict, decision.identity, "", self.cost, now)
        decision.policies = decision.policies + states
        return None


def limiter_of(guard: Guard) -> RouteLimiter:
    """The state of the route-local limits of ``guard``, made on first use."""
    limiter = _limiters.get(guard)
    if limiter is None:
        if not isinstance(guard.backend, MemoryBackend):
            # Redis keeps route and plan limits in its one script call per request
            # (Policy.routes); route-local limits are counted after it, in this process.
            raise ConfigError(
                "route-local limits",
                "abuseguard.fastapi.limit / abuseguard.starlette.limit are not supported by "
                + ("the Redis backend" if guard.backend.shared else type(guard.backend).__name__)
                + ": use Policy.routes, which Redis in inline mode keeps with each request",
            )
        try:
            limiter = RouteLimiter(
                Policy(network=None, scoring=None, unverified_keys=None),
                guard.backend,
                guard.policy.max_identities,
            )
        except ConfigError as exc:
            raise ConfigError(
                "route-local limits",
                "abuseguard.fastapi.limit / abuseguard.starlette.limit are not supported by "
                + exc.problem.partition(" supported by ")[2],
            ) from None
        _limiters[guard] = limiter
    return limiter


def find_route_limits(app: Any) -> list[RouteLimit]:
    """The route-local limits of ``app``'s routes: FastAPI dependencies (of the route, its
    router and the app), Starlette endpoints wrapped by `abuseguard.starlette.limit`,
    mounts and included routers resolved."""
    from abuseguard.routes import _find_router

    router = _find_router(app)
    if router is None:
        return []
    found: dict[int, RouteLimit] = {}
    calls = (*_depends_calls(router), *_calls(router.routes, 0))
    for call in calls:
        limit = getattr(call, ROUTE_LIMIT_ATTRIBUTE, None)
        if isinstance(limit, RouteLimit):
            found[id(limit)] = limit
    return list(found.values())


def _calls(routes: Iterable[Any], depth: int) -> Iterator[Any]:
    """The endpoints and dependencies of ``routes``, read by duck typing: Starlette
    routes and mounts, FastAPI routes (their dependant tree and ``dependencies``) and
    included routers (eager or lazy, with the dependencies they were included with)."""
    if depth > 32:
        return
    for route in routes:
        yield getattr(route, "endpoint", None)
        yield from _depends_calls(route)
        dependant = getattr(route, "dependant", None)
        if dependant is not None:
            yield from _dependency_calls(dependant, 0)
        context = getattr(route, "include_context", None)
        if context is not None:
            yield from _depends_calls(context)
        original = getattr(route, "original_router", None)
        if original is not None:
            yield from _depends_calls(original)
            yield from _calls(getattr(original, "routes", ()), depth + 1)
        inner = getattr(route, "routes", None)
        if inner:
            yield from _calls(inner, depth + 1)


def _depends_calls(holder: Any) -> Iterator[Any]:
    """The callables of a FastAPI ``dependencies=[Depends(...)]`` list."""
    dependencies = getattr(holder, "dependencies", None)
    if isinstance(dependencies, list | tuple):
        for depends in dependencies:
            yield getattr(depends, "dependency", None)


def _dependency_calls(dependant: Any, depth: int) -> Iterator[Any]:
    if depth > 32:
        return
    for sub in getattr(dependant, "dependencies", ()):
        yield getattr(sub, "call", None)
        yield from _dependency_calls(sub, depth + 1)


def prepare(app: Any, guard: Guard) -> RouteLimiter:
    """At startup: name ``app``'s route-local limits (numbered in route order when their
    names repeat; a name given twice is a ConfigError) and make their state in ``guard``
    (a ConfigError when its backend cannot keep them)."""
    seen: dict[str, int] = {}
    found = find_route_limits(app)
    for limit in found:
        count = seen[limit.base_name] = seen.get(limit.base_name, 0) + 1
        if count > 1 and limit.named:
            raise ConfigError("limit.name", f"{limit.base_name!r} names two route-local limits")
        name = limit.base_name if count == 1 else f"{limit.base_name}-{count}"
        if name != limit.name:
            limit.name = name
            limit.limits = NamedLimits(name, limit.limits.limits)
    limiter = limiter_of(guard)
    for limit in found:
        limit.prepared = True
    return limiter
