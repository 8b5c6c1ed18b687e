"""The identify and enrich stage: a `RequestInfo` turned into a `Prepared`, the record the
engine and the backends read (identity, network profile, client class, prompt fingerprint,
up-front cost). What it derives depends on the request alone, never on earlier decisions,
which is why a batch can be read ahead (`Guard.prepare_many`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from abuseguard.account import AccountFacts
from abuseguard.identity import AddressBook, ClientAddress, hash_key
from abuseguard.intel.agents import ClientClass
from abuseguard.intel.client import ClientFacts
from abuseguard.intel.network import NetworkProfile, NetworkView
from abuseguard.policy import Policy
from abuseguard.request import RequestInfo

logger = logging.getLogger("abuseguard")


@dataclass(slots=True)
class Prepared:
    """Everything the engine and the backend need for one request, derived from RequestInfo."""

    ts: float
    identity: str  # "k:<hash>" or "i:<ip key>"
    has_account: bool
    address: ClientAddress
    profile: NetworkProfile | None
    cost: float
    ua_class: int
    persona: int
    persona_mismatch: float
    simhash: int
    template_id: int
    elicitation: float
    has_content: bool
    account: AccountFacts | None = None
    plan: str | None = None  # `Policy.plans`: its limits replace the app-wide ones


ClientOf = Callable[[str | None, Mapping[str, str]], ClientFacts]


class RequestReader:
    """Reads requests for one Guard: ``identity_of``, ``cost_of``, ``prepare`` and
    ``with_body`` (what `precheck` read without the body, completed once it is read)."""

    def __init__(
        self,
        policy: Policy,
        *,
        addresses: AddressBook,
        network: NetworkView | None,
        client_of: ClientOf,
        content: Any,
        clock: Callable[[], float],
    ) -> None:
        self.policy = policy
        self.addresses = addresses
        self.network = network
        self.client_of = client_of
        # A `ContentFingerprinter` (or any object with its ``fingerprint``), or None.
        self.content = content
        self.clock = clock
        scoring = policy.scoring
        self.scoring_on = scoring is not None and scoring.enabled
        self._edge = policy.edge.reader() if policy.edge is not None else None
        self._key_func = policy.key_func
        self._key_hashes: dict[str, str] = {}
        bucket = policy.bucket
        self._cost_is_static = bucket is None or isinstance(bucket.cost, int | float)
        self._static_cost = (
            float(bucket.cost)
            if bucket is not None and isinstance(bucket.cost, int | float)
            else 1.0
        )

    def identity_of(self, info: RequestInfo) -> tuple[str, bool, ClientAddress]:
        address = self.addresses.resolve(info.ip)
        key_func = self._key_func
        raw = key_func(info) if key_func is not None else info.key
        if raw:
            hashed = self._key_hashes.get(raw)
            if hashed is None:
                if len(self._key_hashes) >= 100_000:
                    self._key_hashes.clear()
                hashed = self._key_hashes[raw] = "k:" + hash_key(self.policy.secret, raw)
            return hashed, True, address
        return "i:" + address.ip_key, False, address

    def cost_of(self, info: RequestInfo) -> float:
        """What the request costs up front. A given cost that is not a finite number >= 0
        (NaN, inf, negative, not a number) is ignored and the policy's cost applies."""
        if info.cost is not None:
            try:
                given = float(info.cost)
            except (TypeError, ValueError):
                given = -1.0
            if 0.0 <= given < float("inf"):
                return given
            logger.warning("RequestInfo.cost %r is not a finite cost >= 0; ignored", info.cost)
        if self._cost_is_static:
            return self._static_cost
        bucket = self.policy.bucket
        assert bucket is not None
        cost = bucket.cost
        if isinstance(cost, Mapping):
            route = info.route or info.path
            value = cost.get(f"{info.method} {route}")
            if value is None and info.method == "HEAD":
                # Starlette answers HEAD on every GET route by running the GET handler.
                value = cost.get(f"GET {route}")
            if value is None:
                value = cost.get(route, 1.0)
            return float(value)
        assert callable(cost)  # a number made the cost static (returned above)
        try:
            value = float(cost(info))
        except Exception:
            logger.exception("TokenBucket.cost callable failed; charging 1")
            return 1.0
        return value if 0.0 <= value < float("inf") else 1.0

    def prepare(self, info: RequestInfo) -> Prepared:
        ts = info.ts
        if ts is None:
            ts = self.clock()
        identity, has_account, address = self.identity_of(info)
        network = self.network
        profile = (
            network.profile(
                address, info.asn, info.as_org, info.country, info.anon, info.anon_confidence
            )
            if network is not None
            else None
        )
        ua_class = _UNKNOWN_CLASS
        persona = 0
        mismatch = 0.0
        if self.scoring_on:
            ua_class, persona, mismatch = self.client_of(info.ua, info.headers)
            edge = self._edge
            if edge is not None:
                mismatch = max(mismatch, edge.mismatch(info.headers, ua_class))
        simhash, template_id, elicitation, has_content = self._content_of(info)
        return Prepared(
            ts,
            identity,
            has_account,
            address,
            profile,
            self._static_cost if info.cost is None and self._cost_is_static else self.cost_of(info),
            ua_class,
            persona,
            mismatch,
            simhash,
            template_id,
            elicitation,
            has_content,
            info.account,
            info.plan,
        )

    def _content_of(self, info: RequestInfo) -> tuple[int, int, float, bool]:
        """The body's fingerprint: (simhash, template_id, elicitation, has_content)."""
        if self.scoring_on and self.content is not None and info.body:
            facts = self.content.fingerprint(info.body, info.headers.get("content-type"))
            if facts.prompt_found:
                return facts.simhash, facts.template_id, facts.elicitation, True
        return _NO_CONTENT

    def with_body(self, info: RequestInfo, p: Prepared) -> Prepared:
        """What `precheck` prepared without the body, completed once the body is read:
        the decision's time, the cost (a cost callable may price the body) and the body's
        fingerprint; the identity, network profile and client class are kept."""
        ts = info.ts
        if ts is None:
            ts = self.clock()
        simhash, template_id, elicitation, has_content = self._content_of(info)
        return replace(
            p,
            ts=ts,
            cost=(
                self._static_cost
                if info.cost is None and self._cost_is_static
                else self.cost_of(info)
            ),
            simhash=simhash,
            template_id=template_id,
            elicitation=elicitation,
            has_content=has_content,
            account=info.account,
            plan=info.plan,
        )


_UNKNOWN_CLASS = int(ClientClass.UNKNOWN)
_NO_CONTENT = (0, 0, 0.0, False)

__all__ = ["Prepared", "RequestReader"]
