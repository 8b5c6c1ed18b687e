"""Route identity for the ASGI adapter: method + route template from the app's Starlette router.

Only the middleware resolves routes; keeping the resolver here keeps Starlette out of the
framework-free core (`abuseguard.guard` and what it imports).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from starlette.routing import Match, Mount, Route, Router


class RouteResolver:
    """Route identity: method + route template (mount prefixes included), never the raw path.

    The template is found by matching the app's Starlette router, the way Starlette itself
    does, and cached per (method, path) in a bounded cache. Unmatched paths share the
    identity ``"<unmatched>"`` so random paths cannot create identities.
    """

    UNMATCHED = "<unmatched>"

    def __init__(self, cache_size: int = 4096, app: Any = None) -> None:
        self._cache: dict[tuple[str, str], str] = {}
        self._cache_size = cache_size
        self._app = app

    def template(self, scope: Mapping[str, Any]) -> str:
        """The route template of ``scope``, from the router of ``scope["app"]`` (set by
        Starlette when the middleware was added with ``add_middleware``) or else of the
        ``app`` given here (a middleware that wraps the app sees no ``scope["app"]``)."""
        path = scope.get("path", "/")
        key = (scope.get("method", "GET"), path)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        router = _find_router(scope.get("app")) or _find_router(self._app)
        found = _match(router.routes, dict(scope), "") if router is not None else None
        result = found if found is not None else self.UNMATCHED
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = result
        return result


def _find_router(app: Any) -> Router | None:
    for _ in range(32):
        if app is None:
            return None
        if isinstance(app, Router):
            return app
        router = getattr(app, "router", None)
        if isinstance(router, Router):
            return router
        app = getattr(app, "app", None)
    return None


_INCLUDED: dict[int, tuple[Any, list[Any]]] = {}


def _expanded(routes: Iterable[Any]) -> Iterator[Any]:
    """``routes`` with FastAPI's lazily included routers (``app.include_router`` in recent
    FastAPI: one route object for the whole router, whose own ``path`` is empty) replaced
    by a Starlette route per route they serve, at its full path."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if not callable(contexts):
            yield route
            continue
        hit = _INCLUDED.get(id(route))
        if hit is None or hit[0] is not route:
            if len(_INCLUDED) >= 256:
                _INCLUDED.clear()
            hit = _INCLUDED[id(route)] = (route, _routes_of(contexts()))
        yield from hit[1]


def _routes_of(contexts: Iterable[Any]) -> list[Any]:
    found: list[Any] = []
    for context in contexts:
        route = getattr(context, "starlette_route", None)
        if route is None:
            methods = getattr(getattr(context, "original_route", None), "methods", None)
            path = getattr(context, "path", None)
            if not methods or not isinstance(path, str):
                continue
            route = Route(path, _never_called, methods=list(methods))
        found.append(route)
    return found


async def _never_called(request: Any) -> None:  # pragma: no cover - only matched
    raise RuntimeError("abuseguard.routes matches this route; it never serves it")


def _match(routes: Iterable[Any], scope: dict[str, Any], prefix: str) -> str | None:
    partial: str | None = None
    for route in _expanded(routes):
        try:
            match, child = route.matches(scope)
        except Exception:  # a custom route that cannot match this scope
            continue
        if match == Match.NONE:
            continue
        path = getattr(route, "path", "")
        if isinstance(route, Mount):
            sub_scope = {**scope, **child}
            inner = _match(route.routes, sub_scope, prefix + path)
            template = inner if inner is not None else prefix + path
        else:
            template = prefix + path
        if match == Match.FULL:
            return template
        partial = partial or template  # method mismatch: still the same route
    return partial


def route_templates(app: Any) -> set[tuple[str | None, str]] | None:
    """Every (method, template) the app's router serves, mounts and included routers
    resolved (method None: any method; HEAD added wherever GET is, as Starlette does);
    None when no Starlette router is found."""
    router = _find_router(app)
    if router is None:
        return None
    found: set[tuple[str | None, str]] = set()
    _collect(router.routes, "", found)
    return found


def _collect(routes: Iterable[Any], prefix: str, found: set[tuple[str | None, str]]) -> None:
    for route in _expanded(routes):
        path = prefix + getattr(route, "path", "")
        if isinstance(route, Mount):
            inner = route.routes
            if inner:
                _collect(inner, path, found)
            else:  # a mounted app: everything below it is its own
                found.add((None, path))
            continue
        methods = getattr(route, "methods", None)
        if not methods:
            found.add((None, path))
            continue
        for method in methods:
            found.add((method, path))
        if "GET" in methods:
            found.add(("HEAD", path))


def unmatched_patterns(
    templates: set[tuple[str | None, str]], patterns: Iterable[str]
) -> list[str]:
    """The patterns ("METHOD /path" or "/path") that name no route in ``templates``."""
    return [pattern for pattern in patterns if not _serves(templates, pattern)]


def _serves(templates: set[tuple[str | None, str]], pattern: str) -> bool:
    method, _, path = pattern.rpartition(" ")
    for route_method, template in templates:
        if route_method is not None and method and route_method != method:
            continue
        if template == path:
            return True
        if route_method is None and path.startswith(template.rstrip("/") + "/"):
            return True  # below a mounted app, whose routes are its own
    return False
