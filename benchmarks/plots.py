"""The PNG figures of a benchmark run (matplotlib, drawn without a display).

Each ``plot_*`` takes the collected results and a path, draws its figure there and answers
whether it had anything to draw; ``PLOTS`` names the files in the order the report shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import nested_get


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_decision(results: dict[str, Any], path: Path) -> bool:
    runs = nested_get(results, "decision", "runs")
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
        samples = sorted(nested_get(run, "total", "samples_us") or [])
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
    stacks = nested_get(results, "asgi", "stacks")
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
    posts = nested_get(results, "asgi", "stacks_post") or {}
    names = [n for n, e in stacks.items() if "overhead" in e]
    height = 0.4 if posts else 0.8
    for offset, (method, entries, color) in enumerate(
        (("GET", stacks, "#2ca02c"), ("POST ~400 B chat", posts, "#ff7f0e"))
    ):
        shown = [n for n in names if "overhead" in entries.get(n, {})]
        if not shown:
            continue
        over = [entries[n]["overhead"] for n in shown]
        p50 = [o["p50_us"] for o in over]
        lo = [max(0.0, v - o["round_p50_min_us"]) for v, o in zip(p50, over, strict=True)]
        hi = [max(0.0, o["round_p50_max_us"] - v) for v, o in zip(p50, over, strict=True)]
        ys = [names.index(n) + (offset - 0.5) * height * bool(posts) for n in shown]
        ax2.barh(ys, p50, height=height, xerr=[lo, hi], color=color, capsize=2, label=method)
    ax2.set_yticks(range(len(names)), names)
    ax2.axvline(8, color="red", ls="--", lw=1, label="issue 17: GET ≤ 8 µs")
    ax2.axvline(14, color="purple", ls=":", lw=1, label="issue 17: POST ≤ 14 µs")
    ax2.invert_yaxis()
    ax2.set_xlabel("added µs at p50 vs its bare app (bars: spread of round p50s)")
    ax2.set_title("What each middleware / limiter adds (10,000 clients)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_http(results: dict[str, Any], path: Path) -> bool:
    stacks = nested_get(results, "http", "stacks")
    if not stacks:
        return False
    posts = nested_get(results, "http", "stacks_post") or {}
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    names = list(stacks)
    height = 0.4 if posts else 0.8
    methods = (("GET", stacks, "#2ca02c"), ("POST ~400 B chat", posts, "#ff7f0e"))
    for offset, (method, entries, color) in enumerate(methods):
        shown = [n for n in names if n in entries]
        if not shown:
            continue
        ys = [names.index(n) + (offset - 0.5) * height * bool(posts) for n in shown]
        cpu = [entries[n]["cpu_us_per_request"] for n in shown]
        med = [c["median"] for c in cpu]
        ax1.barh(
            ys,
            med,
            height=height,
            xerr=[
                [m - c["min"] for m, c in zip(med, cpu, strict=True)],
                [c["max"] - m for m, c in zip(med, cpu, strict=True)],
            ],
            color=color,
            capsize=2,
            label=method,
        )
        ratio = [entries[n].get("ratio_to_bare", {}) for n in shown]
        rmed = [r.get("median", 1.0) for r in ratio]
        ax2.barh(
            ys,
            rmed,
            height=height,
            xerr=[
                [m - r.get("min", m) for m, r in zip(rmed, ratio, strict=True)],
                [r.get("max", m) - m for m, r in zip(rmed, ratio, strict=True)],
            ],
            color=color,
            capsize=2,
            label=method,
        )
    for ax in (ax1, ax2):
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
    ax1.set_xlabel("server CPU µs per request (utime + stime / requests; bars: min-max)")
    ax1.set_title("Server CPU per request (10,000 clients)")
    ax1.legend(fontsize=8)
    ax2.axvline(0.75, color="red", ls="--", lw=1, label="issue 17: ≥ 0.75 of bare")
    ax2.set_xlabel("throughput / bare Starlette in the same round (median; bars: min-max)")
    ax2.set_title(nested_get(results, "http", "server") or "HTTP throughput")
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scale(results: dict[str, Any], path: Path) -> bool:
    ident = nested_get(results, "scale", "identities")
    flood = nested_get(results, "scale", "flood")
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
