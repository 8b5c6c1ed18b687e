"""RequestInfo: everything the framework-free core needs to know about one request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from abuseguard.account import AccountFacts

ANONYMIZER_KINDS: tuple[str, ...] = (
    "vpn",
    "hosting",
    "public_proxy",
    "residential_proxy",
    "tor",
)


@dataclass(slots=True)
class RequestInfo:
    """One request as the core sees it.

    ``ip`` is the client address after trusted proxies. ``key`` is the account or API key
    identity (raw; the guard hashes it before it is stored or reported). The enrichment
    fields (``asn``, ``as_org``, ``country``, ``anon``, ``anon_confidence``), when set,
    are used instead of database lookups, as a CDN log line would carry them. ``plan``
    is the client's plan (`Policy.plans`), from `Policy.plan_func` in the middleware.
    ``account`` holds what the host app knows about the account (`Policy.accounts`).
    ``connection`` is the framework's request object when an adapter has one: the
    middleware sets a Starlette ``HTTPConnection`` (scope, headers, ``user`` and ``state``
    set by authentication middleware) when the policy has a ``key_func`` or a
    ``plan_func``; it is None in replay and when the core is driven directly.
    """

    ip: str
    ts: float | None = None
    key: str | None = None
    method: str = "GET"
    path: str = "/"
    route: str | None = None
    ua: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str | None = None
    cost: float | None = None
    asn: int | None = None
    as_org: str | None = None
    country: str | None = None
    anon: tuple[str, ...] | None = None
    anon_confidence: int | None = None
    plan: str | None = None
    account: AccountFacts | None = None
    connection: Any = None


class RequestTime:
    """The time of the request being decided, as a clock: the memory backend's quotas and
    leases read it (``time()``), so that a replayed request counts at its own time. The
    Guard sets ``now`` before deciding; `precheck` sets and restores it."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
