"""Limits per model (`Limits.models`): keyed by the ``model`` of a JSON request body.

LLM APIs publish their limits per model and per usage tier ("gpt-x: 500 requests and
200,000 tokens a minute on tier 1"). A route's, a plan's or a plan's route `Limits` may
carry ``models``: limits that apply, beside the enclosing ones, to the requests whose
body names that model, each with its own state per identity and its own name in the
RateLimit headers (the enclosing name, then ``model-<model>``:
"route-POST-v1-chat-completions-model-gpt-x-tokens").

The model is read from the request body the middleware reads before deciding (at least
`MODEL_BODY_BYTES` of a POST, PUT or PATCH when the policy has model limits): the
string ``model`` member of a JSON object; when the body is cut (longer than what was
read) or is not JSON, the first ``"model": "<name>"`` member found in what was read.
A request whose body names no model (no body, no JSON, no string ``model``), or a model
not listed, gets the enclosing limits only: the app answers a body without a model
itself (OpenAI-style APIs refuse it with 400), and what it costs is still counted by the
route's own limits and the app-wide ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import orjson

from abuseguard.errors import ConfigError
from abuseguard.policy import Limits, Policy

if TYPE_CHECKING:
    from abuseguard.request import RequestInfo
    from abuseguard.route_limits import NamedLimits

# The middleware reads at least this much of a body when the policy has model limits:
# the official SDKs write ``model`` after ``messages``, so it sits behind the prompt.
MODEL_BODY_BYTES = 1 << 20
MAX_MODEL_CHARS = 256

_MODEL_MEMBER = re.compile(rb'"model"\s*:\s*"([^"\\]{1,%d})"' % MAX_MODEL_CHARS)
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def model_of(body: bytes | str | None) -> str | None:
    """The model a request body names, or None (see the module's docstring)."""
    if not body:
        return None
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    try:
        parsed = _loads(raw)
    except _JSONDecodeError:
        found = _MODEL_MEMBER.search(raw)
        return found.group(1).decode("utf-8", "replace") if found else None
    if isinstance(parsed, dict):
        model = parsed.get("model")
        if isinstance(model, str) and 0 < len(model) <= MAX_MODEL_CHARS:
            return model
    return None


def has_models(policy: Policy) -> bool:
    """Does any route, plan or plan route of ``policy`` carry model limits?"""
    return any(limits.models for limits in _all_limits(policy))


def _all_limits(policy: Policy) -> Iterable[Limits]:
    yield from policy.routes.values()
    for plan in policy.plans.values():
        yield plan
        yield from plan.routes.values()


class ModelLimits:
    """The model limits of every route, plan and plan route, under their names."""

    __slots__ = ("_by_parent",)

    def __init__(
        self,
        parents: Iterable[NamedLimits],
        make: Callable[[str, Limits], NamedLimits],
        limit_name: Callable[[str, str], str],
    ) -> None:
        self._by_parent: dict[str, dict[str, NamedLimits]] = {}
        for parent in parents:
            models = parent.limits.models
            if not models:
                continue
            named: dict[str, NamedLimits] = {}
            taken: dict[str, str] = {}
            for model, limits in models.items():
                name = limit_name(f"{parent.name}-model", model)
                if name in taken:
                    raise ConfigError(
                        "Limits.models",
                        f"models {taken[name]!r} and {model!r} have the same limit name {name!r}",
                    )
                taken[name] = model
                named[model] = make(name, limits)
            self._by_parent[parent.name] = named

    @classmethod
    def build(
        cls,
        parents: Iterable[NamedLimits],
        make: Callable[[str, Limits], NamedLimits],
        limit_name: Callable[[str, str], str],
    ) -> ModelLimits | None:
        """The model limits of ``parents`` (None when none has any); ``make`` and
        ``limit_name`` are route_limits' (which imports this module)."""
        table = cls(parents, make, limit_name)
        return table if table._by_parent else None

    def all(self) -> tuple[NamedLimits, ...]:
        return tuple(n for models in self._by_parent.values() for n in models.values())

    def extend(self, found: list[NamedLimits], info: RequestInfo) -> None:
        """Add to ``found`` the limits of the model ``info``'s body names, for each of
        ``found`` that lists it. The body is read only when one of them has models."""
        by_parent = self._by_parent
        tables = [by_parent[named.name] for named in found if named.name in by_parent]
        if not tables:
            return
        model = model_of(info.body)
        if model is None:
            return
        for table in tables:
            hit = table.get(model)
            if hit is not None:
                found.append(hit)
