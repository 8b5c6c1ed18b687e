"""Read JSONL traces (the DESIGN.md trace format) into RequestInfo plus ground truth.

One JSON object per line; only ``ts`` and ``ip`` are required (the JSON Schema
``abuseguard/schemas/trace.schema.json`` states the same rules). The reader streams the
file (plain, gzip or zstd, detected by their magic bytes, or ``-`` for stdin) and never
holds more than one line in memory; a line is decoded by orjson, and one orjson rejects
goes through the standard decoder, which reads it or names the reason. Parquet files are
read one record batch at a time by :mod:`abuseguard.parquet_io`;
:func:`abuseguard.trace_inputs.open_trace` opens either.
A :class:`ColumnMapping` maps a user's own column names and time format onto the fields.

Bad input is never fatal:

* A malformed line (not UTF-8, not JSON, not an object, ``ts``/``ip`` missing, a field of
  the wrong type, a non-finite number, an unknown anonymizer kind or label) is counted
  with its line number and a reason, and skipped.
* Blank lines are skipped silently (they carry no record).
* Unknown fields are ignored, so traces may carry extra columns.
* Lines must be in time order. A record whose ``ts`` is earlier than the latest ``ts``
  seen so far is counted as out of order (with its line number) and still processed,
  with its time clamped to that latest ``ts``: the guard's virtual clock never runs
  backwards, and a slightly unsorted log (several writers, clock skew) still replays.

``cost`` is the request's actual cost, known only once the origin answered: it stays on
the record (``TraceRecord.cost``) and is not put into ``RequestInfo.cost`` (which is the
cost charged up front); replay decides how to feed it to the guard.

Beyond DESIGN.md the reader accepts ``duration`` (seconds the origin took to answer, a
finite number >= 0); replay uses it to release concurrency at ``ts + duration``. ``plan``
(a string) is the client's plan (`Policy.plans`): replay uses it instead of calling
``Policy.plan_func``. ``account`` is what the host app knows about the account (an object
with ``age_days``, ``verified``, ``plan``, ``org``, ``payment``, ``tags``; see
`abuseguard.account`), whose fields of the wrong type are dropped rather than rejecting
the line.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import json.encoder
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from abuseguard.account import AccountFacts
from abuseguard.request import ANONYMIZER_KINDS, RequestInfo
from abuseguard.trace_columns import ColumnMapping

LABELS: tuple[str, ...] = ("benign", "abusive")
MAX_RECORDED_LINES = 20

_ANON_KINDS = frozenset(ANONYMIZER_KINDS)
_LABELS = frozenset(LABELS)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC = b"PAR1"
PARQUET_EXTRA_HINT = "pip install 'abuseguard[parquet]'"


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def import_extra(module: str, purpose: str) -> Any:
    """Import ``module`` of the ``parquet`` extra, or raise MissingExtraError naming it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module.partition('.')[0]}: {PARQUET_EXTRA_HINT}"
        ) from None


# ---------------------------------------------------------------------------- writing

# How each trace field is written (the reader below accepts what these write). Strings are
# JSON-escaped, ``body`` keeps non-ASCII characters as they are (prompts are the bulk of a
# trace), times are written to the millisecond.
_json = json.dumps
_encode_text: Callable[[str], str] = json.encoder.encode_basestring


def _millis(value: float) -> str:
    return f"{value:.3f}"


def _anon_list(value: Iterable[str]) -> str:
    return _json(list(value))


def _header_object(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    return _json(dict(value), separators=(",", ":"))


def _account_object(value: AccountFacts | Mapping[str, Any]) -> str:
    facts = value if isinstance(value, AccountFacts) else AccountFacts.from_mapping(value)
    return _json(facts.as_mapping(), separators=(",", ":"), ensure_ascii=False)


TRACE_FIELD_WRITERS: dict[str, Callable[[Any], str]] = {
    "ts": _millis,
    "ip": _json,
    "asn": str,
    "as_org": _json,
    "country": _json,
    "anon": _anon_list,
    "anon_confidence": str,
    "key": _json,
    "method": _json,
    "path": _json,
    "ua": _json,
    "headers": _header_object,
    "body": _encode_text,
    "status": str,
    "cost": str,
    "duration": _millis,
    "actor": _json,
    "label": _json,
    "kind": _json,
    "account": _account_object,
    "plan": _json,
}


def trace_fields(**fields: Any) -> str:
    """The ``"name":value`` members of a trace line for `fields`, in the order given and
    comma-joined: a fragment a writer may cache (per address, per client) and join into
    lines with `trace_line`. Raises KeyError for a name that is not a trace field."""
    writers = TRACE_FIELD_WRITERS
    return ",".join(f'"{name}":{writers[name](value)}' for name, value in fields.items())


def trace_line(*fragments: str) -> str:
    """One trace line (without its newline) from `trace_fields` fragments; empty ones are
    skipped."""
    return "{" + ",".join(fragment for fragment in fragments if fragment) + "}"


class TraceError(ValueError):
    """One line could not be turned into a record; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class TraceRecord:
    """One request of a trace: what the guard sees, what the origin answered, the truth."""

    info: RequestInfo
    line_no: int
    status: int | None = None
    cost: float | None = None
    duration: float | None = None
    actor: str | None = None
    label: str | None = None
    kind: str | None = None


@dataclass(slots=True)
class TraceStats:
    """What the reader saw: good records, malformed and out-of-order lines."""

    lines: int = 0
    records: int = 0
    blank_lines: int = 0
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)
    malformed_reasons: Counter[str] = field(default_factory=Counter)
    # (line number, reason, detail) of the first malformed lines, for the user to fix them.
    malformed_examples: list[tuple[int, str, str]] = field(default_factory=list)
    out_of_order: int = 0
    out_of_order_lines: list[int] = field(default_factory=list)
    first_ts: float | None = None
    last_ts: float | None = None

    def count_malformed(self, line_no: int, reason: str, detail: str = "") -> None:
        self.malformed += 1
        self.malformed_reasons[reason] += 1
        if len(self.malformed_lines) < MAX_RECORDED_LINES:
            self.malformed_lines.append(line_no)
            self.malformed_examples.append((line_no, reason, detail))


def _reject_constant(name: str) -> Any:
    raise TraceError("non_finite", name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# The reader's fast decoder. It takes the bytes of a line and rejects all that the
# standard decoder above would (invalid UTF-8, NaN and Infinity, control characters in
# strings, extra data) and a little more (a lone surrogate escape, a number that
# overflows a double): a line it rejects goes through the standard path, which then
# accepts it or names the exact reason. Where both accept a line they give equal
# objects; an integer beyond 64 bits is a float here (every field reads it alike: the
# same float, or out of range).
_fast_decode = orjson.loads
_FastDecodeError = orjson.JSONDecodeError


_STR_FIELDS = ("key", "ua", "body", "as_org", "country", "actor", "kind", "plan")
_NONE = type(None)


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if type(value) is float:
        if not math.isfinite(value):
            raise TraceError("non_finite", name)
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise TraceError("non_finite", name) from None
    raise TraceError("bad_type", name)


def _int_in(value: Any, name: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    number: int
    if type(value) is int:
        number = value
    elif type(value) is float and value.is_integer():
        # JSON Schema's integers, and what a nullable integer column exports as (200.0).
        number = int(value)
    else:
        raise TraceError("bad_type", name)
    if not low <= number <= high:
        raise TraceError("out_of_range", name)
    return number


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise TraceError("bad_type", "headers")
    try:
        "".join(value.values())  # C-speed check that every value is a str
    except TypeError:
        raise TraceError("bad_type", "headers") from None
    names = "\n".join(value)
    if names == names.lower():
        return value
    return {name.lower(): text for name, text in value.items()}


def _anon(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if type(value) is not list:
        raise TraceError("bad_type", "anon")
    for kind in value:
        if kind not in _ANON_KINDS:
            raise TraceError("bad_value" if type(kind) is str else "bad_type", "anon")
    return tuple(value)


# A trace repeats each account's ``account`` object on every request: the facts of one
# object are made once (`AccountFacts` is frozen) and shared, bounded.
_account_facts: dict[tuple[tuple[Any, ...], tuple[type, ...]], AccountFacts] = {}
_MAX_ACCOUNT_FACTS = 65_536


def _account_facts_of(value: dict[str, Any]) -> AccountFacts:
    """``AccountFacts.from_mapping(value)``, made once per distinct object. The key holds
    each value's type beside it (``true`` and ``1`` are equal and read differently);
    ``tags`` lists are keyed as tuples, and an object nested deeper is not cached."""
    try:
        key = (tuple(value.items()), tuple(map(type, value.values())))
        facts = _account_facts.get(key)
    except TypeError:  # a list (tags) among the values
        try:
            key = (
                tuple((k, tuple(v) if type(v) is list else v) for k, v in value.items()),
                tuple(map(type, value.values())),
            )
            facts = _account_facts.get(key)
        except TypeError:
            return AccountFacts.from_mapping(value)
    if facts is None:
        if len(_account_facts) >= _MAX_ACCOUNT_FACTS:
            _account_facts.clear()
        facts = _account_facts[key] = AccountFacts.from_mapping(value)
    return facts


def parse_object(obj: Any, line_no: int = 0) -> TraceRecord:
    """Validate one decoded trace object; raise TraceError naming the first bad field."""
    if type(obj) is not dict:
        raise TraceError("not_object")
    get = obj.get
    ts = get("ts")
    if ts is None:
        raise TraceError("missing", "ts")
    ip = get("ip")
    if ip is None:
        raise TraceError("missing", "ip")
    if type(ts) is not float or not math.isfinite(ts):
        ts = _number(ts, "ts")
    if type(ip) is not str:
        raise TraceError("bad_type", "ip")
    if not ip:
        raise TraceError("bad_value", "ip")
    key = get("key")
    ua = get("ua")
    body = get("body")
    as_org = get("as_org")
    country = get("country")
    actor = get("actor")
    kind = get("kind")
    plan = get("plan")
    for value in (key, ua, body, as_org, country, actor, kind, plan):
        if value is not None and type(value) is not str:
            for name in _STR_FIELDS:
                if type(get(name)) not in (str, _NONE):
                    raise TraceError("bad_type", name)
    method = get("method") or "GET"
    if type(method) is not str:
        raise TraceError("bad_type", "method")
    path = get("path") or "/"
    if type(path) is not str:
        raise TraceError("bad_type", "path")
    label = get("label")
    if label is not None and label not in _LABELS:
        raise TraceError("bad_value" if type(label) is str else "bad_type", "label")
    cost = _number(get("cost"), "cost")
    if cost is not None and cost < 0:
        raise TraceError("out_of_range", "cost")
    duration = _number(get("duration"), "duration")
    if duration is not None and duration < 0:
        raise TraceError("out_of_range", "duration")
    asn = get("asn")
    if asn is not None:
        asn = _int_in(asn, "asn", 0, 0xFFFFFFFF)
    confidence = get("anon_confidence")
    if confidence is not None:
        confidence = _int_in(confidence, "anon_confidence", 0, 100)
    status = get("status")
    if status is not None:
        status = _int_in(status, "status", 100, 599)
    anon = get("anon")
    if anon is not None:
        anon = _anon(anon)
    info = RequestInfo(
        ip, ts, key, method, path, None, ua, _headers(get("headers")), body, None, asn,
        as_org, country, anon, confidence, plan,
    )  # fmt: skip
    account = get("account")
    if account is not None:
        if type(account) is not dict:
            raise TraceError("bad_type", "account")
        info.account = _account_facts_of(account)
    return TraceRecord(info, line_no, status, cost, duration, actor, label, kind)


def parse_line(line: str | bytes, line_no: int = 0) -> TraceRecord:
    """Decode and validate one trace line; raise TraceError on anything malformed."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise TraceError("not_utf8") from None
    try:
        obj = _DECODER.decode(line)
    except TraceError:
        raise
    except (ValueError, RecursionError) as exc:
        raise TraceError("bad_json", str(exc)[:80]) from None
    return parse_object(obj, line_no)


_SLOW = object()  # a line the fast decoder left to the standard one


class _LineStream(Protocol):
    """What a trace is read through: its lines as bytes, then closed."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class TraceReader:
    """Iterate the records of a trace file, counting what it has to skip.

    ``source`` is a path (``.jsonl``, gzip or zstd, detected by content), ``-`` for stdin,
    or a binary stream. ``mapping`` renames the user's columns and converts their times.
    ``stats`` fills in while iterating. ``progress()`` is the share of the input bytes
    consumed so far, or None when the size is unknown (stdin, pipes).
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        mapping: ColumnMapping | None = None,
    ) -> None:
        self.stats = TraceStats()
        self._remap = mapping.remapper() if mapping is not None else None
        self._raw: IO[bytes]
        self._owns = False
        if isinstance(source, (str, os.PathLike)):
            if str(source) == "-":
                self._raw = sys.stdin.buffer
            else:
                self._raw = open(source, "rb")  # noqa: SIM115 - closed by close()
                self._owns = True
        else:
            self._raw = source
        self._size = self._measure()
        self._stream: _LineStream = self._open_stream()

    def _measure(self) -> int | None:
        try:
            if not self._raw.seekable():
                return None
            here = self._raw.tell()
            size = self._raw.seek(0, io.SEEK_END)
            self._raw.seek(here)
            return size - here or None
        except (OSError, ValueError):
            return None

    def _open_stream(self) -> _LineStream:
        head = _peek(self._raw, 4)
        if head[:2] == _GZIP_MAGIC:
            return gzip.GzipFile(fileobj=self._raw, mode="rb")
        if head == _ZSTD_MAGIC:
            zstandard = import_extra("zstandard", "reading a .zst trace")
            decompressed = zstandard.ZstdDecompressor().stream_reader(self._raw, closefd=False)
            return io.BufferedReader(decompressed)
        return self._raw

    def progress(self) -> float | None:
        if self._size is None:
            return None
        try:
            return min(1.0, self._raw.tell() / self._size)
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._stream is not self._raw:
            self._stream.close()
        if self._owns:
            self._raw.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[TraceRecord]:
        stats = self.stats
        decode = _DECODER.decode
        fast_decode = _fast_decode
        fast_error = _FastDecodeError
        remap = self._remap
        latest = -math.inf
        line_no = 0
        try:
            for raw_line in self._stream:
                line_no += 1
                try:
                    obj = fast_decode(raw_line)
                except fast_error:
                    # Blank, malformed, or what only the standard decoder reads.
                    try:
                        text = raw_line.decode("utf-8")
                    except UnicodeDecodeError:
                        stats.count_malformed(line_no, "not_utf8")
                        continue
                    if not text or text.isspace():
                        stats.blank_lines += 1
                        continue
                    obj = _SLOW
                try:
                    if obj is _SLOW:
                        obj = decode(text)
                    if remap is not None and type(obj) is dict:
                        obj = remap(obj)
                    record = parse_object(obj, line_no)
                except TraceError as exc:
                    stats.count_malformed(line_no, exc.reason, exc.detail)
                    continue
                except (ValueError, RecursionError) as exc:
                    stats.count_malformed(line_no, "bad_json", str(exc)[:80])
                    continue
                latest = count_in_time_order(record, line_no, stats, latest)
                yield record
        except (OSError, EOFError):
            # A truncated gzip member or a read error ends the trace; the count says where.
            stats.count_malformed(line_no + 1, "truncated")
        finally:
            stats.lines = line_no
            if latest > -math.inf:
                stats.last_ts = latest


def _peek(raw: IO[bytes], size: int) -> bytes:
    peek = getattr(raw, "peek", None)
    if peek is not None:
        return bytes(peek(size)[:size])
    if raw.seekable():
        here = raw.tell()
        head = raw.read(size)
        raw.seek(here)
        return head
    return b""


def count_in_time_order(
    record: TraceRecord, line_no: int, stats: TraceStats, latest: float
) -> float:
    """Count a parsed record in ``stats`` and keep the trace in time order: a record earlier
    than the latest one seen is moved to it and counted as out of order. Every reader
    (JSONL here, Parquet in `parquet_io`) calls this; it returns the new latest time."""
    stats.records += 1
    ts = record.info.ts
    assert ts is not None
    if ts < latest:
        stats.out_of_order += 1
        if len(stats.out_of_order_lines) < MAX_RECORDED_LINES:
            stats.out_of_order_lines.append(line_no)
        record.info.ts = latest
        return latest
    if stats.first_ts is None:
        stats.first_ts = ts
    return ts


def read_trace(path: str | os.PathLike[str], mapping: ColumnMapping | None = None) -> TraceReader:
    """Open a JSONL trace (plain, gzip or zstd) for streaming; raises FileNotFoundError /
    IsADirectoryError early, MissingExtraError when zstd is not installed. Parquet files
    too: :func:`abuseguard.trace_inputs.open_trace`."""
    if str(path) != "-":
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"trace not found: {p}")
        if p.is_dir():
            raise IsADirectoryError(f"trace is a directory: {p}")
    return TraceReader(path, mapping)
