"""Run every benchmark, then write benchmarks/RESULTS.md, results.json and the PNG plots.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only decision asgi http scale extra]

Each part runs in its own process (so one part's memory, caches and compiled kernels do not
colour another's) and hands its figures back as JSON:

- decision: bench_decision.py (in-process latency by stage, the kernel, cold start)
- asgi:     bench_asgi.py (ASGI overhead without HTTP, against slowapi and fastapi-limiter)
- http:     bench_http.py (uvicorn + wrk throughput, ratios to the bare app)
- scale:    bench_scale.py (memory per identity, RSS at 1M, IPv6 flood, replay speed)
- extra:    bench_redis.py and bench_content.py, when present, their output kept verbatim

The report states every budget of DESIGN.md with the figure measured here and, when a
budget is missed, by how much. The machine is usually shared: ratios taken side by side in
one run are what to trust, absolute figures less so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

BENCH = benchlib.BENCH_DIR
PARTS = ("decision", "asgi", "http", "scale", "extra")
EXTRA_SCRIPTS = ("bench_redis.py", "bench_content.py")
PART_TIMEOUT = 900
EXTRA_TIMEOUT = 240  # scripts written by others: bounded so `make bench` stays near 10 min


# ----------------------------------------------------------------------------- running


def run_part(script: str, args: list[str], timeout: float = PART_TIMEOUT) -> tuple[int, str, float]:
    """Run a benchmark script, echoing its output as it comes; (exit code, output, seconds).

    The script runs in a process group of its own, so that a timeout also stops the servers
    it started.
    """
    started = time.monotonic()
    command = [sys.executable, str(BENCH / script), *args]
    print(
        f"\n$ {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(command))}", flush=True
    )
    lines: list[str] = []
    timed_out = threading.Event()
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=benchlib.REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    ) as proc:

        def stop() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, stop)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                lines.append(line)
            code = proc.wait()
        finally:
            timer.cancel()
    if timed_out.is_set():
        lines.append(f"[stopped after {timeout:.0f} s]\n")
    return code, "".join(lines), time.monotonic() - started


def json_part(script: str, args: list[str], tmp: Path) -> dict[str, Any]:
    out = tmp / f"{Path(script).stem}.json"
    code, output, seconds = run_part(script, [*args, "--json", str(out)])
    if code != 0 or not out.exists():
        tail = output.strip().splitlines()[-8:]
        return {"error": f"{script} exited with {code}", "output_tail": tail, "seconds": seconds}
    result: dict[str, Any] = json.loads(out.read_text())
    result["seconds"] = seconds
    return result


def extra_parts(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for script in EXTRA_SCRIPTS:
        path = BENCH / script
        if not path.exists():
            out[script] = {"missing": True}
            continue
        helptext = subprocess.run(
            [sys.executable, str(path), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=benchlib.REPO,
        ).stdout
        args = ["--quick"] if quick and "--quick" in helptext else []
        code, output, seconds = run_part(script, args, timeout=EXTRA_TIMEOUT)
        out[script] = {"exit_code": code, "output": output, "seconds": seconds, "args": args}
    return out


# ----------------------------------------------------------------------------- budgets


@dataclass
class Budget:
    name: str
    limit: str
    measured: str
    verdict: str  # "met", "MISSED by ...", "not measured: ..."


def _upper(
    name: str,
    value: float | None,
    limit: float,
    unit: str,
    fmt: str = "{:.1f}",
    why_missing: str = "",
) -> Budget:
    limit_text = f"≤ {fmt.format(limit)} {unit}"
    if value is None:
        return Budget(name, limit_text, "—", f"not measured: {why_missing}")
    measured = f"{fmt.format(value)} {unit}"
    if value <= limit:
        return Budget(name, limit_text, measured, "met")
    return Budget(
        name,
        limit_text,
        measured,
        f"**MISSED** by {fmt.format(value - limit)} {unit} ({value / limit:.1f}x the budget)",
    )


def _lower(
    name: str, value: float | None, floor: float, unit: str, why_missing: str = ""
) -> Budget:
    limit_text = f"≥ {floor:,.0f} {unit}"
    if value is None:
        return Budget(name, limit_text, "—", f"not measured: {why_missing}")
    measured = f"{value:,.0f} {unit}"
    if value >= floor:
        return Budget(name, limit_text, measured, "met")
    return Budget(
        name,
        limit_text,
        measured,
        f"**MISSED** by {floor - value:,.0f} {unit} ({value / floor:.2f}x the budget)",
    )


def _ratio(name: str, value: float | None, floor: float, why_missing: str = "") -> Budget:
    limit_text = f"≥ {floor:.0%} of bare"
    if value is None:
        return Budget(name, limit_text, "—", f"not measured: {why_missing}")
    measured = f"{value:.0%} of bare"
    if value >= floor:
        return Budget(name, limit_text, measured, "met")
    return Budget(
        name, limit_text, measured, f"**MISSED** by {(floor - value) * 100:.0f} percentage points"
    )


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def budgets(results: dict[str, Any]) -> list[Budget]:
    out: list[Budget] = []
    runs = _get(results, "decision", "runs") or []
    base = next((r for r in runs if not r.get("content")), None)
    why = _get(results, "decision", "error") or "the decision benchmark did not run"
    out.append(
        _upper(
            "In-process decision, memory backend, p50 (Guard.check)",
            _get(base, "total", "p50_us"),
            5.0,
            "µs",
            why_missing=why,
        )
    )
    out.append(
        _upper(
            "In-process decision, memory backend, p99 (Guard.check)",
            _get(base, "total", "p99_us"),
            20.0,
            "µs",
            why_missing=why,
        )
    )
    out.append(
        _upper(
            "Scoring kernel: one Numba call, p50 (as the guard calls it)",
            _get(base, "kernel", "p50_us"),
            1.0,
            "µs",
            "{:.2f}",
            why_missing=why,
        )
    )
    asgi = results.get("asgi") or {}
    why = asgi.get("error") or "stack unavailable"
    out.append(
        _upper(
            "ASGI overhead, abuseguard memory (scoring + intel), p50",
            _get(asgi, "stacks", "abuseguard-memory", "overhead", "p50_us"),
            10.0,
            "µs",
            why_missing=why,
        )
    )
    out.append(
        _upper(
            "ASGI overhead, same behind a trusted proxy (X-Forwarded-For), p50",
            _get(asgi, "stacks", "abuseguard-memory-proxied", "overhead", "p50_us"),
            10.0,
            "µs",
            why_missing=why,
        )
    )
    http = results.get("http") or {}
    why = http.get("error") or http.get("skipped") or ""
    ag_redis_why = _get(http, "unavailable", "abuseguard-redis-proxied") or why or "no result"
    out.append(
        _ratio(
            "HTTP throughput, abuseguard memory (uvicorn + wrk)",
            _get(http, "stacks", "abuseguard-memory-proxied", "ratio_to_bare", "median"),
            0.90,
            why_missing=why or "no result",
        )
    )
    out.append(
        _ratio(
            "HTTP throughput, abuseguard Redis, inline mode (exact, one round trip)",
            _get(http, "stacks", "abuseguard-redis-proxied", "ratio_to_bare", "median"),
            0.50,
            why_missing=ag_redis_why,
        )
    )
    synced_why = _get(http, "unavailable", "abuseguard-redis-synced-proxied") or why or "no result"
    out.append(
        _ratio(
            "HTTP throughput, abuseguard Redis, synced mode (local decisions, 10 ms sync)",
            _get(http, "stacks", "abuseguard-redis-synced-proxied", "ratio_to_bare", "median"),
            0.50,
            why_missing=synced_why,
        )
    )
    scale = results.get("scale") or {}
    ident = scale.get("identities") or {}
    why = scale.get("error") or ident.get("error") or "no result"
    label = "RSS with 1,000,000 tracked identities"
    if ident.get("rss_at_1m_extrapolated"):
        label += " (extrapolated in --quick)"
    out.append(_upper(label, ident.get("rss_at_1m_mb"), 512.0, "MB", "{:.0f}", why_missing=why))
    flood = scale.get("flood") or {}
    if "growth_mb" in flood:
        bound = 0.05 * flood["rss_before_flood_mb"]
        verdict = (
            "met"
            if flood["growth_mb"] <= bound
            else f"**MISSED**: grew {flood['growth_mb']:.0f} MB"
        )
        out.append(
            Budget(
                "IPv6 flood: memory stays at the table bound",
                f"growth < 5% of RSS before the flood ({bound:.0f} MB)",
                f"{flood['growth_mb']:+.1f} MB after {flood['flood_clients']:,} new clients",
                verdict,
            )
        )
    replay = scale.get("replay") or {}
    default_replay = replay.get("default Policy()") or {}
    out.append(
        _lower(
            "Replay decisions/s, default Policy() (memory backend, one core; issue #6)",
            default_replay.get("decisions_per_second"),
            50_000,
            "decisions/s",
            why_missing=replay.get("skipped") or default_replay.get("error") or why,
        )
    )
    cold = _get(results, "decision", "cold_start", "default", "warm_cache")
    if cold:
        first_ms = cold["first_decision_s"] * 1000
        out.append(
            Budget(
                "Start-up: kernels compile or load at construction, not on a request",
                "first decision without compiling (< 10 ms)",
                f"first decision {first_ms:.1f} ms after Guard()",
                "met" if first_ms < 10 else "**MISSED**",
            )
        )
    return out


# ----------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_decision(results: dict[str, Any], path: Path) -> bool:
    runs = _get(results, "decision", "runs")
    if not runs:
        return False
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6.2))
    stages = [
        s
        for s in (
            "asgi_request_info",
            "asgi_request_info_proxied",
            "identity",
            "intel",
            "client",
            "content_fingerprint",
            "engine",
            "kernel",
            "decide",
            "headers",
            "complete",
            "total",
        )
    ]
    colors = {False: "#1f77b4", True: "#ff7f0e"}
    height = 0.38
    for offset, run in enumerate(runs):
        content = bool(run.get("content"))
        ys, p50, p99 = [], [], []
        for i, stage in enumerate(stages):
            if stage in run:
                ys.append(i + (offset - 0.5) * height)
                p50.append(run[stage]["p50_us"])
                p99.append(run[stage]["p99_us"])
        label = "content fingerprinting on" if content else "scoring + intel + buckets"
        ax1.barh(ys, p50, height=height, color=colors[content], label=f"p50, {label}")
        ax1.scatter(
            p99,
            ys,
            marker="|",
            s=120,
            color="black",
            label="p99" if offset == 0 else None,
            zorder=3,
        )
    ax1.set_yticks(range(len(stages)), stages)
    ax1.invert_yaxis()
    ax1.set_xscale("log")
    ax1.axvline(5, color="red", ls="--", lw=1, label="budget: total p50 5 µs")
    ax1.axvline(1, color="purple", ls=":", lw=1, label="budget: kernel 1 µs")
    ax1.set_xlabel("µs per request (log)")
    ax1.set_title("In-process latency by stage (memory backend)")
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    for run in runs:
        samples = sorted(_get(run, "total", "samples_us") or [])
        if not samples:
            continue
        content = bool(run.get("content"))
        ys = [(i + 1) / len(samples) for i in range(len(samples))]
        ax2.plot(
            samples,
            ys,
            color=colors[content],
            label="content fingerprinting on" if content else "scoring + intel + buckets",
        )
    ax2.axvline(5, color="red", ls="--", lw=1, label="p50 budget 5 µs")
    ax2.axvline(20, color="red", ls=":", lw=1, label="p99 budget 20 µs")
    ax2.set_xscale("log")
    ax2.set_xlabel("Guard.check, µs (log)")
    ax2.set_ylabel("share of requests")
    ax2.set_title("Distribution of the whole decision")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_asgi(results: dict[str, Any], path: Path) -> bool:
    stacks = _get(results, "asgi", "stacks")
    if not stacks:
        return False
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    for name, entry in stacks.items():
        samples = sorted(entry.get("samples_us") or [])
        if not samples:
            continue
        ys = [(i + 1) / len(samples) for i in range(len(samples))]
        style = "-" if name.startswith("abuseguard") else "--" if "redis" in name else "-."
        ax1.plot(samples, ys, style, label=name, lw=2 if name.startswith("abuseguard") else 1)
    ax1.set_xscale("log")
    ax1.set_xlabel("µs per request, app called as an ASGI callable (log)")
    ax1.set_ylabel("share of requests")
    ax1.set_title("ASGI latency per stack (no HTTP)")
    ax1.legend(fontsize=7)
    names = [n for n, e in stacks.items() if "overhead" in e]
    p50 = [stacks[n]["overhead"]["p50_us"] for n in names]
    lo = [
        max(0.0, v - stacks[n]["overhead"]["round_p50_min_us"])
        for n, v in zip(names, p50, strict=True)
    ]
    hi = [
        max(0.0, stacks[n]["overhead"]["round_p50_max_us"] - v)
        for n, v in zip(names, p50, strict=True)
    ]
    colors = ["#2ca02c" if n.startswith("abuseguard") else "#7f7f7f" for n in names]
    ax2.barh(names, p50, xerr=[lo, hi], color=colors, capsize=3)
    ax2.axvline(10, color="red", ls="--", lw=1, label="budget 10 µs (abuseguard memory)")
    ax2.invert_yaxis()
    ax2.set_xlabel("added µs at p50 vs its bare app (bars: spread of round p50s)")
    ax2.set_title("What each middleware / limiter adds")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_http(results: dict[str, Any], path: Path) -> bool:
    stacks = _get(results, "http", "stacks")
    if not stacks:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5))
    names = list(stacks)
    med = [stacks[n].get("ratio_to_bare", {}).get("median", 1.0) for n in names]
    lo = [
        m - stacks[n].get("ratio_to_bare", {}).get("min", m)
        for n, m in zip(names, med, strict=True)
    ]
    hi = [
        stacks[n].get("ratio_to_bare", {}).get("max", m) - m
        for n, m in zip(names, med, strict=True)
    ]
    colors = [
        "#2ca02c"
        if n.startswith("abuseguard")
        else "#1f77b4"
        if n in ("bare", "noop", "fastapi-bare")
        else "#7f7f7f"
        for n in names
    ]
    ax.barh(names, med, xerr=[lo, hi], color=colors, capsize=3)
    for i, n in enumerate(names):
        ax.text(
            med[i] + hi[i] + 0.015,
            i,
            f"{stacks[n]['rps_median']:.0f} req/s",
            va="center",
            fontsize=8,
        )
    ax.axvline(0.9, color="red", ls="--", lw=1, label="budget memory ≥ 90%")
    ax.axvline(0.5, color="orange", ls="--", lw=1, label="budget Redis ≥ 50%")
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.2, max(med) + 0.25))
    ax.set_xlabel("throughput / bare Starlette in the same round (median; bars: min-max)")
    ax.set_title(_get(results, "http", "server") or "HTTP throughput")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scale(results: dict[str, Any], path: Path) -> bool:
    ident = _get(results, "scale", "identities")
    flood = _get(results, "scale", "flood")
    if not (ident and "samples" in ident) and not (flood and "samples" in flood):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5))
    if ident and "samples" in ident:
        xs = [s["clients"] for s in ident["samples"]]
        ax.plot(
            xs,
            [s["rss_mb"] for s in ident["samples"]],
            "o-",
            label=f"distinct IPv4 clients, max_identities={ident['max_identities']:,}",
        )
    if flood and "samples" in flood:
        xs = [s["clients"] for s in flood["samples"]]
        ax.plot(
            xs,
            [s["rss_mb"] for s in flood["samples"]],
            "s-",
            label=f"unique IPv6 /64s, max_identities={flood['max_identities']:,}",
        )
        ax.axvline(
            flood["fill_clients"],
            color="gray",
            ls=":",
            lw=1,
            label="flood starts (table already full)",
        )
    ax.axhline(512, color="red", ls="--", lw=1, label="budget 512 MB at 1M identities")
    ax.set_xlabel("clients seen")
    ax.set_ylabel("RSS, MB")
    ax.set_title("Memory as identities arrive")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS: dict[str, Callable[[dict[str, Any], Path], bool]] = {
    "decision_latency.png": plot_decision,
    "asgi_overhead.png": plot_asgi,
    "http_throughput.png": plot_http,
    "scale_memory.png": plot_scale,
}


# ----------------------------------------------------------------------------- report


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def _section_decision(results: dict[str, Any]) -> list[str]:
    if "decision" not in results:
        return []
    dec = results.get("decision") or {}
    lines = ["## 1. In-process decision latency (memory backend)", ""]
    if "error" in dec:
        return [*lines, f"Failed: {dec['error']}", "```", *dec.get("output_tail", []), "```", ""]
    runs = dec.get("runs", [])
    if runs:
        first = runs[0]
        lines += [
            f"`Guard.check` on {first['requests']:,} requests from 2,000 accounts (one address and "
            f"User-Agent each), intel from {first['intel_source']}, generous limits; stages timed "
            "per call on the same warmed guard. Each sample includes reading the clock "
            f"({dec.get('timer_overhead_ns', 0):.0f} ns).",
            "",
            "| stage | "
            + " | ".join(
                ("content on" if r.get("content") else "scoring + intel + buckets") + h
                for r in runs
                for h in (" p50 µs", " p99 µs")
            )
            + " |",
            "|---|" + "---:|" * (2 * len(runs)),
        ]
        names = {
            "asgi_request_info": "ASGI scope → RequestInfo (direct client)",
            "asgi_request_info_proxied": "ASGI scope → RequestInfo (trusted proxy, XFF)",
            "identity": "identity (address, key hash)",
            "intel": "intel (cached network profile)",
            "client": "client class + persona",
            "content_fingerprint": "content fingerprint",
            "prepare": "prepare (all of the above)",
            "engine": "engine: rows + buckets + scoring (one Numba call)",
            "kernel": "  kernel call alone (as the guard makes it)",
            "kernel_dispatch": "  kernel, bare Numba dispatch",
            "empty_kernel_same_args": "  an empty Numba function with the same arguments",
            "decide": "decide (outputs → Decision)",
            "headers": "RateLimit headers",
            "complete": "complete (outcome fed back)",
            "total": "**total: Guard.check**",
        }
        for stage, label in names.items():
            cells = []
            for r in runs:
                s = r.get(stage)
                cells += [_f(_get(s, "p50_us"), "{:.2f}"), _f(_get(s, "p99_us"), "{:.2f}")]
            if any(c != "—" for c in cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        for r in runs:
            label = "content on" if r.get("content") else "scoring + intel + buckets"
            lines.append(f"Actions decided ({label}): {r.get('actions')}.")
        lines.append("")
    cold = dec.get("cold_start")
    if cold:
        lines += [
            "Cold start, import to first decision, each in a fresh process "
            "(empty cache: NUMBA_CACHE_DIR set to a new temporary directory):",
            "",
            "| policy | Numba cache | import s | Guard() s | first decision ms | total s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for variant, entry in cold.items():
            if "error" in entry:
                lines.append(f"| {variant} | failed: {entry['error']} | | | | |")
                continue
            for cache in ("empty_cache", "warm_cache"):
                c = entry[cache]
                label = (
                    "empty"
                    if cache == "empty_cache"
                    else (f"warm (median of {entry['warm_repeats']})")
                )
                lines.append(
                    f"| {variant} | {label} | {c['import_s']:.2f} | "
                    f"{c['construct_s']:.2f} | {c['first_decision_s'] * 1000:.1f} | "
                    f"{c['total_s']:.2f} |"
                )
        lines.append("")
    return lines


def _section_asgi(results: dict[str, Any]) -> list[str]:
    if "asgi" not in results:
        return []
    asgi = results.get("asgi") or {}
    lines = ["## 2. ASGI overhead without HTTP", ""]
    if "error" in asgi:
        return [*lines, f"Failed: {asgi['error']}", "```", *asgi.get("output_tail", []), "```", ""]
    lines += [
        f"A trivial Starlette app called directly as an ASGI callable (synthetic scope, receive "
        f"and send) in one {asgi.get('loop', '?')} event loop; {asgi.get('rounds')} alternating "
        f"rounds of {asgi.get('per_round'):,} requests per stack ({asgi.get('per_round_redis'):,} "
        f"for Redis stacks) over {asgi.get('clients'):,} clients. Intel: {asgi.get('intel')}. "
        "Overhead = the stack's percentile minus its baseline's (bare Starlette; bare FastAPI "
        "for fastapi-limiter); spread = min and max of the per-round p50 differences. "
        "Self-check: with tiny limits the second request from one client must get 429.",
        "",
        "| stack | p50 µs | p99 µs | + p50 µs | + p99 µs | round spread µs | statuses | "
        "decisions | self-check |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for name, e in (asgi.get("stacks") or {}).items():
        over = e.get("overhead") or {}
        spread = f"{over['round_p50_min_us']:.1f} to {over['round_p50_max_us']:.1f}" if over else ""
        lines.append(
            f"| {name} | {e['latency']['p50_us']:.1f} | {e['latency']['p99_us']:.1f} | "
            f"{_f(over.get('p50_us'))} | {_f(over.get('p99_us'))} | {spread} | "
            f"{e.get('statuses')} | {e.get('decisions')} | {e.get('self_check') or '—'} |"
        )
    for name, reason in (asgi.get("unavailable") or {}).items():
        lines.append(f"| {name} | not run: {reason} | | | | | | | |")
    lines += [
        "",
        "`abuseguard-memory`: the client connects directly. `abuseguard-memory-proxied`:"
        " the peer is a trusted loopback proxy and the client is read from "
        "X-Forwarded-For (the path every HTTP figure below takes).",
        "",
    ]
    return lines


def _section_http(results: dict[str, Any]) -> list[str]:
    if "http" not in results:
        return []
    http = results.get("http") or {}
    lines = ["## 3. HTTP throughput (uvicorn + wrk, loopback)", ""]
    if "error" in http:
        return [*lines, f"Failed: {http['error']}", "```", *http.get("output_tail", []), "```", ""]
    if "skipped" in http:
        return [*lines, f"Skipped: {http['skipped']}", ""]
    lines += [
        f"Server: {http.get('server')}. Load: {http.get('load')}. {http.get('rounds')} rounds per "
        f"stack, alternating, the order rotated each round. Intel: {http.get('intel')}. Ratios "
        "are taken against the bare app measured in the same round (median over rounds, with "
        "min-max). Limits are far above the offered load; every response must be 2xx and every "
        "guard decision `allow`.",
        "",
        "| stack | req/s (median) | spread | x bare | x own baseline | p50 ms | p99 ms | "
        "non-2xx | socket errors | decisions seen by the endpoint |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, e in (http.get("stacks") or {}).items():
        ratio = e.get("ratio_to_bare") or {}
        own = e.get("ratio_to_fastapi-bare") or {}
        ratio_text = (
            f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "1.00"
        )
        own_text = f"{own['median']:.2f} vs FastAPI" if own else ""
        lines.append(
            f"| {name} | {e['rps_median']:.0f} | {e['rps_min']:.0f}-{e['rps_max']:.0f} | "
            f"{ratio_text} | {own_text} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | "
            f"{e['non_2xx']} | {e['socket_errors']} | {e['decisions']} |"
        )
    for name, reason in (http.get("unavailable") or {}).items():
        lines.append(f"| {name} | not run: {reason} | | | | | | | | |")
    for name, e in (http.get("stacks") or {}).items():
        if e.get("server_log_lines"):
            sample = "; ".join(f"`{x[:160]}`" for x in e.get("server_log_sample", [])[:3])
            lines.append(
                f"\nThe {name} server logged {e['server_log_lines']} lines during the "
                f"run, e.g. {sample}"
            )
    noop = _get(http, "stacks", "noop", "ratio_to_bare")
    if noop:
        lines.append(
            f"\nThe no-op middleware measured {noop['median']:.2f}x bare (rounds "
            f"{noop['min']:.2f} to {noop['max']:.2f}): that is the noise floor of this run."
        )
    lines += [
        "",
        "slowapi keys on the peer address (every request comes from 127.0.0.1); "
        "fastapi-limiter on X-Forwarded-For + path; abuseguard on the API key, with the "
        "client address from X-Forwarded-For behind a trusted loopback proxy.",
        "",
    ]
    return lines


def _section_scale(results: dict[str, Any]) -> list[str]:
    if "scale" not in results:
        return []
    scale = results.get("scale") or {}
    lines = ["## 4. Scale", ""]
    if "error" in scale:
        return [
            *lines,
            f"Failed: {scale['error']}",
            "```",
            *scale.get("output_tail", []),
            "```",
            "",
        ]
    ident = scale.get("identities") or {}
    if "error" in ident:
        lines.append(f"Identities: failed: {ident['error']}")
    elif ident:
        note = (
            " (extrapolated from the clients fed in this --quick run)"
            if ident.get("rss_at_1m_extrapolated")
            else ""
        )
        rows = ident.get("table_rows", {})
        widths = ident.get("table_row_bytes", {})
        lines += [
            f"`Guard(Policy(max_identities={ident['max_identities']:,}))` fed "
            f"{ident['clients']:,} distinct IPv4 clients, one `Guard.check` each (fresh process):",
            "",
            "| figure | value |",
            "|---|---:|",
            f"| RSS after import | {ident['rss_after_import_mb']:.0f} MB |",
            f"| RSS after Guard() (tables preallocated, pages untouched) | "
            f"{ident['rss_after_guard_mb']:.0f} MB |",
            f"| RSS after {ident['clients']:,} clients | {ident['rss_end_mb']:.0f} MB |",
            f"| of which anonymous (tables, Python objects) / file-backed (mapped libraries) | "
            f"{ident.get('rss_end_anon_mb', 0):.0f} MB / "
            f"{ident.get('rss_end_file_mb', 0):.0f} MB |",
            f"| **RSS at 1,000,000 identities**{note} | **{ident['rss_at_1m_mb']:.0f} MB** |",
            f"| memory per tracked identity (RSS growth / clients) | "
            f"{ident['bytes_per_identity']:.0f} B |",
            f"| engine tables preallocated (virtual) | {ident['engine_preallocated_mb']:.0f} MB |",
            "| rows in use (key / ip / prefix / asn / persona) | "
            + " / ".join(f"{rows.get(k, 0):,}" for k in ("key", "ip", "prefix", "asn", "persona"))
            + " |",
            "| row width in bytes (key / ip / prefix / asn / persona) | "
            + " / ".join(str(widths.get(k, "?")) for k in ("key", "ip", "prefix", "asn", "persona"))
            + " |",
            f"| checks/s while every client is new | {ident['checks_per_second']:.0f} |",
            "",
        ]
    flood = scale.get("flood") or {}
    if "error" in flood:
        lines.append(f"Flood: failed: {flood['error']}")
    elif flood:
        lines += [
            f"IPv6 flood: `max_identities={flood['max_identities']:,}`, filled with "
            f"{flood['fill_clients']:,} unique /64 clients, then {flood['flood_clients']:,} more: "
            f"RSS {flood['rss_before_flood_mb']:.0f} MB before the flood, "
            f"{flood['rss_after_flood_mb']:.0f} MB after ({flood['growth_mb']:+.1f} MB); "
            f"{flood['evictions_during_flood']:,} row evictions; "
            f"{flood['checks_per_second_fill']:.0f} checks/s while filling, "
            f"{flood['checks_per_second_flood']:.0f} checks/s during the flood (every client new,"
            " every insert evicts).",
            "",
        ]
    rep = scale.get("replay") or {}
    if "skipped" in rep:
        lines.append(f"Replay: skipped: {rep['skipped']}")
    elif rep:
        lines += [
            "Replay (`abuseguard simulate --hours "
            f"{rep.get('trace_hours')}` then `abuseguard replay --format json`; "
            "decisions/s counts time inside the guard only: check, complete and the batch "
            "fingerprinting of request bodies; the median of 3 runs, all 3 beside it):",
            "",
            "| policy | requests | decisions/s | records/s (with parsing) | runs, decisions/s |",
            "|---|---:|---:|---:|---|",
        ]
        for label, entry in rep.items():
            if not isinstance(entry, dict):
                continue
            if "error" in entry:
                lines.append(f"| {label} | failed: {entry['error']} | | | |")
            else:
                runs = ", ".join(
                    _f(x, "{:.0f}") for x in entry.get("runs_decisions_per_second") or ()
                )
                lines.append(
                    f"| {label} | {entry.get('requests'):,} | "
                    f"{_f(entry.get('decisions_per_second'), '{:.0f}')} | "
                    f"{_f(entry.get('records_per_second'), '{:.0f}')} | {runs} |"
                )
    lines.append("")
    return lines


def _section_extra(results: dict[str, Any]) -> list[str]:
    if "extra" not in results:
        return []
    extra = results.get("extra") or {}
    lines = ["## 5. Other benchmarks (output kept as printed)", ""]
    for script, entry in extra.items():
        if entry.get("missing"):
            lines += [f"`benchmarks/{script}`: not present in this checkout.", ""]
            continue
        args = " ".join(entry.get("args", []))
        lines += [
            f"`benchmarks/{script} {args}`".replace(" `", "`") + f" (exit {entry['exit_code']},"
            f" {entry['seconds']:.0f} s):",
            "",
            "```",
            entry["output"].rstrip(),
            "```",
            "",
        ]
    return lines


def write_report(results: dict[str, Any], plots: list[str], path: Path) -> None:
    m = results["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    lines = [
        "# abuseguard benchmarks",
        "",
        "Regenerated by `make bench` (`benchmarks/run_all.py`"
        + (" --quick" if results.get("quick") else "")
        + "). "
        "These machines are shared and noisy: trust ratios taken side by side in one run over "
        "absolute figures.",
        "",
        "| machine | |",
        "|---|---|",
        f"| date | {m['date']} |",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| Python | {m['python']} ({m['platform']}) |",
        f"| load average at start / end | {m['load_average_at_start']} / "
        f"{results.get('load_average_at_end')} |",
        f"| redis-server | {m.get('redis_server') or 'not installed'} |",
        f"| wrk | {m.get('wrk') or 'not installed'} |",
        f"| packages | {pkgs} |",
        f"| run time | {results.get('seconds', 0):.0f} s"
        + (" (--quick)" if results.get("quick") else "")
        + " |",
        "",
    ]
    if results.get("note"):
        lines += [f"**Note:** {results['note']}", ""]
    lines += [
        "## Budgets (DESIGN.md)",
        "",
        "| budget | limit | measured | verdict |",
        "|---|---|---|---|",
    ]
    for b in budgets(results):
        lines.append(f"| {b.name} | {b.limit} | {b.measured} | {b.verdict} |")
    lines.append("")
    if plots:
        lines += ["Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
        lines += [f"![{p}]({p})" for p in plots] + [""]
    lines += _section_decision(results)
    lines += _section_asgi(results)
    lines += _section_http(results)
    lines += _section_scale(results)
    lines += _section_extra(results)
    path.write_text("\n".join(lines).rstrip() + "\n")


def strip_samples(value: Any) -> Any:
    """The results without the raw latency samples (kept only for the plots)."""
    if isinstance(value, dict):
        return {k: strip_samples(v) for k, v in value.items() if k != "samples_us"}
    if isinstance(value, list):
        return [strip_samples(v) for v in value]
    return value


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer requests, rounds and clients (about a third of the time)",
    )
    parser.add_argument("--only", nargs="*", choices=PARTS, help="run only these parts")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=BENCH,
        help="where RESULTS.md, results.json and the plots go (benchmarks/)",
    )
    parser.add_argument("--note", help="a line to put at the top of the report")
    parser.add_argument(
        "--keep-raw",
        type=Path,
        metavar="FILE",
        help="also write the raw results (with latency samples) to FILE",
    )
    parser.add_argument(
        "--from-raw",
        type=Path,
        metavar="FILE",
        help="do not measure: redraw the report and plots from a --keep-raw file",
    )
    args = parser.parse_args()
    if args.from_raw:
        saved: dict[str, Any] = json.loads(args.from_raw.read_text())
        if args.note:
            saved["note"] = args.note
        publish(saved, args.out_dir)
        return
    parts = args.only or list(PARTS)
    quick = ["--quick"] if args.quick else []
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": benchlib.machine_info(),
        "quick": args.quick,
        "note": args.note,
    }
    with tempfile.TemporaryDirectory(prefix="abuseguard-bench-") as tmp:
        tmp_path = Path(tmp)
        if "decision" in parts:
            results["decision"] = json_part("bench_decision.py", [*quick, "--cold-start"], tmp_path)
        if "asgi" in parts:
            results["asgi"] = json_part("bench_asgi.py", quick, tmp_path)
        if "http" in parts:
            results["http"] = json_part("bench_http.py", quick, tmp_path)
        if "scale" in parts:
            results["scale"] = json_part("bench_scale.py", quick, tmp_path)
        if "extra" in parts:
            results["extra"] = extra_parts(args.quick)
    results["seconds"] = time.monotonic() - started
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.keep_raw:
        args.keep_raw.write_text(json.dumps(results))
    publish(results, args.out_dir)


def publish(results: dict[str, Any], out_dir: Path) -> None:
    """Write RESULTS.md, results.json and the plots into ``out_dir``; print the budgets."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [name for name, plot in PLOTS.items() if plot(results, out_dir / name)]
    (out_dir / "results.json").write_text(json.dumps(strip_samples(results), indent=1) + "\n")
    write_report(results, plots, out_dir / "RESULTS.md")
    print(
        f"\nwrote {out_dir / 'RESULTS.md'}, results.json and {len(plots)} plots "
        f"in {results['seconds']:.0f} s"
    )
    print("\nBudgets:")
    for b in budgets(results):
        print(f"  {b.name}: {b.measured} (limit {b.limit}): {b.verdict.replace('**', '')}")


if __name__ == "__main__":
    main()
