"""`abuseguard replay TRACE`: run a trace through the guard and print the detection report."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from abuseguard.progress import ProgressLine
from abuseguard.replay import COST_MODES, run_replay
from abuseguard.report import ReportBuilder, plot_report, render_table
from abuseguard.trace_columns import TIME_FORMATS, MappingError, load_mapping
from abuseguard.trace_inputs import open_trace
from abuseguard.traces import MissingExtraError, TraceReader, TraceRecord, TraceStats

# Exit status of a run that read no valid record although its input had lines.
EXIT_NO_VALID_RECORD = 1


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a trace or access log through the guard and report what it decided",
        description=(
            "Run every request of TRACE (JSONL, plain, gzip or zstd; Parquet; '-' for stdin) "
            "through the guard in virtual time and report, per label, kind and actor, what "
            "was allowed, limited and mitigated. Logs with their own column names are mapped "
            "with --columns or --column."
        ),
    )
    parser.add_argument(
        "trace",
        help="trace file (.jsonl, .jsonl.gz, .jsonl.zst or .parquet, detected by content), "
        "or - for stdin (JSONL)",
    )
    parser.add_argument(
        "--columns",
        metavar="MAPPING",
        help="a JSON or TOML file mapping trace fields to your log's columns: "
        "{'columns': {'ts': 'request_time', 'ip': 'client_addr', ...}, 'time_format': ...}",
    )
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="read trace field FIELD (ts, ip, key, path, ...) from COLUMN (repeatable; "
        "wins over --columns)",
    )
    parser.add_argument(
        "--time-format",
        choices=TIME_FORMATS,
        help="how the time column is written (default auto: numbers are epoch seconds, "
        "strings ISO 8601, Parquet timestamps their own unit)",
    )
    parser.add_argument(
        "--decisions-out",
        metavar="OUT.parquet",
        help="also write every decision as a Parquet table (time, identity_hash, route, "
        "action, reasons, score, label) for DuckDB or pandas",
    )
    parser.add_argument(
        "--policy",
        metavar="MODULE:ATTR",
        help="a Policy object, or a zero-argument callable returning one "
        "(MODULE may be a dotted module or a path to a .py file); default: Policy()",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--plot", metavar="OUT.png", help="write score and leakage plots")
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="replay N records")
    parser.add_argument(
        "--top", type=_positive_int, default=15, metavar="N", help="actors per table (15)"
    )
    parser.add_argument(
        "--mmdb-dir",
        metavar="DIR",
        help="MaxMind databases (*.mmdb, kinds detected from their metadata) for records "
        "without enrichment fields, e.g. those of 'abuseguard simulate --mmdb-dir'; "
        "flags are aged as of the trace's first day",
    )
    parser.add_argument(
        "--cost",
        choices=COST_MODES,
        default="auto",
        help="how the trace's actual cost reaches the guard: after the response (as the "
        "middleware reports a cost header), up front, or not at all; auto: 'after' when the "
        "policy's bucket has a cost_header, else 'ignore'",
    )
    parser.add_argument(
        "--no-lane",
        action="store_true",
        help="do not run the background lane (operations linking, template coverage); by "
        "default it runs in the trace's time, flushed every --lane-interval seconds",
    )
    parser.add_argument(
        "--lane-interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="the lane's interval in trace time (1)",
    )
    parser.add_argument(
        "--content-baseline",
        action="store_true",
        help="let the lane learn which prompt templates and elicitation phrases established "
        "accounts commonly use and discount their shared_template and elicitation signals "
        "(BackgroundLane(popularity=...); off by default)",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar even on a terminal"
    )
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0: {text}")
    return value


class LaneRun:
    """The background lane of a replay, and who each linked account is in the trace."""

    def __init__(self, guard: Any, interval: float, content_baseline: bool = False) -> None:
        from abuseguard.lane import BackgroundLane
        from abuseguard.operations.popularity import PopularityConfig

        popularity = PopularityConfig() if content_baseline else None
        self.lane = BackgroundLane(guard, interval=interval, popularity=popularity)
        guard.observers.append(self.lane)
        self.actors: dict[str, tuple[str, str]] = {}

    def note(self, record: TraceRecord, decision: Any) -> None:
        identity = decision.identity
        if identity not in self.actors and identity.startswith("k:"):
            info = record.info
            self.actors[identity] = (
                record.actor or info.key or info.ip,
                record.label or "unknown",
            )

    def report(self, timing: Any) -> dict[str, Any]:
        clusters: list[dict[str, Any]] = []
        linker = self.lane.operations
        found = linker.clusters.values() if linker is not None else ()
        for cluster in sorted(found, key=lambda c: (-len(c.members), c.id)):
            summary = cluster.summary()
            named = [self.actors.get(m, (m, "unknown")) for m in cluster.members]
            labels: dict[str, int] = {}
            for _, label in named:
                labels[label] = labels.get(label, 0) + 1
            summary["labels"] = dict(sorted(labels.items()))
            summary["members_sample"] = sorted(actor for actor, _ in named)[:8]
            clusters.append(summary)
        return {
            "lane_seconds": round(timing.lane_seconds, 3),
            "flushes": timing.lane_flushes,
            "interval": self.lane.interval,
            "priors_written": self.lane.priors_written,
            "accounts_held": self.lane.accounts_held,
            "dropped_records": self.lane.dropped,
            "clusters": clusters,
            "baseline": self.lane.baseline_report(),
            "profile": self._profile_report(),
        }

    def _profile_report(self) -> dict[str, Any]:
        """The accounts the harvest profile judged, by label: ever (their score reached the
        threshold) and still at the end, with a sample of the latter's evidence (benign
        ones first)."""
        profile = self.lane.profile
        if profile is None:
            return {}
        threshold = profile.config.threshold
        judged: dict[str, int] = {}
        standing: dict[str, int] = {}
        sample: list[tuple[bool, str, str, dict[str, float]]] = []
        for identity, account in profile.accounts.items():
            if account.peak < threshold:
                continue
            actor, label = self.actors.get(identity, (identity, "unknown"))
            judged[label] = judged.get(label, 0) + 1
            if account.judged:
                standing[label] = standing.get(label, 0) + 1
                sample.append((label != "benign", actor, label, account.evidence()))
        sample.sort()
        return {
            "judged_total": profile.judged_total,
            "judged": dict(sorted(judged.items())),
            "standing": dict(sorted(standing.items())),
            "sample": [
                {"actor": actor, "label": label, **evidence}
                for _, actor, label, evidence in sample[:8]
            ],
        }


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CommandError as exc:
        print(f"abuseguard replay: error: {exc}", file=sys.stderr)
        return 2


def load_policy(spec: str | None) -> Any:
    """Resolve ``--policy``: a Policy, or a zero-argument callable returning one."""
    try:
        from abuseguard.policy import Policy
    except ImportError as exc:
        raise CommandError(f"the guard core is not available: {exc}") from None
    if spec is None:
        return Policy()
    module_name, sep, attr_path = spec.rpartition(":")
    if not sep or not module_name or not attr_path:
        raise CommandError(f"--policy must look like module:attribute, got {spec!r}")
    module = _import_policy_module(module_name)
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CommandError(
                f"--policy {spec}: {module_name} has no attribute {attr_path!r}"
            ) from None
    if not isinstance(target, Policy) and callable(target):
        try:
            target = target()
        except Exception as exc:
            raise CommandError(
                f"--policy {spec}: calling it failed: {type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(target, Policy):
        raise CommandError(
            f"--policy {spec}: expected a Policy or a callable returning one, "
            f"got {type(target).__name__}"
        )
    return target


def _import_policy_module(name: str) -> Any:
    try:
        if name.endswith(".py") or os.sep in name or "/" in name:
            path = Path(name)
            if not path.is_file():
                raise CommandError(f"--policy: no such file: {path}")
            spec = importlib.util.spec_from_file_location(f"_abuseguard_policy_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise CommandError(f"--policy: cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(name)
    except CommandError:
        raise
    except ModuleNotFoundError as exc:
        raise CommandError(f"--policy: cannot import {name!r}: {exc}") from None
    except Exception as exc:
        raise CommandError(
            f"--policy: importing {name!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def _make_guard(policy: Any, intel: Any = None) -> Any:
    try:
        from abuseguard.guard import Guard
    except ImportError as exc:
        raise CommandError(f"the guard core is not available: {exc}") from None
    try:
        # The report counts decisions; it never reads their contributions.
        return Guard(policy=policy, intel=intel, explain=False)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"cannot build the guard: {exc}") from None


def open_intel(directory: str, day: datetime.date) -> Any:
    """GeoIntel over every MaxMind database in ``directory``, aged as of ``day``."""
    import maxminddb

    from abuseguard.intel.geo import GeoIntel
    from abuseguard.intel.mmdb import kind_of_database_type

    folder = Path(directory)
    if not folder.is_dir():
        raise CommandError(f"--mmdb-dir: not a directory: {folder}")
    paths: dict[str, Path] = {}
    for path in sorted(folder.glob("*.mmdb")):
        try:
            with maxminddb.open_database(str(path)) as reader:
                database_type = reader.metadata().database_type
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise CommandError(f"--mmdb-dir: cannot read {path}: {exc}") from None
        kind = kind_of_database_type(database_type)
        if kind is None:
            continue
        if kind in paths:
            raise CommandError(f"--mmdb-dir: two {kind} databases: {paths[kind]} and {path}")
        paths[kind] = path
    if not paths:
        raise CommandError(f"--mmdb-dir: no MaxMind databases in {folder}")
    try:
        return GeoIntel.from_paths(paths, today=lambda: day)
    except ValueError as exc:
        raise CommandError(f"--mmdb-dir: {exc}") from None


class ProgressBar:
    """Replay's progress: a bar of the trace read and the rate, on a `ProgressLine`."""

    def __init__(self, reader: TraceReader, stream: IO[str], enabled: bool) -> None:
        self.reader = reader
        self.line = ProgressLine(stream, enabled, "replay")
        self.started = time.perf_counter()

    def __call__(self, count: int) -> None:
        if not self.line.enabled:
            return
        rate = count / max(time.perf_counter() - self.started, 1e-9)
        share = self.reader.progress()
        if share is None:
            bar = f"{count:,} records"
        else:
            filled = int(share * 30)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {share * 100:5.1f}%  {count:,} records"
        self.line.show(f"{bar}  {rate:,.0f}/s")

    def clear(self) -> None:
        self.line.clear()


def _decision_writer(path: str) -> Any:
    try:
        from abuseguard.parquet_io import DecisionWriter

        return DecisionWriter(path)
    except MissingExtraError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc}") from None


def _print_malformed(stats: TraceStats, stream: IO[str]) -> None:
    """Each of the first malformed lines with its number and reason, then the count."""
    for line, reason, detail in stats.malformed_examples:
        stream.write(f"abuseguard replay: line {line}: {reason} {detail}".rstrip() + "\n")
    hidden = stats.malformed - len(stats.malformed_examples)
    if hidden > 0:
        stream.write(f"abuseguard replay: ... and {hidden:,} more malformed line(s)\n")


def _run(args: argparse.Namespace) -> int:
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CommandError("--plot needs matplotlib: pip install 'abuseguard[plot]'")
    try:
        mapping = load_mapping(args.columns, args.column, args.time_format)
    except MappingError as exc:
        raise CommandError(str(exc)) from None
    try:
        reader = open_trace(args.trace, mapping)
    except (FileNotFoundError, IsADirectoryError, PermissionError, MissingExtraError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot read {args.trace}: {exc}") from None
    with reader, contextlib.ExitStack() as outputs:
        on_decision = None
        if args.decisions_out:
            on_decision = outputs.enter_context(_decision_writer(args.decisions_out)).add
        policy = load_policy(args.policy)
        records: Iterator[TraceRecord] = iter(reader)
        intel = None
        if args.mmdb_dir:
            head = next(records, None)
            start = head.info.ts if head is not None and head.info.ts else time.time()
            day = datetime.datetime.fromtimestamp(start, datetime.UTC).date()
            intel = open_intel(args.mmdb_dir, day)
            if head is not None:
                records = itertools.chain([head], records)
        guard = _make_guard(policy, intel)
        lane_run = (
            None if args.no_lane else LaneRun(guard, args.lane_interval, args.content_baseline)
        )
        if lane_run is not None:
            write = on_decision

            def on_decision(record: TraceRecord, decision: Any) -> None:
                lane_run.note(record, decision)
                if write is not None:
                    write(record, decision)

        builder = ReportBuilder()
        progress = ProgressBar(reader, sys.stderr, enabled=not args.no_progress)
        try:
            timing = run_replay(
                records,
                guard,
                builder,
                limit=args.limit,
                cost_mode=args.cost,
                on_progress=progress,
                on_decision=on_decision,
                lane=lane_run.lane if lane_run is not None else None,
            )
        finally:
            progress.clear()
    stats = reader.stats
    _print_malformed(stats, sys.stderr)
    if stats.records == 0 and stats.malformed:
        print(
            f"abuseguard replay: error: no valid record in {args.trace}: "
            f"{stats.malformed:,} malformed line(s)",
            file=sys.stderr,
        )
        return EXIT_NO_VALID_RECORD
    dps = timing.decisions_per_second
    rps = timing.records_per_second
    first, last = stats.first_ts, stats.last_ts
    report = builder.build(
        malformed_lines=stats.malformed,
        decisions_per_second=round(dps, 1) if dps is not None else None,
        records_per_second=round(rps, 1) if rps is not None else None,
        elapsed_seconds=round(timing.elapsed_seconds, 3),
        guard_seconds=round(timing.guard_seconds, 3),
        policy=args.policy or "default",
        cost_mode=timing.cost_mode,
        trace={
            "path": str(args.trace),
            "lines": stats.lines,
            "records": stats.records,
            "blank_lines": stats.blank_lines,
            "first_ts": first,
            "last_ts": last,
            "hours": round((last - first) / 3600.0, 4) if first is not None and last else None,
            "malformed_line_numbers": list(stats.malformed_lines),
            "malformed_reasons": dict(stats.malformed_reasons.most_common()),
            "malformed": [
                {"line": line, "reason": reason, "detail": detail}
                for line, reason, detail in stats.malformed_examples
            ],
            "out_of_order": stats.out_of_order,
            "out_of_order_line_numbers": list(stats.out_of_order_lines),
        },
        operations=lane_run.report(timing) if lane_run is not None else None,
    )
    text = (
        json.dumps(report, indent=1) + "\n"
        if args.format == "json"
        else render_table(report, top=args.top)
    )
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc}") from None
    else:
        sys.stdout.write(text)
    if args.plot:
        try:
            plot_report(report, args.plot, ladder=policy.enforcement.ladder)
        except ImportError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"cannot write {args.plot}: {exc}") from None
    return 0
