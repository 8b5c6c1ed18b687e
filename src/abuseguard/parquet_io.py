"""Parquet on both sides of replay: read a trace, write every decision (``[parquet]`` extra).

:class:`ParquetTraceReader` reads one record batch at a time (never the whole file), maps
the user's columns (a :class:`~abuseguard.trace_columns.ColumnMapping`) and validates each
row with the JSONL reader's rules; the "line number" of a row is its 1-based row number.
Timestamp columns are read as epoch seconds whatever their unit.

:class:`DecisionWriter` writes one row per decision (time, identity hash, route, action,
reasons, score, label) in row groups of ``ROW_GROUP`` rows, so its memory stays bounded
too. Read it with DuckDB (``SELECT * FROM 'decisions.parquet'``) or pandas.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from typing import Any

from abuseguard.decision import Decision
from abuseguard.trace_columns import ColumnMapping
from abuseguard.traces import (
    TraceError,
    TraceReader,
    TraceRecord,
    TraceStats,
    count_in_time_order,
    import_extra,
    parse_object,
)

READ_BATCH_ROWS = 8192
ROW_GROUP = 65536
DECISION_COLUMNS: tuple[str, ...] = (
    "time",
    "identity_hash",
    "route",
    "action",
    "reasons",
    "score",
    "label",
)


def _pyarrow_parquet(purpose: str) -> tuple[Any, Any]:
    pa = import_extra("pyarrow", purpose)
    pq = import_extra("pyarrow.parquet", purpose)
    return pa, pq


class ParquetTraceReader(TraceReader):
    """Iterate the rows of a Parquet access log as trace records, one batch at a time."""

    def __init__(self, path: str | os.PathLike[str], mapping: ColumnMapping | None = None) -> None:
        _, pq = _pyarrow_parquet("reading a Parquet trace")
        self.stats = TraceStats()
        self._to_trace = (mapping or ColumnMapping()).remapper()
        self._file = pq.ParquetFile(os.fspath(path))
        self._total_rows: int = self._file.metadata.num_rows
        self._rows_read = 0

    def progress(self) -> float | None:
        if not self._total_rows:
            return None
        return min(1.0, self._rows_read / self._total_rows)

    def close(self) -> None:
        self._file.close()

    def _rows(self) -> Iterator[dict[str, Any]]:
        for batch in self._file.iter_batches(batch_size=READ_BATCH_ROWS):
            for row in batch.to_pylist():
                self._rows_read += 1
                yield row

    def __iter__(self) -> Iterator[TraceRecord]:
        stats = self.stats
        remap = self._to_trace
        latest = -math.inf
        row_no = 0
        try:
            for row in self._rows():
                row_no += 1
                try:
                    record = parse_object(_plain_values(remap(row)), row_no)
                except TraceError as exc:
                    stats.count_malformed(row_no, exc.reason, exc.detail)
                    continue
                latest = count_in_time_order(record, row_no, stats, latest)
                yield record
        finally:
            stats.lines = row_no
            if latest > -math.inf:
                stats.last_ts = latest


def _plain_values(obj: dict[str, Any]) -> dict[str, Any]:
    """Arrow's Python values as the JSON reader would see them: a map column comes as a
    list of (key, value) pairs."""
    headers = obj.get("headers")
    if type(headers) is list and all(type(item) is tuple for item in headers):
        obj["headers"] = dict(headers)
    return obj


def identity_hash(identity: str) -> str:
    """A stable 16-hex-digit digest of a guard identity: joinable, not reversible."""
    return hashlib.blake2b(identity.encode("utf-8"), digest_size=8).hexdigest()


class DecisionWriter:
    """Write one Parquet row per replayed decision; ``add`` fits ``run_replay(on_decision=)``."""

    def __init__(self, path: str | os.PathLike[str], row_group_rows: int = ROW_GROUP) -> None:
        self.row_group_rows = row_group_rows
        self._pa, pq = _pyarrow_parquet("--decisions-out")
        pa = self._pa
        self.schema = pa.schema(
            [
                ("time", pa.timestamp("us", tz="UTC")),
                ("identity_hash", pa.string()),
                ("route", pa.string()),
                ("action", pa.string()),
                ("reasons", pa.list_(pa.string())),
                ("score", pa.float32()),
                ("label", pa.string()),
            ]
        )
        self._writer = pq.ParquetWriter(os.fspath(path), self.schema)
        self._columns: dict[str, list[Any]] = {name: [] for name in DECISION_COLUMNS}
        self._hashes: dict[str, str] = {}
        self.rows = 0

    def add(self, record: TraceRecord, decision: Decision) -> None:
        info = record.info
        identity = decision.identity or info.key or info.ip
        digest = self._hashes.get(identity)
        if digest is None:
            if len(self._hashes) >= self.row_group_rows:
                self._hashes.clear()  # a cache, bounded like everything else here
            digest = self._hashes[identity] = identity_hash(identity)
        columns = self._columns
        ts = info.ts or 0.0
        columns["time"].append(round(ts * 1_000_000))
        columns["identity_hash"].append(digest)
        columns["route"].append(info.path)
        columns["action"].append(str(decision.action))
        columns["reasons"].append(list(decision.reasons))
        columns["score"].append(decision.score)
        columns["label"].append(record.label)
        self.rows += 1
        if len(columns["time"]) >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        columns = self._columns
        if not columns["time"]:
            return
        table = self._pa.Table.from_pydict(columns, schema=self.schema)
        self._writer.write_table(table)
        for values in columns.values():
            values.clear()

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __enter__(self) -> DecisionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
