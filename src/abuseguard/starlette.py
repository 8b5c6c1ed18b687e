"""Route-local limits for Starlette: an endpoint decorator.

``Route("/search", abuseguard.starlette.limit("5/minute")(search))``, or
``@abuseguard.starlette.limit("5/minute")`` above the endpoint.

The decorator wraps a request/response endpoint (async or sync function) so that the
request is counted, for the identity the `AbuseGuard` middleware found, against the
limit's own token bucket kept by the middleware's guard; the response's RateLimit
headers name it beside the middleware's limits (see `abuseguard.route_local`). Over the
limit it raises ``HTTPException(429)`` with ``Retry-After``, answered by Starlette's
exception handling.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from abuseguard.errors import ConfigError
from abuseguard.headers import retry_after_value
from abuseguard.route_local import ROUTE_LIMIT_ATTRIBUTE, RouteLimit

REFUSAL_DETAIL = "Request limit exceeded; retry later."

Endpoint = Callable[[Request], Any]


def limit(
    rate: str, *, burst: float | None = None, cost: float = 1.0, name: str | None = None
) -> Callable[[Endpoint], Callable[[Request], Awaitable[Any]]]:
    """An endpoint decorator limiting that endpoint: ``rate`` ("5/minute"), ``burst``
    (default: the rate's amount), ``cost`` per request, ``name`` in the RateLimit
    headers (see `abuseguard.route_local.RouteLimit`). Used on several endpoints, one
    decorator is one budget across them."""
    route_limit = RouteLimit(
        rate, burst=burst, cost=cost, name=name, what="abuseguard.starlette.limit"
    )

    def decorate(endpoint: Endpoint) -> Callable[[Request], Awaitable[Any]]:
        if not (inspect.isfunction(endpoint) or inspect.ismethod(endpoint)):
            raise ConfigError(
                "abuseguard.starlette.limit",
                f"expected a request/response function, got {endpoint!r}",
            )
        is_async = inspect.iscoroutinefunction(endpoint)

        @functools.wraps(endpoint)
        async def limited(request: Request) -> Any:
            retry_after = route_limit.check(request.scope)
            if retry_after is not None:
                raise HTTPException(
                    429, REFUSAL_DETAIL, headers={"Retry-After": retry_after_value(retry_after)}
                )
            if is_async:
                return await endpoint(request)
            return await run_in_threadpool(endpoint, request)

        setattr(limited, ROUTE_LIMIT_ATTRIBUTE, route_limit)
        return limited

    return decorate


__all__ = ["limit"]
