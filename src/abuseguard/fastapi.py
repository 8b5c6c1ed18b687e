"""Route-local limits for FastAPI: ``dependencies=[Depends(abuseguard.fastapi.limit("5/minute"))]``.

The dependency counts the request, for the identity the `AbuseGuard` middleware found,
against its own token bucket kept by the middleware's guard; the response's RateLimit
headers name it beside the middleware's limits (see `abuseguard.route_local`). Over the
limit it raises ``HTTPException(429)`` with ``Retry-After``. Importing this module does
not import FastAPI; the dependency needs only what FastAPI hands it (the request).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request

from abuseguard.headers import retry_after_value
from abuseguard.route_local import ROUTE_LIMIT_ATTRIBUTE, RouteLimit
from abuseguard.route_local_startup import watch_router

REFUSAL_DETAIL = "Request limit exceeded; retry later."


def limit(
    rate: str, *, burst: float | None = None, cost: float = 1.0, name: str | None = None
) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency limiting the routes that declare it: ``rate`` ("5/minute"),
    ``burst`` (default: the rate's amount), ``cost`` per request, ``name`` in the
    RateLimit headers (see `abuseguard.route_local.RouteLimit`). An app using it without
    the `AbuseGuard` middleware fails at startup (`abuseguard.route_local_startup`)."""
    route_limit = RouteLimit(
        rate, burst=burst, cost=cost, name=name, what="abuseguard.fastapi.limit"
    )
    return LimitDependency(route_limit)


class LimitDependency:
    """What `limit` returns: an async callable taking the request. FastAPI reads its
    signature while it adds a route that depends on it, which is when the router's
    startup check is installed (`route_local_startup.watch_router`)."""

    def __init__(self, route_limit: RouteLimit) -> None:
        self.route_limit = route_limit
        setattr(self, ROUTE_LIMIT_ATTRIBUTE, route_limit)

    def __repr__(self) -> str:
        return f"abuseguard.fastapi.limit({self.route_limit.name!r})"

    async def __call__(self, request: Request) -> None:
        retry_after = self.route_limit.check(request.scope)
        if retry_after is not None:
            raise HTTPException(
                429, REFUSAL_DETAIL, headers={"Retry-After": retry_after_value(retry_after)}
            )

    @property
    def __signature__(self) -> inspect.Signature:
        watch_router(self.route_limit)
        return _SIGNATURE


_SIGNATURE = inspect.Signature(
    [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
)


__all__ = ["limit"]
