"""ASGI overhead without HTTP: each stack called directly as an ASGI callable.

A synthetic scope, ``receive`` and ``send`` per request; no sockets, no server, so what is
left is what the middleware adds. 10,000 clients, each with its own API key and its own
address (the scope's client, or X-Forwarded-For from a trusted loopback proxy), every one
seen before measuring; GET ``/`` and POST ``/v1/chat/completions`` with a chat prompt of
about 400 bytes (content scoring on) are measured and reported separately. Stacks run in
alternating rounds in one event loop (uvloop when installed); the overhead of a stack is its
p50 (p99) minus the p50 (p99) of its baseline (bare Starlette; bare FastAPI for
fastapi-limiter) over all rounds, with the spread of the per-round p50 differences beside it.

Beside the latencies, each stack's CPU time per request: the event loop thread's CPU time
(``time.thread_time_ns``) over a round divided by its requests, and its excess over the
baseline's, round by round. Time a stack spends waiting (on Redis, or for a core on a busy
machine) is not in it; redis-server's own work is not either.

Before measuring, every stack is rebuilt with tiny limits and must answer a second request
from one client with 429 (so the limiter really is in the path); during the measurement
every response should be 200 and every guard decision ``allow`` (the report counts any
other status). The warm-up sends each client once; for the memory-backend guards it runs
on a clock moved on by WARM_UP_STEP seconds a request (10,000 clients arriving over about
80 minutes), so that every key is a known, accepted customer when the measurement starts:
in one real second the default unverified-key budgets would refuse part of 1,000 new keys
from one network. The Redis stacks keep the real clock; their warm-up refusals are counted.

    .venv/bin/python benchmarks/bench_asgi.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import stacks

CLIENTS = 10_000
WARM_UP_STEP = 0.5  # seconds the warm-up clock moves on after each warm-up request
KEEP_SAMPLES = 4000  # latency samples per stack kept in the JSON for plots


METHODS = ("GET", "POST")
Receive = Callable[[], Awaitable[dict[str, Any]]]


def scope_templates(
    clients: list[benchlib.Client], *, proxied: bool, bodies: list[bytes] | None = None
) -> list[dict[str, Any]]:
    """One ASGI scope per client: an API call from the client's own address, or with
    ``proxied`` from a loopback proxy that names the client in X-Forwarded-For; with
    ``bodies``, a POST of the client's chat body to /v1/chat/completions."""
    out = []
    for i, c in enumerate(clients):
        headers = [
            (b"host", b"api.example.com"),
            (b"user-agent", c.ua.encode()),
            (b"accept", b"application/json"),
            (b"authorization", b"Bearer " + c.key.encode()),
            (b"x-forwarded-for", c.ip.encode()),
        ]
        method, path = "GET", "/"
        if bodies is not None:
            method, path = "POST", stacks.CHAT_PATH
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(bodies[i])).encode()),
            ]
        out.append(
            {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": method,
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": headers,
                "client": ("127.0.0.1" if proxied else c.ip, 40000 + i),
                "server": ("127.0.0.1", 8000),
            }
        )
    return out


async def receive_empty_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def body_receiver(body: bytes) -> Receive:
    """A ``receive`` that hands over ``body`` in one message (then the same again)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class Recorder:
    """The ``send`` side: remembers the status of the response."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run the app's lifespan startup before the block and its shutdown after."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    started = await asyncio.wait_for(outbox.get(), 30)
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan startup failed: {started}")
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def drive(
    app: Any,
    templates: list[dict[str, Any]],
    receivers: list[Receive] | None,
    start: int,
    count: int,
    statuses: collections.Counter[int],
    after_each: Callable[[], None] | None = None,
) -> list[int]:
    """``count`` requests, clients in turn from ``start``; nanoseconds per request.
    ``after_each`` runs after each request, outside the timing."""
    clock = time.perf_counter_ns
    recorder = Recorder()
    send = recorder.send
    n = len(templates)
    samples = []
    for i in range(start, start + count):
        scope = dict(templates[i % n])
        receive = receive_empty_body if receivers is None else receivers[i % n]
        t0 = clock()
        await app(scope, receive, send)
        samples.append(clock() - t0)
        statuses[recorder.status] += 1
        if after_each is not None:
            after_each()
    return samples


async def self_check(name: str, config: stacks.StackConfig, template: dict[str, Any]) -> list[int]:
    """Statuses of two requests from one client under tiny limits (expect [200, 429])."""
    tight = stacks.StackConfig(config.redis_url, config.mmdb_dir, generous=False)
    app = stacks.build(name, tight)
    recorder = Recorder()
    out = []
    # A client of its own, so state left by earlier runs cannot matter.
    ip = f"73.31.{random.randrange(256)}.{random.randrange(1, 255)}".encode()
    template = dict(template)
    template["headers"] = [
        (b"host", b"api.example.com"),
        (b"user-agent", benchlib.UAS[0].encode()),
        (b"authorization", b"Bearer sk-self-check-" + ip),
        (b"x-forwarded-for", ip),
    ]
    async with lifespan(app):
        for _ in range(2):
            await app(dict(template), receive_empty_body, recorder.send)
            out.append(recorder.status)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    benchlib.warm_kernels()
    quick = args.quick
    rounds = 3 if quick else 6
    per_round = 1000 if quick else 3000
    per_round_redis = 200 if quick else 600
    clients = benchlib.benign_clients(CLIENTS)
    rng = random.Random(11)
    bodies = [benchlib.chat_body(rng) for _ in clients]
    templates = {
        (method, proxied): scope_templates(
            clients, proxied=proxied, bodies=bodies if method == "POST" else None
        )
        for method in METHODS
        for proxied in (False, True)
    }
    receivers: dict[str, list[Receive] | None] = {
        "GET": None,
        "POST": [body_receiver(body) for body in bodies],
    }
    result: dict[str, Any] = {
        "rounds": rounds,
        "per_round": per_round,
        "per_round_redis": per_round_redis,
        "clients": CLIENTS,
        "distinct_addresses": len({c.ip for c in clients}),
        "post_body_bytes": round(sum(map(len, bodies)) / len(bodies)),
        "timer_overhead_ns": benchlib.timer_overhead_ns(),
        "loop": type(asyncio.get_running_loop()).__module__,
        "unavailable": {},
        "stacks": {},
        "stacks_post": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="abuseguard-bench-mmdb-") as tmp,
        benchlib.redis_server() as redis_url,
    ):
        paths = benchlib.build_mmdb_world(Path(tmp))
        result["intel"] = (
            f"GeoIntel over the tests' MaxMind world ({len(paths)} databases)"
            if paths
            else "no MaxMind databases (tests/mmdb_fixtures.py missing)"
        )
        config = stacks.StackConfig(
            redis_url=redis_url,
            mmdb_dir=Path(tmp) if paths else None,
            clock=stacks.WarmUpClock(),
        )
        names = [s for s in stacks.STACKS if args.stacks is None or s in args.stacks]
        runnable = []
        for name in names:
            reason = stacks.unavailable_reason(name, config)
            if reason is None:
                runnable.append(name)
            else:
                result["unavailable"][name] = reason
        checks = {}
        for name in runnable:
            if name in ("bare", "noop", "fastapi-bare"):
                continue
            try:
                first = templates["GET", stacks.is_proxied(name)][0]
                checks[name] = await self_check(name, config, first)
            except Exception as exc:  # report, do not hide: the stack is left out
                result["unavailable"][name] = f"self-check failed: {exc!r}"
        runnable = [n for n in runnable if n not in result["unavailable"]]
        for method in METHODS:
            print(f"  {method}: {len(runnable)} stacks, {CLIENTS:,} clients", flush=True)
            key = "stacks" if method == "GET" else "stacks_post"
            result[key] = await measure_method(
                method, runnable, config, templates, receivers[method], checks,
                rounds, per_round, per_round_redis,
            )  # fmt: skip
    return result


async def measure_method(
    method: str,
    runnable: list[str],
    config: stacks.StackConfig,
    templates: dict[tuple[str, bool], list[dict[str, Any]]],
    receivers: list[Receive] | None,
    checks: dict[str, list[int]],
    rounds: int,
    per_round: int,
    per_round_redis: int,
) -> dict[str, Any]:
    """Every stack, built afresh, sent ``method`` requests: every client once to warm up
    (10,000 identities tracked), then alternating measured rounds."""
    apps = {name: stacks.build(name, config) for name in runnable}
    samples: dict[str, list[int]] = {name: [] for name in runnable}
    round_p50: dict[str, list[float]] = {name: [] for name in runnable}
    round_cpu: dict[str, list[float]] = {name: [] for name in runnable}
    statuses: dict[str, collections.Counter[int]] = {n: collections.Counter() for n in runnable}
    decisions: dict[str, collections.Counter[str]] = {n: collections.Counter() for n in runnable}
    warm_up_statuses: dict[str, collections.Counter[int]] = {
        n: collections.Counter() for n in runnable
    }
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name in runnable:
            await stack.enter_async_context(lifespan(apps[name]))
        warm_clock = config.clock
        tick = None if warm_clock is None else lambda: warm_clock.advance(WARM_UP_STEP)
        for name in runnable:
            await drive(
                apps[name],
                templates[method, stacks.is_proxied(name)],
                receivers,
                0,
                CLIENTS,
                warm_up_statuses[name],
                tick,
            )
        cursor = CLIENTS
        for r in range(rounds):
            order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)]
            for name in order:
                count = per_round_redis if stacks.needs_redis(name) else per_round
                before = collections.Counter(stacks.SEEN)
                gc.collect()
                cpu_before = time.thread_time_ns()
                got = await drive(
                    apps[name],
                    templates[method, stacks.is_proxied(name)],
                    receivers,
                    cursor,
                    count,
                    statuses[name],
                )
                round_cpu[name].append((time.thread_time_ns() - cpu_before) / count / 1000)
                decisions[name].update(stacks.SEEN - before)
                samples[name].extend(got)
                round_p50[name].append(benchlib.percentiles(got)["p50_us"])
            cursor += per_round
    rng = random.Random(1)
    for name in runnable:
        stats = benchlib.percentiles(samples[name])
        base = stacks.BASELINE[name]
        entry: dict[str, Any] = {
            "latency": stats,
            "baseline": base,
            "statuses": dict(statuses[name]),
            "warm_up_statuses": dict(warm_up_statuses[name]),
            "decisions": dict(decisions[name]),
            "self_check": checks.get(name),
            "round_p50_us": round_p50[name],
            "cpu_us_per_request": _spread(round_cpu[name]),
        }
        if base in samples and name != base:
            base_stats = benchlib.percentiles(samples[base])
            diffs = [a - b for a, b in zip(round_p50[name], round_p50[base], strict=False)]
            entry["overhead"] = {
                "p50_us": stats["p50_us"] - base_stats["p50_us"],
                "p99_us": stats["p99_us"] - base_stats["p99_us"],
                "round_p50_min_us": min(diffs),
                "round_p50_max_us": max(diffs),
            }
            entry["cpu_overhead_us"] = _spread(
                [a - b for a, b in zip(round_cpu[name], round_cpu[base], strict=False)]
            )
        kept = samples[name]
        if len(kept) > KEEP_SAMPLES:
            kept = rng.sample(kept, KEEP_SAMPLES)
        entry["samples_us"] = [round(s / 1000, 3) for s in kept]
        out[name] = entry
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": benchlib.median(values), "min": min(values), "max": max(values)}


def report(result: dict[str, Any]) -> None:
    print(
        f"ASGI overhead without HTTP ({result['loop']} loop, intel: {result['intel']}; "
        f"{result['clients']:,} clients on {result['distinct_addresses']:,} addresses)"
    )
    for key, title in (
        ("stacks", "GET /"),
        ("stacks_post", f"POST /v1/chat/completions, ~{result['post_body_bytes']} B chat body"),
    ):
        print(f"  {title}")
        report_stacks(result[key])
    for name, reason in result["unavailable"].items():
        print(f"  {name:26s} skipped: {reason}")


def report_stacks(entries: dict[str, Any]) -> None:
    print(
        f"  {'stack':32s} {'CPU us':>7s} {'+CPU us':>7s} {'p50 us':>8s} {'p99 us':>8s}"
        f" {'+p50 us':>8s} {'+p99 us':>8s}  round spread     statuses"
    )
    for name, e in entries.items():
        lat = e["latency"]
        over = e.get("overhead")
        cpu_over = e.get("cpu_overhead_us", {}).get("median")
        print(
            f"  {name:32s} {e['cpu_us_per_request']['median']:7.1f} "
            + (f"{cpu_over:7.1f}" if cpu_over is not None else f"{'-':>7s}"),
            end="",
        )
        extra = (
            f"{over['p50_us']:8.1f} {over['p99_us']:8.1f}  "
            f"[{over['round_p50_min_us']:.1f}, {over['round_p50_max_us']:.1f}]"
            if over
            else f"{'-':>8s} {'-':>8s}  {'':14s}"
        )
        print(
            f" {lat['p50_us']:8.1f} {lat['p99_us']:8.1f} {extra:28s}"
            f" {e['statuses']} {e['decisions']} self-check {e['self_check']}"
            f" warm-up {e.get('warm_up_statuses')}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--stacks", nargs="*", help=f"subset of {', '.join(stacks.STACKS)}")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(run(args))
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
