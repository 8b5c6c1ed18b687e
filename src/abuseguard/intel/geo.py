"""MaxMind readers: one small `NetworkFacts` record per client address, cached per network.

`GeoIntel` opens any subset of the MaxMind databases (ASN/ISP, Country/City, Anonymous IP,
Anonymous Plus, Residential Proxy, IP Risk, Connection Type), checks each file's type from
its metadata, and answers `lookup(ip)` with the facts of every database merged into one
frozen record. Results are cached twice, both bounded: by the exact address string (the hot
path, one dict probe) and by network, so other addresses of a network already seen skip the
databases. Files are re-read when they change on disk; a bad new file is never swapped in.

Address treatment (`lookup` never raises):

- not a string / ipaddress object, longer than `MAX_IP_TEXT`, or not an IPv4/IPv6 address
  (``""``, ``"abc"``, ``"1.2.3.4.5"``, ``"01.2.3.4"``, ``"[::1]"``, ``"1.2.3.4:80"``):
  `INVALID_FACTS` (``valid=False``), not cached;
- surrounding whitespace is stripped;
- IPv4-mapped IPv6 (``::ffff:1.2.3.4``) and NAT64 addresses (``64:ff9b::1.2.3.4``) are
  looked up as the IPv4 address they carry;
- a zone (``fe80::1%eth0``) is dropped from IPv6 text; a zone on IPv4 text or an empty zone
  makes the input invalid;
- loopback, private, shared (CGNAT), link-local, unspecified, documentation, benchmarking,
  multicast and reserved ranges (see `_SPECIAL_V4` / `_SPECIAL_V6`): ``private=True`` and
  ``network`` set to the special range; the databases are not consulted.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path
from time import monotonic
from typing import Any

import maxminddb

logger = logging.getLogger("abuseguard.intel")

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

# Longest accepted address text: 45 characters of IPv6 with embedded IPv4, plus a zone.
MAX_IP_TEXT = 64

# The database kinds, in the order their facts are merged (first answer wins for
# asn and country; city comes before country because it is the finer product).
KINDS: tuple[str, ...] = (
    "asn",
    "city",
    "country",
    "anonymous_ip",
    "anonymous_plus",
    "residential_proxy",
    "ip_risk",
    "connection_type",
)
_ANON_KINDS = frozenset({"anonymous_ip", "anonymous_plus", "residential_proxy", "ip_risk"})

# Accepted products (database_type without its vendor prefix) per configured kind.
# City and Enterprise databases carry the country too, so they are accepted as country.
_KIND_PRODUCTS: dict[str, tuple[str, ...]] = {
    "asn": ("ASN", "ISP"),
    "city": ("City", "Enterprise"),
    "country": ("Country", "City", "Enterprise"),
    "anonymous_ip": ("Anonymous-IP",),
    "anonymous_plus": ("Anonymous-Plus",),
    "residential_proxy": ("Residential-Proxy",),
    "ip_risk": ("IP-Risk",),
    "connection_type": ("Connection-Type",),
}
_VENDOR_PREFIX = re.compile(r"^(?:GeoIP2|GeoLite2|GeoIP)-")
_COMPAT = re.compile(r"\(compat=([^)]+)\)")


class IntelError(ValueError):
    """A database could not be used (start-up or configuration); names the path and why."""


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


# ---------------------------------------------------------------------------- addresses


# Upper 96 bits of IPv6 ranges that embed an IPv4 client: ::ffff:0:0/96 (IPv4-mapped) and
# 64:ff9b::/96 (well-known NAT64 prefix, how SIIT shows IPv4 clients to IPv6-only servers).
_MAPPED_V4 = 0xFFFF
_NAT64_V4 = 0x0064_FF9B_0000_0000_0000_0000


# A validated address: (family 4 or 6, integer value, text to look up). A plain tuple
# because it is built on every cache miss.
ParsedIP = tuple[int, int, str]

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes


def parse_ip(raw: object) -> ParsedIP | None:
    """Validate and normalise one address (see the module doc); None when it is not one."""
    if type(raw) is not str:
        if isinstance(raw, IPv4Address | IPv6Address):
            raw = str(raw)
        elif not isinstance(raw, str):
            return None
    if len(raw) > MAX_IP_TEXT:
        return None
    text = raw.strip()
    try:
        if ":" in text:
            if "%" in text:
                text, _, zone = text.partition("%")
                if not zone or "%" in zone or " " in zone or not zone.isprintable():
                    return None
            packed = _inet_pton(_AF_INET6, text)
            value = _from_bytes(packed, "big")
            high = value >> 32
            if high in (_MAPPED_V4, _NAT64_V4):
                return (4, value & 0xFFFFFFFF, socket.inet_ntop(_AF_INET, packed[12:]))
            return (6, value, text)
        return (4, _from_bytes(_inet_pton(_AF_INET, text), "big"), text)
    except (OSError, ValueError):
        return None


def network_text(version: int, value: int, prefix_len: int) -> str:
    """CIDR text of the `prefix_len` network that contains `value`."""
    bits = 32 if version == 4 else 128
    host_bits = bits - prefix_len
    masked = (value >> host_bits) << host_bits
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, masked.to_bytes(4, 'big'))}/{prefix_len}"
    return f"{socket.inet_ntop(socket.AF_INET6, masked.to_bytes(16, 'big'))}/{prefix_len}"


# Special-purpose ranges that never carry internet clients (IANA special-purpose registries).
# Unallocated unicast space is not listed: it is looked up and the databases have no data.
_SPECIAL_V4: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network", unspecified
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, includes limited broadcast
)
_SPECIAL_V6: tuple[str, ...] = (
    "::/8",  # unspecified, loopback, IPv4-compatible (deprecated), reserved (NAT64 and
    # IPv4-mapped addresses inside it are translated to IPv4 before this check)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "2001:2::/48",  # benchmarking
    "2001:10::/28",  # deprecated ORCHID
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "5f00::/16",  # segment routing SIDs
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local
    "ff00::/8",  # multicast
)


class _SpecialRanges:
    """Sorted, non-overlapping special ranges of one family, searched by bisection."""

    def __init__(self, cidrs: Sequence[str]) -> None:
        rows = []
        for cidr in cidrs:
            net = ip_network(cidr)
            facts = NetworkFacts(private=True, network=str(net))
            rows.append((int(net.network_address), int(net.broadcast_address), facts))
        rows.sort(key=lambda row: row[0])
        self._starts = [row[0] for row in rows]
        self._rows = rows

    def find(self, value: int) -> NetworkFacts | None:
        index = bisect_right(self._starts, value) - 1
        if index >= 0:
            _, end, facts = self._rows[index]
            if value <= end:
                return facts
        return None


_SPECIAL = {4: _SpecialRanges(_SPECIAL_V4), 6: _SpecialRanges(_SPECIAL_V6)}


def special_range(version: int, value: int) -> NetworkFacts | None:
    """The `private=True` facts of the special range holding the address, or None."""
    return _SPECIAL[version].find(value)


# ---------------------------------------------------------------------------- databases


def database_product(database_type: str) -> str:
    """``"GeoIP2-City"`` -> ``"City"``; honours ``"(compat=GeoLite2-ASN)"`` suffixes."""
    compat = _COMPAT.search(database_type)
    name = compat.group(1).strip() if compat else database_type.strip()
    return _VENDOR_PREFIX.sub("", name)


def _product_matches(product: str, accepted: str) -> bool:
    # Regional City editions are named like "City-Europe".
    return product == accepted or product.startswith(accepted + "-")


def kind_of_database_type(database_type: str) -> str | None:
    """The kind a database type is used as (``"GeoLite2-City"`` -> ``"city"``), or None."""
    product = database_product(database_type)
    for kind in KINDS:
        if any(_product_matches(product, accepted) for accepted in _KIND_PRODUCTS[kind]):
            return kind
    return None


def _expected_types(kind: str) -> str:
    return " or ".join(f"*-{product}" for product in _KIND_PRODUCTS[kind])


FileSignature = tuple[int, int, int, int]

# How a database file is opened (see `Database.open`).
OPEN_MODES: tuple[str, ...] = ("copy", "mmap")
# Attempts to take a copy while the file keeps changing under it.
_COPY_ATTEMPTS = 3


def _signature(path: Path) -> FileSignature | None:
    """Identity of the file's current content (device, inode, size, mtime); None if gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _open_private_copy(
    path: Path, signature: FileSignature | None
) -> tuple[Any, FileSignature | None]:
    """A reader over a private copy of `path`, which no later write to `path` can reach,
    and the signature of the file it copied.

    The copy lives in an anonymous memory file (``memfd``, Linux) or, elsewhere, in a
    temporary file unlinked as soon as it is mapped. The copy is only used when the file
    did not change while it was being read (same signature before and after).
    """
    for _ in range(_COPY_ATTEMPTS):
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            fd = os.memfd_create(f"abuseguard-{path.name}", os.MFD_CLOEXEC)
            try:
                with open(path, "rb") as source, open(fd, "wb", closefd=False) as copy:
                    shutil.copyfileobj(source, copy, 1 << 20)
                settled = _signature(path) == signature
                reader = _open_copy(f"/proc/self/fd/{fd}", path)
            finally:
                os.close(fd)  # the reader's mapping keeps the memory file alive
        else:
            with tempfile.NamedTemporaryFile(
                prefix="abuseguard-", suffix=".mmdb", delete=False
            ) as copy:
                try:
                    with open(path, "rb") as source:
                        shutil.copyfileobj(source, copy, 1 << 20)
                    copy.flush()
                    settled = _signature(path) == signature
                    reader = _open_copy(copy.name, path)
                finally:
                    os.unlink(copy.name)
        if settled:
            return reader, signature
        reader.close()
        signature = _signature(path)
    raise OSError(0, "the file kept changing while it was copied")


def _open_copy(copy_path: str, original: Path) -> Any:
    try:
        return maxminddb.open_database(copy_path, maxminddb.MODE_AUTO)
    except maxminddb.InvalidDatabaseError as exc:
        # Name the file the operator knows, not the private copy.
        message = str(exc).replace(copy_path, os.fspath(original))
        raise maxminddb.InvalidDatabaseError(message) from None


class Database:
    """One open MaxMind DB file, of a known kind, whose lookups never raise."""

    def __init__(
        self,
        *,
        kind: str,
        path: Path,
        reader: Any,
        database_type: str,
        ip_version: int,
        build_epoch: int,
        signature: FileSignature | None,
        check_type: bool,
        open_mode: str = "copy",
    ) -> None:
        self.kind = kind
        self.path = path
        self.reader = reader
        self.database_type = database_type
        self.ip_version = ip_version
        self.build_epoch = build_epoch
        self.signature = signature
        self.check_type = check_type
        self.open_mode = open_mode
        self._warned = False

    @classmethod
    def open(
        cls,
        path: str | Path,
        kind: str | None = None,
        *,
        check_type: bool = True,
        open_mode: str = "copy",
    ) -> Database:
        """Open `path` (C extension when available) and check its type against `kind`.

        With ``kind=None`` the kind is detected from the metadata. With ``check_type=False``
        any well-formed file is accepted as `kind` (used to probe foreign or damaged files).
        ``open_mode="copy"`` (the default) reads a private in-memory copy of the file, so
        that rewriting or truncating the file in place cannot crash the process (a mapped
        file that shrinks raises SIGBUS); it costs the file's size in memory per process.
        ``"mmap"`` maps the file itself: no copy, the page cache is shared between
        processes, but the file must only ever be replaced atomically (write, then rename).
        Raises IntelError naming the path, the kind and the problem.
        """
        label = kind or "MaxMind"
        if kind is not None and kind not in _KIND_PRODUCTS:
            raise IntelError(f"unknown database kind {kind!r}; known kinds: {', '.join(KINDS)}")
        if open_mode not in OPEN_MODES:
            raise IntelError(
                f"open_mode: must be one of {', '.join(OPEN_MODES)}, got {open_mode!r}"
            )
        if isinstance(path, str) and not path.strip():
            raise IntelError(f"{label} database: empty path")
        path = Path(path).expanduser()
        signature = _signature(path)
        if path.is_dir():
            raise IntelError(f"{label} database {path}: is a directory, not a file")
        try:
            if open_mode == "copy":
                reader, signature = _open_private_copy(path, signature)
            else:
                reader = maxminddb.open_database(os.fspath(path), maxminddb.MODE_AUTO)
        except FileNotFoundError:
            raise IntelError(f"{label} database {path}: file not found") from None
        except OSError as exc:
            raise IntelError(f"{label} database {path}: cannot read ({exc.strerror})") from None
        except Exception as exc:
            raise IntelError(f"{label} database {path}: not a valid MaxMind DB ({exc})") from None
        try:
            database = cls._checked(reader, path, kind, check_type, signature)
        except BaseException:
            reader.close()
            raise
        database.open_mode = open_mode
        return database

    @classmethod
    def _checked(
        cls,
        reader: Any,
        path: Path,
        kind: str | None,
        check_type: bool,
        signature: FileSignature | None,
    ) -> Database:
        label = kind or "MaxMind"
        try:
            meta = reader.metadata()
            database_type = meta.database_type
            ip_version = meta.ip_version
            build_epoch = meta.build_epoch
        except Exception as exc:
            raise IntelError(f"{label} database {path}: unreadable metadata ({exc})") from None
        if not isinstance(database_type, str) or ip_version not in (4, 6):
            raise IntelError(f"{label} database {path}: malformed metadata")
        if kind is None:
            detected = kind_of_database_type(database_type)
            if detected is None:
                raise IntelError(
                    f"database {path}: unsupported database type {database_type!r} "
                    "(expected ASN, ISP, Country, City, Enterprise, Anonymous-IP, "
                    "Anonymous-Plus, Residential-Proxy, IP-Risk or Connection-Type)"
                )
            kind = detected
        elif check_type:
            product = database_product(database_type)
            if not any(_product_matches(product, a) for a in _KIND_PRODUCTS[kind]):
                raise IntelError(
                    f"{kind} database {path}: wrong database type {database_type!r} "
                    f"(expected {_expected_types(kind)})"
                )
        probes = ("1.1.1.1", "2001:4860::1") if ip_version == 6 else ("1.1.1.1",)
        for probe in probes:
            try:
                reader.get_with_prefix_len(probe)
            except Exception as exc:
                raise IntelError(f"{kind} database {path}: corrupt ({exc})") from None
        return cls(
            kind=kind,
            path=path,
            reader=reader,
            database_type=database_type,
            ip_version=ip_version,
            build_epoch=build_epoch if isinstance(build_epoch, int) else 0,
            signature=signature,
            check_type=check_type,
        )

    def reopen(self) -> Database:
        """A fresh `Database` on the same path and kind (raises IntelError like `open`)."""
        return Database.open(
            self.path, self.kind, check_type=self.check_type, open_mode=self.open_mode
        )

    def get(self, parsed: ParsedIP) -> tuple[object, int] | None:
        """(record or None, prefix length) for `parsed`; None when this file cannot answer.

        IPv6 addresses in an IPv4-only file give None (no data, no network constraint).
        A decoding error is logged once per file and gives None.
        """
        version, _, text = parsed
        if version == 6 and self.ip_version == 4:
            return None
        try:
            record, prefix_len = self.reader.get_with_prefix_len(text)
        except Exception as exc:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "%s database %s: lookup failed, answering without it (%s)",
                    self.kind,
                    self.path,
                    exc,
                )
            return None
        bits = 32 if version == 4 else 128
        if not isinstance(prefix_len, int) or not 0 <= prefix_len <= bits:
            return None
        return record, prefix_len

    def close(self) -> None:
        self.reader.close()


# ---------------------------------------------------------------------------- records


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


# ---------------------------------------------------------------------------- GeoIntel

# Network-cache levels: a result for a network of prefix length p is stored under the
# address's bucket at the shortest level >= p, so any address in that bucket finds it.
# Narrower networks are only cached by exact address.
_NET_LEVELS: dict[int, tuple[tuple[int, int], ...]] = {
    4: ((32 - 24, 1), (32 - 16, 2)),  # (host bits, tag) for /24, /16
    6: ((128 - 64, 3), (128 - 48, 4), (128 - 32, 5)),  # /64, /48, /32
}


def _utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


class GeoIntel:
    """Cached, hot-reloading lookups over any subset of the MaxMind databases.

    `lookup(ip)` never raises: see the module doc for the treatment of bad input. Memory is
    bounded: at most `cache_size` entries per cache (by address and by network), evicted a
    generation (half the size) at a time. Files are checked for changes at most every
    `reload_interval` seconds (0: on every lookup), from `lookup` and `current_data_version`
    (which callers that cache answers derived from the intel call on every use, hits
    included); a changed file whose replacement is missing, corrupt or of the wrong type
    keeps the old reader serving and logs a warning once per replacement. `data_version`
    changes whenever earlier answers may be stale (a reader swapped, a new day).

    ``open_mode`` is passed to `Database.open`: ``"copy"`` (default) serves a private
    in-memory copy of each file, so a file rewritten or truncated in place cannot crash the
    process (it costs each file's size in memory per process); ``"mmap"`` maps the files
    themselves, which is only safe when they are replaced atomically (write a temporary
    file, then rename it over the old one, as ``geoipupdate`` does): a mapped file that
    shrinks kills the process with SIGBUS.
    """

    def __init__(
        self,
        *,
        asn: str | Path | None = None,
        country: str | Path | None = None,
        city: str | Path | None = None,
        anonymous_ip: str | Path | None = None,
        anonymous_plus: str | Path | None = None,
        residential_proxy: str | Path | None = None,
        ip_risk: str | Path | None = None,
        connection_type: str | Path | None = None,
        cache_size: int = 65536,
        reload_interval: float = 10.0,
        recency_half_life_days: float = 30.0,
        today: Callable[[], datetime.date] | None = None,
        open_mode: str = "copy",
    ) -> None:
        paths = {
            "asn": asn,
            "city": city,
            "country": country,
            "anonymous_ip": anonymous_ip,
            "anonymous_plus": anonymous_plus,
            "residential_proxy": residential_proxy,
            "ip_risk": ip_risk,
            "connection_type": connection_type,
        }
        self._configure(cache_size, reload_interval, recency_half_life_days, today)
        if open_mode not in OPEN_MODES:
            raise IntelError(
                f"open_mode: must be one of {', '.join(OPEN_MODES)}, got {open_mode!r}"
            )
        opened: list[Database] = []
        try:
            for kind in KINDS:
                path = paths[kind]
                if path is not None:
                    opened.append(Database.open(path, kind, open_mode=open_mode))
        except BaseException:
            for database in opened:
                database.close()
            raise
        self._databases: tuple[Database, ...] = tuple(opened)

    @classmethod
    def from_databases(
        cls,
        databases: Iterable[Database],
        *,
        cache_size: int = 65536,
        reload_interval: float = 10.0,
        recency_half_life_days: float = 30.0,
        today: Callable[[], datetime.date] | None = None,
    ) -> GeoIntel:
        """Serve already opened databases (e.g. kinds detected with ``Database.open(p)``).

        Raises IntelError when two databases have the same kind.
        """
        databases = list(databases)
        seen: dict[str, Database] = {}
        for database in databases:
            clash = seen.setdefault(database.kind, database)
            if clash is not database:
                raise IntelError(
                    f"two {database.kind} databases given: {clash.path} and {database.path}"
                )
        intel = cls.__new__(cls)
        intel._configure(cache_size, reload_interval, recency_half_life_days, today)
        rank = {kind: i for i, kind in enumerate(KINDS)}
        intel._databases = tuple(sorted(databases, key=lambda db: rank[db.kind]))
        return intel

    def _configure(
        self,
        cache_size: int,
        reload_interval: float,
        half_life_days: float,
        today: Callable[[], datetime.date] | None,
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise IntelError(f"cache_size: must be an integer >= 0, got {cache_size!r}")
        if not isinstance(reload_interval, int | float) or not reload_interval >= 0:
            raise IntelError(f"reload_interval: must be a number >= 0, got {reload_interval!r}")
        if not isinstance(half_life_days, int | float) or not half_life_days > 0:
            raise IntelError(
                f"recency_half_life_days: must be a number > 0, got {half_life_days!r}"
            )
        self._generation = cache_size // 2
        self.data_version = 0
        self._hot: dict[object, NetworkFacts] = {}
        self._cold: dict[object, NetworkFacts] = {}
        self._net_hot: dict[int, NetworkFacts] = {}
        self._net_cold: dict[int, NetworkFacts] = {}
        self._reload_interval = float(reload_interval)
        self._half_life = float(half_life_days)
        self._today_fn = today or _utc_today
        self._today = self._today_fn()
        self._next_check = monotonic() + self._reload_interval
        self._reload_lock = threading.Lock()
        self._failed: dict[str, FileSignature | None] = {}
        self._databases = ()

    # -- public ------------------------------------------------------------------------

    @property
    def databases(self) -> dict[str, str]:
        """Configured databases: kind -> path."""
        return {db.kind: str(db.path) for db in self._databases}

    def database_info(self) -> list[Database]:
        """The open databases (kind, path, database_type, build_epoch ...), in merge order."""
        return list(self._databases)

    def lookup(self, ip: str) -> NetworkFacts:
        """Facts for one client address; never raises (bad input -> ``valid=False``)."""
        if monotonic() >= self._next_check:
            self._scheduled_check()
        try:
            facts = self._hot.get(ip)
        except TypeError:  # unhashable input
            return INVALID_FACTS
        # .get rather than [] + KeyError: a raised KeyError would add ~0.3 us to every miss.
        return self._lookup_slow(ip) if facts is None else facts

    def current_data_version(self) -> int:
        """Run the reload check when it is due, then return `data_version`.

        Costs one clock read when no check is due: call it on every use of a cache of
        answers derived from the intel, and drop that cache when the number changes.
        """
        if monotonic() >= self._next_check:
            self._scheduled_check()
        return self.data_version

    def cache_stats(self) -> dict[str, int]:
        """Entries held by the address cache and the network cache, and the bound of each."""
        return {
            "addresses": len(self._hot) + len(self._cold),
            "networks": len(self._net_hot) + len(self._net_cold),
            "capacity": 2 * self._generation,
        }

    def reload_if_changed(self) -> bool:
        """Re-open every file that changed on disk; True when any reader was swapped."""
        with self._reload_lock:
            return self._reload_changed()

    def close(self) -> None:
        """Close every reader; later lookups answer from no database."""
        databases, self._databases = self._databases, ()
        self._clear_caches()
        for database in databases:
            database.close()

    def __enter__(self) -> GeoIntel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lookups -----------------------------------------------------------------------

    def _lookup_slow(self, raw: object) -> NetworkFacts:
        # Address-cache miss: parse, then the special ranges, the network cache and
        # finally the databases. Kept in one function: this is the path of IPv6 rotation.
        try:
            parsed = parse_ip(raw)
            if parsed is None:
                return INVALID_FACTS
            facts = self._cold.get(raw)
            if facts is None:
                version, value, _ = parsed
                facts = _SPECIAL[version].find(value)
                if facts is None:
                    net_hot = self._net_hot
                    for host_bits, tag in _NET_LEVELS[version]:
                        facts = net_hot.get(((value >> host_bits) << 3) | tag)
                        if facts is not None:
                            break
                    else:
                        facts = self._from_cold_networks(parsed) or self._resolve(parsed)
            hot = self._hot
            if len(hot) < self._generation:
                hot[raw] = facts
            else:
                self._remember(raw, facts)
            return facts
        except Exception:
            # Defensive: nothing above should raise; a lookup must never fail a request.
            logger.exception("lookup of %r failed", raw if isinstance(raw, str) else type(raw))
            return EMPTY_FACTS

    def _from_cold_networks(self, parsed: ParsedIP) -> NetworkFacts | None:
        version, value, _ = parsed
        cold = self._net_cold
        for host_bits, tag in _NET_LEVELS[version]:
            key = ((value >> host_bits) << 3) | tag
            facts = cold.get(key)
            if facts is not None:
                self._remember_network(key, facts)
                return facts
        return None

    def _resolve(self, parsed: ParsedIP) -> NetworkFacts:
        """Ask the databases, and cache the answer under the address's network bucket."""
        version, value, _ = parsed
        facts, prefix_len = self._query(parsed)
        if prefix_len is not None:
            bits = 32 if version == 4 else 128
            for host_bits, tag in reversed(_NET_LEVELS[version]):
                if bits - host_bits >= prefix_len:
                    self._remember_network(((value >> host_bits) << 3) | tag, facts)
                    break
        return facts

    def _query(self, parsed: ParsedIP) -> tuple[NetworkFacts, int | None]:
        """Ask every database; returns the facts and the prefix length they hold for
        (None when some database failed, so the result must not be cached per network)."""
        answers: list[tuple[str, object]] = []
        prefix_len = 0
        complete = True
        answered = False
        for database in self._databases:
            answer = database.get(parsed)
            if answer is None:
                complete = complete and (parsed[0] == 6 and database.ip_version == 4)
                continue
            record, length = answer
            answered = True
            prefix_len = max(prefix_len, length)
            if record is not None:
                answers.append((database.kind, record))
        network = network_text(parsed[0], parsed[1], prefix_len) if answered else None
        if not answers and network is None:
            facts = EMPTY_FACTS
        else:
            facts = merge_records(
                answers, network=network, today=self._today, half_life_days=self._half_life
            )
        return facts, (prefix_len if complete else None)

    def _remember(self, key: object, facts: NetworkFacts) -> None:
        hot = self._hot
        if len(hot) >= self._generation:
            if not self._generation:
                return
            self._cold = hot
            hot = self._hot = {}
        hot[key] = facts

    def _remember_network(self, key: int, facts: NetworkFacts) -> None:
        hot = self._net_hot
        if len(hot) >= self._generation:
            if not self._generation:
                return
            self._net_cold = hot
            hot = self._net_hot = {}
        hot[key] = facts

    def _clear_caches(self) -> None:
        self._hot, self._cold = {}, {}
        self._net_hot, self._net_cold = {}, {}
        self.data_version += 1

    # -- reload ------------------------------------------------------------------------

    def _scheduled_check(self) -> None:
        if not self._reload_lock.acquire(blocking=False):
            return
        try:
            self._next_check = monotonic() + self._reload_interval
            self._reload_changed()
        except Exception:
            logger.exception("database reload check failed; keeping the current readers")
        finally:
            self._reload_lock.release()

    def _reload_changed(self) -> bool:
        self._roll_date()
        swapped = False
        databases = list(self._databases)
        for i, database in enumerate(databases):
            key = f"{database.kind}:{database.path}"
            signature = _signature(database.path)
            if signature == database.signature:
                self._failed.pop(key, None)
                continue
            if key in self._failed and self._failed[key] == signature:
                continue
            if signature is None:
                self._failed[key] = None
                logger.warning(
                    "%s database %s: file is missing; still serving the copy loaded before",
                    database.kind,
                    database.path,
                )
                continue
            try:
                fresh = database.reopen()
            except IntelError as exc:
                self._failed[key] = signature
                logger.warning("%s; still serving the copy loaded before", exc)
                continue
            self._failed.pop(key, None)
            databases[i] = fresh
            swapped = True
            logger.info(
                "%s database %s: reloaded (%s)", fresh.kind, fresh.path, fresh.database_type
            )
        if swapped:
            # The replaced readers are not closed: a lookup on another thread may still
            # be using one. Each unmaps its file when its last reference goes.
            self._databases = tuple(databases)
            self._clear_caches()
        return swapped

    def _roll_date(self) -> None:
        try:
            today = self._today_fn()
        except Exception:
            logger.exception("today() failed; keeping %s", self._today)
            return
        if today != self._today:
            self._today = today
            self._clear_caches()


# ---------------------------------------------------------------------------- overrides


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
