"""Open any trace replay reads: JSONL (plain, gzip, zstd, stdin) or Parquet, by content."""

from __future__ import annotations

import os
from pathlib import Path

from abuseguard.parquet_io import ParquetTraceReader
from abuseguard.trace_columns import ColumnMapping
from abuseguard.traces import PARQUET_MAGIC, TraceReader, read_trace


def open_trace(path: str | os.PathLike[str], mapping: ColumnMapping | None = None) -> TraceReader:
    """A reader for ``path`` (``-``: stdin, JSONL): Parquet when the file starts with its
    magic bytes, else JSONL. Raises FileNotFoundError / IsADirectoryError early and
    MissingExtraError when the format needs the ``parquet`` extra."""
    if str(path) != "-" and Path(path).is_file():
        with open(path, "rb") as probe:
            if probe.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC:
                return ParquetTraceReader(path, mapping)
    return read_trace(path, mapping)
