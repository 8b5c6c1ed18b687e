"""The Redis backend, ASGI level: decision latency, throughput and round trips per request,
side by side with slowapi on the same redis-server.

Every stack (see stacks.py: bare Starlette, abuseguard on memory, abuseguard on Redis,
slowapi on Redis) is called directly as an ASGI app, in one event loop (uvloop when
installed), no HTTP. Two measurements, stacks alternating in rounds:

- sequential: one request at a time; p50/p99 of each request, and the overhead over bare;
- concurrent: ``--concurrency`` tasks send requests at once (as a busy server's
  connections do); requests per second and CPU microseconds per request, and the share
  of the bare app's throughput each stack keeps.

Round trips: redis-server's own counters before and after each Redis stack's runs:
commands per request (INFO commandstats) and read events per request (INFO stats
``total_reads_processed``: one per batch of pipelined commands that arrives together, the
network round trips as the server sees them), plus abuseguard's own count of pipelines.
A self-check first proves each limiter is in the path (tiny limits: 200 then 429).

Redis bytes per unique client: afterwards, on an emptied server, INFO memory
``used_memory`` before and after N new clients, for the inline and the synced stack: once
with one request per client (a flood of one-shot clients: invented keys, rotated
addresses) and once with three requests per client (clients that come back).

    .venv/bin/python benchmarks/bench_redis.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import stacks
from bench_asgi import Recorder, drive, lifespan, receive_empty_body, scope_templates, self_check

STACK_NAMES = (
    "bare",
    "abuseguard-memory",
    "abuseguard-redis",
    "abuseguard-redis-synced",
    "slowapi-redis",
)
# Many clients, each seen a few times only and never at a metronome's cadence: the guard's
# scoring stays quiet (no tarpit, no refusal), so what is measured is the allowed path.
CLIENTS = 10_000


def redis_counters(url: str) -> dict[str, int]:
    import redis

    with redis.Redis.from_url(url) as client:
        stats = client.info("stats")
        commands = client.info("commandstats")
    calls = sum(int(v["calls"]) for v in commands.values())
    return {"commands": calls, "reads": int(stats.get("total_reads_processed", 0))}


def snapshot(url: str, backend: Any) -> dict[str, int]:
    """Server counters (minus the two commands asking for them) and, for abuseguard, the
    backend's own count of commands sent and round trips (pipelines) made."""
    counts = redis_counters(url)
    counts["commands"] -= 2
    counts["reads"] -= 2
    if backend is not None:
        stats = backend.stats()
        counts["client_commands"] = stats["commands"]
        counts["client_round_trips"] = stats["round_trips"]
    return counts


def find_guard_backend(app: Any) -> Any:
    """The RedisBackend inside a Starlette app's middleware stack (built on first call)."""
    node = getattr(app, "middleware_stack", None)
    for _ in range(10):
        if node is None:
            return None
        guard = getattr(node, "guard", None)
        if guard is not None:
            return guard.backend
        node = getattr(node, "app", None)
    return None


async def concurrent(
    app: Any,
    templates: list[dict[str, Any]],
    start: int,
    count: int,
    tasks: int,
    statuses: collections.Counter[int],
) -> tuple[float, float]:
    """``count`` requests from ``tasks`` concurrent senders: (requests/s, CPU µs/request)."""
    per_task = count // tasks

    async def sender(k: int) -> None:
        recorder = Recorder()
        n = len(templates)
        base = start + k * per_task
        for i in range(base, base + per_task):
            await app(dict(templates[i % n]), receive_empty_body, recorder.send)
            statuses[recorder.status] += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(sender(k) for k in range(tasks)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done = per_task * tasks
    return done / wall, cpu / done * 1e6


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    rounds = 3 if quick else 5
    per_round = 400 if quick else 1500
    conc_per_round = 2000 if quick else 6000
    clients = benchlib.benign_clients(CLIENTS)
    templates = scope_templates(clients, proxied=False)
    result: dict[str, Any] = {
        "rounds": rounds,
        "sequential_per_round": per_round,
        "concurrent_per_round": conc_per_round,
        "concurrency": args.concurrency,
        "clients": CLIENTS,
        "loop": type(asyncio.get_running_loop()).__module__,
        "policy": "stacks.abuseguard_policy: per-key bucket, per-IP network bucket, scoring on",
        "stacks": {},
        "unavailable": {},
    }
    with benchlib.redis_server() as redis_url:
        if redis_url is None:
            result["unavailable"] = {n: "no redis-server on this machine" for n in STACK_NAMES}
            return result
        config = stacks.StackConfig(redis_url=redis_url)
        names = [n for n in STACK_NAMES if stacks.unavailable_reason(n, config) is None]
        for name in STACK_NAMES:
            if name not in names:
                result["unavailable"][name] = stacks.unavailable_reason(name, config)
        checks = {n: await self_check(n, config, templates[0]) for n in names if n != "bare"}
        result["self_check"] = checks
        for name, statuses in checks.items():
            if statuses != [200, 429]:
                raise SystemExit(f"self-check failed for {name}: {statuses} (expected [200, 429])")
        apps = {n: stacks.build(n, config) for n in names}
        seq: dict[str, list[int]] = {n: [] for n in names}
        thr: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        counters: dict[str, dict[str, dict[str, int]]] = {
            n: {phase: collections.Counter() for phase in ("sequential", "concurrent")}
            for n in names
        }
        backends = {}
        decisions: dict[str, collections.Counter[str]] = {n: collections.Counter() for n in names}
        statuses: dict[str, collections.Counter[int]] = {n: collections.Counter() for n in names}
        async with AllLifespans(apps):
            for name, app in apps.items():  # warm-up: every client seen once
                await drive(app, templates, None, 0, CLIENTS, statuses[name])
                backends[name] = find_guard_backend(app)
            offset = CLIENTS
            for r in range(rounds):
                order = names if r % 2 == 0 else list(reversed(names))
                for name in order:
                    app = apps[name]
                    gc.collect()
                    stacks.SEEN.clear()
                    counted = stacks.needs_redis(name)
                    before = snapshot(redis_url, backends[name]) if counted else {}
                    seq[name] += await drive(
                        app, templates, None, offset, per_round, statuses[name]
                    )
                    middle = snapshot(redis_url, backends[name]) if counted else {}
                    thr[name].append(
                        await concurrent(
                            app,
                            templates,
                            offset + per_round,
                            conc_per_round,
                            args.concurrency,
                            statuses[name],
                        )
                    )
                    decisions[name].update(stacks.SEEN)
                    if counted:
                        after = snapshot(redis_url, backends[name])
                        for phase, a, b, n in (
                            ("sequential", before, middle, per_round),
                            ("concurrent", middle, after, conc_per_round),
                        ):
                            c = counters[name][phase]
                            for k in a:
                                c[k] += b[k] - a[k]
                            c["requests"] += n
                offset += per_round + conc_per_round
            backend_stats = {
                n: backends[n].stats() for n in names if n.startswith("abuseguard-redis")
            }
        memory_clients = 2000 if quick else 10_000
        result["redis_bytes_per_client"] = {
            "clients": memory_clients,
            **{
                n: await bytes_per_client(n, config, redis_url, memory_clients)
                for n in names
                if n.startswith("abuseguard-redis")
            },
        }
    bare = benchlib.percentiles(seq["bare"]) if "bare" in seq else {}
    bare_rps = benchlib.median([t[0] for t in thr.get("bare", [])]) if "bare" in thr else 0.0
    for name in names:
        pct = benchlib.percentiles(seq[name])
        rps = benchlib.median([t[0] for t in thr[name]])
        cpu = benchlib.median([t[1] for t in thr[name]])
        entry: dict[str, Any] = {
            "sequential": pct,
            "overhead_p50_us": pct["p50_us"] - bare.get("p50_us", 0.0),
            "overhead_p99_us": pct["p99_us"] - bare.get("p99_us", 0.0),
            "concurrent_rps": rps,
            "concurrent_cpu_us_per_request": cpu,
            "throughput_vs_bare": rps / bare_rps if bare_rps else None,
            "statuses": dict(statuses[name]),
            "decisions": dict(decisions[name]),
        }
        for phase, c in counters[name].items():
            if c["requests"]:
                entry[phase + "_per_request"] = {
                    k: v / c["requests"] for k, v in c.items() if k != "requests"
                }
        result["stacks"][name] = entry
    if backend_stats:
        result["abuseguard_redis_backend"] = backend_stats
    return result


def used_memory(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"])


async def bytes_per_client(
    name: str, config: stacks.StackConfig, redis_url: str, clients: int
) -> dict[str, float]:
    """Redis' growth per new client, for one-shot and for returning clients (3 requests)."""
    import redis

    out: dict[str, float] = {}
    for label, requests, seed in (("one_shot", 1, 101), ("returning", 3, 202)):
        templates = scope_templates(benchlib.benign_clients(clients, seed=seed), proxied=False)
        with redis.Redis.from_url(redis_url) as client:
            client.flushall()
        app = stacks.build(name, config)
        statuses: collections.Counter[int] = collections.Counter()
        async with AllLifespans({name: app}):
            before = used_memory(redis_url)
            for _ in range(requests):
                await drive(app, templates, None, 0, clients, statuses)
        # after the lifespan's shutdown: the synced mode's last consumption is in Redis
        out[label] = (used_memory(redis_url) - before) / clients
    return out


class AllLifespans:
    """Lifespan startup of every app before the block, shutdown after."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = apps
        self.stack: list[Any] = []

    async def __aenter__(self) -> None:
        for app in self.apps.values():
            cm = lifespan(app)
            await cm.__aenter__()
            self.stack.append(cm)

    async def __aexit__(self, *exc: object) -> None:
        for cm in reversed(self.stack):
            await cm.__aexit__(None, None, None)


def report(result: dict[str, Any]) -> str:
    lines = [
        f"ASGI level, {result['loop']}, {result['clients']} clients, {result['rounds']} rounds; "
        f"sequential {result['sequential_per_round']}/round, concurrent "
        f"{result['concurrent_per_round']}/round at {result['concurrency']} in flight",
        "",
        f"{'stack':<20} {'p50 us':>8} {'p99 us':>8} {'+p50':>8} {'+p99':>8} {'req/s':>8} "
        f"{'cpu us':>7} {'vs bare':>8}",
    ]
    for name, e in result["stacks"].items():
        s = e["sequential"]
        ratio = e["throughput_vs_bare"]
        lines.append(
            f"{name:<20} {s['p50_us']:>8.1f} {s['p99_us']:>8.1f} {e['overhead_p50_us']:>8.1f} "
            f"{e['overhead_p99_us']:>8.1f} {e['concurrent_rps']:>8.0f} "
            f"{e['concurrent_cpu_us_per_request']:>7.1f} "
            f"{(f'{ratio:.0%}' if ratio is not None else '-'):>8}"
        )
    lines += [
        "",
        "per request, Redis stacks: server read events (round trips as redis-server sees "
        "them), commands executed by the server (scripts' inner calls included), and "
        "abuseguard's own commands sent and pipelines (round trips) made",
        f"{'stack':<20} {'phase':<11} {'reads':>7} {'srv cmds':>9} {'sent':>7} {'pipelines':>10}",
    ]
    for name, e in result["stacks"].items():
        for phase in ("sequential", "concurrent"):
            c = e.get(phase + "_per_request")
            if not c:
                continue
            sent = c.get("client_commands")
            trips = c.get("client_round_trips")
            lines.append(
                f"{name:<20} {phase:<11} {c['reads']:>7.2f} {c['commands']:>9.2f} "
                f"{(f'{sent:.2f}' if sent is not None else '-'):>7} "
                f"{(f'{trips:.2f}' if trips is not None else '-'):>10}"
            )
    memory = result.get("redis_bytes_per_client")
    if memory:
        lines += [
            "",
            f"Redis bytes per unique client (used_memory growth over {memory['clients']} new "
            "clients, emptied server)",
            f"{'stack':<24} {'one request':>12} {'3 requests':>11}",
        ]
        for name, figures in memory.items():
            if isinstance(figures, dict):
                lines.append(
                    f"{name:<24} {figures['one_shot']:>12.0f} {figures['returning']:>11.0f}"
                )
    for name, stats in result.get("abuseguard_redis_backend", {}).items():
        lines += ["", f"{name} backend: " + ", ".join(f"{k}={v}" for k, v in stats.items())]
    for name, why in result.get("unavailable", {}).items():
        lines.append(f"{name}: unavailable ({why})")
    for name, e in result["stacks"].items():
        other = {k: v for k, v in e["decisions"].items() if k not in ("allow", "none")}
        if other or set(e["statuses"]) - {200}:
            lines.append(f"WARNING {name}: not every request was allowed: {other} {e['statuses']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (about 30 s)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args))
    result["machine"] = benchlib.machine_info()
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
