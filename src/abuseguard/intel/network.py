"""Network profile of a client: facts from the databases (or the request), rules, signals.

A profile is computed once per client address (and per enrichment given with a request)
and cached, so the request path pays one dict lookup for everything the network says. The
cache is dropped whenever the intel's answers change (a database reloaded, a new day); the
intel's reload check runs on every profile request, cache hits included.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from abuseguard.decision import DENIAL_ACTIONS, Action
from abuseguard.identity import ClientAddress
from abuseguard.intel.geo import GeoIntel
from abuseguard.intel.hosting import hosting_asns
from abuseguard.intel.records import (
    ANON_BITS,
    ANON_HOSTING,
    EMPTY_FACTS,
    NetworkFacts,
    facts_from_fields,
)
from abuseguard.policy import AnonymizerRule, NetworkPolicy
from abuseguard.request import RequestInfo

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_TREATMENT_ACTIONS = {action.value: action for action in DENIAL_ACTIONS}
_ANY_ADDRESS = object()  # the cache key of the one profile of every address
_EYEBALL_DISTRUST = 0.3  # fan-in on residential, mobile or campus networks counts for less


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    facts: NetworkFacts
    asn_key: int | None  # row key in the ASN table, None when unknown
    country_code: int  # two letters packed, 0 when unknown
    anon_signal: float  # 0..1, graded and weighted by the anonymizer rules
    geo_signal: float
    distrust: float  # multiplier of the fan-in signal
    nat_eligible: bool
    allowed: bool  # on an allow list: exempt from network rules and scoring
    rule_action: Action | None  # a deny list or an anonymizer treatment
    rule_reason: str | None
    hosting: bool


def pack_country(code: str | None) -> int:
    if not code or len(code) != 2:
        return 0
    return (ord(code[0]) << 8) | ord(code[1])


class NetworkView:
    """Turns addresses into profiles under a NetworkPolicy, with a bounded cache."""

    def __init__(
        self, policy: NetworkPolicy, intel: GeoIntel | None, *, cache_size: int = 65536
    ) -> None:
        self.policy = policy
        self.intel = intel
        self.hosting = hosting_asns(
            policy.hosting_asns, include_builtin=policy.builtin_hosting_asns
        )
        # NetworkPolicy normalizes its fields at construction; give them their real types.
        self.allow_countries = frozenset(policy.allow_countries)
        self.deny_countries = frozenset(policy.deny_countries)
        self.score_countries = frozenset(policy.score_countries)
        self.allow_asns = frozenset(policy.allow_asns)
        self.deny_asns = frozenset(policy.deny_asns)
        self.allow_cidrs = tuple(cast("Iterable[IPNetwork]", policy.allow_cidrs))
        self.deny_cidrs = tuple(cast("Iterable[IPNetwork]", policy.deny_cidrs))
        self.anonymizers = cast("dict[str, AnonymizerRule]", policy.anonymizers)
        self._cache: dict[object, NetworkProfile] = {}
        self._by_facts: dict[NetworkFacts, NetworkProfile] = {}
        self._cache_size = cache_size
        self._intel_version = intel.data_version if intel is not None else 0
        self._address_matters = intel is not None or bool(self.allow_cidrs or self.deny_cidrs)

    # The `abuseguard.intel.enricher.Enricher` interface.
    fills: tuple[str, ...] = ("profile",)

    def enrich(self, info: RequestInfo, address: ClientAddress) -> NetworkProfile:
        """`profile` of the request's address and the enrichment fields it carries."""
        return self.profile(
            address, info.asn, info.as_org, info.country, info.anon, info.anon_confidence
        )

    def profile(
        self,
        address: ClientAddress,
        asn: int | None = None,
        as_org: str | None = None,
        country: str | None = None,
        anon: tuple[str, ...] | None = None,
        anon_confidence: int | None = None,
    ) -> NetworkProfile:
        given = asn is not None or country is not None or anon is not None or as_org is not None
        if not given:
            # Without databases and CIDR rules every address has the same profile: one entry.
            cache_key: object = address.ip if self._address_matters else _ANY_ADDRESS
        elif self._address_matters:
            cache_key = (address.ip, asn, as_org, country, anon, anon_confidence)
        else:
            # Without databases and CIDR rules the given fields are all a profile depends on:
            # a pool rotating through fresh addresses of one network shares one entry.
            cache_key = (asn, as_org, country, anon, anon_confidence)
        intel = self.intel
        if intel is not None:
            intel_version = intel.current_data_version()
            if intel_version != self._intel_version:
                self._cache.clear()
                self._by_facts.clear()
                self._intel_version = intel_version
        hit = self._cache.get(cache_key)
        if hit is not None:
            return hit
        facts = intel.lookup(address.ip) if intel is not None else EMPTY_FACTS
        if given:
            facts = facts_from_fields(
                facts,
                asn=asn,
                as_org=as_org,
                country=country,
                anon=anon,
                anon_confidence=anon_confidence,
            )
        result: NetworkProfile | None
        if self.allow_cidrs or self.deny_cidrs:
            result = self._build(address, facts)
        else:
            # The profile depends on the facts alone, which the intel shares per network:
            # addresses of one network share one profile object, not one each.
            result = self._by_facts.get(facts)
            if result is None:
                result = self._build(address, facts)
                if len(self._by_facts) >= self._cache_size:
                    self._by_facts.clear()
                self._by_facts[facts] = result
        if intel is not None and intel.data_version != self._intel_version:
            return result  # reloaded meanwhile (another thread): the facts may be the old ones
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[cache_key] = result
        return result

    def clear(self) -> None:
        self._cache.clear()
        self._by_facts.clear()

    def _build(self, address: ClientAddress, facts: NetworkFacts) -> NetworkProfile:
        policy = self.policy
        ip = _ip(address.ip) if self.allow_cidrs or self.deny_cidrs else None
        hosting = bool(facts.anon_flags & ANON_HOSTING) or (facts.asn in self.hosting)
        allowed = (
            (facts.country is not None and facts.country in self.allow_countries)
            or (facts.asn != 0 and facts.asn in self.allow_asns)
            or (ip is not None and _within(ip, self.allow_cidrs))
        )
        rule_action: Action | None = None
        rule_reason: str | None = None
        if not allowed:
            if (ip is not None and _within(ip, self.deny_cidrs)) or (
                facts.asn != 0 and facts.asn in self.deny_asns
            ):
                rule_action, rule_reason = Action.BLOCK, "deny_list"
            elif facts.country is not None and facts.country in self.deny_countries:
                rule_action, rule_reason = Action.BLOCK, "geo"
        anon_signal = 0.0
        flags = facts.anon_flags | (ANON_HOSTING if hosting else 0)
        strength = facts.anon_strength if facts.anon_flags else 0.0
        for kind, rule in self.anonymizers.items():
            if not flags & ANON_BITS[kind] or rule.treatment == "ignore":
                continue
            # Hosting ASNs from the list carry no graded confidence: count them as certain.
            kind_strength = strength if facts.anon_flags & ANON_BITS[kind] else 1.0
            action = _TREATMENT_ACTIONS.get(rule.treatment)
            if action is not None and kind_strength >= rule.min_strength and kind_strength > 0:
                if not allowed and (rule_action is None or action.severity > rule_action.severity):
                    rule_action, rule_reason = action, "anonymizer"
                continue
            anon_signal = max(anon_signal, min(1.0, rule.weight * kind_strength))
        geo_signal = (
            1.0 if facts.country is not None and facts.country in self.score_countries else 0.0
        )
        anonymized = facts.anon_flags != 0 and strength >= 0.3
        distrust = 1.0 if (hosting or anonymized) else _EYEBALL_DISTRUST
        return NetworkProfile(
            facts=facts,
            asn_key=facts.asn if facts.asn else None,
            country_code=pack_country(facts.country),
            anon_signal=0.0 if allowed else anon_signal,
            geo_signal=0.0 if allowed else geo_signal,
            distrust=distrust,
            nat_eligible=policy.nat_fairness and not hosting and not anonymized,
            allowed=allowed,
            rule_action=rule_action,
            rule_reason=rule_reason,
            hosting=hosting,
        )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _within(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[IPNetwork, ...]
) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)
