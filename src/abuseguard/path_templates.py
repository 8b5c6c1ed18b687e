"""Route templates without the app: which template of a policy a logged path belongs to.

The middleware resolves a request's route template from the app's Starlette router
(`abuseguard.routes`). Replay has only the logged ``path``, so it matches it against the
templates the policy names itself (`Policy.routes`, a plan's routes, the cost map's
keys) with the same path-parameter rules as Starlette's ``compile_path``: ``{name}`` and
``{name:str}`` one segment, ``{name:int}`` digits, ``{name:float}``, ``{name:uuid}``,
``{name:path}`` the rest of the path. A literal template wins over a parameterized one,
then the template with the longest literal text; a path no template matches keeps its
own text, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-zA-Z_][a-zA-Z0-9_]*))?}")
_CONVERTERS = {
    "str": "[^/]+",
    "path": ".*",
    "int": "[0-9]+",
    "float": r"[0-9]+(?:\.[0-9]+)?",
    "uuid": "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}
_CACHE_SIZE = 4096


def _regex(template: str) -> re.Pattern[str]:
    parts: list[str] = []
    end = 0
    for match in _PARAM.finditer(template):
        parts.append(re.escape(template[end : match.start()]))
        parts.append(_CONVERTERS.get(match.group(2) or "str", "[^/]+"))
        end = match.end()
    parts.append(re.escape(template[end:]))
    return re.compile("".join(parts))


class PathTemplates:
    """Logged paths to the route templates of a set of patterns ("METHOD /path" or
    "/path"), with a bounded cache."""

    def __init__(self, patterns: Iterable[str]) -> None:
        templates = {pattern.rpartition(" ")[2] for pattern in patterns}
        self._literal = frozenset(t for t in templates if not _PARAM.search(t))
        parameterized = [t for t in templates if _PARAM.search(t)]
        parameterized.sort(key=lambda t: (-len(_PARAM.sub("", t)), t))
        self._compiled = [(t, _regex(t)) for t in parameterized]
        self._cache: dict[str, str | None] = {}

    @classmethod
    def of_policy(cls, policy: Any) -> PathTemplates | None:
        """The templates ``policy`` names, or None when none has a path parameter (then
        every pattern matches a logged path as it is)."""
        patterns = [*policy.routes]
        for plan in policy.plans.values():
            patterns.extend(plan.routes)
        bucket = policy.bucket
        if bucket is not None and isinstance(bucket.cost, Mapping):
            patterns.extend(bucket.cost)
        table = cls(patterns)
        return table if table._compiled else None

    def template(self, path: str) -> str | None:
        """The template serving ``path``, or None when none does."""
        if path in self._literal:
            return path
        cache = self._cache
        if path in cache:
            return cache[path]
        found = next((t for t, regex in self._compiled if regex.fullmatch(path)), None)
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[path] = found
        return found
