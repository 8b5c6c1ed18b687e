"""Exempt paths: the one rule for "the guard never touches this path".

``Policy.exempt_paths`` entries match whole path segments: ``"/health"`` exempts
``/health``, ``/health/`` and ``/health/live``, never ``/healthz`` or ``/healthz-admin``
(a plain prefix match would hand every path that merely starts with an exempt name to
the client). Every place that skips exempt paths (the guard, the Redis backends, the
WebSocket limiter, replay) asks :meth:`ExemptPaths.matches`.
"""

from __future__ import annotations

from collections.abc import Iterable


class ExemptPaths:
    """A set of exempt paths, each matched as a whole path segment prefix."""

    __slots__ = ("_exact", "_subtrees")

    def __init__(self, paths: Iterable[str]) -> None:
        roots = {path.rstrip("/") for path in paths}
        self._exact = frozenset(roots)
        # "/health" -> "/health/": anything below it; "/" -> "": so "/" exempts everything.
        self._subtrees = tuple(sorted(root + "/" for root in roots))

    def matches(self, path: str) -> bool:
        """Whether ``path`` is one of the exempt paths or below one."""
        return path in self._exact or path.startswith(self._subtrees)

    def __repr__(self) -> str:
        return f"ExemptPaths({sorted(self._exact)!r})"
