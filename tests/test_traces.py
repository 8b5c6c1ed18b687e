"""Trace reading: field mapping, every malformed-line kind, order, gzip, streams."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.traces import (
    MAX_RECORDED_LINES,
    TraceError,
    TraceReader,
    parse_line,
    parse_object,
    read_trace,
)


def _read(lines: list[bytes]) -> tuple[list[Any], TraceReader]:
    reader = TraceReader(io.BytesIO(b"\n".join(lines) + b"\n"))
    records = list(reader)
    return records, reader


def test_minimal_line_gets_defaults() -> None:
    record = parse_line('{"ts": 5, "ip": "192.0.2.1"}', 7)
    info = record.info
    assert (info.ts, info.ip, info.method, info.path) == (5.0, "192.0.2.1", "GET", "/")
    assert type(info.ts) is float
    assert info.key is None and info.ua is None and info.body is None
    assert info.headers == {}
    assert info.cost is None
    assert record.line_no == 7
    assert (record.status, record.cost, record.duration) == (None, None, None)
    assert (record.actor, record.label, record.kind) == (None, None, None)


def test_full_line_maps_every_field() -> None:
    line = {
        "ts": 1.5,
        "ip": "2001:db8::1",
        "key": "sk-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "ua": "OpenAI/Python 1.61.1",
        "headers": {"x-stainless-lang": "python"},
        "body": '{"messages": []}',
        "status": 200,
        "cost": 1234,
        "duration": 2.5,
        "asn": 16509,
        "as_org": "Amazon.com, Inc.",
        "country": "US",
        "anon": ["hosting", "vpn"],
        "anon_confidence": 80,
        "actor": "app1",
        "label": "benign",
        "kind": "sdk_backend",
        "extra_field": {"ignored": True},
    }
    record = parse_line(json.dumps(line))
    info = record.info
    assert info.key == "sk-1" and info.method == "POST" and info.path == "/v1/chat/completions"
    assert info.ua == "OpenAI/Python 1.61.1"
    assert info.headers == {"x-stainless-lang": "python"}
    assert info.body == '{"messages": []}'
    assert (info.asn, info.as_org, info.country) == (16509, "Amazon.com, Inc.", "US")
    assert info.anon == ("hosting", "vpn")
    assert info.anon_confidence == 80
    # the actual cost is known only after the response: it stays on the record
    assert info.cost is None and record.cost == 1234.0
    assert (record.status, record.duration) == (200, 2.5)
    assert (record.actor, record.label, record.kind) == ("app1", "benign", "sdk_backend")


def test_header_names_are_lowercased() -> None:
    record = parse_line('{"ts": 1, "ip": "a", "headers": {"X-Stainless-Lang": "python"}}')
    assert record.info.headers == {"x-stainless-lang": "python"}


def test_empty_method_and_path_fall_back_to_defaults() -> None:
    record = parse_line('{"ts": 1, "ip": "a", "method": "", "path": ""}')
    assert (record.info.method, record.info.path) == ("GET", "/")


MALFORMED: list[tuple[bytes, str]] = [
    (b"{not json", "bad_json"),
    (b'{"ts": 1, "ip": "a"} trailing', "bad_json"),
    (b"[1, 2]", "not_object"),
    (b"42", "not_object"),
    (b'"text"', "not_object"),
    (b"null", "not_object"),
    (b'{"ip": "a"}', "missing"),
    (b'{"ts": 1}', "missing"),
    (b'{"ts": null, "ip": "a"}', "missing"),
    (b'{"ts": "1", "ip": "a"}', "bad_type"),
    (b'{"ts": true, "ip": "a"}', "bad_type"),
    (b'{"ts": NaN, "ip": "a"}', "non_finite"),
    (b'{"ts": Infinity, "ip": "a"}', "non_finite"),
    (b'{"ts": -Infinity, "ip": "a"}', "non_finite"),
    (b'{"ts": 1e999, "ip": "a"}', "non_finite"),
    (b'{"ts": 1%s, "ip": "a"}' % (b"0" * 400), "non_finite"),
    (b'{"ts": 1, "ip": "a", "cost": 1%s}' % (b"0" * 400), "non_finite"),
    (b'{"ts": 1, "ip": 17}', "bad_type"),
    (b'{"ts": 1, "ip": ""}', "bad_value"),
    (b'{"ts": 1, "ip": "a", "key": 5}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "ua": ["x"]}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "body": {"a": 1}}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "method": 1}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "path": ["/"]}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "headers": "x: y"}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "headers": {"x": 1}}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "anon": "vpn"}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "anon": ["darknet"]}', "bad_value"),
    (b'{"ts": 1, "ip": "a", "anon": [1]}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "anon_confidence": 101}', "out_of_range"),
    (b'{"ts": 1, "ip": "a", "anon_confidence": 50.5}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "asn": -1}', "out_of_range"),
    (b'{"ts": 1, "ip": "a", "asn": "AS16509"}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "status": 99}', "out_of_range"),
    (b'{"ts": 1, "ip": "a", "status": "200"}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "cost": -1}', "out_of_range"),
    (b'{"ts": 1, "ip": "a", "cost": "1"}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "cost": NaN}', "non_finite"),
    (b'{"ts": 1, "ip": "a", "duration": -0.5}', "out_of_range"),
    (b'{"ts": 1, "ip": "a", "label": "evil"}', "bad_value"),
    (b'{"ts": 1, "ip": "a", "label": 1}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "actor": 3}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "kind": false}', "bad_type"),
    (b'{"ts": 1, "ip": "a", "country": 1}', "bad_type"),
    (b'{"ts": 1, "ip": "\xff\xfe"}', "not_utf8"),
]


@pytest.mark.parametrize(("line", "reason"), MALFORMED)
def test_each_malformed_kind_is_counted_with_its_line_number(line: bytes, reason: str) -> None:
    good = b'{"ts": 1, "ip": "192.0.2.1"}'
    records, reader = _read([good, line, good])
    assert [r.line_no for r in records] == [1, 3]
    stats = reader.stats
    assert stats.malformed == 1
    assert stats.malformed_lines == [2]
    assert dict(stats.malformed_reasons) == {reason: 1}
    assert stats.records == 2
    assert stats.lines == 3


@pytest.mark.parametrize(("line", "reason"), MALFORMED)
def test_parse_line_raises_trace_error(line: bytes, reason: str) -> None:
    with pytest.raises(TraceError) as caught:
        parse_line(line)
    assert caught.value.reason == reason


def test_blank_lines_are_skipped_without_counting() -> None:
    records, reader = _read([b"", b'{"ts": 1, "ip": "a"}', b"   ", b"\r"])
    assert len(records) == 1
    assert reader.stats.blank_lines == 3
    assert reader.stats.malformed == 0


def test_only_the_first_malformed_line_numbers_are_kept() -> None:
    lines = [b"nope"] * (MAX_RECORDED_LINES + 5)
    _, reader = _read(lines)
    assert reader.stats.malformed == MAX_RECORDED_LINES + 5
    assert reader.stats.malformed_lines == list(range(1, MAX_RECORDED_LINES + 1))


def test_out_of_order_records_are_counted_and_clamped() -> None:
    lines = [
        b'{"ts": 10, "ip": "a"}',
        b'{"ts": 12, "ip": "a"}',
        b'{"ts": 11, "ip": "a"}',
        b'{"ts": 12, "ip": "a"}',
        b'{"ts": 13, "ip": "a"}',
    ]
    records, reader = _read(lines)
    assert [r.info.ts for r in records] == [10.0, 12.0, 12.0, 12.0, 13.0]
    assert reader.stats.out_of_order == 1
    assert reader.stats.out_of_order_lines == [3]
    assert (reader.stats.first_ts, reader.stats.last_ts) == (10.0, 13.0)


def test_gzip_input_is_detected_by_content(tmp_path: Path) -> None:
    path = tmp_path / "trace.data"
    with gzip.open(path, "wb") as f:
        f.write(b'{"ts": 1, "ip": "a"}\n{"ts": 2, "ip": "b"}\n')
    with read_trace(path) as reader:
        assert [r.info.ip for r in reader] == ["a", "b"]
        assert reader.progress() == 1.0


def test_truncated_gzip_ends_the_trace_and_is_counted(tmp_path: Path) -> None:
    payload = gzip.compress(b"".join(b'{"ts": %d, "ip": "a"}\n' % i for i in range(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(payload[: len(payload) // 2])
    with read_trace(path) as reader:
        records = list(reader)
    assert 0 < len(records) < 2000
    assert reader.stats.malformed_reasons["truncated"] == 1


def test_plain_file_progress_reaches_one(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"ts": 1, "ip": "a"}\n' * 10)
    with read_trace(path) as reader:
        assert reader.progress() == 0.0
        assert len(list(reader)) == 10
        assert reader.progress() == 1.0


def test_missing_file_and_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "absent.jsonl")
    with pytest.raises(IsADirectoryError):
        read_trace(tmp_path)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_trace_like = st.fixed_dictionaries(
    {},
    optional={
        name: _json_values
        for name in (
            "ts",
            "ip",
            "key",
            "method",
            "path",
            "ua",
            "headers",
            "body",
            "status",
            "cost",
            "duration",
            "asn",
            "as_org",
            "country",
            "anon",
            "anon_confidence",
            "actor",
            "label",
            "kind",
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(_trace_like)
def test_any_object_parses_or_raises_trace_error(obj: dict[str, Any]) -> None:
    try:
        record = parse_object(obj)
    except TraceError as exc:
        assert exc.reason
        return
    assert isinstance(record.info.ts, float)
    assert isinstance(record.info.ip, str) and record.info.ip


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_trace_error(data: bytes) -> None:
    with contextlib.suppress(TraceError):
        parse_line(data)
