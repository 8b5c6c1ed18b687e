"""The trace reader's fast path (orjson, shared account facts) reads what the standard
decoder reads: same records, same malformed-line reasons."""

from __future__ import annotations

import io
from typing import Any

from abuseguard.account import AccountFacts
from abuseguard.traces import TraceReader


def _read(text: bytes) -> tuple[list[Any], TraceReader]:
    reader = TraceReader(io.BytesIO(text))
    return list(reader), reader


def test_records_of_one_account_object_share_its_facts() -> None:
    line = b'{"ts": 1, "ip": "192.0.2.1", "account": {"age_days": 3, "tags": ["a", "b"]}}\n'
    other = b'{"ts": 2, "ip": "192.0.2.2", "account": {"age_days": 4}}\n'
    records, _ = _read(line + line + other + other)
    facts = [record.info.account for record in records]
    assert facts[0] is facts[1] and facts[2] is facts[3]
    assert facts[0] == AccountFacts(age_days=3.0, tags=frozenset({"a", "b"}))
    assert facts[2] == AccountFacts(age_days=4.0)


def test_equal_values_of_other_types_are_read_by_their_own_type() -> None:
    lines = (
        b'{"ts": 1, "ip": "a", "account": {"verified": true, "age_days": 1}}\n'
        b'{"ts": 1, "ip": "a", "account": {"verified": 1, "age_days": true}}\n'
        b'{"ts": 1, "ip": "a", "account": {"tags": [[1]], "plan": "p"}}\n'
    )
    records, _ = _read(lines)
    facts = [record.info.account for record in records]
    assert facts[0] == AccountFacts(age_days=1.0, verified=True)
    assert facts[1] == AccountFacts()
    assert facts[2] == AccountFacts(plan="p")


def test_lines_only_the_standard_decoder_reads_keep_their_reading() -> None:
    lines = (
        b'{"ts": 1, "ip": "a", "ua": "\\ud800"}\n'  # lone surrogate escape: accepted
        b'{"ts": 1e400, "ip": "a"}\n'  # overflows a double: non_finite
        b'{"ts": NaN, "ip": "a"}\n'
        b'{"ts": 2, "ip": "a", "asn": 18446744073709551616}\n'  # beyond 64 bits
        b"\xff\n"
        b"   \n"
        b'{"ts": 3, "ip": "a"} x\n'
        b'{"ts": 4, "ip": "a", "status": 200}\n'
    )
    records, reader = _read(lines)
    assert [r.info.ts for r in records] == [1.0, 4.0]
    assert records[0].info.ua == "\ud800"
    stats = reader.stats
    assert stats.blank_lines == 1
    assert stats.malformed_examples == [
        (2, "non_finite", "ts"),
        (3, "non_finite", "NaN"),
        (4, "out_of_range", "asn"),
        (5, "not_utf8", ""),
        (7, "bad_json", "Extra data: line 1 column 22 (char 21)"),
    ]
