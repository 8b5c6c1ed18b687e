"""GeoIntel on small mmdb fixtures: fields, grading, caching, hot reload, bad input, CLI."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.cli import main as cli_main
from abuseguard.intel.geo import (
    ANON_BITS,
    ANON_HOSTING,
    ANON_PUBLIC_PROXY,
    ANON_RESIDENTIAL_PROXY,
    ANON_TOR,
    ANON_VPN,
    EMPTY_FACTS,
    INVALID_FACTS,
    MAX_IP_TEXT,
    Database,
    GeoIntel,
    IntelError,
    NetworkFacts,
    anon_kinds,
    facts_from_fields,
    kind_of_database_type,
    merge_records,
    parse_ip,
    recency_weight,
)
from abuseguard.intel.hosting import BUILTIN_HOSTING_ASNS, hosting_asns, parse_asn

try:
    from tests import mmdb_fixtures as fx
except ModuleNotFoundError:  # tests/ run as plain directory (no __init__.py)
    import mmdb_fixtures as fx  # type: ignore[no-redef]

TODAY = fx.FIXTURE_TODAY


def _today() -> datetime.date:
    return TODAY


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fx.build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def intel(world: dict[str, Path]) -> Iterator[GeoIntel]:
    with GeoIntel(**world, today=_today) as geo:
        yield geo


@pytest.fixture(scope="module")
def uncached(world: dict[str, Path]) -> Iterator[GeoIntel]:
    with GeoIntel(**world, today=_today, cache_size=0) as geo:
        yield geo


# ------------------------------------------------------------------------ public constants


def test_anon_bits_are_distinct_powers_of_two() -> None:
    assert ANON_BITS == {
        "vpn": ANON_VPN,
        "hosting": ANON_HOSTING,
        "public_proxy": ANON_PUBLIC_PROXY,
        "residential_proxy": ANON_RESIDENTIAL_PROXY,
        "tor": ANON_TOR,
    }
    assert sorted(ANON_BITS.values()) == [1, 2, 4, 8, 16]
    assert anon_kinds(ANON_VPN | ANON_TOR) == ("vpn", "tor")
    assert NetworkFacts() == EMPTY_FACTS and EMPTY_FACTS.valid
    assert not INVALID_FACTS.valid


def test_facts_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EMPTY_FACTS.asn = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- the world


@pytest.mark.parametrize("ip", sorted(fx.EXPECTED))
def test_world_lookup_matches_expected(intel: GeoIntel, ip: str) -> None:
    fx.assert_expected(intel.lookup(ip), ip)


@pytest.mark.parametrize("ip", sorted(fx.EXPECTED))
def test_uncached_lookup_matches_expected(uncached: GeoIntel, ip: str) -> None:
    fx.assert_expected(uncached.lookup(ip), ip)


def test_databases_property_names_every_kind(intel: GeoIntel, world: dict[str, Path]) -> None:
    assert intel.databases == {kind: str(path) for kind, path in world.items()}


def test_single_asn_database(world: dict[str, Path]) -> None:
    with GeoIntel(asn=world["asn"]) as geo:
        facts = geo.lookup(fx.VPN)
    assert (facts.asn, facts.as_org, facts.country, facts.anon_flags) == (
        9009,
        "M247 Europe SRL",
        None,
        0,
    )
    assert facts.network == "45.83.220.0/22"


def test_no_databases_still_classifies_addresses() -> None:
    with GeoIntel() as geo:
        assert geo.lookup(fx.GOOGLE_DNS) == EMPTY_FACTS
        assert geo.lookup("10.0.0.1").private
        assert not geo.lookup("nope").valid
        assert geo.databases == {}


def test_country_falls_back_to_registered_country(intel: GeoIntel) -> None:
    assert intel.lookup(fx.REGISTERED_ONLY).country == "ZA"


def test_city_database_alone_gives_the_country(world: dict[str, Path]) -> None:
    with GeoIntel(city=world["city"]) as geo:
        assert geo.lookup(fx.GB_COUNTRY_ONLY).country == "GB"
    with GeoIntel(country=world["city"]) as geo:  # a City file is accepted as country
        assert geo.lookup(fx.GB_COUNTRY_ONLY).country == "GB"


def test_enrichment_is_one_shared_object_per_network(intel: GeoIntel) -> None:
    first = intel.lookup("45.83.221.9")
    assert intel.lookup("45.83.221.9") is first
    assert intel.lookup("45.83.221.200") is first  # same /24 bucket of a /22 network
    other = intel.lookup("45.83.223.1")  # same /22, another /24: same facts
    assert other == first


# ------------------------------------------------------------------------------ grading


def _plus_world(tmp_path: Path, rows: dict[str, fx.AnonRow]) -> Path:
    return fx.write_anonymous_plus(tmp_path / "plus.mmdb", rows, today=TODAY)


def test_confidence_and_recency_grading(tmp_path: Path) -> None:
    path = _plus_world(
        tmp_path,
        {
            "20.0.0.1/32": fx.AnonRow(("vpn",), 80, 0, "a"),
            "20.0.0.2/32": fx.AnonRow(("vpn",), 80, 30, "b"),
            "20.0.0.3/32": fx.AnonRow(("vpn",), 80, 60, "c"),
            "20.0.0.4/32": fx.AnonRow(("vpn", "tor")),  # no grading fields
            "20.0.0.5/32": fx.AnonRow(("public_proxy",), 0, 0),
            "20.0.0.6/32": fx.AnonRow(("vpn",), 50, -5),  # seen "in the future"
            "20.0.0.7/32": fx.AnonRow((), 90, 0, "x"),  # graded but no anonymizer flag
        },
    )
    with GeoIntel(anonymous_plus=path, today=_today) as geo:
        fresh, month, two_months, ungraded, zero, future, unflagged = (
            geo.lookup(f"20.0.0.{i}") for i in range(1, 8)
        )
    assert (fresh.anon_confidence, fresh.anon_age_days, fresh.anon_strength) == (80, 0.0, 0.8)
    assert fresh.anon_provider == "a"
    assert month.anon_age_days == 30.0 and math.isclose(month.anon_strength, 0.4)
    assert math.isclose(two_months.anon_strength, 0.2)
    assert ungraded.anon_flags == ANON_VPN | ANON_TOR
    assert (ungraded.anon_confidence, ungraded.anon_age_days) == (100, None)
    assert ungraded.anon_strength == 1.0 and ungraded.anon_provider is None
    assert zero.anon_flags == ANON_PUBLIC_PROXY and zero.anon_strength == 0.0
    assert future.anon_age_days == 0.0 and future.anon_strength == 0.5
    assert unflagged.anon_flags == 0 and unflagged.anon_confidence == 0
    assert unflagged.anon_provider is None and unflagged.anon_strength == 0.0


def test_half_life_is_configurable(tmp_path: Path) -> None:
    path = _plus_world(tmp_path, {"20.0.0.1/32": fx.AnonRow(("vpn",), 100, 30)})
    with GeoIntel(anonymous_plus=path, today=_today, recency_half_life_days=15) as geo:
        assert math.isclose(geo.lookup("20.0.0.1").anon_strength, 0.25)
    with GeoIntel(anonymous_plus=path, today=_today, recency_half_life_days=math.inf) as geo:
        assert geo.lookup("20.0.0.1").anon_strength == 1.0


def test_malformed_record_fields_are_ignored(tmp_path: Path) -> None:
    path = fx.write_mmdb(
        tmp_path / "plus.mmdb",
        "GeoIP-Anonymous-Plus",
        [
            (
                "20.0.0.1/32",
                {
                    "is_anonymous_vpn": True,
                    "is_tor_exit_node": "yes",  # not a boolean: ignored
                    "anonymizer_confidence": 250,  # clamped to 100
                    "network_last_seen": "last tuesday",
                    "provider_name": 7,
                },
            ),
            ("20.0.0.2/32", {"is_public_proxy": True, "anonymizer_confidence": "high"}),
        ],
    )
    asn_path = fx.write_mmdb(
        tmp_path / "asn.mmdb",
        "GeoLite2-ASN",
        [
            ("20.0.0.1/32", {"autonomous_system_number": "15169"}),
            ("20.0.0.2/32", {"autonomous_system_number": 0, "autonomous_system_organization": "x"}),
        ],
    )
    with GeoIntel(anonymous_plus=path, asn=asn_path, today=_today) as geo:
        one, two = geo.lookup("20.0.0.1"), geo.lookup("20.0.0.2")
    assert (one.anon_flags, one.anon_confidence, one.anon_age_days) == (ANON_VPN, 100, None)
    assert one.anon_provider is None and one.asn == 0
    assert (two.anon_flags, two.anon_confidence) == (ANON_PUBLIC_PROXY, 100)
    assert two.asn == 0 and two.as_org is None


def test_graded_claim_outranks_ungraded_and_flags_are_combined(tmp_path: Path) -> None:
    anonymous_ip = fx.write_anonymous_ip(tmp_path / "anon.mmdb", {"20.0.0.0/24": ("hosting",)})
    plus = _plus_world(tmp_path, {"20.0.0.0/24": fx.AnonRow(("vpn",), 40, 0, "p")})
    resi = fx.write_residential_proxy(
        tmp_path / "resi.mmdb", {"20.0.0.9/32": fx.AnonRow((), 70, 0, "r")}, today=TODAY
    )
    with GeoIntel(
        anonymous_ip=anonymous_ip, anonymous_plus=plus, residential_proxy=resi, today=_today
    ) as geo:
        combined = geo.lookup("20.0.0.1")
        strongest = geo.lookup("20.0.0.9")
    assert combined.anon_flags == ANON_HOSTING | ANON_VPN
    assert (combined.anon_confidence, combined.anon_provider) == (40, "p")
    assert strongest.anon_flags == ANON_HOSTING | ANON_VPN | ANON_RESIDENTIAL_PROXY
    assert (strongest.anon_confidence, strongest.anon_provider) == (70, "r")
    assert strongest.network == "20.0.0.9/32"


def test_day_change_regrades_cached_facts(tmp_path: Path) -> None:
    path = _plus_world(tmp_path, {"20.0.0.1/32": fx.AnonRow(("vpn",), 100, 0)})
    day = [TODAY]
    with GeoIntel(anonymous_plus=path, today=lambda: day[0], reload_interval=0) as geo:
        assert geo.lookup("20.0.0.1").anon_strength == 1.0
        day[0] = TODAY + datetime.timedelta(days=30)
        later = geo.lookup("20.0.0.1")
    assert later.anon_age_days == 30.0 and math.isclose(later.anon_strength, 0.5)


@given(
    confidence=st.integers(0, 100),
    age=st.floats(0, 3650),
    older=st.floats(0, 3650),
    half_life=st.floats(0.5, 365),
)
def test_strength_is_bounded_and_monotone(
    confidence: int, age: float, older: float, half_life: float
) -> None:
    weight = recency_weight(age, half_life)
    assert 0.0 <= weight <= 1.0
    assert recency_weight(age + older, half_life) <= weight
    assert recency_weight(None, half_life) == 1.0
    record = {"is_anonymous_vpn": True, "anonymizer_confidence": confidence}
    facts = merge_records(
        [("anonymous_plus", record)], network=None, today=TODAY, half_life_days=half_life
    )
    assert 0.0 <= facts.anon_strength <= 1.0
    assert math.isclose(facts.anon_strength, confidence / 100)


@pytest.mark.parametrize(
    ("database_type", "kind"),
    [
        ("GeoLite2-ASN", "asn"),
        ("GeoIP2-ISP", "asn"),
        ("DBIP-ASN-Lite (compat=GeoLite2-ASN)", "asn"),
        ("GeoLite2-Country", "country"),
        ("GeoIP2-City", "city"),
        ("GeoIP2-City-Europe", "city"),
        ("GeoIP2-Enterprise", "city"),
        ("GeoIP2-Anonymous-IP", "anonymous_ip"),
        ("GeoIP-Anonymous-Plus", "anonymous_plus"),
        ("GeoIP-Residential-Proxy", "residential_proxy"),
        ("GeoIP2-IP-Risk", "ip_risk"),
        ("GeoIP2-Connection-Type", "connection_type"),
        ("Test", None),
        ("GeoIP2-Domain", None),
        ("", None),
    ],
)
def test_kind_of_database_type(database_type: str, kind: str | None) -> None:
    assert kind_of_database_type(database_type) == kind


# ------------------------------------------------------------------------------ caching


def test_narrow_network_does_not_leak_to_neighbours(world: dict[str, Path]) -> None:
    # 73.1.2.3/32 is a residential proxy inside Comcast's /8; its /24 neighbours are not.
    for order in (("73.1.2.3", "73.1.2.4"), ("73.1.2.4", "73.1.2.3")):
        with GeoIntel(**world, today=_today) as geo:
            facts = {ip: geo.lookup(ip) for ip in order}
        assert facts["73.1.2.3"].anon_flags == ANON_RESIDENTIAL_PROXY
        assert facts["73.1.2.4"].anon_flags == 0
        assert facts["73.1.2.4"].asn == facts["73.1.2.3"].asn == 7922


def test_different_networks_get_different_facts(intel: GeoIntel) -> None:
    assert intel.lookup(fx.GOOGLE_DNS).asn != intel.lookup(fx.CLOUDFLARE_DNS).asn
    assert intel.lookup("8.8.4.4") != intel.lookup(fx.GOOGLE_DNS)  # 8.8.4.0 is not 8.8.8.0/24


def _world_addresses() -> st.SearchStrategy[str]:
    cidrs = sorted(
        set(fx.WORLD_ASN)
        | set(fx.WORLD_ANONYMOUS_PLUS)
        | set(fx.WORLD_RESIDENTIAL_PROXY)
        | {"10.0.0.0/8", "73.1.2.0/24", "0.0.0.0/0", "::/0"}
    )

    def pick(cidr: str, offset: int) -> str:
        net = ip_network(cidr)
        return str(net.network_address + offset % net.num_addresses)

    return st.builds(pick, st.sampled_from(cidrs), st.integers(0, 2**128))


@settings(max_examples=300, deadline=None)
@given(st.lists(_world_addresses(), min_size=1, max_size=30))
def test_cached_answers_equal_uncached_answers(
    world: dict[str, Path], uncached: GeoIntel, addresses: list[str]
) -> None:
    with GeoIntel(**world, today=_today, cache_size=16) as geo:
        for ip in addresses + addresses[::-1]:
            assert geo.lookup(ip) == uncached.lookup(ip), ip


def test_cache_is_bounded_under_ipv6_rotation(world: dict[str, Path]) -> None:
    with GeoIntel(**world, today=_today, cache_size=64) as geo:
        for i in range(5000):
            geo.lookup(f"2a0d:5600:{i:x}:{i * 7 % 65536:x}::{i:x}")
            geo.lookup(f"2001:{i % 65536:x}:{i:x}::1")
        stats = geo.cache_stats()
    assert stats["capacity"] == 64
    assert 0 < stats["addresses"] <= 64 and 0 < stats["networks"] <= 64


def test_cache_size_zero_disables_caching(world: dict[str, Path]) -> None:
    with GeoIntel(**world, today=_today, cache_size=0) as geo:
        fx.assert_expected(geo.lookup(fx.VPN), fx.VPN)
        fx.assert_expected(geo.lookup(fx.VPN), fx.VPN)
        assert geo.cache_stats() == {"addresses": 0, "networks": 0, "capacity": 0}


# --------------------------------------------------------------------------- hot reload


@pytest.fixture
def asn_file(tmp_path: Path) -> Path:
    return fx.write_asn(tmp_path / "asn.mmdb", {"20.0.0.0/8": (100, "Old Org")})


def test_atomic_replacement_is_picked_up(asn_file: Path, tmp_path: Path) -> None:
    with GeoIntel(asn=asn_file, reload_interval=3600) as geo:
        assert geo.lookup("20.1.1.1").asn == 100
        fx.write_asn(tmp_path / "next.mmdb", {"20.0.0.0/8": (200, "New Org")})
        os.replace(tmp_path / "next.mmdb", asn_file)
        assert geo.lookup("20.1.1.1").asn == 100  # not checked before the interval
        assert geo.reload_if_changed() is True
        facts = geo.lookup("20.1.1.1")
        assert (facts.asn, facts.as_org) == (200, "New Org")
        assert geo.reload_if_changed() is False


def test_lookup_reloads_by_itself(asn_file: Path) -> None:
    with GeoIntel(asn=asn_file, reload_interval=0) as geo:
        assert geo.lookup("20.1.1.1").asn == 100
        fx.write_asn(asn_file, {"20.0.0.0/8": (300, None)})
        assert geo.lookup("20.1.1.1").asn == 300


def test_garbage_replacement_keeps_old_reader_and_warns_once(
    asn_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with GeoIntel(asn=asn_file, reload_interval=0) as geo:
        assert geo.lookup("20.1.1.1").asn == 100
        fx.write_garbage(asn_file)
        with caplog.at_level(logging.WARNING, logger="abuseguard.intel"):
            assert geo.reload_if_changed() is False
            assert geo.lookup("20.1.1.1").asn == 100
            assert geo.lookup("20.2.2.2").asn == 100
        warnings = [r for r in caplog.records if r.name == "abuseguard.intel"]
        assert len(warnings) == 1, warnings
        message = warnings[0].getMessage()
        assert str(asn_file) in message and "not a valid MaxMind DB" in message
        assert "still serving" in message
        fx.write_asn(asn_file, {"20.0.0.0/8": (400, None)})  # repaired
        assert geo.lookup("20.1.1.1").asn == 400


def test_deleted_file_keeps_old_reader_and_warns(
    asn_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with GeoIntel(asn=asn_file, reload_interval=0) as geo:
        assert geo.lookup("20.1.1.1").asn == 100
        asn_file.unlink()
        with caplog.at_level(logging.WARNING, logger="abuseguard.intel"):
            assert geo.lookup("20.3.3.3").asn == 100
            assert geo.lookup("20.4.4.4").asn == 100
        messages = [r.getMessage() for r in caplog.records if r.name == "abuseguard.intel"]
        assert len(messages) == 1 and "missing" in messages[0] and str(asn_file) in messages[0]
        fx.write_asn(asn_file, {"20.0.0.0/8": (500, None)})
        assert geo.lookup("20.1.1.1").asn == 500


def test_wrong_type_replacement_is_refused(
    asn_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with GeoIntel(asn=asn_file, reload_interval=0) as geo:
        fx.write_country(asn_file, {"20.0.0.0/8": "US"})
        with caplog.at_level(logging.WARNING, logger="abuseguard.intel"):
            facts = geo.lookup("20.1.1.1")
        assert (facts.asn, facts.country) == (100, None)
        assert any("wrong database type" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------ start-up errors


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mmdb"
    with pytest.raises(IntelError, match=r"asn database .*nope\.mmdb: file not found"):
        GeoIntel(asn=missing)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    garbage = fx.write_garbage(tmp_path / "bad.mmdb")
    with pytest.raises(IntelError, match=r"country database .*bad\.mmdb: not a valid MaxMind"):
        GeoIntel(country=garbage)
    empty = tmp_path / "empty.mmdb"
    empty.write_bytes(b"")
    with pytest.raises(IntelError, match=r"empty\.mmdb"):
        GeoIntel(asn=empty)


def test_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IntelError, match="is a directory"):
        GeoIntel(asn=tmp_path)
    with pytest.raises(IntelError, match="empty path"):
        GeoIntel(asn="")


def test_wrong_type_is_a_clear_error(world: dict[str, Path]) -> None:
    with pytest.raises(IntelError) as excinfo:
        GeoIntel(asn=world["country"])
    message = str(excinfo.value)
    assert str(world["country"]) in message and "asn database" in message
    assert "'GeoLite2-Country'" in message and "*-ASN" in message
    with pytest.raises(IntelError, match="wrong database type 'GeoIP2-Anonymous-IP'"):
        GeoIntel(anonymous_plus=world["anonymous_ip"])


def test_foreign_database_type_is_refused(tmp_path: Path) -> None:
    path = fx.write_mmdb(tmp_path / "t.mmdb", "Test", [("20.0.0.0/8", {"ip": "x"})])
    with pytest.raises(IntelError, match="unsupported database type 'Test'"):
        Database.open(path)
    opened = Database.open(path, "asn", check_type=False)
    try:
        assert opened.kind == "asn" and opened.database_type == "Test"
    finally:
        opened.close()
    with pytest.raises(IntelError, match="unknown database kind"):
        Database.open(path, "geo")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"cache_size": -1}, "cache_size"),
        ({"cache_size": 1.5}, "cache_size"),
        ({"reload_interval": -1}, "reload_interval"),
        ({"reload_interval": math.nan}, "reload_interval"),
        ({"recency_half_life_days": 0}, "recency_half_life_days"),
        ({"recency_half_life_days": math.nan}, "recency_half_life_days"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, float], field: str) -> None:
    with pytest.raises(IntelError, match=field):
        GeoIntel(**options)  # type: ignore[arg-type]


def test_a_failing_database_closes_the_ones_already_open(world: dict[str, Path]) -> None:
    with pytest.raises(IntelError, match="country database"):
        GeoIntel(asn=world["asn"], country=world["asn"])


# ---------------------------------------------------------------------------- bad input


BAD_INPUTS = [
    "",
    " ",
    "abc",
    "1.2.3.4.5",
    "1.2.3",
    "01.2.3.4",  # leading zeros are ambiguous (octal)
    "1.2.3.256",
    "0x1.2.3.4",
    "[::1]",
    "1.2.3.4:80",
    "[2001:db8::1]:443",
    "1.2.3.4%eth0",  # a zone on IPv4
    "fe80::1%",  # empty zone
    "::1%%",
    "gggg::1",
    ":::",
    "::ffff:1.2.3.4.5",
    "1.2.3.4\x00",
    "\ud800",
    "\u0661.\u0662.\u0663.\u0664",  # Arabic-Indic digits
    "1" * (MAX_IP_TEXT + 1),
    "1.2.3.4" + " " * 100,  # longer than MAX_IP_TEXT before stripping
    "a" * 100_000,
    None,
    123,
    1.5,
    b"1.2.3.4",
    ["1.2.3.4"],
    {"ip": "1.2.3.4"},
    object(),
]


@pytest.mark.parametrize("raw", BAD_INPUTS, ids=lambda raw: repr(raw)[:30])
def test_bad_input_is_invalid_and_not_cached(world: dict[str, Path], raw: object) -> None:
    with GeoIntel(**world, today=_today) as geo:
        assert geo.lookup(raw) is INVALID_FACTS  # type: ignore[arg-type]
        assert geo.lookup(raw) is INVALID_FACTS  # type: ignore[arg-type]
        assert geo.cache_stats()["addresses"] == 0


@given(st.one_of(st.text(max_size=80), st.binary(max_size=20), st.none(), st.integers()))
@settings(max_examples=300, deadline=None)
def test_lookup_never_raises(intel: GeoIntel, raw: object) -> None:
    facts = intel.lookup(raw)  # type: ignore[arg-type]
    assert isinstance(facts, NetworkFacts)
    assert facts.valid == (parse_ip(raw) is not None)


def test_whitespace_is_stripped(intel: GeoIntel) -> None:
    assert intel.lookup(" 8.8.8.8\n") == intel.lookup(fx.GOOGLE_DNS)
    assert intel.lookup("\t2a03:2880:f000::1 ") == intel.lookup(fx.V6_FACEBOOK)


@pytest.mark.parametrize(
    "mapped", ["::ffff:8.8.8.8", "::FFFF:808:808", "0:0:0:0:0:ffff:8.8.8.8", "64:ff9b::8.8.8.8"]
)
def test_ipv4_mapped_and_nat64_ipv6_are_looked_up_as_ipv4(intel: GeoIntel, mapped: str) -> None:
    assert intel.lookup(mapped) == intel.lookup(fx.GOOGLE_DNS)
    assert intel.lookup(mapped).network == "8.8.8.0/24"


def test_mapped_private_address_is_private(intel: GeoIntel) -> None:
    for mapped in ("::ffff:10.1.2.3", "64:ff9b::10.1.2.3"):
        facts = intel.lookup(mapped)
        assert facts.private and facts.network == "10.0.0.0/8"


def test_scoped_ipv6_drops_the_zone(intel: GeoIntel) -> None:
    link_local = intel.lookup("fe80::1%eth0")
    assert link_local.private and link_local.network == "fe80::/10"
    assert intel.lookup("2a03:2880:f000::1%eth0") == intel.lookup(fx.V6_FACEBOOK)
    assert intel.lookup("fe80::1%25") == link_local


def test_ipaddress_objects_are_accepted(intel: GeoIntel) -> None:
    assert intel.lookup(IPv4Address(fx.GOOGLE_DNS)) == intel.lookup(fx.GOOGLE_DNS)  # type: ignore[arg-type]
    assert intel.lookup(IPv6Address(fx.V6_AWS)) == intel.lookup(fx.V6_AWS)  # type: ignore[arg-type]


SPECIAL = [
    ("0.0.0.0", "0.0.0.0/8"),
    ("10.1.2.3", "10.0.0.0/8"),
    ("100.64.1.1", "100.64.0.0/10"),
    ("127.0.0.1", "127.0.0.0/8"),
    ("169.254.1.1", "169.254.0.0/16"),
    ("172.16.5.5", "172.16.0.0/12"),
    ("172.31.255.255", "172.16.0.0/12"),
    ("192.0.2.1", "192.0.2.0/24"),
    ("192.168.1.1", "192.168.0.0/16"),
    ("198.18.0.1", "198.18.0.0/15"),
    ("198.51.100.7", "198.51.100.0/24"),
    ("203.0.113.9", "203.0.113.0/24"),
    ("224.0.0.1", "224.0.0.0/4"),
    ("240.0.0.1", "240.0.0.0/4"),
    ("255.255.255.255", "240.0.0.0/4"),
    ("::", "::/8"),
    ("::1", "::/8"),
    ("::1.2.3.4", "::/8"),  # IPv4-compatible (deprecated)
    ("64:ff9b:1::1", "64:ff9b:1::/48"),
    ("100::1", "100::/64"),
    ("2001:db8::1", "2001:db8::/32"),
    ("3fff::1", "3fff::/20"),
    ("fc00::1", "fc00::/7"),
    ("fd12:3456::1", "fc00::/7"),
    ("fe80::1", "fe80::/10"),
    ("fec0::1", "fec0::/10"),
    ("ff02::1", "ff00::/8"),
]


@pytest.mark.parametrize(("ip", "network"), SPECIAL)
def test_special_ranges_are_private_without_lookup(tmp_path: Path, ip: str, network: str) -> None:
    # The database claims every special range: a lookup would return ASN 64512.
    rows = {cidr: (64512, "should not be seen") for _, cidr in SPECIAL if cidr != "::/8"}
    rows["::/16"] = (64512, "should not be seen")
    path = fx.write_asn(tmp_path / "asn.mmdb", rows)
    with GeoIntel(asn=path) as geo:
        facts = geo.lookup(ip)
    assert facts == NetworkFacts(private=True, network=network)


@pytest.mark.parametrize(
    "ip",
    ["1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2600::1", "2001::1", "64:ff9b::101:101"],
)
def test_global_neighbours_of_special_ranges_are_not_private(intel: GeoIntel, ip: str) -> None:
    assert not intel.lookup(ip).private


def test_ipv6_lookup_in_ipv4_only_database(tmp_path: Path) -> None:
    path = fx.write_mmdb(
        tmp_path / "v4.mmdb",
        "GeoLite2-ASN",
        [("20.0.0.0/8", {"autonomous_system_number": 64500})],
        ip_version=4,
    )
    with GeoIntel(asn=path) as geo:
        assert geo.lookup("20.1.2.3").asn == 64500
        assert geo.lookup("2600::1") == EMPTY_FACTS


# ---------------------------------------------------------------------- facts_from_fields


BASE = NetworkFacts(
    asn=7922,
    as_org="Comcast",
    country="US",
    anon_flags=ANON_RESIDENTIAL_PROXY,
    anon_confidence=80,
    anon_age_days=30.0,
    anon_provider="proxyco",
    anon_strength=0.4,
    network="73.1.2.3/32",
)


def test_fields_override_field_by_field() -> None:
    assert facts_from_fields(BASE) is BASE
    assert facts_from_fields(BASE, country="de").country == "DE"
    moved = facts_from_fields(BASE, asn=13335)
    assert (moved.asn, moved.as_org, moved.country) == (13335, None, "US")
    same = facts_from_fields(BASE, asn=7922)
    assert same.as_org == "Comcast"
    named = facts_from_fields(BASE, asn=13335, as_org="Cloudflare")
    assert (named.asn, named.as_org, named.network) == (13335, "Cloudflare", "73.1.2.3/32")


def test_anon_fields_replace_the_claim() -> None:
    vpn = facts_from_fields(BASE, anon=["vpn", "tor", "bogus"], anon_confidence=60)
    assert vpn.anon_flags == ANON_VPN | ANON_TOR
    assert (vpn.anon_confidence, vpn.anon_strength) == (60, 0.6)
    assert (vpn.anon_provider, vpn.anon_age_days) == (None, None)
    clean = facts_from_fields(BASE, anon=[])
    assert (clean.anon_flags, clean.anon_confidence, clean.anon_strength) == (0, 0, 0.0)
    unknown_only = facts_from_fields(BASE, anon=["satellite"])
    assert unknown_only.anon_flags == 0
    default_conf = facts_from_fields(EMPTY_FACTS, anon=("hosting",))
    assert (default_conf.anon_flags, default_conf.anon_confidence) == (ANON_HOSTING, 100)
    text = facts_from_fields(EMPTY_FACTS, anon="vpn, tor")
    assert text.anon_flags == ANON_VPN | ANON_TOR


def test_confidence_alone_regrades_the_looked_up_claim() -> None:
    regraded = facts_from_fields(BASE, anon_confidence=40)
    assert regraded.anon_flags == BASE.anon_flags and regraded.anon_provider == "proxyco"
    assert regraded.anon_confidence == 40 and math.isclose(regraded.anon_strength, 0.2)
    assert facts_from_fields(EMPTY_FACTS, anon_confidence=90) is EMPTY_FACTS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"asn": -1},
        {"asn": 2**32},
        {"asn": True},
        {"asn": "AS13335"},
        {"country": "usa"},
        {"country": ""},
        {"country": "1A"},
        {"as_org": ""},
        {"anon": 5},
        {"anon": b"vpn"},
        {"anon": {"vpn": True}},
        {"anon_confidence": "high"},
    ],
)
def test_malformed_override_fields_are_ignored(kwargs: dict[str, object]) -> None:
    assert facts_from_fields(BASE, **kwargs) == BASE  # type: ignore[arg-type]


def test_overrides_clamp_confidence() -> None:
    assert facts_from_fields(EMPTY_FACTS, anon=["vpn"], anon_confidence=250).anon_confidence == 100
    assert facts_from_fields(EMPTY_FACTS, anon=["vpn"], anon_confidence=-3).anon_confidence == 0


# ------------------------------------------------------------------------------ hosting


def test_builtin_hosting_asns_cover_the_large_clouds() -> None:
    clouds = {16509, 14618, 396982, 8075, 14061, 16276, 24940, 63949, 20473, 45102, 132203}
    clouds |= {31898, 12876, 51167, 60781, 16265}
    assert clouds <= BUILTIN_HOSTING_ASNS
    assert 13335 not in BUILTIN_HOSTING_ASNS  # Cloudflare carries WARP users
    assert all(isinstance(asn, int) and 0 < asn < 2**32 for asn in BUILTIN_HOSTING_ASNS)


def test_hosting_asns_helper() -> None:
    assert hosting_asns() == BUILTIN_HOSTING_ASNS
    assert hosting_asns([64500, "AS64501", " 64502 "], include_builtin=False) == {
        64500,
        64501,
        64502,
    }
    assert hosting_asns([64500]) == BUILTIN_HOSTING_ASNS | {64500}
    assert parse_asn("as13335") == 13335


@pytest.mark.parametrize("bad", [0, -5, 2**32, True, "ASX", "", "1e3", 1.0, None])
def test_hosting_asns_rejects_bad_entries(bad: object) -> None:
    with pytest.raises(ValueError, match="not an AS number"):
        hosting_asns([bad], include_builtin=False)  # type: ignore[list-item]


def test_hosting_asns_rejects_a_bare_string() -> None:
    with pytest.raises(ValueError, match="collection"):
        hosting_asns("16509")


# ---------------------------------------------------------------------------------- CLI


def test_cli_lookup_json(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["lookup", fx.GOOGLE_DNS, fx.V6_VPN, "--format", "json"]
    for kind in ("asn", "country", "anonymous_plus"):
        args += ["--db", str(world[kind])]
    assert cli_main(args) == 0
    google, vpn = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (google["ip"], google["asn"], google["country"], google["anon"]) == (
        fx.GOOGLE_DNS,
        15169,
        "US",
        [],
    )
    assert vpn["anon"] == ["vpn"] and vpn["anon_provider"] == "examplevpn"
    assert set(vpn["databases"]) == {"asn", "country", "anonymous_plus"}


def test_cli_lookup_text(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["lookup", fx.TOR_EXIT, "--db", str(world["anonymous_ip"])]) == 0
    out = capsys.readouterr().out
    assert "anon:" in out and "tor" in out and "db anonymous_ip:" in out


def test_cli_lookup_without_databases(capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 19: without a database, lookup says what to pass and fails (it used to print
    # an almost empty record and exit 0).
    assert cli_main(["lookup", "10.0.0.1", "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--mmdb-dir" in captured.err


@pytest.mark.parametrize("problem", ["missing", "garbage", "foreign", "duplicate", "bad-ip"])
def test_cli_lookup_errors_exit_2_without_traceback(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    ip = fx.GOOGLE_DNS
    if problem == "missing":
        dbs, expected = [tmp_path / "missing.mmdb"], "file not found"
    elif problem == "garbage":
        dbs, expected = [fx.write_garbage(tmp_path / "g.mmdb")], "not a valid MaxMind DB"
    elif problem == "foreign":
        dbs = [fx.write_mmdb(tmp_path / "t.mmdb", "Test", [("1.0.0.0/8", {"a": 1})])]
        expected = "unsupported database type"
    elif problem == "duplicate":
        dbs, expected = [world["asn"], world["asn"]], "two asn databases"
    else:
        dbs, ip, expected = [world["asn"]], "not-an-ip", "not an IP address"
    args = ["lookup", ip]
    for db in dbs:
        args += ["--db", str(db)]
    assert cli_main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert expected in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith("abuseguard lookup: error:")


def test_cli_entry_point(world: dict[str, Path], tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("abuseguard")
    if not exe.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    ok = subprocess.run(
        [exe, "lookup", fx.VPN, "--db", str(world["asn"]), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["asn"] == 9009
    bad = subprocess.run(
        [exe, "lookup", fx.VPN, "--db", str(fx.write_garbage(tmp_path / "g.mmdb"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "not a valid MaxMind DB" in bad.stderr
