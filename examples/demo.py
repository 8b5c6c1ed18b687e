"""`make demo`: the story of abuseguard, told over real HTTP.

1. A burst from six hand-written clients against ``examples/llm_api.py`` under uvicorn:
   what the guard decided for every request and why (status, action, reasons, risk
   score, RateLimit header), then the Prometheus counters it exported.
2. An hour of simulated traffic, benign and abusive, played against the same API over
   HTTP in compressed time (``examples/demo_traffic.py`` explains how), scored against
   the simulator's ground truth: the detection report table, a plot, and the same trace
   replayed in virtual time for comparison.

The demo plays a reverse proxy on loopback: each client sends its address in
``X-Forwarded-For`` and the app trusts ``127.0.0.1/32`` as a proxy. The whole run stays
within ``DEMO_DEADLINE_SECONDS``; the traffic section plays in what is left.

Sections run in order from ``SECTIONS``; add one by appending ``(title, function)`` where
the function takes the :class:`Demo` (the burst's server is still up while sections run).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_traffic
from demo_traffic import REQUEST_ID_HEADER, DecisionRecorder, TrafficPlan
from llm_api import create_app, example_policy

from abuseguard import Concurrency, Decision, Policy
from abuseguard.metrics import PrometheusObserver
from abuseguard.report import plot_report, render_table
from abuseguard.testing import serve
from abuseguard.traces import TraceRecord

DEMO_DEADLINE_SECONDS = 55.0  # the whole demo, start-up included, stays under a minute
HTTP_DEADLINE_SECONDS = 15.0
# Kept free for what follows the traffic: the report, the virtual-time replay, the plot.
REPORT_RESERVE_SECONDS = 8.0
MIN_TRAFFIC_SECONDS = 4.0
PLAY_SLACK = 1.5
DEFAULT_PLOT = Path("out") / "demo.png"
SDK_UA = "OpenAI/Python 1.51.0"
SCRIPT_UA = "python-requests/2.32.3"
HEADLESS_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/126.0.0.0 Safari/537.36"
)


@dataclass
class Row:
    seq: int  # the order in which requests were sent
    client: str
    request_id: str
    status: int
    ratelimit: str
    retry_after: str
    decision: Decision | None = None


@dataclass
class Demo:
    base_url: str
    recorder: DecisionRecorder
    registry: CollectorRegistry
    plan: TrafficPlan = field(default_factory=TrafficPlan)
    plot: Path | None = DEFAULT_PLOT
    out: TextIO = sys.stdout
    rows: list[Row] = field(default_factory=list)
    sent: int = 0
    started: float = field(default_factory=time.monotonic)
    summary: str | None = None  # the closing line, set by the traffic section

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def seconds_left(self) -> float:
        return DEMO_DEADLINE_SECONDS - (time.monotonic() - self.started)


@dataclass(frozen=True)
class Client:
    name: str
    ip: str
    key: str | None
    ua: str
    story: str


async def call(
    demo: Demo,
    http: httpx.AsyncClient,
    client: Client,
    n: int,
    *,
    max_tokens: int = 64,
    path: str = "/v1/chat/completions",
    key: str | None = None,
) -> None:
    request_id = f"{client.name}-{n}"
    seq = demo.sent = demo.sent + 1
    headers = {"user-agent": client.ua, "x-forwarded-for": client.ip}
    headers[REQUEST_ID_HEADER] = request_id
    key = key or client.key
    if key:
        headers["authorization"] = f"Bearer {key}"
    if path.endswith("/models"):
        response = await http.get(path, headers=headers)
    else:
        body = {
            "model": "tiny",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"question number {n}, please"}],
        }
        response = await http.post(path, headers=headers, json=body)
    demo.rows.append(
        Row(
            seq,
            client.name,
            request_id,
            response.status_code,
            response.headers.get("ratelimit", "-"),
            response.headers.get("retry-after", "-"),
        )
    )


async def play(demo: Demo) -> None:
    alice = Client(
        "alice",
        "198.51.100.10",
        "sk-alice",
        SDK_UA,
        "an SDK user, one short completion every 0.2 s",
    )
    bob = Client(
        "bob",
        "198.51.100.11",
        "sk-bob",
        SDK_UA,
        "tiny completions back to back: charged 300 up front, refunded to real use",
    )
    harvester = Client(
        "harvester",
        "203.0.113.66",
        "sk-harvest",
        SCRIPT_UA,
        "a script pulling 256-token completions, ignoring Retry-After",
    )
    parallel = Client(
        "parallel",
        "203.0.113.77",
        "sk-par",
        SCRIPT_UA,
        "6 slow completions at once against a concurrency limit of 4",
    )
    anonymous = Client(
        "no-key",
        "192.0.2.200",
        None,
        SCRIPT_UA,
        "no API key: identified by IP; the app itself answers 401",
    )
    router = Client(
        "router",
        "203.0.113.99",
        None,
        HEADLESS_UA,
        "a reseller: 40 accounts behind one egress IP, headless browser",
    )
    demo.print("Clients:")
    for c in (alice, bob, harvester, parallel, anonymous, router):
        demo.print(f"  {c.name:<10} {c.ip:<15} {c.story}")
    demo.print()
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=demo.base_url, timeout=10, limits=limits) as http:
        for n in range(5):
            await call(demo, http, alice, n)
            await asyncio.sleep(0.2)
        for n in range(12):
            await call(demo, http, bob, n, max_tokens=8)
        for n in range(16):
            await call(demo, http, harvester, n, max_tokens=256)
        await asyncio.gather(*(call(demo, http, parallel, n, max_tokens=1000) for n in range(6)))
        for n in range(3):
            await call(demo, http, anonymous, n, path="/v1/models")
        for n in range(40):
            await call(demo, http, router, n, max_tokens=16, key=f"sk-router-{n}")


def burst_section(demo: Demo) -> None:
    policy = example_policy()
    bucket = policy.bucket
    assert bucket is not None and isinstance(bucket.cost, dict)
    assert isinstance(policy.concurrency, Concurrency)
    demo.print(
        f"Policy: bucket {bucket.name!r} of {bucket.capacity:g} model tokens per API key, "
        f"refilling {bucket.per_second * 60:g}/minute; a chat completion is charged "
        f"{bucket.cost['POST /v1/chat/completions']:g} up front and reconciled from the "
        f"{bucket.cost_header} response header; at most {policy.concurrency.limit} "
        "requests in flight per key."
    )
    asyncio.run(asyncio.wait_for(play(demo), HTTP_DEADLINE_SECONDS))
    demo.rows.sort(key=lambda row: row.seq)
    for row in demo.rows:
        row.decision = demo.recorder.by_request.get(row.request_id)
    header = (
        f"{'request':<14} {'status':>6}  {'action':<16} {'reasons':<18} {'score':>5}  "
        f"{'retry':>5}  RateLimit"
    )
    demo.print(header)
    demo.print("-" * len(header))
    for row in demo.rows:
        d = row.decision
        action = "-" if d is None else d.action.value + (" (shadow)" if d.shadow else "")
        reasons = "-" if d is None or not d.reasons else ",".join(d.reasons)
        score = "-" if d is None else f"{d.score:.2f}"
        demo.print(
            f"{row.request_id:<14} {row.status:>6}  {action:<16} {reasons:<18} "
            f"{score:>5}  {row.retry_after:>5}  {row.ratelimit}"
        )
    demo.print()
    demo.print("Per client:")
    by_client: dict[str, list[Row]] = {}
    for row in demo.rows:
        by_client.setdefault(row.client, []).append(row)
    for name, rows in by_client.items():
        statuses = Counter(r.status for r in rows)
        actions = Counter(r.decision.action.value for r in rows if r.decision is not None)
        top = max((r.decision.score for r in rows if r.decision is not None), default=0.0)
        demo.print(
            f"  {name:<10} {len(rows):>3} requests  status "
            f"{_counts(statuses):<16} actions {_counts(actions):<28} max score {top:.2f}"
        )


def metrics_section(demo: Demo) -> None:
    demo.print("Prometheus counters exported by the guard (abuseguard.metrics):")
    for metric in demo.registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                demo.print(f"  {sample.name}{{{labels}}} {sample.value:g}")


def traffic_section(demo: Demo) -> None:
    """An hour of simulated clients over real HTTP in compressed time, then the report."""
    plan = demo.plan
    budget = demo.seconds_left() - REPORT_RESERVE_SECONDS
    if budget < MIN_TRAFFIC_SECONDS + 2.0:
        demo.print("(skipped: not enough time left in the demo's budget)")
        return
    with tempfile.TemporaryDirectory(prefix="abuseguard-demo-") as tmp:
        trace, mmdb_dir = Path(tmp) / "trace.jsonl", Path(tmp) / "mmdb"
        try:
            command = demo_traffic.simulate(plan, trace, mmdb_dir, timeout=budget / 2)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            demo.print(f"(skipped: the simulator did not finish: {exc})")
            return
        records = demo_traffic.load_trace(trace)
        if not records:
            demo.print("(skipped: the simulator wrote no requests)")
            return
        databases = demo_traffic.database_paths(mmdb_dir)
        first_ts = demo_traffic.trace_time(records[0])
        span = max(1.0, demo_traffic.trace_time(records[-1]) - first_ts)
        # Play in plan.seconds, or faster when the budget is short; a slow machine may lag
        # behind the schedule by PLAY_SLACK before sending stops.
        left = demo.seconds_left() - REPORT_RESERVE_SECONDS
        seconds = max(MIN_TRAFFIC_SECONDS, min(plan.seconds, left / PLAY_SLACK))
        compression = span / seconds
        _explain(demo, command, records, databases, compression, seconds)
        policy = demo_traffic.demo_policy(databases, compression)
        played = demo_traffic.play_over_http(
            records,
            policy,
            compression,
            plan.connections,
            stop_at=time.monotonic() + seconds * PLAY_SLACK,
        )
        sent_span = demo_traffic.trace_time(records[max(0, played.sent - 1)]) - first_ts
        report = demo_traffic.build_report(
            records, played.decisions, trace={"hours": round(sent_span / 3600.0, 4)}
        )
        _print_played(demo, played, len(records))
        # render_table's first line speaks of a replay; the lines above tell this run.
        _, _, table = render_table(report, top=plan.top).partition("\n")
        demo.print(table.rstrip())
        demo.print()
        _compare_with_replay(demo, trace, policy)
    _plot(demo, report)
    demo.summary = f"over real HTTP, {demo_traffic.detection_line(report)}"


def _print_played(demo: Demo, played: demo_traffic.Played, total: int) -> None:
    demo.print(
        f"sent {played.sent:,} of {total:,} requests in {played.elapsed:.1f} s "
        f"({played.sent / max(played.elapsed, 1e-9):,.0f}/s); "
        f"HTTP status {_counts(played.statuses)}"
        + (f"; failed {_counts(played.errors)}" if played.errors else "")
    )
    undecided = played.sent - sum(played.errors.values()) - len(played.decisions)
    if undecided > 0:
        demo.print(f"({undecided:,} requests got no decision: the guard failed open, see its log)")
    if played.statuses[422]:
        demo.print("(422: the API's own validation, e.g. max_tokens above its 4096 cap)")
    if played.sent < total:
        demo.print("(the time budget ran out: the report covers the requests sent)")
    demo.print()


def _compare_with_replay(demo: Demo, trace: Path, policy: Policy) -> None:
    try:
        replayed = demo_traffic.replay_in_virtual_time(trace, policy)
    except Exception as exc:  # the comparison is a bonus: never fail the demo for it
        demo.print(f"(virtual-time replay skipped: {type(exc).__name__}: {exc})")
        return
    demo.print(
        "The same trace replayed in virtual time (abuseguard replay TRACE --mmdb-dir DIR):\n"
        f"  {demo_traffic.detection_line(replayed)}"
    )


def _explain(
    demo: Demo,
    command: list[str],
    records: Sequence[TraceRecord],
    databases: dict[str, str],
    compression: float,
    seconds: float,
) -> None:
    actors: dict[str, set[str]] = {}
    for record in records:
        label = record.label or demo_traffic.UNKNOWN_LABEL
        actors.setdefault(label, set()).add(record.actor or record.info.key or record.info.ip)
    who = ", ".join(f"{len(names)} {label}" for label, names in sorted(actors.items()))
    demo.print("$ " + " ".join(command))
    demo.print(
        f"The simulator wrote {len(records):,} requests from {who} actors, with ground truth,\n"
        "and MaxMind-format databases of its synthetic network world "
        f"({', '.join(sorted(databases))})."
    )
    demo.print(
        "The API now runs with the default Policy plus those databases, trusting 127.0.0.1 as "
        "its proxy.\nThe demo client plays the CDN: every trace line goes over HTTP "
        f"({demo.plan.connections} connections) with its\nmethod, path, headers, body and API "
        "key, and the client's address in X-Forwarded-For."
    )
    demo.print(
        f"Time is compressed {compression:,.0f}x (the trace plays in about {seconds:.0f} s): "
        "the guard's clock follows the\ntrace's timestamps, and the tarpit and the model's "
        "latency shrink by the same factor."
    )
    demo.print()


def _plot(demo: Demo, report: dict[str, Any]) -> None:
    if demo.plot is None:
        return
    try:
        demo.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_report(report, str(demo.plot))
    except (ImportError, OSError) as exc:
        demo.print(f"(plot skipped: {exc})")
    else:
        demo.print(f"plot: {demo.plot} (score distribution per kind, leakage over time)")


def _counts(counter: Counter[Any]) -> str:
    return " ".join(f"{key}x{count}" for key, count in sorted(counter.items()))


SECTIONS: list[tuple[str, Callable[[Demo], None]]] = [
    ("A burst from six clients: what the guard decided, request by request", burst_section),
    ("Metrics", metrics_section),
    ("An hour of simulated benign and abusive clients, over real HTTP", traffic_section),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = TrafficPlan()
    parser = argparse.ArgumentParser(description="The abuseguard demo (make demo).")
    parser.add_argument("--hours", type=float, default=defaults.hours, help="simulated hours")
    parser.add_argument("--scale", type=float, default=defaults.scale, help="actor count factor")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="simulator seed")
    parser.add_argument(
        "--seconds",
        type=float,
        default=defaults.seconds,
        help="real seconds to play the simulated traffic in (time is compressed to fit)",
    )
    parser.add_argument(
        "--plot", type=Path, default=DEFAULT_PLOT, help=f"where to write the plot ({DEFAULT_PLOT})"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    args = parser.parse_args(argv)
    for name in ("hours", "scale", "seconds"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    plan = TrafficPlan(hours=args.hours, scale=args.scale, seed=args.seed, seconds=args.seconds)
    recorder = DecisionRecorder()
    registry = CollectorRegistry()
    app = create_app(
        observers=[recorder, PrometheusObserver(registry)], trusted_proxies=["127.0.0.1/32"]
    )
    with serve(app, proxy_headers=False) as base_url:
        demo = Demo(
            base_url,
            recorder,
            registry,
            plan=plan,
            plot=None if args.no_plot else args.plot,
            started=started,
        )
        demo.print(f"abuseguard demo: examples/llm_api.py under uvicorn at {base_url}")
        for title, section in SECTIONS:
            demo.print()
            demo.print(f"== {title} ==")
            section(demo)
    demo.print()
    if demo.summary:
        demo.print(f"detection: {demo.summary}")
    demo.print(f"done in {time.monotonic() - demo.started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
