"""`abuseguard simulate`: write a synthetic trace with ground truth."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from typing import IO, Any, cast

from abuseguard.progress import ProgressLine, TraceWriteProgress
from abuseguard.sim.scenarios import MIXES, SCENARIOS, parse_override
from abuseguard.sim.writer import DEFAULT_START, open_output, simulate


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="write a synthetic traffic trace (JSONL with ground truth)",
        description=(
            "Simulate benign and abusive clients over a synthetic network world and write "
            "one JSON request per line, in time order, with ground truth (actor, label, "
            "kind). The same seed and options give byte-identical output."
        ),
        epilog=_scenario_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", default="-", help="output file (.gz: gzip); - stdout")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--mix", default="default", choices=sorted(MIXES), help="named mix")
    parser.add_argument("--hours", type=_positive_float, default=6.0, help="trace length (6)")
    parser.add_argument(
        "--scale", type=_positive_float, default=1.0, help="multiply actor counts (1.0)"
    )
    parser.add_argument(
        "--only",
        metavar="SCENARIO[,SCENARIO]",
        default="",
        help="only these scenarios of the mix",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SCENARIO.PARAM=VALUE",
        help="override a scenario parameter (repeatable); adds the scenario if not in the mix",
    )
    parser.add_argument(
        "--start",
        default=None,
        help="trace start, epoch seconds or ISO 8601 (default 2026-03-10T14:00:00Z)",
    )
    parser.add_argument(
        "--account-facts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write what the host app knows about each account (age, verification, plan, "
        "payment fingerprint, tags) in an 'account' field (default: on for the capable mix)",
    )
    parser.add_argument(
        "--no-enrichment",
        action="store_true",
        help="leave out asn/as_org/country/anon fields (let the guard use --mmdb-dir files)",
    )
    parser.add_argument(
        "--mmdb-dir", metavar="DIR", help="also write the world as mmdb files into DIR"
    )
    parser.add_argument("--list", action="store_true", help="list scenarios and parameters")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar even on a terminal"
    )
    parser.set_defaults(func=run)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0: {text}")
    return value


def _scenario_help() -> str:
    lines = ["scenarios:"]
    for name, scenario in SCENARIOS.items():
        lines.append(f"  {name:<15} ({scenario.label}) {scenario.summary}")
    lines.append("mixes: " + ", ".join(sorted(MIXES)) + " (see --list for parameters)")
    return "\n".join(lines)


def _parse_start(text: str | None) -> float:
    if text is None:
        return DEFAULT_START
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--start: expected epoch seconds or ISO 8601, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _list() -> str:
    lines = []
    for name, scenario in SCENARIOS.items():
        lines.append(f"{name} ({scenario.label})")
        doc = (scenario.params.__doc__ or "").strip()
        lines.extend(f"    {line.strip()}" for line in doc.splitlines() if line.strip())
        for f in dataclasses.fields(scenario.params):
            lines.append(f"    --set {name}.{f.name}={getattr(scenario.params(), f.name)}")
        lines.append("")
    for mix, members in sorted(MIXES.items()):
        tuned = {k: v for k, v in members.items() if v}
        lines.append(
            f"mix {mix}: {', '.join(members)}" + (f"  overrides: {tuned}" if tuned else "")
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.list:
        sys.stdout.write(_list())
        return 0
    try:
        start = _parse_start(args.start)
        overrides: dict[str, dict[str, Any]] = {}
        for text in args.overrides:
            scenario, name, value = parse_override(text)
            overrides.setdefault(scenario, {})[name] = value
        only = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = [s for s in only if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"--only: unknown scenario(s) {', '.join(unknown)}")
        absent = [s for s in only if s not in MIXES[args.mix] and s not in overrides]
        if absent:
            raise ValueError(
                f"--only: not in mix {args.mix} (add it with --set): {', '.join(absent)}"
            )
    except ValueError as exc:
        print(f"abuseguard simulate: error: {exc}", file=sys.stderr)
        return 2
    if args.mmdb_dir:
        from abuseguard.sim.mmdb import MmdbUnavailable, _writer_module

        try:
            _writer_module()
        except MmdbUnavailable as exc:
            print(f"abuseguard simulate: error: {exc}", file=sys.stderr)
            return 2
    progress = ProgressLine(sys.stderr, enabled=not args.no_progress, label="simulate")
    try:
        with open_output(args.output) as out:
            tracked = TraceWriteProgress(out, progress, start, args.hours)
            summary = simulate(
                cast(IO[str], tracked),
                mix=args.mix,
                seed=args.seed,
                hours=args.hours,
                scale=args.scale,
                start=start,
                enrich=not args.no_enrichment,
                only=only,
                overrides=overrides,
                account_facts=args.account_facts,
            )
    except OSError as exc:
        print(f"abuseguard simulate: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.clear()
    if args.mmdb_dir and summary.world is not None:
        from abuseguard.sim.mmdb import write_mmdb

        try:
            paths = write_mmdb(summary.world, args.mmdb_dir)
        except OSError as exc:
            print(f"abuseguard simulate: error: {exc}", file=sys.stderr)
            return 2
        if not args.quiet:
            print(f"mmdb: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    if not args.quiet:
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.per_scenario.items()))
        print(
            f"simulated {summary.lines:,} requests in {summary.seconds:.2f} s "
            f"(mix {args.mix}, seed {args.seed}, {args.hours:g} h, scale {args.scale:g}): {parts}",
            file=sys.stderr,
        )
    return 0
