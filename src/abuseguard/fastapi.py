"""Route-local limits for FastAPI: ``dependencies=[Depends(abuseguard.fastapi.limit("5/minute"))]``.

The dependency counts the request, for the identity the `AbuseGuard` middleware found,
against its own token bucket kept by the middleware's guard; the response's RateLimit
headers name it beside the middleware's limits (see `abuseguard.route_local`). Over the
limit it raises ``HTTPException(429)`` with ``Retry-After``. Importing this module does
not import FastAPI; the dependency needs only what FastAPI hands it (the request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request

from abuseguard.headers import retry_after_value
from abuseguard.route_local import ROUTE_LIMIT_ATTRIBUTE, RouteLimit

REFUSAL_DETAIL = "Request limit exceeded; retry later."


def limit(
    rate: str, *, burst: float | None = None, cost: float = 1.0, name: str | None = None
) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency limiting the routes that declare it: ``rate`` ("5/minute"),
    ``burst`` (default: the rate's amount), ``cost`` per request, ``name`` in the
    RateLimit headers (see `abuseguard.route_local.RouteLimit`)."""
    route_limit = RouteLimit(
        rate, burst=burst, cost=cost, name=name, what="abuseguard.fastapi.limit"
    )

    async def abuseguard_limit(request: Request) -> None:
        retry_after = route_limit.check(request.scope)
        if retry_after is not None:
            raise HTTPException(
                429, REFUSAL_DETAIL, headers={"Retry-After": retry_after_value(retry_after)}
            )

    setattr(abuseguard_limit, ROUTE_LIMIT_ATTRIBUTE, route_limit)
    return abuseguard_limit


__all__ = ["limit"]
