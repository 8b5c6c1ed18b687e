"""MaxMind intel: one small `NetworkFacts` record per client address, cached per network.

`GeoIntel` opens any subset of the MaxMind databases (ASN/ISP, Country/City, Anonymous IP,
Anonymous Plus, Residential Proxy, IP Risk, Connection Type), checks each file's type from
its metadata, and answers `lookup(ip)` with the facts of every database merged into one
frozen record. Results are cached twice, both bounded: by the exact address string (the hot
path, one dict probe) and by network, so other addresses of a network already seen skip the
databases. Files are re-read when they change on disk; a bad new file is never swapped in.

This module is the facade and the caches; the parts live beside it: `abuseguard.intel.ip`
(address parsing, special ranges), `abuseguard.intel.mmdb` (opening, validating and
re-opening files), `abuseguard.intel.records` (`NetworkFacts`, merging records). Their
public names are re-exported here.

Address treatment (`lookup` never raises):

- input that `abuseguard.intel.ip.parse_ip` rejects (not an address, too long, a zone on
  IPv4 ...): `INVALID_FACTS` (``valid=False``), not cached;
- IPv4-mapped IPv6 and NAT64 addresses are looked up as the IPv4 address they carry;
- loopback, private, shared (CGNAT), link-local, unspecified, documentation, benchmarking,
  multicast and reserved ranges: ``private=True`` and ``network`` set to the special range;
  the databases are not consulted.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from time import monotonic

from abuseguard.intel.ip import (
    MAX_IP_TEXT,
    ParsedIP,
    all_special_networks,
    network_text,
    parse_ip,
    special_network,
)
from abuseguard.intel.mmdb import (
    KINDS,
    OPEN_MODES,
    Database,
    FileSignature,
    IntelError,
    database_product,
    kind_of_database_type,
    reload_changed,
)
from abuseguard.intel.records import (
    ANON_BITS,
    ANON_HOSTING,
    ANON_PUBLIC_PROXY,
    ANON_RESIDENTIAL_PROXY,
    ANON_TOR,
    ANON_VPN,
    EMPTY_FACTS,
    INVALID_FACTS,
    NetworkFacts,
    anon_kinds,
    facts_from_fields,
    merge_records,
    recency_weight,
)

__all__ = [
    "ANON_BITS",
    "ANON_HOSTING",
    "ANON_PUBLIC_PROXY",
    "ANON_RESIDENTIAL_PROXY",
    "ANON_TOR",
    "ANON_VPN",
    "EMPTY_FACTS",
    "INVALID_FACTS",
    "KINDS",
    "MAX_IP_TEXT",
    "OPEN_MODES",
    "Database",
    "FileSignature",
    "GeoIntel",
    "IntelError",
    "NetworkFacts",
    "ParsedIP",
    "anon_kinds",
    "database_product",
    "facts_from_fields",
    "kind_of_database_type",
    "merge_records",
    "network_text",
    "parse_ip",
    "recency_weight",
    "special_range",
]

logger = logging.getLogger("abuseguard.intel")

# One shared record per special range (`lookup` answers these without the databases).
_SPECIAL_FACTS: dict[str, NetworkFacts] = {
    network: NetworkFacts(private=True, network=network) for network in all_special_networks()
}


def special_range(version: int, value: int) -> NetworkFacts | None:
    """The `private=True` facts of the special range holding the address, or None."""
    network = special_network(version, value)
    return None if network is None else _SPECIAL_FACTS[network]


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
        asn: str | os.PathLike[str] | None = None,
        country: str | os.PathLike[str] | None = None,
        city: str | os.PathLike[str] | None = None,
        anonymous_ip: str | os.PathLike[str] | None = None,
        anonymous_plus: str | os.PathLike[str] | None = None,
        residential_proxy: str | os.PathLike[str] | None = None,
        ip_risk: str | os.PathLike[str] | None = None,
        connection_type: str | os.PathLike[str] | None = None,
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
    def from_paths(
        cls,
        paths: Mapping[str, str | os.PathLike[str]],
        *,
        today: Callable[[], datetime.date] | None = None,
    ) -> GeoIntel:
        """Open the files of ``paths``, kind -> path (as `NetworkPolicy.databases`).

        Raises IntelError for a kind that is not one of the databases' (see `KINDS`).
        """
        for kind in paths:
            if kind not in KINDS:
                raise IntelError(f"unknown database kind {kind!r}; known kinds: {', '.join(KINDS)}")
        return cls(
            asn=paths.get("asn"),
            country=paths.get("country"),
            city=paths.get("city"),
            anonymous_ip=paths.get("anonymous_ip"),
            anonymous_plus=paths.get("anonymous_plus"),
            residential_proxy=paths.get("residential_proxy"),
            ip_risk=paths.get("ip_risk"),
            connection_type=paths.get("connection_type"),
            today=today,
        )

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
                special = special_network(version, value)
                if special is not None:
                    facts = _SPECIAL_FACTS[special]
                else:
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
        databases = reload_changed(self._databases, self._failed)
        if databases is None:
            return False
        self._databases = databases
        self._clear_caches()
        return True

    def _roll_date(self) -> None:
        try:
            today = self._today_fn()
        except Exception:
            logger.exception("today() failed; keeping %s", self._today)
            return
        if today != self._today:
            self._today = today
            self._clear_caches()
