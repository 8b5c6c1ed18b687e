"""Scale: memory per tracked identity, RSS at 1,000,000 identities, an IPv6 flood against a
bounded table, and decisions per second when replaying a simulated trace.

Each memory figure comes from a fresh child process (RSS from /proc/self/status):

- ``identities``: ``Guard(Policy(max_identities=1_000_000))`` and 1,000,000 distinct IPv4
  clients through ``Guard.check`` (one request each, virtual time). RSS is sampled as the
  table fills; bytes per identity = (RSS at the end - RSS after construction) / clients.
- ``keys``: API-key clients, each with its own key and its own address (the costliest
  client: a key row, an account row, an IP row and, mostly, a prefix row of its own), in a
  table sized for them, default Policy, each client's key accepted by the app (a 200), at
  10,000 / 100,000 / 1,000,000 clients: RSS bytes per client, the
  full ``gc.collect()`` pause (median of 3) and the objects the collector tracks (after
  ``Guard.startup``, as a server's lifespan runs it: it freezes the start-up objects), then
  ``Guard.check`` p50/p99 of 20,000 requests from clients drawn at random among those
  tracked (returning clients, each check timed alone). Where the bytes go: per table, the
  rows in use and the index block (``tables``, ``table_bytes_per_client``); the rest of the
  RSS is the Python heap and the allocator's slack. The sketches' register blocks
  (``fan_in_blocks``, ``fan_out_blocks``) count with the tables. One keys run alone, with the Python
  heap's growth and its largest allocation sites traced (tracemalloc: slow, its timings
  mean nothing):
  ``bench_scale.py --child keys --count 100000 [--trace-heap]`` (one JSON line).
- ``flood``: a smaller table (``max_identities`` 100,000) first filled twice over with unique
  IPv6 clients (each in its own /64), then flooded with many more; RSS before and after the
  flood must stay flat: the table evicts, it does not grow.
- ``replay``: ``abuseguard simulate`` writes a trace, ``abuseguard replay --format json``
  reports ``decisions_per_second`` (time inside the guard only), default Policy and with
  content fingerprinting on; the median of ``REPLAY_RUNS`` runs.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

MIB = 1024 * 1024
BUDGET_MB = 512
CHUNK = 50_000
# A multiplier prime to the range size: i -> address is a bijection, so all are distinct.
_SPREAD = 2_654_435_761
_V4_BASE = 11 << 24
_V4_RANGE = 89 << 24  # 11.0.0.0 - 99.255.255.255: public unicast


def ipv4(i: int) -> str:
    n = _V4_BASE + (i * _SPREAD) % _V4_RANGE
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def ipv6(i: int) -> str:
    """A distinct /64 (and mostly a distinct /48) per i, in 2a00::/12."""
    n = (i * _SPREAD) & ((1 << 48) - 1)
    return f"2a0{(i >> 48) & 15:x}:{n >> 32:x}:{(n >> 16) & 0xFFFF:x}:{n & 0xFFFF:x}::1"


def feed(
    guard: Any,
    address: Callable[[int], str],
    start: int,
    count: int,
    ts0: float,
    samples: list[dict[str, float]],
    every: int,
) -> float:
    """``count`` one-request clients through ``guard.check``; returns seconds in check."""
    from abuseguard import RequestInfo

    spent = 0.0
    clock = time.perf_counter
    done = 0
    while done < count:
        n = min(CHUNK, count - done)
        infos = [
            RequestInfo(ip=address(start + done + j), ts=ts0 + (start + done + j) * 1e-4)
            for j in range(n)
        ]
        check = guard.check
        t0 = clock()
        for info in infos:
            check(info)
        spent += clock() - t0
        del infos
        done += n
        if done % every == 0 or done == count:
            gc.collect()
            samples.append({"clients": start + done, "rss_mb": benchlib.rss_bytes() / MIB})
    return spent


def child_identities(count: int, capacity: int) -> dict[str, Any]:
    rss_start = benchlib.rss_bytes()
    from abuseguard import Guard, Policy

    rss_import = benchlib.rss_bytes()
    guard = started(Guard(Policy(max_identities=capacity)))
    gc.collect()
    rss_built = benchlib.rss_bytes()
    samples: list[dict[str, float]] = [{"clients": 0, "rss_mb": rss_built / MIB}]
    spent = feed(guard, ipv4, 0, count, 1_700_000_000.0, samples, max(CHUNK, count // 20))
    rss_end = benchlib.rss_bytes()
    parts = benchlib.rss_parts()
    tables = guard.engine.tables
    return {
        "rss_end_anon_mb": parts.get("RssAnon", 0) / MIB,
        "rss_end_file_mb": parts.get("RssFile", 0) / MIB,
        "clients": count,
        "max_identities": capacity,
        "rss_start_mb": rss_start / MIB,
        "rss_after_import_mb": rss_import / MIB,
        "rss_after_guard_mb": rss_built / MIB,
        "rss_end_mb": rss_end / MIB,
        "bytes_per_identity": (rss_end - rss_built) / count,
        "engine_preallocated_mb": guard.engine.nbytes / MIB,
        "table_rows": {
            name: len(t)
            for name, t in zip(("key", "ip", "prefix", "asn", "persona"), tables, strict=True)
        },
        "table_row_bytes": {
            name: t.width * 8
            for name, t in zip(("key", "ip", "prefix", "asn", "persona"), tables, strict=True)
        },
        "checks_per_second": count / spent if spent else None,
        "samples": samples,
    }


def key_of(i: int) -> str:
    return f"sk-live-{i:016x}{(i * _SPREAD) & 0xFFFFFFFF:08x}"


TIMED_CHECKS = 20_000


def started(guard: Any) -> Any:
    """``guard`` after the start-up a server's lifespan gives it (`Guard.startup`), on the
    compiled kernels (with an empty Numba cache it waits for them, as a warmed server)."""
    import asyncio

    from abuseguard.engine import kernel_set

    kernel_set.wait_compiled()
    asyncio.run(guard.startup())
    return guard


def gc_pause_ms() -> float:
    """The median of three full collections, in milliseconds."""
    return gc_pauses_ms()[0]


def gc_pauses_ms() -> tuple[float, float]:
    """The median of three full collections, in milliseconds: wall time and this process's
    CPU time (on a loaded machine the wall time also counts waiting for a core)."""
    pauses = []
    cpu = []
    for _ in range(3):
        c0 = time.process_time()
        t0 = time.perf_counter()
        gc.collect()
        pauses.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return sorted(pauses)[1], sorted(cpu)[1]


TABLE_NAMES = ("key", "ip", "prefix", "asn", "persona", "account")


def table_breakdown(engine: Any, count: int) -> dict[str, dict[str, float]]:
    """Per table: rows in use, bytes a row, and per client (``count``) the bytes of the
    rows in use and of the resident part of the index block: the row hashes in use, and
    the slots, which hashing scatters, so each used slot makes its 4 KiB page resident
    (all of them once the table holds more rows than the slots have pages). Then the two
    sketch pools (``fan_in_blocks``, ``fan_out_blocks``): the blocks handed out."""
    from abuseguard.engine import hashindex

    out = {}
    for name, table in zip(TABLE_NAMES, (*engine.tables, engine.accounts), strict=True):
        used = len(table)
        row_bytes = table.width * 8
        slots = hashindex.slot_count(table.capacity)
        index_bytes = 8 * (min(slots, 512 * used) + used)
        out[name] = {
            "rows": used,
            "capacity": table.capacity,
            "row_bytes": row_bytes,
            "rows_per_client": used * row_bytes / count,
            "index_per_client": index_bytes / count,
        }
    # The sketches' register blocks (a sketch that saw a second value takes one): the
    # blocks ever handed out, in use or free again, each touched once.
    from abuseguard.engine import layout as L

    for name, pool in (("fan_in_blocks", engine.net_pool), ("fan_out_blocks", engine.acc_pool)):
        used = max(0, int(pool[0, L.PH_NEXT]) - 1)
        row_bytes = pool.shape[1] * 8
        out[name] = {
            "rows": used,
            "capacity": pool.shape[0] - 1,
            "row_bytes": row_bytes,
            "rows_per_client": used * row_bytes / count,
            "index_per_client": 0.0,
        }
    return out


def heap_sites(before: Any, after: Any, count: int, top: int = 12) -> dict[str, Any]:
    """What the Python heap grew by between two tracemalloc snapshots, per client, and
    its largest allocation sites (the innermost frames in this package)."""
    stats = after.compare_to(before, "traceback")
    sites = []
    for stat in stats[:top]:
        frames = [f"{f.filename.rsplit('/src/', 1)[-1]}:{f.lineno}" for f in stat.traceback]
        sites.append(
            {
                "bytes_per_client": stat.size_diff / count,
                "blocks": stat.count_diff,
                "where": frames[-3:],
            }
        )
    return {
        "heap_per_client": sum(stat.size_diff for stat in stats) / count,
        "sites": sites,
    }


def child_keys(count: int, trace_heap: bool = False) -> dict[str, Any]:
    """``count`` API-key clients (own key, own address) through ``guard.check``, each
    answered 200 (``guard.complete``), so the app accepted its key, as a real client's.
    ``trace_heap``: also trace the Python heap's growth (tracemalloc; several times
    slower, so the timing figures of such a run mean nothing)."""
    import random
    import tracemalloc

    from abuseguard import Guard, Policy, RequestInfo

    guard = started(Guard(Policy(max_identities=max(16, count))))
    gc.collect()
    gc_empty_ms, gc_empty_cpu_ms = gc_pauses_ms()
    tracked_empty = len(gc.get_objects())
    rss_built = benchlib.rss_bytes()
    anon_built = benchlib.rss_parts().get("RssAnon", 0)
    if trace_heap:
        tracemalloc.start(6)
        heap_before = tracemalloc.take_snapshot()
    ts0 = 1_700_000_000.0
    check = guard.check
    complete = guard.complete
    done = 0
    while done < count:
        n = min(CHUNK, count - done)
        infos = [
            RequestInfo(ip=ipv4(i), key=key_of(i), ts=ts0 + i * 1e-4) for i in range(done, done + n)
        ]
        for info in infos:
            complete(info, check(info), status=200)
        del infos
        done += n
    gc.collect()
    rss_end = benchlib.rss_bytes()
    anon_end = benchlib.rss_parts().get("RssAnon", 0)
    heap = None
    if trace_heap:
        heap = heap_sites(heap_before, tracemalloc.take_snapshot(), count)
        tracemalloc.stop()
    tables = table_breakdown(guard.engine, count)
    pause_ms, pause_cpu_ms = gc_pauses_ms()
    tracked = len(gc.get_objects())
    rng = random.Random(7)
    ts = ts0 + count * 1e-4 + 10.0
    sample = [rng.randrange(count) for _ in range(TIMED_CHECKS)]
    infos = [RequestInfo(ip=ipv4(i), key=key_of(i), ts=ts + j * 1e-3) for j, i in enumerate(sample)]
    clock = time.perf_counter_ns
    took = []
    for info in infos:
        t0 = clock()
        check(info)
        took.append(clock() - t0)
    return {
        "clients": count,
        "max_identities": max(16, count),
        "rss_after_guard_mb": rss_built / MIB,
        "rss_end_mb": rss_end / MIB,
        "bytes_per_client": (rss_end - rss_built) / count,
        "anon_bytes_per_client": (anon_end - anon_built) / count,
        # The engine's share: rows in use and the index blocks of tables with rows.
        "table_bytes_per_client": sum(
            t["rows_per_client"] + t["index_per_client"] for t in tables.values()
        ),
        "tables": tables,
        "heap": heap,
        "engine_preallocated_mb": guard.engine.nbytes / MIB,
        "gc_pause_empty_ms": gc_empty_ms,
        "gc_pause_ms": pause_ms,
        "gc_pause_empty_cpu_ms": gc_empty_cpu_ms,
        "gc_pause_cpu_ms": pause_cpu_ms,
        "gc_tracked_empty": tracked_empty,
        "gc_tracked": tracked,
        "gc_frozen": gc.get_freeze_count(),
        "check": benchlib.percentiles(took),
    }


def child_flood(capacity: int, fill: int, flood: int) -> dict[str, Any]:
    from abuseguard import Guard, Policy

    guard = started(Guard(Policy(max_identities=capacity)))
    gc.collect()
    rss_built = benchlib.rss_bytes()
    samples: list[dict[str, float]] = [{"clients": 0, "rss_mb": rss_built / MIB}]
    every = max(CHUNK, (fill + flood) // 20)
    ts0 = 1_700_000_000.0
    fill_seconds = feed(guard, ipv6, 0, fill, ts0, samples, every)
    rss_before = benchlib.rss_bytes()
    evictions_before = sum(t.evictions for t in guard.engine.tables)
    flood_seconds = feed(guard, ipv6, fill, flood, ts0, samples, every)
    rss_after = benchlib.rss_bytes()
    return {
        "max_identities": capacity,
        "fill_clients": fill,
        "flood_clients": flood,
        "rss_after_guard_mb": rss_built / MIB,
        "rss_before_flood_mb": rss_before / MIB,
        "rss_after_flood_mb": rss_after / MIB,
        "growth_mb": (rss_after - rss_before) / MIB,
        "engine_preallocated_mb": guard.engine.nbytes / MIB,
        "key_table_rows": len(guard.engine.tables[0]),
        "evictions_during_flood": sum(t.evictions for t in guard.engine.tables) - evictions_before,
        "checks_per_second_fill": fill / fill_seconds if fill_seconds else None,
        "checks_per_second_flood": flood / flood_seconds if flood_seconds else None,
        "samples": samples,
    }


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-5:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _cli() -> list[str] | None:
    exe = Path(sys.executable).parent / "abuseguard"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("abuseguard")
    return [found] if found else None


REPLAY_RUNS = 3
# API-key clients measured, full run and --quick.
KEY_CLIENTS = {False: (10_000, 100_000, 1_000_000), True: (10_000, 100_000)}


def replay(hours: float) -> dict[str, Any]:
    cli = _cli()
    if cli is None:
        return {"skipped": "the abuseguard command is not installed"}
    with tempfile.TemporaryDirectory(prefix="abuseguard-bench-replay-") as tmp:
        trace = Path(tmp) / "trace.jsonl"
        made = subprocess.run(
            [*cli, "simulate", "-o", str(trace), "--hours", str(hours), "--seed", "1", "-q"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if made.returncode != 0 or not trace.exists():
            return {
                "skipped": "`abuseguard simulate` failed or does not exist: "
                + (made.stderr.strip().splitlines() or ["?"])[-1]
            }
        out: dict[str, Any] = {"trace_hours": hours}
        policies = {
            "default Policy()": None,
            "content fingerprinting on": f"{Path(__file__).parent / 'replay_policies.py'}"
            ":content_policy",
        }
        for label, policy in policies.items():
            command = [*cli, "replay", str(trace), "--format", "json", "--no-progress"]
            if policy:
                command += ["--policy", policy]
            reports = []
            for _ in range(REPLAY_RUNS):  # a shared machine: the median of a few runs
                done = subprocess.run(command, capture_output=True, text=True, timeout=900)
                if done.returncode != 0:
                    break
                reports.append(json.loads(done.stdout))
            if len(reports) < REPLAY_RUNS:
                out[label] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
                continue
            reports.sort(key=lambda r: float(r.get("decisions_per_second") or 0.0))
            report = reports[len(reports) // 2]
            out[label] = {
                key: report.get(key)
                for key in (
                    "requests",
                    "decisions_per_second",
                    "records_per_second",
                    "guard_seconds",
                    "elapsed_seconds",
                )
            }
            out[label]["runs_decisions_per_second"] = [
                r.get("decisions_per_second") for r in reports
            ]
        return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    identities = 250_000 if quick else 1_000_000
    result: dict[str, Any] = {"budget_mb": BUDGET_MB}
    ident = _child(
        ["--child", "identities", "--count", str(identities), "--capacity", "1000000"], timeout=900
    )
    if "bytes_per_identity" in ident:
        # In a quick run fewer clients are fed; the RSS at 1M is then extrapolated.
        ident["rss_at_1m_mb"] = (
            ident["rss_end_mb"]
            if identities == 1_000_000
            else ident["rss_after_guard_mb"] + ident["bytes_per_identity"] * 1_000_000 / MIB
        )
        ident["rss_at_1m_extrapolated"] = identities != 1_000_000
    result["identities"] = ident
    result["keys"] = [
        _child(["--child", "keys", "--count", str(n)], timeout=1800) for n in KEY_CLIENTS[quick]
    ]
    capacity = 100_000
    result["flood"] = _child(
        [
            "--child",
            "flood",
            "--capacity",
            str(capacity),
            "--fill",
            str(2 * capacity),
            "--count",
            str(200_000 if quick else 400_000),
        ],
        timeout=900,
    )
    result["replay"] = replay(1.0 if quick else 3.0)
    return result


def report(result: dict[str, Any]) -> None:
    ident = result["identities"]
    print("Scale")
    if "error" in ident:
        print(f"  identities: failed: {ident['error']}")
    else:
        note = " (extrapolated)" if ident["rss_at_1m_extrapolated"] else ""
        print(
            f"  {ident['clients']:,} distinct IPv4 clients, max_identities="
            f"{ident['max_identities']:,}: {ident['bytes_per_identity']:.0f} B per identity, "
            f"RSS at 1M {ident['rss_at_1m_mb']:.0f} MB{note} (budget {BUDGET_MB} MB), "
            f"{ident['checks_per_second']:.0f} checks/s (all new clients)"
        )
    for keys in result.get("keys", []):
        if "error" in keys:
            print(f"  API-key clients: failed: {keys['error']}")
            continue
        timing = keys["check"]
        print(
            f"  {keys['clients']:,} API-key clients (own key, own address): "
            f"{keys['bytes_per_client']:.0f} B per client (RSS; tables and their index "
            f"{keys['table_bytes_per_client']:.0f} B), gc.collect() "
            f"{keys['gc_pause_ms']:.1f} ms ({keys['gc_pause_empty_ms']:.1f} ms empty; "
            f"{keys['gc_tracked']:,} objects tracked), Guard.check p50 "
            f"{timing['p50_us']:.1f} us p99 {timing['p99_us']:.1f} us"
        )
    flood = result["flood"]
    if "error" in flood:
        print(f"  flood: failed: {flood['error']}")
    else:
        print(
            f"  IPv6 flood: table {flood['max_identities']:,}, {flood['flood_clients']:,} "
            f"unique /64s after {flood['fill_clients']:,}: RSS {flood['rss_before_flood_mb']:.0f}"
            f" -> {flood['rss_after_flood_mb']:.0f} MB ({flood['growth_mb']:+.1f} MB), "
            f"{flood['evictions_during_flood']:,} evictions, "
            f"{flood['checks_per_second_flood']:.0f} checks/s"
        )
    rep = result["replay"]
    if "skipped" in rep:
        print(f"  replay: skipped: {rep['skipped']}")
    else:
        for label, entry in rep.items():
            if isinstance(entry, dict) and "decisions_per_second" in entry:
                print(
                    f"  replay ({label}): {entry['requests']:,} requests, "
                    f"{entry['decisions_per_second']:.0f} decisions/s"
                )
            elif isinstance(entry, dict):
                print(f"  replay ({label}): {entry}")


def _iter_child(argv: list[str]) -> Iterator[dict[str, Any]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=("identities", "keys", "flood"))
    parser.add_argument("--count", type=int)
    parser.add_argument("--capacity", type=int)
    parser.add_argument("--fill", type=int)
    parser.add_argument("--trace-heap", action="store_true")
    args = parser.parse_args(argv)
    if args.child == "identities":
        yield child_identities(args.count, args.capacity)
    elif args.child == "keys":
        yield child_keys(args.count, args.trace_heap)
    else:
        yield child_flood(args.capacity, args.fill, args.count)


def main() -> None:
    if "--child" in sys.argv:
        for result in _iter_child(sys.argv[1:]):
            print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer clients, shorter trace")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
