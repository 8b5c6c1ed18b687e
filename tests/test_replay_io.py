"""Replay at log scale: zstd and Parquet readers, user column mappings, time formats, the
decision table, the trace JSON Schema, missing extras, and bounded memory."""

from __future__ import annotations

import datetime
import gzip
import importlib.resources
import io
import json
import re
import shlex
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abuseguard.cli import main
from abuseguard.replay import run_replay
from abuseguard.report import ReportBuilder
from abuseguard.trace_inputs import open_trace
from abuseguard.traces import TraceError, TraceReader, parse_object, read_trace

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

DAY_START = datetime.datetime(2026, 3, 10, tzinfo=datetime.UTC)


def _lines(count: int, *, start: float = DAY_START.timestamp()) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {
            "ts": start + i * 0.5,
            "ip": f"198.51.100.{i % 50}",
            "key": f"k{i % 7}",
            "path": "/v1/chat" if i % 3 else "/v1/models",
            "status": 200,
            "label": "benign",
        }


def _jsonl(records: Iterator[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _replay_json(tmp_path: Path, *argv: str) -> tuple[int, dict[str, Any] | None]:
    out = tmp_path / "report.json"
    code = main(["replay", *argv, "--format", "json", "-o", str(out), "--no-progress"])
    return code, json.loads(out.read_text()) if out.exists() else None


# --- readers --------------------------------------------------------------------------


def test_zstd_trace_is_read_like_plain(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(_lines(300))))
    with read_trace(path) as reader:
        records = list(reader)
    assert len(records) == 300 and reader.stats.malformed == 0
    assert records[-1].info.ts == DAY_START.timestamp() + 299 * 0.5
    code, report = _replay_json(tmp_path, str(path))
    assert code == 0 and report is not None and report["trace"]["records"] == 300


def test_gzip_trace_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl(_lines(40))))
    with read_trace(path) as reader:
        assert len(list(reader)) == 40


def _warehouse_table(count: int) -> Any:
    """An access log as a warehouse keeps it: its own column names, a timestamp type."""
    rows = list(_lines(count))
    return pa.table(
        {
            "request_time": pa.array(
                [datetime.datetime.fromtimestamp(r["ts"], datetime.UTC) for r in rows],
                pa.timestamp("ms", tz="UTC"),
            ),
            "client_addr": [r["ip"] for r in rows],
            "api_key": [r["key"] for r in rows],
            "uri_path": [r["path"] for r in rows],
            "http_status": pa.array([r["status"] for r in rows], pa.int32()),
            "truth": [r["label"] for r in rows],
        }
    )


def test_parquet_with_a_mapping_file_in_toml(tmp_path: Path) -> None:
    pq.write_table(_warehouse_table(500), tmp_path / "log.parquet", row_group_size=128)
    mapping = tmp_path / "columns.toml"
    mapping.write_text(
        'time_format = "auto"\n[columns]\nts = "request_time"\nip = "client_addr"\n'
        'key = "api_key"\npath = "uri_path"\nstatus = "http_status"\nlabel = "truth"\n'
    )
    code, report = _replay_json(tmp_path, str(tmp_path / "log.parquet"), "--columns", str(mapping))
    assert code == 0 and report is not None
    assert report["trace"]["records"] == 500 and report["trace"]["malformed"] == []
    assert report["trace"]["first_ts"] == DAY_START.timestamp()
    assert report["labels"]["benign"]["requests"] == 500


def test_parquet_with_column_flags_and_a_json_mapping(tmp_path: Path) -> None:
    pq.write_table(_warehouse_table(50), tmp_path / "log.parquet")
    mapping = tmp_path / "columns.json"
    mapping.write_text(json.dumps({"columns": {"ts": "request_time", "ip": "client_addr"}}))
    code, report = _replay_json(
        tmp_path,
        str(tmp_path / "log.parquet"),
        "--columns",
        str(mapping),
        "--column",
        "key=api_key",
        "--column",
        "path=uri_path",
    )
    assert code == 0 and report is not None and report["trace"]["records"] == 50
    assert set(report["actors"]) == {f"k{i}" for i in range(7)}


@pytest.mark.parametrize(
    ("fmt", "to_value"),
    [
        ("epoch_s", lambda ts: ts),
        ("epoch_ms", lambda ts: int(ts * 1000)),
        (
            "iso8601",
            lambda ts: (
                datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")
            ),
        ),
    ],
)
def test_time_formats(tmp_path: Path, fmt: str, to_value: Any) -> None:
    rows = [{"when": to_value(r["ts"]), "addr": r["ip"]} for r in _lines(20)]
    path = tmp_path / "log.jsonl"
    path.write_bytes(_jsonl(iter(rows)))
    code, report = _replay_json(
        tmp_path, str(path), "--column", "ts=when", "--column", "ip=addr", "--time-format", fmt
    )
    assert code == 0 and report is not None
    assert report["trace"]["records"] == 20
    assert report["trace"]["first_ts"] == pytest.approx(DAY_START.timestamp())
    assert report["trace"]["last_ts"] == pytest.approx(DAY_START.timestamp() + 19 * 0.5)


def test_iso_time_without_zone_is_utc_and_auto_detects_strings(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"ts": "2026-03-10T00:00:10", "ip": "192.0.2.1"}) + "\n")
    with read_trace(path, mapping=_mapping({})) as reader:
        (record,) = list(reader)
    assert record.info.ts == DAY_START.timestamp() + 10


def test_epoch_milliseconds_written_as_text() -> None:
    remap = _mapping({"ts": "t"}, "epoch_ms").remapper()
    assert remap({"t": "1773100800500", "ip": "a"})["ts"] == 1773100800.5
    assert remap({"t": "yesterday", "ip": "a"})["ts"] == "yesterday"
    assert remap({"t": None, "ip": "a"})["ts"] is None


def _mapping(columns: dict[str, str], time_format: str = "auto") -> Any:
    from abuseguard.trace_columns import ColumnMapping

    return ColumnMapping(columns, time_format)


def test_mapping_rejects_unknown_fields_and_formats(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(_jsonl(_lines(3)))
    assert main(["replay", str(path), "--column", "address=ip", "--no-progress"]) == 2
    assert "unknown trace field 'address'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('time_format = "fortnights"\n')
    assert main(["replay", str(path), "--columns", str(bad), "--no-progress"]) == 2
    assert "time_format" in capsys.readouterr().err


# --- malformed lines ------------------------------------------------------------------


def test_malformed_lines_are_reported_with_number_and_reason(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"ts": 1, "ip": "192.0.2.1"}\nnot json\n{"ts": 2}\n{"ts": 3, "ip": "192.0.2.1"}\n'
    )
    code, report = _replay_json(tmp_path, str(path))
    assert code == 0 and report is not None
    err = capsys.readouterr().err
    assert "line 2: bad_json" in err and "line 3: missing ts" not in err
    assert "line 3: missing ip" in err
    assert report["trace"]["malformed"] == [
        {"line": 2, "reason": "bad_json", "detail": report["trace"]["malformed"][0]["detail"]},
        {"line": 3, "reason": "missing", "detail": "ip"},
    ]


def test_a_run_whose_lines_are_all_malformed_exits_non_zero(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('nope\n{"ip": "192.0.2.1"}\n[1]\n')
    assert main(["replay", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no valid record" in err and "3 malformed" in err
    assert "line 1: bad_json" in err and "line 3: not_object" in err


def test_a_parquet_without_the_mapped_column_is_malformed_per_row(
    tmp_path: Path, capsys: Any
) -> None:
    pq.write_table(_warehouse_table(5), tmp_path / "log.parquet")
    assert main(["replay", str(tmp_path / "log.parquet"), "--no-progress"]) == 1
    assert "line 1: missing ts" in capsys.readouterr().err


# --- decision table -------------------------------------------------------------------


def test_decisions_are_written_as_a_parquet_table(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(_jsonl(_lines(700)))
    out = tmp_path / "decisions.parquet"
    code, report = _replay_json(tmp_path, str(path), "--decisions-out", str(out))
    assert code == 0 and report is not None
    table = pq.read_table(out)
    assert table.column_names == [
        "time",
        "identity_hash",
        "route",
        "action",
        "reasons",
        "score",
        "label",
    ]
    assert table.num_rows == 700
    assert str(table.schema.field("time").type) == "timestamp[us, tz=UTC]"
    rows = table.slice(0, 3).to_pylist()
    assert rows[0]["time"] == DAY_START
    assert [r["route"] for r in rows] == ["/v1/models", "/v1/chat", "/v1/chat"]
    assert {r["label"] for r in table.to_pylist()} == {"benign"}
    actions = table.column("action").to_pylist()
    assert set(actions) <= {"allow", "degrade", "throttle", "challenge", "block"}
    hashes = table.column("identity_hash").to_pylist()
    assert len(set(hashes)) > 1 and all(len(h) == 16 for h in hashes)
    assert len(actions) == report["requests"]


# --- schema ---------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    text = (
        importlib.resources.files("abuseguard")
        .joinpath("schemas/trace.schema.json")
        .read_text(encoding="utf-8")
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


def test_simulator_lines_validate_against_the_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(_schema())
    out = tmp_path / "sim.jsonl"
    assert main(["simulate", "-o", str(out), "--hours", "0.05", "--scale", "0.2", "-q"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) > 100
    for line in lines:
        validator.validate(json.loads(line))


SCHEMA_CASES: list[Any] = [
    {"ts": 1, "ip": "192.0.2.1"},
    {"ts": 1.5, "ip": "::1", "key": None, "label": "abusive", "anon": ["vpn", "tor"]},
    {"ts": 1, "ip": "a", "status": 599, "asn": 0, "anon_confidence": 100, "cost": 0},
    {"ts": 1, "ip": "a", "headers": {"X-A": "b"}, "duration": 0.25, "extra": [1]},
    {"ip": "a"},
    {"ts": 1},
    {"ts": "1", "ip": "a"},
    {"ts": True, "ip": "a"},
    {"ts": 1, "ip": ""},
    {"ts": 1, "ip": 5},
    {"ts": 1, "ip": "a", "label": "evil"},
    {"ts": 1, "ip": "a", "status": 99},
    {"ts": 1, "ip": "a", "status": 200.0, "asn": 16509.0},
    {"ts": 1, "ip": "a", "status": 200.5},
    {"ts": 1, "ip": "a", "asn": -1},
    {"ts": 1, "ip": "a", "anon_confidence": 101},
    {"ts": 1, "ip": "a", "anon": ["vpn", "moon"]},
    {"ts": 1, "ip": "a", "anon": "vpn"},
    {"ts": 1, "ip": "a", "cost": -1},
    {"ts": 1, "ip": "a", "duration": -0.1},
    {"ts": 1, "ip": "a", "headers": {"a": 1}},
    {"ts": 1, "ip": "a", "ua": 3},
    {"ts": 1, "ip": "a", "method": 1},
    [1, 2],
]


@pytest.mark.parametrize("obj", SCHEMA_CASES)
def test_schema_and_reader_agree(obj: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema_ok = jsonschema.Draft202012Validator(_schema()).is_valid(obj)
    try:
        parse_object(obj)
        reader_ok = True
    except TraceError:
        reader_ok = False
    assert schema_ok == reader_ok


# --- missing extras -------------------------------------------------------------------


def test_missing_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    pq.write_table(_warehouse_table(5), tmp_path / "log.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert main(["replay", str(tmp_path / "log.parquet"), "--no-progress"]) == 2
    assert "pip install 'abuseguard[parquet]'" in capsys.readouterr().err
    plain = tmp_path / "log.jsonl"
    plain.write_bytes(_jsonl(_lines(3)))
    out = str(tmp_path / "d.parquet")
    assert main(["replay", str(plain), "--decisions-out", out, "--no-progress"]) == 2
    assert "pip install 'abuseguard[parquet]'" in capsys.readouterr().err


def test_missing_zstandard_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    path = tmp_path / "trace.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(_lines(3))))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    assert main(["replay", str(path), "--no-progress"]) == 2
    assert "pip install 'abuseguard[parquet]'" in capsys.readouterr().err


# --- bounded memory -------------------------------------------------------------------


def _write_big_trace(path: Path, count: int) -> None:
    with gzip.open(path, "wb", compresslevel=1) as out:
        batch: list[bytes] = []
        for record in _lines(count):
            batch.append(json.dumps(record).encode())
            if len(batch) == 4096:
                out.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            out.write(b"\n".join(batch) + b"\n")


def _peak_replay_bytes(path: Path, decisions: Path) -> tuple[int, int]:
    from abuseguard.guard import Guard
    from abuseguard.parquet_io import DecisionWriter
    from abuseguard.policy import Policy
    from abuseguard.request import RequestInfo

    guard = Guard(policy=Policy(), explain=False)
    # Compile and touch what the first decision needs before measuring.
    guard.check(RequestInfo("192.0.2.1", DAY_START.timestamp() - 60.0))
    builder = ReportBuilder()
    tracemalloc.start()
    try:
        with read_trace(path) as reader, DecisionWriter(decisions, row_group_rows=4096) as writer:
            timing = run_replay(reader, guard, builder, on_decision=writer.add)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, timing.records


@pytest.mark.slow
def test_replay_streams_in_bounded_memory(tmp_path: Path) -> None:
    small, large = tmp_path / "small.jsonl.gz", tmp_path / "large.jsonl.gz"
    _write_big_trace(small, 10_000)
    _write_big_trace(large, 100_000)
    small_peak, small_count = _peak_replay_bytes(small, tmp_path / "s.parquet")
    large_peak, large_count = _peak_replay_bytes(large, tmp_path / "l.parquet")
    assert (small_count, large_count) == (10_000, 100_000)
    # Ten times the lines, the same working set: a reader or writer that kept lines would
    # grow by hundreds of bytes per line (tens of MB here).
    assert large_peak < small_peak * 1.3 + 1_000_000, (small_peak, large_peak)
    assert pq.read_metadata(tmp_path / "l.parquet").num_rows == 100_000


def test_parquet_reader_streams_by_row_group(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(_warehouse_table(2000), path, row_group_size=100)
    mapping = _mapping({"ts": "request_time", "ip": "client_addr"})
    with open_trace(path, mapping=mapping) as reader:
        seen = 0
        progress: list[float | None] = []
        for _ in reader:
            seen += 1
            if seen % 500 == 0:
                progress.append(reader.progress())
    assert seen == 2000
    assert progress[0] is not None and 0 < progress[0] < progress[-1] <= 1.0


def test_trace_reader_accepts_a_binary_stream_of_zstd() -> None:
    data = zstandard.ZstdCompressor().compress(_jsonl(_lines(10)))
    with TraceReader(io.BytesIO(data)) as reader:
        assert len(list(reader)) == 10


# --- the worked example of docs/replay.md ---------------------------------------------

REPLAY_DOC = Path(__file__).resolve().parent.parent / "docs" / "replay.md"


def _doc_blocks(language: str) -> list[str]:
    text = REPLAY_DOC.read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_warehouse_worked_example_runs_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    duckdb = pytest.importorskip("duckdb")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "warehouse" / "access_log").mkdir(parents=True)
    # Two days of a warehouse log in its own column names: steady users, and on the day
    # we replay one key that hammers the completions route.
    duckdb.sql(
        """
        COPY (
            SELECT TIMESTAMPTZ '2026-03-09 12:00:00+00' + i * INTERVAL '7 seconds'
                       AS request_time,
                   '198.51.100.' || (i % 40) AS client_addr,
                   'user-' || (i % 40) AS api_key,
                   'POST' AS http_method,
                   '/v1/chat/completions' AS uri_path,
                   200 AS http_status,
                   'python-httpx/0.27' AS user_agent
            FROM range(20000) t(i)
            UNION ALL
            SELECT TIMESTAMPTZ '2026-03-10 09:00:00+00' + i * INTERVAL '50 milliseconds',
                   '203.0.113.9', 'harvester', 'POST', '/v1/chat/completions', 200,
                   'python-requests/2.31'
            FROM range(3000) t(i)
        ) TO 'warehouse/access_log/part-0.parquet' (FORMAT parquet)
        """
    )
    (cut_day, report_sql), (columns_toml,), (command,) = (
        _doc_blocks("sql"),
        _doc_blocks("toml"),
        _doc_blocks("bash")[1:],
    )
    duckdb.sql(cut_day)
    (day_rows,) = duckdb.sql("SELECT count(*) FROM 'day.parquet'").fetchall()
    (tmp_path / "columns.toml").write_text(columns_toml.split("\n", 1)[1])
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "guard.py").write_text(
        "from abuseguard import Policy\nPOLICY = Policy()\n"
    )
    argv = shlex.split(command)
    assert argv[0] == "abuseguard"
    assert main([*argv[1:], "--no-progress"]) == 0
    assert "error" not in capsys.readouterr().err
    assert (tmp_path / "report.txt").read_text().strip()
    assert (tmp_path / "day.png").read_bytes()[:4] == b"\x89PNG"

    results = [duckdb.sql(query).fetchall() for query in report_sql.split(";") if _sql(query)]
    actions, hourly, reasons, refused_identities = results
    assert sum(count for _, count, _ in actions) == day_rows[0]
    assert sum(requests for _, _, requests in hourly) == day_rows[0]
    refused = sum(refused_in_hour for _, refused_in_hour, _ in hourly)
    assert refused > 0 and reasons and refused_identities
    top_hash, top_count, routes = refused_identities[0]
    assert len(top_hash) == 16 and routes == ["/v1/chat/completions"] and top_count <= refused


def _sql(query: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in query.splitlines())
