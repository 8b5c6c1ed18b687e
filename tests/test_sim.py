"""The simulator: determinism, scenarios, field validity, world consistency, CLI."""

from __future__ import annotations

import gzip
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from abuseguard.cli import main
from abuseguard.sim import ABUSIVE, BENIGN, MIXES, SCENARIOS, World, simulate
from abuseguard.sim.scenarios import CLASSIC, parse_override
from abuseguard.sim.writer import DEFAULT_START
from abuseguard.traces import TraceReader

SMALL = {"hours": 0.5, "scale": 0.1}


def _trace(**kwargs: Any) -> str:
    out = io.StringIO()
    simulate(out, **{**SMALL, **kwargs})
    return out.getvalue()


@pytest.fixture(scope="module")
def small_default() -> list[dict[str, Any]]:
    return [json.loads(line) for line in _trace(seed=11).splitlines()]


def test_same_seed_gives_identical_bytes() -> None:
    assert _trace(seed=3) == _trace(seed=3)


def test_different_seeds_differ() -> None:
    assert _trace(seed=3) != _trace(seed=4)


def test_gzip_output_is_deterministic(tmp_path: Path) -> None:
    paths = [tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"]
    for path in paths:
        assert (
            main(
                [
                    "simulate",
                    "-o",
                    str(path),
                    "--seed",
                    "2",
                    "--hours",
                    "0.25",
                    "--scale",
                    "0.05",
                    "-q",
                ]
            )
            == 0
        )
    assert paths[0].read_bytes() == paths[1].read_bytes()
    text = gzip.decompress(paths[0].read_bytes()).decode()
    assert text == _trace(seed=2, hours=0.25, scale=0.05)


def test_every_scenario_produces_its_label_and_kind(small_default: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["label"]) for d in small_default}
    # the default mix keeps to the first version's scenarios; the capable mix has the rest
    expected = {(name, SCENARIOS[name].label) for name in CLASSIC}
    assert kinds == expected
    assert set(BENIGN) | set(ABUSIVE) == set(SCENARIOS)
    capable = [json.loads(line) for line in _trace(seed=11, mix="capable").splitlines()]
    capable_kinds = {(d["kind"], d["label"]) for d in capable}
    assert capable_kinds == {(name, SCENARIOS[name].label) for name in MIXES["capable"]}
    assert set(MIXES["default"]) | set(MIXES["capable"]) == set(SCENARIOS)


def test_lines_are_valid_ordered_and_inside_the_window(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(_trace(seed=11))
    with TraceReader(path) as reader:
        records = list(reader)
    stats = reader.stats
    assert stats.malformed == 0 and stats.out_of_order == 0 and stats.blank_lines == 0
    assert records
    horizon = DEFAULT_START + SMALL["hours"] * 3600
    for record in records:
        info = record.info
        assert DEFAULT_START <= info.ts < horizon  # type: ignore[operator]
        assert record.label in ("benign", "abusive")
        assert record.actor and record.kind
        assert info.key, "every simulated actor has its own key"
        assert info.asn is not None and info.as_org and info.country
        assert record.status is not None and record.cost is not None
        assert record.duration is not None and record.duration > 0
        if info.method == "POST":
            body = json.loads(info.body or "")
            assert body["messages"][-1]["role"] == "user"
            assert body["messages"][-1]["content"]


def test_an_address_always_carries_the_same_enrichment(
    small_default: list[dict[str, Any]],
) -> None:
    seen: dict[str, tuple[Any, ...]] = {}
    for d in small_default:
        facts = (
            d["asn"],
            d["as_org"],
            d["country"],
            tuple(d.get("anon", ())),
            d.get("anon_confidence"),
        )
        assert seen.setdefault(d["ip"], facts) == facts, d["ip"]


def test_an_actor_keeps_its_key_kind_and_label(small_default: list[dict[str, Any]]) -> None:
    per_actor: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for d in small_default:
        per_actor[d["actor"]].add((d["key"], d["kind"], d["label"]))
    assert all(len(v) == 1 for v in per_actor.values())
    keys = [next(iter(v))[0] for v in per_actor.values()]
    assert len(set(keys)) == len(keys), "no two actors share a key"


def _by_kind(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    rows = [d for d in lines if d["kind"] == kind]
    assert rows, kind
    return rows


def test_scenario_shapes(small_default: list[dict[str, Any]]) -> None:
    lines = small_default
    hosting = {
        16509,
        14618,
        396982,
        8075,
        14061,
        24940,
        16276,
        63949,
        20473,
        51167,
        31898,
        45102,
        132203,
    }
    sdk = _by_kind(lines, "sdk_backend")
    assert {d["asn"] for d in sdk} <= hosting
    assert all(d["ua"].startswith("OpenAI/") for d in sdk)
    assert all("x-stainless-lang" in d["headers"] for d in sdk)
    campus = _by_kind(lines, "campus_nat")
    assert len({d["ip"] for d in campus}) <= 2
    assert len({d["actor"] for d in campus}) > 2
    browsers = _by_kind(lines, "browser_chat")
    assert any("sec-fetch-mode" in d["headers"] for d in browsers)
    assert all(d["ua"].startswith("Mozilla/5.0") for d in browsers)
    router = _by_kind(lines, "router")
    assert len({d["ip"] for d in router}) <= 6
    assert len({d["actor"] for d in router}) > len({d["ip"] for d in router})
    assert len({(d["ua"], json.dumps(d["headers"], sort_keys=True)) for d in router}) <= 2
    tor = _by_kind(lines, "tor")
    assert all("tor" in d["anon"] for d in tor)
    pool = _by_kind(lines, "resi_pool")
    assert len({d["ip"] for d in pool}) > len({d["actor"] for d in pool})
    assert len({d["country"] for d in pool}) > 5
    assert any("residential_proxy" in d.get("anon", ()) for d in pool)
    bulk = _by_kind(lines, "bulk_harvest")
    assert all(not d["ua"].startswith(("Mozilla", "OpenAI")) for d in bulk)
    slow = _by_kind(lines, "low_and_slow")
    per_account: dict[str, int] = defaultdict(int)
    for d in slow:
        per_account[d["actor"]] += 1
    assert max(per_account.values()) <= 6, "one request every few minutes per account"


def test_scale_and_hours_scale_the_trace() -> None:
    small = _trace(seed=1, hours=0.25, scale=0.05).count("\n")
    more_actors = _trace(seed=1, hours=0.25, scale=0.15).count("\n")
    longer = _trace(seed=1, hours=0.75, scale=0.05).count("\n")
    assert more_actors > small and longer > small


def test_only_and_overrides() -> None:
    text = _trace(seed=1, only=("tor",), overrides={"tor": {"actors": 30}})
    rows = [json.loads(line) for line in text.splitlines()]
    assert {d["kind"] for d in rows} == {"tor"}
    assert len({d["actor"] for d in rows}) == 3  # 30 actors at scale 0.1
    with pytest.raises(ValueError, match="unknown scenario"):
        _trace(only=("nope",))
    with pytest.raises(ValueError, match="not in the mix"):
        _trace(mix="benign", only=("tor",))
    with pytest.raises(ValueError, match="hours"):
        _trace(hours=0)


def test_no_enrichment_leaves_network_fields_out() -> None:
    rows = [json.loads(line) for line in _trace(seed=1, enrich=False).splitlines()]
    assert rows
    assert not any("asn" in d or "anon" in d or "country" in d for d in rows)


def test_every_mix_runs() -> None:
    for mix in MIXES:
        assert _trace(seed=1, mix=mix, hours=0.1, scale=0.05)


def test_parse_override() -> None:
    assert parse_override("resi_pool.jitter=0.3") == ("resi_pool", "jitter", 0.3)
    assert parse_override("tor.actors=5") == ("tor", "actors", 5)
    for bad, message in (
        ("resi_pool.jitter", "SCENARIO.PARAM=VALUE"),
        ("nope.x=1", "unknown scenario"),
        ("tor.nope=1", "no parameter"),
        ("tor.actors=many", "expects int"),
        ("tor.actors=-1", ">= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_override(bad)


def test_world_is_deterministic_and_flags_shared_pools() -> None:
    a, b = World(seed=9, start=DEFAULT_START), World(seed=9, start=DEFAULT_START)
    assert a.tor_exits == b.tor_exits and a.cgnat == b.cgnat
    assert World(seed=10, start=DEFAULT_START).tor_exits != a.tor_exits
    info = a.addresses[a.tor_exits[0]]
    assert "tor" in info.anon and info.confidence is not None
    assert '"anon":["tor"]' in a.fragment(a.tor_exits[0])


def test_cli_simulate_errors_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--set", "tor.actors=lots", "-o", str(tmp_path / "x")]) == 2
    assert "expects int" in capsys.readouterr().err
    assert main(["simulate", "--only", "nope", "-o", str(tmp_path / "x")]) == 2
    assert "unknown scenario" in capsys.readouterr().err
    assert main(["simulate", "--mix", "benign", "--only", "tor", "-o", str(tmp_path / "x")]) == 2
    assert "not in mix benign" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["simulate", "--start", "yesterday", "-o", str(tmp_path / "x")]) == 2
    assert "--start" in capsys.readouterr().err
    assert main(["simulate", "-o", str(tmp_path / "no" / "such" / "dir.jsonl"), "-q"]) == 2
    assert "cannot write" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--hours", "-1"])
    capsys.readouterr()
    assert main(["simulate", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in listing
    assert "--set resi_pool.jitter=" in listing


def test_cli_start_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.jsonl"
    code = main(
        [
            "simulate",
            "-o",
            str(path),
            "--hours",
            "0.1",
            "--scale",
            "0.05",
            "--only",
            "sdk_backend",
            "--start",
            "2026-01-01T00:00:00Z",
        ]
    )
    assert code == 0
    assert "simulated" in capsys.readouterr().err
    first = json.loads(path.read_text().splitlines()[0])
    assert 1767225600.0 <= first["ts"] < 1767225600.0 + 360


def test_mmdb_files_match_the_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    maxminddb = pytest.importorskip("maxminddb")
    pytest.importorskip("mmdb_writer")
    trace = tmp_path / "t.jsonl"
    mmdb = tmp_path / "mmdb"
    code = main(
        [
            "simulate",
            "-o",
            str(trace),
            "--hours",
            "0.2",
            "--scale",
            "0.05",
            "--mmdb-dir",
            str(mmdb),
            "-q",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    readers = {p.name: maxminddb.open_database(str(p)) for p in mmdb.glob("*.mmdb")}
    assert set(readers) == {
        "GeoLite2-ASN.mmdb",
        "GeoLite2-Country.mmdb",
        "GeoIP2-Connection-Type.mmdb",
        "GeoIP-Anonymous-Plus.mmdb",
    }
    flag_field = {
        "vpn": "is_anonymous_vpn",
        "hosting": "is_hosting_provider",
        "residential_proxy": "is_residential_proxy",
        "tor": "is_tor_exit_node",
    }
    for d in rows[:: max(1, len(rows) // 300)]:
        asn = readers["GeoLite2-ASN.mmdb"].get(d["ip"])
        assert asn["autonomous_system_number"] == d["asn"]
        country = readers["GeoLite2-Country.mmdb"].get(d["ip"])
        assert country["country"]["iso_code"] == d["country"]
        anon = readers["GeoIP-Anonymous-Plus.mmdb"].get(d["ip"]) or {}
        assert {k for k, f in flag_field.items() if anon.get(f)} == set(d.get("anon", ()))
        assert anon.get("anonymizer_confidence") == d.get("anon_confidence")
    for reader in readers.values():
        reader.close()
