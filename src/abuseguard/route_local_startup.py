"""Fail a FastAPI app's startup when its route-local limits have no middleware in front.

A route-local limit counts requests in the `AbuseGuard` middleware's guard, so without
the middleware it cannot work. No ASGI hook runs at startup for an app the middleware
does not wrap, but FastAPI reads a dependency's signature while the route is added
(``APIRouter.add_api_route``). `watch_router` runs then: it finds that router on the call
stack and wraps its ``lifespan_context`` in a `StartupCheck`, so the router's lifespan
startup raises `RuntimeError` naming the fix unless a middleware's startup, which runs
first, prepared every limit (`RouteLimit.prepared`). FastAPI merges an included router's
lifespan into the app's, so limits of included routers are checked too.

Where the router cannot be found (a FastAPI whose internals differ, a FastAPI app
mounted inside another app, whose lifespan never runs), the limit keeps failing on its
first request instead, as Starlette endpoints decorated by `abuseguard.starlette.limit` do.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from abuseguard.route_local import RouteLimit

_ADD_ROUTE = "add_api_route"
_STACK_DEPTH = 48  # add_api_route -> APIRoute -> get_dependant ... -> inspect.signature

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


class StartupCheck:
    """A router's lifespan that first checks its route-local limits were prepared by a
    started `AbuseGuard` middleware, then runs the lifespan it replaced."""

    def __init__(self, inner: Lifespan) -> None:
        self.inner = inner
        self.limits: list[RouteLimit] = []

    def __call__(self, app: Any) -> AbstractAsyncContextManager[Any]:
        return self._run(app)

    @asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[Any]:
        from abuseguard.route_local import no_middleware_error

        for limit in self.limits:
            if not limit.prepared:
                raise no_middleware_error(limit.what)
        async with self.inner(app) as state:
            yield state


def watch_router(limit: RouteLimit) -> None:
    """Check ``limit`` at the startup of the FastAPI router being given a route that
    depends on it (found on the call stack), once per router."""
    router = _router_adding_a_route()
    if router is None:
        return
    check = router.lifespan_context
    if not isinstance(check, StartupCheck):
        check = StartupCheck(check)
        router.lifespan_context = check
    if all(known is not limit for known in check.limits):
        check.limits.append(limit)


def _router_adding_a_route() -> Any:
    frame = sys._getframe(1)
    for _ in range(_STACK_DEPTH):
        if frame.f_code.co_name == _ADD_ROUTE:
            router = frame.f_locals.get("self")
            if callable(getattr(router, "lifespan_context", None)) and hasattr(router, "routes"):
                return router
        if frame.f_back is None:
            return None
        frame = frame.f_back
    return None
