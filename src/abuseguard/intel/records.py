"""MaxMind records turned into facts: `NetworkFacts` (one frozen record per address),
the merge of every database's answer into one, and enrichment given with a request
(`facts_from_fields`) applied over looked-up facts.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ANON_VPN = 1
ANON_HOSTING = 2
ANON_PUBLIC_PROXY = 4
ANON_RESIDENTIAL_PROXY = 8
ANON_TOR = 16
ANON_BITS: dict[str, int] = {
    "vpn": ANON_VPN,
    "hosting": ANON_HOSTING,
    "public_proxy": ANON_PUBLIC_PROXY,
    "residential_proxy": ANON_RESIDENTIAL_PROXY,
    "tor": ANON_TOR,
}

# Record field -> anonymizer bit, shared by Anonymous IP, Anonymous Plus and IP Risk.
_ANON_FIELDS: tuple[tuple[str, int], ...] = (
    ("is_anonymous_vpn", ANON_VPN),
    ("is_hosting_provider", ANON_HOSTING),
    ("is_public_proxy", ANON_PUBLIC_PROXY),
    ("is_residential_proxy", ANON_RESIDENTIAL_PROXY),
    ("is_tor_exit_node", ANON_TOR),
)

# The anonymizer databases (`abuseguard.intel.mmdb.KINDS`), whose flags are OR-ed.
_ANON_KINDS = frozenset({"anonymous_ip", "anonymous_plus", "residential_proxy", "ip_risk"})


@dataclass(frozen=True, slots=True)
class NetworkFacts:
    """What the databases say about one client address (immutable, shared per network)."""

    asn: int = 0
    as_org: str | None = None
    country: str | None = None
    anon_flags: int = 0
    anon_confidence: int = 0
    anon_age_days: float | None = None
    anon_provider: str | None = None
    anon_strength: float = 0.0
    private: bool = False
    network: str | None = None
    valid: bool = True
    ip_risk: float | None = None
    connection_type: str | None = None

    @property
    def anon(self) -> tuple[str, ...]:
        """The anonymizer kinds set in `anon_flags`, in `ANON_BITS` order."""
        return anon_kinds(self.anon_flags)


EMPTY_FACTS = NetworkFacts()
INVALID_FACTS = NetworkFacts(valid=False)


def anon_kinds(flags: int) -> tuple[str, ...]:
    """Names of the anonymizer bits set in `flags`, e.g. ``("vpn", "tor")``."""
    return tuple(name for name, bit in ANON_BITS.items() if flags & bit)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _asn(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32:
        return value
    return 0


def _country_code(value: object) -> str | None:
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _confidence(value: object) -> int | None:
    number = _number(value)
    if number is None:
        return None
    return round(min(100.0, max(0.0, number)))


def _age_days(value: object, today: datetime.date) -> float | None:
    if not isinstance(value, str) or len(value) > 32:
        return None
    try:
        seen = datetime.date.fromisoformat(value)
    except ValueError:
        return None
    return float(max(0, (today - seen).days))


def recency_weight(age_days: float | None, half_life_days: float) -> float:
    """1.0 for fresh (or undated) claims, halving every `half_life_days`."""
    if age_days is None or math.isinf(half_life_days):
        return 1.0
    return float(0.5 ** (age_days / half_life_days))


def _country_of(record: object) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        section = record.get(key)
        if isinstance(section, dict):
            code = _country_code(section.get("iso_code"))
            if code is not None:
                return code
    return None


@dataclass(slots=True)
class _AnonClaim:
    flags: int
    confidence: int
    graded: bool
    age_days: float | None
    provider: str | None
    strength: float

    def beats(self, other: _AnonClaim | None) -> bool:
        if other is None:
            return True
        if self.graded != other.graded:
            return self.graded
        return self.strength > other.strength


def _anon_claim(
    kind: str, record: dict[Any, Any], today: datetime.date, half_life_days: float
) -> _AnonClaim | None:
    flags = 0
    for field, bit in _ANON_FIELDS:
        if record.get(field) is True:
            flags |= bit
    if kind == "residential_proxy" and record:
        flags |= ANON_RESIDENTIAL_PROXY
    if not flags:
        return None
    confidence = _confidence(record.get("anonymizer_confidence"))
    graded = confidence is not None
    if confidence is None:
        confidence = 100
    age = _age_days(record.get("network_last_seen"), today)
    strength = confidence / 100.0 * recency_weight(age, half_life_days)
    provider = _text(record.get("provider_name"))
    return _AnonClaim(flags, confidence, graded, age, provider, strength)


def merge_records(
    answers: Iterable[tuple[str, object]],
    *,
    network: str | None,
    today: datetime.date,
    half_life_days: float,
) -> NetworkFacts:
    """Merge (kind, record) answers for one address into one `NetworkFacts`.

    ASN and country come from the first database that has them (in `KINDS` order).
    Anonymizer bits are OR-ed over all anonymizer databases. Confidence, age, provider and
    strength (confidence/100 x recency weight) come from one claim: the strongest graded
    claim (one with ``anonymizer_confidence``) when there is one, else the strongest
    ungraded claim, which counts as confidence 100. So an Anonymous IP file loaded beside
    Anonymous Plus adds flags but does not overrule Anonymous Plus's grading.
    """
    asn = 0
    as_org: str | None = None
    country: str | None = None
    flags = 0
    best: _AnonClaim | None = None
    ip_risk: float | None = None
    connection_type: str | None = None
    for kind, record in answers:
        if not isinstance(record, dict):
            continue
        if kind == "asn":
            if not asn:
                asn = _asn(record.get("autonomous_system_number"))
                as_org = _text(record.get("autonomous_system_organization")) if asn else None
        elif kind in ("city", "country"):
            if country is None:
                country = _country_of(record)
        elif kind == "connection_type":
            if connection_type is None:
                connection_type = _text(record.get("connection_type"))
        elif kind in _ANON_KINDS:
            if kind == "ip_risk" and ip_risk is None:
                risk = _number(record.get("ip_risk"))
                ip_risk = None if risk is None else min(100.0, max(0.0, risk))
            claim = _anon_claim(kind, record, today, half_life_days)
            if claim is not None:
                flags |= claim.flags
                if claim.beats(best):
                    best = claim
    return NetworkFacts(
        asn=asn,
        as_org=as_org,
        country=country,
        anon_flags=flags,
        anon_confidence=best.confidence if best else 0,
        anon_age_days=best.age_days if best else None,
        anon_provider=best.provider if best else None,
        anon_strength=best.strength if best else 0.0,
        network=network,
        ip_risk=ip_risk,
        connection_type=connection_type,
    )


def facts_from_fields(
    base: NetworkFacts,
    *,
    asn: int | None = None,
    as_org: str | None = None,
    country: str | None = None,
    anon: Sequence[str] | None = None,
    anon_confidence: int | None = None,
) -> NetworkFacts:
    """Apply enrichment given with a request (trace or `RequestInfo`) over looked-up facts.

    Field by field, a given value wins: ``asn`` (an int in 1..2**32-1; when it differs from
    the looked-up ASN, the looked-up organisation is dropped unless ``as_org`` is given),
    ``as_org``, ``country`` (two ASCII letters, upper-cased), ``anon`` (replaces the flags,
    the provider and age; ``[]`` means not an anonymizer; a string is read as a
    comma-separated list; kinds not in `ANON_BITS` are ignored) and ``anon_confidence``
    (0..100, clamped; default 100 when ``anon`` names a kind; given alone it re-grades the
    looked-up claim, keeping its recency weight, and is ignored when there is no claim).
    Malformed values are ignored. Returns `base` itself when nothing applies.
    """
    if isinstance(anon, str):
        anon = [part.strip() for part in anon.split(",") if part.strip()]
    elif isinstance(anon, bytes | bytearray) or not isinstance(anon, Sequence):
        anon = None
    new_asn = _asn(asn)
    new_org = _text(as_org)
    new_country = _country_code(country.strip()) if isinstance(country, str) else None
    confidence = _confidence(anon_confidence)
    anon_applies = anon is not None or (confidence is not None and base.anon_flags != 0)
    if not (new_asn or new_org is not None or new_country is not None or anon_applies):
        return base
    out_asn, out_org = base.asn, base.as_org
    if new_asn:
        if new_asn != out_asn:
            out_org = None
        out_asn = new_asn
    if new_org is not None:
        out_org = new_org
    flags = base.anon_flags
    conf = base.anon_confidence
    age = base.anon_age_days
    provider = base.anon_provider
    strength = base.anon_strength
    if anon is not None:
        flags = 0
        for kind in anon:
            flags |= ANON_BITS.get(kind, 0) if isinstance(kind, str) else 0
        conf = (100 if confidence is None else confidence) if flags else 0
        age, provider = None, None
        strength = conf / 100.0
    elif confidence is not None and base.anon_flags:
        recency = base.anon_strength * 100.0 / base.anon_confidence if base.anon_confidence else 1.0
        conf = confidence
        strength = conf / 100.0 * recency
    return NetworkFacts(
        asn=out_asn,
        as_org=out_org,
        country=new_country if new_country is not None else base.country,
        anon_flags=flags,
        anon_confidence=conf,
        anon_age_days=age,
        anon_provider=provider,
        anon_strength=strength,
        private=base.private,
        network=base.network,
        valid=base.valid,
        ip_risk=base.ip_risk,
        connection_type=base.connection_type,
    )
