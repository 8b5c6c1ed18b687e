"""GeoIntel against MaxMind's own test databases (../shared/data/maxmind).

- Every network of each ``source-data/*.json`` that has a ``test-data`` mmdb resolves, at
  its first and last address, to the fields NetworkFacts carries.
- Every file of ``bad-data/`` (recursively) and the broken ``test-data`` files gives an
  IntelError at start-up or a clean (empty or partial) result at lookup. They run in one
  subprocess with a time limit, so a crash or a hang fails the test instead of the run.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path
from typing import Any

import pytest

from abuseguard.intel.geo import (
    ANON_BITS,
    ANON_RESIDENTIAL_PROXY,
    Database,
    GeoIntel,
    IntelError,
    NetworkFacts,
    merge_records,
    parse_ip,
)

MAXMIND = Path(__file__).resolve().parents[2] / "shared" / "data" / "maxmind"
if not MAXMIND.is_dir():
    pytest.skip(
        f"MaxMind test data not found at {MAXMIND} (expected ../shared/data/maxmind "
        "next to the repository); skipping the conformance tests",
        allow_module_level=True,
    )

TODAY = datetime.date(2026, 6, 1)

# source-data JSON stem -> the GeoIntel kind its test-data mmdb is read as.
SOURCES: dict[str, str] = {
    "GeoLite2-ASN-Test": "asn",
    "GeoIP2-ISP-Test": "asn",
    "GeoLite2-Country-Test": "country",
    "GeoIP2-Country-Test": "country",
    "GeoLite2-City-Test": "city",
    "GeoIP2-Anonymous-IP-Test": "anonymous_ip",
    "GeoIP-Anonymous-Plus-Test": "anonymous_plus",
    "GeoIP-Residential-Proxy-Test": "residential_proxy",
    "GeoIP2-IP-Risk-Test": "ip_risk",
    "GeoIP2-Connection-Type-Test": "connection_type",
}
_FLAG_FIELDS = {
    "is_anonymous_vpn": ANON_BITS["vpn"],
    "is_hosting_provider": ANON_BITS["hosting"],
    "is_public_proxy": ANON_BITS["public_proxy"],
    "is_residential_proxy": ANON_BITS["residential_proxy"],
    "is_tor_exit_node": ANON_BITS["tor"],
}


def _today() -> datetime.date:
    return TODAY


# ------------------------------------------------------------------------ expectations


@dataclass(frozen=True)
class Entry:
    index: int  # position in the JSON file: later inserts override earlier ones
    start: int  # first address in the IPv6 tree (IPv4 lives at ::/96)
    prefix_len: int  # in the IPv6 tree
    record: dict[str, Any]


def _load_entries(source: Path) -> list[Entry]:
    entries = []
    for index, item in enumerate(json.loads(source.read_text())):
        ((cidr, record),) = item.items()
        net = ip_network(cidr, strict=False)  # some rows have host bits set
        start, prefix_len = int(net.network_address), net.prefixlen
        if net.version == 4:
            prefix_len += 96
        entries.append(Entry(index, start, prefix_len, record))
    return entries


class Expectations:
    """Which JSON row holds a given address: the last inserted one containing it."""

    def __init__(self, entries: list[Entry]) -> None:
        self._by_net: dict[tuple[int, int], Entry] = {}
        for entry in entries:
            key = (entry.start, entry.prefix_len)
            if key not in self._by_net or self._by_net[key].index < entry.index:
                self._by_net[key] = entry
        self._lengths = sorted({entry.prefix_len for entry in entries})

    def record_for(self, address: int) -> dict[str, Any] | None:
        best: Entry | None = None
        for length in self._lengths:
            start = (address >> (128 - length)) << (128 - length)
            entry = self._by_net.get((start, length))
            if entry is not None and (best is None or entry.index > best.index):
                best = entry
        return None if best is None else best.record


def _probe_text(address: int) -> str:
    if address >> 32 == 0:  # ::a.b.c.d is MaxMind's IPv4 subtree
        return str(IPv4Address(address))
    return str(IPv6Address(address))


def expected_fields(kind: str, record: dict[str, Any] | None) -> dict[str, Any]:
    """The NetworkFacts fields a single database of `kind` must give for `record`."""
    record = record or {}
    out: dict[str, Any] = {}
    if kind == "asn":
        asn = record.get("autonomous_system_number", 0)
        out["asn"] = asn
        out["as_org"] = record.get("autonomous_system_organization") if asn else None
    elif kind in ("country", "city"):
        country = record.get("country", {}).get("iso_code")
        out["country"] = country or record.get("registered_country", {}).get("iso_code")
    elif kind == "connection_type":
        out["connection_type"] = record.get("connection_type")
    else:
        flags = 0
        for field, bit in _FLAG_FIELDS.items():
            if record.get(field) is True:
                flags |= bit
        if kind == "residential_proxy" and record:
            flags |= ANON_RESIDENTIAL_PROXY
        out["anon_flags"] = flags
        if flags:
            out["anon_confidence"] = record.get("anonymizer_confidence", 100)
            seen = record.get("network_last_seen")
            age = None
            if seen is not None:
                age = float(max(0, (TODAY - datetime.date.fromisoformat(seen)).days))
            out["anon_age_days"] = age
            out["anon_provider"] = record.get("provider_name")
        else:
            out.update(anon_confidence=0, anon_age_days=None, anon_provider=None)
        if kind == "ip_risk":
            out["ip_risk"] = record.get("ip_risk")
    return out


def _conformance_cases() -> list[tuple[str, str]]:
    cases = []
    for stem, kind in SOURCES.items():
        if (MAXMIND / "source-data" / f"{stem}.json").exists():
            cases.append((stem, kind))
    return cases


@pytest.mark.parametrize(("stem", "kind"), _conformance_cases())
def test_every_source_network_resolves_to_its_fields(stem: str, kind: str) -> None:
    source = MAXMIND / "source-data" / f"{stem}.json"
    mmdb = MAXMIND / "test-data" / f"{stem}.mmdb"
    if not mmdb.exists():
        pytest.skip(f"{mmdb} is missing")
    entries = _load_entries(source)
    assert entries, f"{source} has no networks"
    expectations = Expectations(entries)
    checked = private = 0
    with GeoIntel(**{kind: mmdb}, cache_size=4096, today=_today) as intel:
        database = intel.database_info()[0]
        for entry in entries:
            last = entry.start + (1 << (128 - entry.prefix_len)) - 1
            for address in (entry.start, last):
                ip = _probe_text(address)
                record = expectations.record_for(address)
                facts = intel.lookup(ip)
                assert facts.valid, ip
                if facts.private:
                    # Special ranges are answered without the database: check the same
                    # reader and merge directly.
                    private += 1
                    facts = _direct(database, ip)
                want = expected_fields(kind, record)
                got = {name: getattr(facts, name) for name in want}
                assert got == want, (stem, ip, record)
                if facts.network is not None:
                    assert _contains(facts.network, ip), (facts.network, ip)
                checked += 1
    assert checked == 2 * len(entries)
    assert private <= checked // 10, f"{private} of {checked} probes were special ranges"


def _direct(database: Database, ip: str) -> NetworkFacts:
    parsed = parse_ip(ip)
    assert parsed is not None
    answer = database.get(parsed)
    assert answer is not None
    record, _ = answer
    return merge_records([(database.kind, record)], network=None, today=TODAY, half_life_days=30.0)


def _contains(network: str, ip: str) -> bool:
    parsed = parse_ip(ip)
    assert parsed is not None
    net = ip_network(network)
    return net.version == parsed[0] and int(net.network_address) <= parsed[1] <= int(
        net.broadcast_address
    )


def test_every_kind_detects_its_test_database() -> None:
    expected = {
        "GeoLite2-ASN-Test.mmdb": "asn",
        "GeoIP2-ISP-Test.mmdb": "asn",
        "GeoLite2-Country-Test.mmdb": "country",
        "GeoIP2-Country-Test.mmdb": "country",
        "GeoLite2-City-Test.mmdb": "city",
        "GeoIP2-City-Test.mmdb": "city",
        "GeoIP2-Anonymous-IP-Test.mmdb": "anonymous_ip",
        "GeoIP-Anonymous-Plus-Test.mmdb": "anonymous_plus",
        "GeoIP-Residential-Proxy-Test.mmdb": "residential_proxy",
        "GeoIP2-IP-Risk-Test.mmdb": "ip_risk",
        "GeoIP2-Connection-Type-Test.mmdb": "connection_type",
    }
    for name, kind in expected.items():
        path = MAXMIND / "test-data" / name
        if not path.exists():
            continue
        database = Database.open(path)
        try:
            assert database.kind == kind, name
        finally:
            database.close()


def test_all_real_databases_together() -> None:
    data = MAXMIND / "test-data"
    paths = {
        "asn": data / "GeoLite2-ASN-Test.mmdb",
        "city": data / "GeoIP2-City-Test.mmdb",
        "anonymous_plus": data / "GeoIP-Anonymous-Plus-Test.mmdb",
        "residential_proxy": data / "GeoIP-Residential-Proxy-Test.mmdb",
        "ip_risk": data / "GeoIP2-IP-Risk-Test.mmdb",
    }
    if not all(path.exists() for path in paths.values()):
        pytest.skip("some MaxMind test databases are missing")
    with GeoIntel(**paths, today=_today) as intel:
        facts = intel.lookup("1.2.0.4")  # Anonymous Plus VPN + Residential Proxy (82)
        assert facts.anon_flags == ANON_BITS["vpn"] | ANON_BITS["residential_proxy"]
        assert (facts.anon_confidence, facts.anon_provider) == (82, "quickshift")
        google = intel.lookup("1.0.0.1")
        assert (google.asn, google.as_org) == (15169, "Google Inc.")


# ---------------------------------------------------------------------------- bad data


def _bad_files() -> list[Path]:
    files = sorted(p for p in (MAXMIND / "bad-data").rglob("*") if p.is_file())
    files = [p for p in files if p.suffix != ".md"]
    test_data = MAXMIND / "test-data"
    for pattern in ("*Broken*", "*Invalid*", "*broken*"):
        files.extend(sorted(test_data.glob(pattern)))
    return sorted(set(files))


_WORKER = textwrap.dedent(
    """
    import json, random, sys
    from abuseguard.intel.geo import KINDS, Database, GeoIntel, IntelError, NetworkFacts

    rng = random.Random(1)
    probes = ["1.1.1.1", "1.2.3.4", "0.0.0.1", "81.2.69.160", "2.125.160.216", "8.8.8.8",
              "89.160.20.128", "175.16.199.1", "255.255.255.254", "2001:4860::1",
              "2a02:d000::1", "2001:218::1", "::ffff:1.1.1.1", "abcd::1", "not-an-ip"]
    probes += [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(150)]
    probes += [":".join(f"{rng.randrange(65536):x}" for _ in range(8)) for _ in range(60)]

    def exercise(intel):
        n = 0
        for ip in probes + probes:
            facts = intel.lookup(ip)
            assert isinstance(facts, NetworkFacts), type(facts)
            n += 1
        intel.reload_if_changed()
        return n

    for path in sys.argv[1:]:
        print(json.dumps({"file": path, "stage": "start"}), flush=True)
        result = {"file": path, "stage": "done", "detect": None, "kinds": {}, "raw": {}}
        try:
            db = Database.open(path)
            result["detect"] = "kind " + db.kind
            db.close()
        except IntelError as exc:
            result["detect"] = "IntelError: " + str(exc)
        for kind in KINDS:
            try:
                with GeoIntel(**{kind: path}, reload_interval=0) as intel:
                    result["kinds"][kind] = "lookups %d" % exercise(intel)
            except IntelError as exc:
                result["kinds"][kind] = "IntelError: " + str(exc)
            except Exception as exc:
                result["kinds"][kind] = "CRASH %s: %s" % (type(exc).__name__, exc)
            try:
                db = Database.open(path, kind, check_type=False)
                with GeoIntel.from_databases([db], reload_interval=0) as intel:
                    result["raw"][kind] = "lookups %d" % exercise(intel)
            except IntelError as exc:
                result["raw"][kind] = "IntelError: " + str(exc)
            except Exception as exc:
                result["raw"][kind] = "CRASH %s: %s" % (type(exc).__name__, exc)
        print(json.dumps(result), flush=True)
    """
)

_WORKER_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def bad_data_results() -> dict[str, Any]:
    files = _bad_files()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER, *map(str, files)],
            capture_output=True,
            text=True,
            timeout=_WORKER_TIMEOUT,
        )
        stdout, returncode, stderr = proc.stdout, proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        stdout = out.decode() if isinstance(out, bytes) else out
        returncode, stderr = None, f"timed out after {_WORKER_TIMEOUT} s"
    results: dict[str, Any] = {}
    started = None
    for line in stdout.splitlines():
        row = json.loads(line)
        if row["stage"] == "start":
            started = row["file"]
        else:
            results[row["file"]] = row
            started = None
    return {"results": results, "returncode": returncode, "stderr": stderr, "started": started}


@pytest.mark.parametrize("path", _bad_files(), ids=lambda p: p.name)
def test_bad_database_fails_cleanly(bad_data_results: dict[str, Any], path: Path) -> None:
    row = bad_data_results["results"].get(str(path))
    if row is None:
        culprit = bad_data_results["started"]
        how = (
            "hung"
            if bad_data_results["returncode"] is None
            else f"exited with {bad_data_results['returncode']}"
        )
        pytest.fail(
            f"{path.name}: no result; the worker {how} while on {culprit}\n"
            f"{bad_data_results['stderr'][-2000:]}"
        )
    outcomes = [*row["kinds"].values(), *row["raw"].values()]
    crashes = [outcome for outcome in outcomes if outcome.startswith("CRASH")]
    assert not crashes, crashes
    assert all(o.startswith(("IntelError: ", "lookups ")) for o in outcomes), outcomes
    for outcome in outcomes:
        if outcome.startswith("IntelError: "):
            assert path.name in outcome  # the message names the file


def test_bad_database_worker_finished(bad_data_results: dict[str, Any]) -> None:
    assert bad_data_results["returncode"] == 0, bad_data_results["stderr"][-2000:]


def test_broken_double_format_gives_partial_results(caplog: pytest.LogCaptureFixture) -> None:
    path = MAXMIND / "test-data" / "GeoIP2-City-Test-Broken-Double-Format.mmdb"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    with caplog.at_level(logging.WARNING, logger="abuseguard.intel"), GeoIntel(city=path) as intel:
        broken = intel.lookup("81.2.69.160")  # its record has a malformed double
        assert broken.valid and broken.country is None
        assert intel.lookup("81.2.69.160") == broken
        assert intel.lookup("2001:4860::1").valid
    warnings = [r.getMessage() for r in caplog.records if r.name == "abuseguard.intel"]
    assert any(path.name in message and "lookup failed" in message for message in warnings)


def test_database_errors_name_path_and_kind() -> None:
    invalid = MAXMIND / "test-data" / "GeoIP2-City-Test-Invalid-Node-Count.mmdb"
    if not invalid.exists():
        pytest.skip(f"{invalid} is missing")
    with pytest.raises(IntelError) as excinfo:
        GeoIntel(city=invalid)
    assert str(excinfo.value).startswith(f"city database {invalid}: not a valid MaxMind DB")
