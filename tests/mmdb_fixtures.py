"""Small MaxMind DB files for tests, built with `mmdb_writer`.

Quick use::

    from tests.mmdb_fixtures import FIXTURE_TODAY, EXPECTED, VPN, build_world

    paths = build_world(tmp_path)                      # kind -> Path, every kind
    intel = GeoIntel(**paths, today=lambda: FIXTURE_TODAY)
    facts = intel.lookup(VPN)                          # see EXPECTED[VPN]

`build_world` writes one database of every kind GeoIntel reads (IPv6 trees holding IPv4
under ``::/96``, as MaxMind's own files do) describing a small invented internet: clouds,
a residential ISP, a university, a mobile carrier, a VPN, a Tor exit, a public proxy and
residential proxies, on IPv4 and IPv6. The named addresses below and `EXPECTED` say what a
lookup with all of them loaded (and the default 30-day half-life) must return.
`network_last_seen` dates are relative to `today` (default `FIXTURE_TODAY`), so pass the
same date to GeoIntel. The ``write_*`` functions build single databases from your own rows.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

FIXTURE_TODAY = datetime.date(2026, 1, 15)

# Database types written for each GeoIntel kind (as in MaxMind's metadata).
DATABASE_TYPES: dict[str, str] = {
    "asn": "GeoLite2-ASN",
    "country": "GeoLite2-Country",
    "city": "GeoIP2-City",
    "anonymous_ip": "GeoIP2-Anonymous-IP",
    "anonymous_plus": "GeoIP-Anonymous-Plus",
    "residential_proxy": "GeoIP-Residential-Proxy",
    "ip_risk": "GeoIP2-IP-Risk",
    "connection_type": "GeoIP2-Connection-Type",
}

_ANON_FIELD = {
    "vpn": "is_anonymous_vpn",
    "hosting": "is_hosting_provider",
    "public_proxy": "is_public_proxy",
    "residential_proxy": "is_residential_proxy",
    "tor": "is_tor_exit_node",
}


@dataclass(frozen=True)
class AnonRow:
    """One anonymizer network: kinds, and the grading fields (None = field left out)."""

    kinds: tuple[str, ...]
    confidence: int | None = None
    seen_days_ago: int | None = None
    provider: str | None = None
    ip_risk: float | None = None


# ----------------------------------------------------------------------------- writers


def write_mmdb(
    path: str | Path,
    database_type: str,
    rows: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    ip_version: int = 6,
) -> Path:
    """Write `rows` (CIDR, record) as a MaxMind DB at `path`, atomically; returns the path.

    Broader networks are inserted first, so a narrower row overrides the part of a
    broader one it covers (the writer replaces whatever an insert covers).
    """
    path = Path(path)
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type=database_type,
        languages=["en"],
        description=f"abuseguard test {database_type}",
        ipv4_compatible=ip_version == 6,
    )
    for cidr, record in sorted(rows, key=lambda row: _sort_key(row[0])):
        writer.insert_network(IPSet([cidr]), dict(record))
    tmp = path.with_name(f".{path.name}.tmp")
    writer.to_db_file(os.fspath(tmp))
    os.replace(tmp, path)
    return path


def _sort_key(cidr: str) -> tuple[int, int]:
    net = ip_network(cidr)
    # IPv4 rows live at ::/96 in an IPv6 tree: compare prefix lengths in that space.
    return (net.prefixlen + (96 if net.version == 4 else 0), int(net.network_address))


def write_asn(path: str | Path, rows: Mapping[str, tuple[int, str | None]]) -> Path:
    """ASN database: {cidr: (asn, organisation or None)}."""
    records = []
    for cidr, (asn, org) in rows.items():
        record: dict[str, Any] = {"autonomous_system_number": asn}
        if org is not None:
            record["autonomous_system_organization"] = org
        records.append((cidr, record))
    return write_mmdb(path, DATABASE_TYPES["asn"], records)


def _geo_record(country: str | None, registered: str | None, city: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if country is not None:
        record["country"] = {"iso_code": country, "names": {"en": country}}
    if registered is not None:
        record["registered_country"] = {"iso_code": registered, "names": {"en": registered}}
    if city is not None:
        record["city"] = {"names": {"en": city}}
    return record


def write_country(
    path: str | Path,
    rows: Mapping[str, str | tuple[str | None, str | None]],
    *,
    database_type: str = DATABASE_TYPES["country"],
) -> Path:
    """Country database: {cidr: iso_code} or {cidr: (country or None, registered or None)}."""
    records = []
    for cidr, value in rows.items():
        country, registered = (value, value) if isinstance(value, str) else value
        records.append((cidr, _geo_record(country, registered, None)))
    return write_mmdb(path, database_type, records)


def write_city(path: str | Path, rows: Mapping[str, tuple[str, str]]) -> Path:
    """City database: {cidr: (iso_code, city name)}."""
    records = [
        (cidr, _geo_record(country, country, city)) for cidr, (country, city) in rows.items()
    ]
    return write_mmdb(path, DATABASE_TYPES["city"], records)


def anon_record(row: AnonRow, today: datetime.date, *, graded: bool) -> dict[str, Any]:
    """The record MaxMind would store for `row` (grading fields only when `graded`)."""
    record: dict[str, Any] = {}
    for kind in row.kinds:
        record[_ANON_FIELD[kind]] = True
    if row.kinds:
        record["is_anonymous"] = True
    if graded:
        if row.confidence is not None:
            record["anonymizer_confidence"] = row.confidence
        if row.seen_days_ago is not None:
            seen = today - datetime.timedelta(days=row.seen_days_ago)
            record["network_last_seen"] = seen.isoformat()
        if row.provider is not None:
            record["provider_name"] = row.provider
    if row.ip_risk is not None:
        record["ip_risk"] = row.ip_risk
    return record


def write_anonymous_ip(path: str | Path, rows: Mapping[str, Iterable[str]]) -> Path:
    """Anonymous IP database (flags only): {cidr: kinds}."""
    today = FIXTURE_TODAY
    records = [
        (cidr, anon_record(AnonRow(tuple(kinds)), today, graded=False))
        for cidr, kinds in rows.items()
    ]
    return write_mmdb(path, DATABASE_TYPES["anonymous_ip"], records)


def write_anonymous_plus(
    path: str | Path, rows: Mapping[str, AnonRow], *, today: datetime.date = FIXTURE_TODAY
) -> Path:
    """Anonymous Plus database: flags plus confidence, last seen and provider."""
    records = [(cidr, anon_record(row, today, graded=True)) for cidr, row in rows.items()]
    return write_mmdb(path, DATABASE_TYPES["anonymous_plus"], records)


def write_residential_proxy(
    path: str | Path, rows: Mapping[str, AnonRow], *, today: datetime.date = FIXTURE_TODAY
) -> Path:
    """Residential Proxy database: provider, confidence and last seen (no flag fields)."""
    records = [
        (
            cidr,
            anon_record(AnonRow((), r.confidence, r.seen_days_ago, r.provider), today, graded=True),
        )
        for cidr, r in rows.items()
    ]
    return write_mmdb(path, DATABASE_TYPES["residential_proxy"], records)


def write_ip_risk(
    path: str | Path, rows: Mapping[str, AnonRow], *, today: datetime.date = FIXTURE_TODAY
) -> Path:
    """IP Risk database: ip_risk plus anonymizer flags and grading fields."""
    records = [(cidr, anon_record(row, today, graded=True)) for cidr, row in rows.items()]
    return write_mmdb(path, DATABASE_TYPES["ip_risk"], records)


def write_connection_type(path: str | Path, rows: Mapping[str, str]) -> Path:
    """Connection Type database: {cidr: "Cable/DSL" | "Cellular" | "Corporate" | ...}."""
    records = [(cidr, {"connection_type": value}) for cidr, value in rows.items()]
    return write_mmdb(path, DATABASE_TYPES["connection_type"], records)


def write_garbage(path: str | Path, size: int = 4096) -> Path:
    """A file that is not a MaxMind DB, written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(bytes((i * 37 + 11) % 256 for i in range(size)))
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------- world

# Named addresses of the world (use these in tests rather than literals).
GOOGLE_DNS = "8.8.8.8"
CLOUDFLARE_DNS = "1.1.1.1"
AWS = "3.5.140.2"
DIGITALOCEAN = "159.89.10.20"
COMCAST_HOME = "73.20.30.40"
UNIVERSITY = "128.32.1.1"
MOBILE = "172.58.1.1"
TOR_EXIT = "185.220.101.7"
VPN = "45.83.221.9"
PUBLIC_PROXY = "5.188.10.50"
RESIDENTIAL_PROXY = "73.1.2.3"
RESIDENTIAL_PROXY_WEAK = "73.9.9.9"
GB_COUNTRY_ONLY = "81.2.69.160"
REGISTERED_ONLY = "41.1.2.3"
NO_DATA = "11.22.33.44"
V6_AWS = "2600:1f00::1"
V6_FACEBOOK = "2a03:2880:f000::1"
V6_COMCAST_HOME = "2001:558:2::1"
V6_RESIDENTIAL_PROXY = "2001:558:1::5"
V6_VPN = "2a0d:5600:1::1"

WORLD_ASN: dict[str, tuple[int, str | None]] = {
    "8.8.8.0/24": (15169, "Google LLC"),
    "1.1.1.0/24": (13335, "Cloudflare, Inc."),
    "3.0.0.0/9": (16509, "Amazon.com, Inc."),
    "159.89.0.0/16": (14061, "DigitalOcean, LLC"),
    "73.0.0.0/8": (7922, "Comcast Cable Communications, LLC"),
    "128.32.0.0/16": (25, "University of California at Berkeley"),
    "172.56.0.0/13": (21928, "T-Mobile USA, Inc."),
    "185.220.101.0/24": (60729, "Tor relay operators e.V."),
    "45.83.220.0/22": (9009, "M247 Europe SRL"),
    "5.188.10.0/24": (49453, "Proxy Host Ltd"),
    "41.0.0.0/11": (36994, None),
    "2600:1f00::/24": (16509, "Amazon.com, Inc."),
    "2a03:2880::/32": (32934, "Facebook, Inc."),
    "2001:558::/31": (7922, "Comcast Cable Communications, LLC"),
    "2a0d:5600::/29": (9009, "M247 Europe SRL"),
}
WORLD_COUNTRY: dict[str, str | tuple[str | None, str | None]] = {
    "8.0.0.0/8": "US",
    "1.1.1.0/24": "AU",
    "3.0.0.0/8": "US",
    "159.89.0.0/16": "DE",
    "73.0.0.0/8": "US",
    "128.32.0.0/16": "US",
    "172.56.0.0/13": "US",
    "185.220.101.0/24": "DE",
    "45.83.220.0/22": "NL",
    "5.188.10.0/24": "RU",
    "81.2.69.0/24": "GB",
    "41.0.0.0/11": (None, "ZA"),
    "2600:1f00::/24": "US",
    "2a03:2880::/32": "IE",
    "2001:558::/31": "US",
    "2a0d:5600::/29": "NL",
}
WORLD_CITY: dict[str, tuple[str, str]] = {
    "81.2.69.0/24": ("GB", "London"),
    "128.32.0.0/16": ("US", "Berkeley"),
    "2a03:2880::/32": ("IE", "Dublin"),
}
WORLD_ANONYMOUS_IP: dict[str, tuple[str, ...]] = {
    "45.83.220.0/22": ("vpn",),
    "185.220.101.0/24": ("tor",),
    "3.5.140.0/22": ("hosting",),
    "159.89.0.0/16": ("hosting",),
    "5.188.10.0/24": ("public_proxy",),
    "73.1.2.3/32": ("residential_proxy",),
    "2a0d:5600::/29": ("vpn",),
}
WORLD_ANONYMOUS_PLUS: dict[str, AnonRow] = {
    "45.83.220.0/22": AnonRow(("vpn",), 95, 2, "examplevpn"),
    "185.220.101.0/24": AnonRow(("tor",), 100, 0, None),
    "3.5.140.0/22": AnonRow(("hosting",)),
    "159.89.0.0/16": AnonRow(("hosting",), 90),
    "5.188.10.0/24": AnonRow(("public_proxy",), 60, 90, "openproxies"),
    "73.1.2.3/32": AnonRow(("residential_proxy",), 80, 30, "proxyco"),
    "2a0d:5600::/29": AnonRow(("vpn",), 70, None, "examplevpn"),
}
WORLD_RESIDENTIAL_PROXY: dict[str, AnonRow] = {
    "73.1.2.3/32": AnonRow((), 80, 30, "proxyco"),
    "73.9.9.0/24": AnonRow((), 40, 10, "peerpool"),
    "2001:558:1::/48": AnonRow((), 55, 5, "peerpool"),
}
WORLD_IP_RISK: dict[str, AnonRow] = {
    "45.83.220.0/22": AnonRow(("vpn",), 95, 2, "examplevpn", ip_risk=80.5),
    "73.1.2.3/32": AnonRow(("residential_proxy",), 80, 30, "proxyco", ip_risk=60.0),
    "8.8.8.0/24": AnonRow((), ip_risk=1.0),
}
WORLD_CONNECTION_TYPE: dict[str, str] = {
    "73.0.0.0/8": "Cable/DSL",
    "172.56.0.0/13": "Cellular",
    "128.32.0.0/16": "Corporate",
    "3.0.0.0/8": "Corporate",
    "2001:558::/31": "Cable/DSL",
}


def build_world(
    directory: str | Path,
    *,
    today: datetime.date = FIXTURE_TODAY,
    kinds: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Write the world's databases into `directory`; returns GeoIntel kwargs (kind -> path).

    `kinds` limits which databases are written (default: all of `DATABASE_TYPES`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = set(DATABASE_TYPES) if kinds is None else set(kinds)
    unknown = wanted - set(DATABASE_TYPES)
    if unknown:
        raise ValueError(f"unknown kinds: {sorted(unknown)}")
    writers = {
        "asn": lambda p: write_asn(p, WORLD_ASN),
        "country": lambda p: write_country(p, WORLD_COUNTRY),
        "city": lambda p: write_city(p, WORLD_CITY),
        "anonymous_ip": lambda p: write_anonymous_ip(p, WORLD_ANONYMOUS_IP),
        "anonymous_plus": lambda p: write_anonymous_plus(p, WORLD_ANONYMOUS_PLUS, today=today),
        "residential_proxy": lambda p: write_residential_proxy(
            p, WORLD_RESIDENTIAL_PROXY, today=today
        ),
        "ip_risk": lambda p: write_ip_risk(p, WORLD_IP_RISK, today=today),
        "connection_type": lambda p: write_connection_type(p, WORLD_CONNECTION_TYPE),
    }
    return {
        kind: writers[kind](directory / f"{DATABASE_TYPES[kind]}-Test.mmdb")
        for kind in DATABASE_TYPES
        if kind in wanted
    }


# What a lookup with every world database loaded returns (30-day half-life), per address.
# Fields not listed have their NetworkFacts default; "anon" is the tuple of kind names.
# "network" is the largest block over which every database gives the same answer, so it
# can be an empty region of one file (e.g. 10.0.0.0/7 for NO_DATA).
EXPECTED: dict[str, dict[str, Any]] = {
    GOOGLE_DNS: {
        "asn": 15169,
        "as_org": "Google LLC",
        "country": "US",
        "ip_risk": 1.0,
        "network": "8.8.8.0/24",
    },
    CLOUDFLARE_DNS: {
        "asn": 13335,
        "as_org": "Cloudflare, Inc.",
        "country": "AU",
        "network": "1.1.1.0/24",
    },
    AWS: {
        "asn": 16509,
        "as_org": "Amazon.com, Inc.",
        "country": "US",
        "anon": ("hosting",),
        "anon_confidence": 100,  # flagged without a confidence anywhere
        "anon_strength": 1.0,
        "connection_type": "Corporate",
        "network": "3.5.140.0/22",
    },
    DIGITALOCEAN: {
        "asn": 14061,
        "as_org": "DigitalOcean, LLC",
        "country": "DE",
        "anon": ("hosting",),
        "anon_confidence": 90,  # graded Anonymous Plus claim beats the ungraded one
        "anon_strength": 0.9,
        "network": "159.89.0.0/16",
    },
    COMCAST_HOME: {
        "asn": 7922,
        "as_org": "Comcast Cable Communications, LLC",
        "country": "US",
        "connection_type": "Cable/DSL",
        "network": "73.16.0.0/12",  # empty in the residential proxy file
    },
    UNIVERSITY: {
        "asn": 25,
        "as_org": "University of California at Berkeley",
        "country": "US",
        "connection_type": "Corporate",
        "network": "128.32.0.0/16",
    },
    MOBILE: {
        "asn": 21928,
        "as_org": "T-Mobile USA, Inc.",
        "country": "US",
        "connection_type": "Cellular",
        "network": "172.56.0.0/13",
    },
    TOR_EXIT: {
        "asn": 60729,
        "as_org": "Tor relay operators e.V.",
        "country": "DE",
        "anon": ("tor",),
        "anon_confidence": 100,
        "anon_age_days": 0.0,
        "anon_strength": 1.0,
        "network": "185.220.101.0/24",
    },
    VPN: {
        "asn": 9009,
        "as_org": "M247 Europe SRL",
        "country": "NL",
        "anon": ("vpn",),
        "anon_confidence": 95,
        "anon_age_days": 2.0,
        "anon_provider": "examplevpn",
        "anon_strength": 0.95 * 0.5 ** (2 / 30),
        "ip_risk": 80.5,
        "network": "45.83.220.0/22",
    },
    PUBLIC_PROXY: {
        "asn": 49453,
        "as_org": "Proxy Host Ltd",
        "country": "RU",
        "anon": ("public_proxy",),
        "anon_confidence": 60,
        "anon_age_days": 90.0,
        "anon_provider": "openproxies",
        "anon_strength": 0.6 * 0.5**3,
        "network": "5.188.10.0/24",
    },
    RESIDENTIAL_PROXY: {
        "asn": 7922,
        "as_org": "Comcast Cable Communications, LLC",
        "country": "US",
        "anon": ("residential_proxy",),
        "anon_confidence": 80,
        "anon_age_days": 30.0,
        "anon_provider": "proxyco",
        "anon_strength": 0.4,
        "ip_risk": 60.0,
        "connection_type": "Cable/DSL",
        "network": "73.1.2.3/32",
    },
    RESIDENTIAL_PROXY_WEAK: {
        "asn": 7922,
        "as_org": "Comcast Cable Communications, LLC",
        "country": "US",
        "anon": ("residential_proxy",),
        "anon_confidence": 40,
        "anon_age_days": 10.0,
        "anon_provider": "peerpool",
        "anon_strength": 0.4 * 0.5 ** (10 / 30),
        "connection_type": "Cable/DSL",
        "network": "73.9.9.0/24",
    },
    GB_COUNTRY_ONLY: {"country": "GB", "network": "81.2.69.0/24"},
    REGISTERED_ONLY: {"asn": 36994, "as_org": None, "country": "ZA", "network": "41.0.0.0/11"},
    NO_DATA: {"network": "10.0.0.0/7"},  # the empty region of the ASN file
    V6_AWS: {
        "asn": 16509,
        "as_org": "Amazon.com, Inc.",
        "country": "US",
        "network": "2600:1f00::/24",
    },
    V6_FACEBOOK: {
        "asn": 32934,
        "as_org": "Facebook, Inc.",
        "country": "IE",
        "network": "2a03:2880::/32",
    },
    V6_COMCAST_HOME: {
        "asn": 7922,
        "as_org": "Comcast Cable Communications, LLC",
        "country": "US",
        "connection_type": "Cable/DSL",
        "network": "2001:558:2::/47",
    },
    V6_RESIDENTIAL_PROXY: {
        "asn": 7922,
        "as_org": "Comcast Cable Communications, LLC",
        "country": "US",
        "anon": ("residential_proxy",),
        "anon_confidence": 55,
        "anon_age_days": 5.0,
        "anon_provider": "peerpool",
        "anon_strength": 0.55 * 0.5 ** (5 / 30),
        "connection_type": "Cable/DSL",
        "network": "2001:558:1::/48",
    },
    V6_VPN: {
        "asn": 9009,
        "as_org": "M247 Europe SRL",
        "country": "NL",
        "anon": ("vpn",),
        "anon_confidence": 70,
        "anon_provider": "examplevpn",
        "anon_strength": 0.7,
        "network": "2a0d:5600::/29",
    },
}


def assert_expected(facts: Any, ip: str) -> None:
    """Assert that `facts` (a NetworkFacts) is exactly what `EXPECTED[ip]` describes."""
    from dataclasses import fields

    wanted = {f.name: f.default for f in fields(facts)}
    wanted.update({"anon_flags": None}, **EXPECTED[ip])
    anon = wanted.pop("anon", ())
    wanted.pop("anon_flags")
    assert facts.anon == anon, (ip, "anon", facts.anon, anon)
    for name, value in wanted.items():
        got = getattr(facts, name)
        if isinstance(value, float) and isinstance(got, float):
            assert abs(got - value) < 1e-9, (ip, name, got, value)
        else:
            assert got == value, (ip, name, got, value)
