"""The main part of `make demo`: an hour of simulated traffic played against the LLM API
over real HTTP, scored against the simulator's ground truth.

1. ``abuseguard simulate`` writes a trace of benign and abusive clients (ground truth in
   every line) and the MaxMind-format databases of its synthetic network world.
2. ``examples/llm_api.py`` runs under uvicorn with a Policy that reads those databases
   and trusts 127.0.0.1 as a proxy. The demo client plays a CDN in front of it: for every
   trace line it sends the method, path, headers, body and API key over HTTP, with the
   line's client address in ``X-Forwarded-For``.
3. An observer files the guard's decision per ``X-Request-ID``; with the trace's ground
   truth they go into :class:`abuseguard.report.ReportBuilder`, which prints the same
   table as ``abuseguard replay`` and draws the same plot.

Compressed time. The guard's limits and cadence signals are in seconds: an hour of traffic
sent in twenty seconds would be a flood. So the trace is played at a fixed speed-up
(each request leaves at its trace time divided by the speed-up) and the guard runs on the
*trace's* clock: each request carries its trace timestamp in ``x-demo-trace-time``, and
:class:`TraceTimeFromHeader`, a tiny ASGI wrapper outside the guard, moves
:class:`TraceClock` forward to it and removes the header, so the guard never sees it.
Durations the server spends in real time shrink by the same factor: the tarpit of the
``delay`` action and the stand-in model's time per token. This is a demo device: a
server that let clients set its clock would be trivially abusable.

The other honest way, a slice of the trace replayed in real time, does not fit a demo: a
slice of twenty seconds holds too little of the slow signals (cadence over minutes,
fan-in and fan-out over the hour, the low-and-slow accounts) to show what they catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import llm_api
import maxminddb
from fastapi import FastAPI, HTTPException, Request, Response
from llm_api import DEGRADED_MAX_TOKENS, USAGE_HEADER, ChatRequest, count_tokens, create_app

from abuseguard import Decision, Enforcement, Guard, NetworkPolicy, Policy, RequestInfo
from abuseguard.enforce import ASGIApp, Receive, Scope, Send
from abuseguard.intel.geo import kind_of_database_type
from abuseguard.replay import run_replay
from abuseguard.report import ReportBuilder
from abuseguard.testing import serve
from abuseguard.traces import TraceRecord, read_trace

REQUEST_ID_HEADER = "x-request-id"  # a tracing header: not part of the client's persona
TRACE_TIME_HEADER = "x-demo-trace-time"
PROXY = "127.0.0.1/32"  # the demo client is the CDN in front of the API
UNKNOWN_LABEL = "unknown"
# Headers the demo client sets itself; a trace's own copies are left out, not doubled.
_SET_BY_CLIENT = frozenset(
    {"host", "content-length", "user-agent", "authorization", "x-forwarded-for",
     REQUEST_ID_HEADER, TRACE_TIME_HEADER}
)  # fmt: skip


@dataclass(frozen=True)
class TrafficPlan:
    """What to simulate and how fast to play it."""

    hours: float = 1.0
    scale: float = 0.3
    seed: int = 0
    seconds: float = 20.0  # real time to play the whole trace in
    connections: int = 16
    top: int = 5  # actors per table of the report


class DecisionRecorder:
    """An observer that files each decision under the request's ``X-Request-ID``."""

    def __init__(self) -> None:
        self.by_request: dict[str, Decision] = {}

    def __call__(self, info: RequestInfo, decision: Decision) -> None:
        request_id = info.headers.get(REQUEST_ID_HEADER)
        if request_id is not None:
            self.by_request[request_id] = decision


class TraceClock:
    """The guard's clock in the demo: the latest trace time a request has brought.

    It only moves forward: requests in flight at the same moment carry slightly different
    timestamps, and the guard's windows must not see time run backwards.
    """

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, ts: float) -> None:
        if ts > self.now:
            self.now = ts


class TraceTimeFromHeader:
    """Pure ASGI, outside the guard: set the TraceClock from ``x-demo-trace-time``, drop it."""

    def __init__(self, app: ASGIApp, clock: TraceClock) -> None:
        self.app = app
        self.clock = clock
        self.header = TRACE_TIME_HEADER.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            kept = []
            for name, value in scope["headers"]:
                if name != self.header:
                    kept.append((name, value))
                    continue
                with contextlib.suppress(ValueError):  # not a number: the clock stays
                    self.clock.advance(float(value))
            scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)


def add_web_routes(app: FastAPI) -> None:
    """The chat website's own endpoints, beside the API: the simulated people in browsers
    and phones call them with a session account (``Authorization: Bearer acct_...``)."""

    def session(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "not signed in")

    @app.get("/api/conversations")
    async def conversations(request: Request) -> dict[str, Any]:
        session(request)
        return {"object": "list", "data": []}

    @app.post("/api/chat")
    async def web_chat(body: ChatRequest, request: Request, response: Response) -> dict[str, Any]:
        session(request)
        tokens = body.max_tokens
        if getattr(request.state, "abuseguard_degraded", False):
            tokens = min(tokens, DEGRADED_MAX_TOKENS)
        await asyncio.sleep(tokens * llm_api.SECONDS_PER_TOKEN)
        total = sum(count_tokens(m.content) for m in body.messages) + tokens
        response.headers[USAGE_HEADER] = str(total)
        return {"message": {"role": "assistant", "content": " ".join(["lorem"] * tokens)}}


@contextmanager
def model_time_compressed(factor: float) -> Iterator[None]:
    """The stand-in model writes ``factor`` times faster while the trace plays."""
    saved = llm_api.SECONDS_PER_TOKEN
    llm_api.SECONDS_PER_TOKEN = saved / factor
    try:
        yield
    finally:
        llm_api.SECONDS_PER_TOKEN = saved


def demo_policy(databases: Mapping[str, str], compression: float = 1.0) -> Policy:
    """The library's default policy, with the simulated world's databases, the demo's
    proxy trusted, and the tarpit shortened to compressed time."""
    return Policy(
        network=NetworkPolicy(databases=databases),
        trusted_proxies=[PROXY],
        enforcement=Enforcement(delay_seconds=Enforcement().delay_seconds / compression),
    )


def simulate_command(plan: TrafficPlan, trace: Path, mmdb_dir: Path, start: int) -> list[str]:
    return [
        "abuseguard", "simulate", "--hours", f"{plan.hours:g}", "--scale", f"{plan.scale:g}",
        "--seed", str(plan.seed), "--start", str(start), "--no-enrichment",
        "--mmdb-dir", str(mmdb_dir), "-q", "-o", str(trace),
    ]  # fmt: skip


def trace_start(now: float) -> int:
    """Yesterday at 14:00 UTC, in epoch seconds.

    The simulator's traffic follows each country's time of day, so a fixed hour (its
    default one) tells the same story on every run. Yesterday, because the guard ages
    anonymizer flags by today's date, as in production, and the simulated databases date
    them from the trace's start: a trace from months ago would find them stale.
    """
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    start = datetime.datetime.combine(today, datetime.time(14), datetime.UTC)
    return int(start.timestamp()) - 86400


def simulate(plan: TrafficPlan, trace: Path, mmdb_dir: Path, timeout: float) -> list[str]:
    """Write the trace and the databases; return the command line (for the reader)."""
    command = simulate_command(plan, trace, mmdb_dir, trace_start(time.time()))
    cli = [sys.executable, "-m", "abuseguard.cli", *command[1:]]
    subprocess.run(cli, check=True, timeout=timeout)
    return command


def database_paths(mmdb_dir: Path) -> dict[str, str]:
    """NetworkPolicy.databases for every MaxMind file in ``mmdb_dir``, by its metadata."""
    paths: dict[str, str] = {}
    for path in sorted(mmdb_dir.glob("*.mmdb")):
        with maxminddb.open_database(str(path)) as reader:
            kind = kind_of_database_type(reader.metadata().database_type)
        if kind is not None:
            paths[kind] = str(path)
    return paths


def load_trace(path: Path) -> list[TraceRecord]:
    with read_trace(path) as reader:
        return list(reader)


def trace_time(record: TraceRecord) -> float:
    """The record's timestamp (the trace reader always sets one)."""
    return record.info.ts if record.info.ts is not None else 0.0


def skip_missing_sniffio() -> None:
    """Make a missing ``sniffio`` fail to import at once.

    httpcore 1.0 runs ``import sniffio`` four times per request, and anyio >= 4.5 no longer
    installs it: each failed import searches sys.path again, which costs this demo's client
    about as much as the rest of its work. A ``None`` in sys.modules makes the import fail
    immediately, with the same outcome (httpcore then assumes asyncio).
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def request_headers(index: int, record: TraceRecord) -> list[tuple[str, str]]:
    """What the CDN forwards: the client's headers in their order, its User-Agent and API
    key, its address, and the demo's request id and trace time."""
    info = record.info
    headers = [(k, v) for k, v in info.headers.items() if k.lower() not in _SET_BY_CLIENT]
    if info.ua is not None:
        headers.append(("user-agent", info.ua))
    if info.key is not None:
        headers.append(("authorization", f"Bearer {info.key}"))
    headers.append(("x-forwarded-for", info.ip))
    headers.append((REQUEST_ID_HEADER, str(index)))
    headers.append((TRACE_TIME_HEADER, repr(info.ts)))
    return headers


def request_body(record: TraceRecord) -> bytes | None:
    body = record.info.body
    if body is None or body == "":
        return None
    return body if isinstance(body, bytes) else body.encode("utf-8")


@dataclass
class Player:
    """Plays trace records over HTTP at ``compression`` times their pace, until ``stop_at``."""

    base_url: str
    records: Sequence[TraceRecord]
    compression: float
    connections: int
    stop_at: float  # time.monotonic() after which nothing more is sent
    statuses: list[int | None] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    async def play(self) -> None:
        skip_missing_sniffio()
        self.statuses = [None] * len(self.records)
        if not self.records:
            return
        feed = iter(enumerate(self.records))
        loop = asyncio.get_running_loop()
        first_ts = trace_time(self.records[0])
        started = loop.time()

        async def connection() -> None:
            # One client per connection: httpx's shared pool rescans every connection for
            # every request, which would cost more than the guard itself here.
            limits = httpx.Limits(max_connections=1)
            async with httpx.AsyncClient(base_url=self.base_url, limits=limits) as http:
                http.headers.clear()  # send the trace's headers, not httpx's defaults
                for index, record in feed:
                    if time.monotonic() > self.stop_at:
                        return
                    due = started + (trace_time(record) - first_ts) / self.compression
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                    self.sent += 1
                    await self.send(http, index, record)

        await asyncio.gather(*(connection() for _ in range(self.connections)))

    async def send(self, http: httpx.AsyncClient, index: int, record: TraceRecord) -> None:
        info = record.info
        try:
            response = await http.request(
                info.method,
                info.path,
                headers=request_headers(index, record),
                content=request_body(record),
                timeout=10.0,
            )
        except (httpx.HTTPError, UnicodeEncodeError, ValueError) as exc:
            self.errors[type(exc).__name__] += 1
            return
        self.statuses[index] = response.status_code


@dataclass
class Played:
    """What playing a trace over HTTP gave: the guard's decisions by request id, the
    status codes the clients saw, the requests that failed, how many were sent."""

    decisions: dict[str, Decision]
    statuses: Counter[int]
    errors: Counter[str]
    sent: int
    elapsed: float


def play_over_http(
    records: Sequence[TraceRecord],
    policy: Policy,
    compression: float,
    connections: int,
    stop_at: float,
) -> Played:
    """Serve the LLM API (plus the website's routes) under uvicorn with ``policy`` on the
    trace's clock, and play ``records`` against it over HTTP."""
    recorder = DecisionRecorder()
    clock = TraceClock(trace_time(records[0]) if records else 0.0)
    app = create_app(policy, observers=[recorder], clock=clock)
    add_web_routes(app)
    with serve(TraceTimeFromHeader(app, clock), proxy_headers=False) as base_url:
        player = Player(base_url, records, compression, connections, stop_at)
        started = time.monotonic()
        with model_time_compressed(compression):
            asyncio.run(player.play())
        elapsed = time.monotonic() - started
    statuses = Counter(code for code in player.statuses if code is not None)
    return Played(recorder.by_request, statuses, player.errors, player.sent, elapsed)


def build_report(
    records: Sequence[TraceRecord], decisions: Mapping[str, Decision], **top_level: Any
) -> dict[str, Any]:
    """The replay report over the decisions the guard made for the records sent."""
    builder = ReportBuilder()
    for index, record in enumerate(records):
        decision = decisions.get(str(index))
        if decision is None:
            continue  # not sent before the deadline, or the request failed
        info = record.info
        label = record.label or UNKNOWN_LABEL
        actor = record.actor or info.key or info.ip
        builder.add(actor, label, record.kind or label, decision, trace_time(record))
    return builder.build(**top_level)


def replay_in_virtual_time(trace: Path, policy: Policy) -> dict[str, Any]:
    """The same trace through a fresh Guard in virtual time, as ``abuseguard replay`` does."""
    builder = ReportBuilder()
    guard = Guard(policy=policy)
    try:
        with read_trace(trace) as reader:
            run_replay(reader, guard, builder)
    finally:
        asyncio.run(guard.shutdown())
    return builder.build()


def detection_line(report: Mapping[str, Any]) -> str:
    abusive = report["labels"]["abusive"]
    benign = report["labels"]["benign"]
    return (
        f"{abusive['actors_mitigated']} of {abusive['actors']} abusive actors mitigated "
        f"({_share(abusive['actors_mitigated_share'])}), {_share(abusive['leakage'])} of "
        f"their requests served; {benign['actors_mitigated']} of {benign['actors']} benign "
        f"actors mitigated ({_share(benign['actors_mitigated_share'])})"
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"
