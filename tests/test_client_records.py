"""The identify stage's per-client record (`RequestReader.client_of_request`): one lookup
by (key, address) gives what reading the request gives (identity, address, network
profile); requests that bring their own enrichment fields, or a key_func, are read in
full; a database reload drops the records; the table is bounded."""

from __future__ import annotations

from pathlib import Path

from abuseguard import Guard, NetworkPolicy, Policy, RequestInfo
from abuseguard.intel.geo import GeoIntel
from abuseguard.prepare import CLIENT_RECORDS

try:
    from tests import mmdb_fixtures as fx
except ImportError:  # run from inside tests/
    import mmdb_fixtures as fx  # type: ignore[no-redef]

_REQUESTS = [
    RequestInfo(ip="198.51.100.7", key="sk-one"),
    RequestInfo(ip="198.51.100.7", key=None),
    RequestInfo(ip="198.51.100.7", key=""),
    RequestInfo(ip="2001:db8:1:2::7", key="sk-one"),
    RequestInfo(ip=None, key="sk-two"),
    RequestInfo(ip="not an address", key=None),
]


def test_a_record_gives_what_reading_the_request_gives() -> None:
    reader = Guard(Policy(secret="s", network=NetworkPolicy())).reader
    for info in _REQUESTS:
        first = reader.client_of_request(info)
        assert first == reader._read_client(info)
        again = reader.client_of_request(info)
        assert all(a is b for a, b in zip(again, first, strict=True))  # the record itself
    assert len(reader._records) == len(_REQUESTS)


def test_own_enrichment_fields_and_a_key_func_bypass_the_record() -> None:
    reader = Guard(Policy(secret="s", network=NetworkPolicy())).reader
    plain = RequestInfo(ip="198.51.100.7", key="sk-one")
    reader.client_of_request(plain)
    enriched = RequestInfo(ip="198.51.100.7", key="sk-one", asn=64500, country="DE")
    profile = reader.client_of_request(enriched)[3]
    assert profile is not None and profile.asn_key is not None
    assert reader.client_of_request(plain)[3] != profile
    assert len(reader._records) == 1

    by_path = Guard(Policy(secret="s", key_func=lambda info: info.path)).reader
    a = by_path.client_of_request(RequestInfo(ip="198.51.100.7", key="sk-one", path="/a"))
    b = by_path.client_of_request(RequestInfo(ip="198.51.100.7", key="sk-one", path="/b"))
    assert a[0] != b[0]
    assert not by_path._records


def test_records_follow_a_database_reload(tmp_path: Path) -> None:
    city = tmp_path / "city.mmdb"
    fx.write_city(city, {"81.2.69.0/24": ("GB", "London")})
    intel = GeoIntel(city=city, reload_interval=3600)
    guard = Guard(Policy(secret="s", network=NetworkPolicy(deny_countries=("GB",))), intel=intel)
    info = RequestInfo(ip="81.2.69.160", key="sk-one")
    before = guard.prepare(info).profile
    assert before is not None and before.facts.country == "GB"
    fresh = tmp_path / "fresh.mmdb"
    fx.write_city(fresh, {"81.2.69.0/24": ("FR", "Paris")})
    fresh.replace(city)
    assert intel.reload_if_changed() is True
    after = guard.prepare(info).profile
    assert after is not None and after.facts.country == "FR"
    intel.close()


def test_the_records_are_bounded() -> None:
    reader = Guard(Policy(secret="s")).reader
    for i in range(CLIENT_RECORDS + 10):
        reader.client_of_request(RequestInfo(ip=f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"))
    assert 0 < len(reader._records) <= CLIENT_RECORDS
