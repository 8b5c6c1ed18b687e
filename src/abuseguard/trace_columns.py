"""Map a user's own log columns onto the trace format (``abuseguard replay --columns``).

A mapping names, for each trace field, the column of the user's log that holds it, and
how the time column is written. It comes from a small JSON or TOML file::

    time_format = "iso8601"      # auto (default), epoch_s, epoch_ms, epoch_us, iso8601
    [columns]
    ts = "request_time"
    ip = "client_addr"
    key = "api_key"
    path = "uri_path"

or from ``--column FIELD=COLUMN`` flags (which win over the file). Trace fields without a
mapping are read from the column of their own name.
"""

from __future__ import annotations

import datetime
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACE_FIELDS: tuple[str, ...] = (
    "ts", "ip", "key", "method", "path", "ua", "headers", "body", "status", "cost",
    "duration", "asn", "as_org", "country", "anon", "anon_confidence", "actor", "label", "kind",
    "plan",
)  # fmt: skip
TIME_FORMATS: tuple[str, ...] = ("auto", "epoch_s", "epoch_ms", "epoch_us", "iso8601")
_EPOCH_DIVISOR = {"epoch_s": 1.0, "epoch_ms": 1e3, "epoch_us": 1e6}


class MappingError(ValueError):
    """A mapping file or flag that cannot be used; the message is meant for the user."""


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """``columns``: trace field -> the user's column; ``time_format``: how ``ts`` is written."""

    columns: Mapping[str, str] = field(default_factory=dict)
    time_format: str = "auto"

    def __post_init__(self) -> None:
        unknown = [name for name in self.columns if name not in TRACE_FIELDS]
        if unknown:
            raise MappingError(
                f"unknown trace field {unknown[0]!r} (fields: {', '.join(TRACE_FIELDS)})"
            )
        for name, column in self.columns.items():
            if not isinstance(column, str) or not column:
                raise MappingError(f"column for {name!r} must be a non-empty string")
        if self.time_format not in TIME_FORMATS:
            raise MappingError(
                f"time_format must be one of {', '.join(TIME_FORMATS)}, got {self.time_format!r}"
            )

    def remapper(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A function turning one row of the user's log into a trace object."""
        renames = [(name, column) for name, column in self.columns.items() if name != column]
        to_seconds = time_converter(self.time_format)

        def remap(row: dict[str, Any]) -> dict[str, Any]:
            obj = dict(row)
            for name, column in renames:
                obj[name] = row.get(column)
            ts = obj.get("ts")
            if ts is not None:
                obj["ts"] = to_seconds(ts)
            return obj

        return remap


def time_converter(time_format: str) -> Callable[[Any], Any]:
    """A function from a time value to epoch seconds; values it cannot read are returned
    unchanged, so the trace reader reports them as a bad ``ts``."""
    divisor = _EPOCH_DIVISOR.get(time_format)

    def convert(value: Any) -> Any:
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            return value.timestamp()
        if type(value) in (int, float):
            if time_format == "iso8601":
                return value
            return value / divisor if divisor is not None and divisor != 1.0 else value
        if isinstance(value, str):
            if divisor is not None:
                # Text exports (CSV turned JSON) write epoch numbers as strings.
                try:
                    return float(value) / divisor
                except ValueError:
                    return value
            return _iso_seconds(value, allow_number=time_format == "auto")
        return value

    return convert


def _iso_seconds(text: str, *, allow_number: bool) -> Any:
    if allow_number:
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return number if math.isfinite(number) else text
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def load_mapping(
    path: str | Path | None = None,
    flags: list[str] | tuple[str, ...] = (),
    time_format: str | None = None,
) -> ColumnMapping | None:
    """The mapping of a JSON/TOML file, overridden by ``FIELD=COLUMN`` flags and a time
    format; None when nothing was given."""
    if path is None and not flags and time_format is None:
        return None
    columns: dict[str, str] = {}
    file_time_format = "auto"
    if path is not None:
        data = _read_mapping_file(Path(path))
        raw_columns = data.get("columns", {})
        if not isinstance(raw_columns, dict):
            raise MappingError(f"{path}: 'columns' must be a table of field = column")
        columns.update(raw_columns)
        file_time_format = data.get("time_format", "auto")
        unknown_keys = set(data) - {"columns", "time_format"}
        if unknown_keys:
            raise MappingError(f"{path}: unknown key(s) {', '.join(sorted(unknown_keys))}")
    for flag in flags:
        name, sep, column = flag.partition("=")
        if not sep:
            raise MappingError(f"--column must look like FIELD=COLUMN, got {flag!r}")
        columns[name.strip()] = column.strip()
    return ColumnMapping(columns, time_format or file_time_format)


def _read_mapping_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"cannot read the column mapping {path}: {exc}") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise MappingError(f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise MappingError(f"{path}: expected an object with 'columns' and 'time_format'")
    return data
