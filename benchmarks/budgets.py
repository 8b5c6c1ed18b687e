"""The budgets of DESIGN.md, each with the figure a benchmark run measured and whether it
was met (and when missed, by how much). `run_all.py` prints them; `report_md.py` tables them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchlib import nested_get


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


def budgets(results: dict[str, Any]) -> list[Budget]:
    out: list[Budget] = []
    runs = nested_get(results, "decision", "runs") or []
    base = next((r for r in runs if not r.get("content")), None)
    why = nested_get(results, "decision", "error") or "the decision benchmark did not run"
    out.append(
        _upper(
            "In-process decision, memory backend, p50 (Guard.check)",
            nested_get(base, "total", "p50_us"),
            5.0,
            "µs",
            why_missing=why,
        )
    )
    out.append(
        _upper(
            "In-process decision, memory backend, p99 (Guard.check)",
            nested_get(base, "total", "p99_us"),
            20.0,
            "µs",
            why_missing=why,
        )
    )
    out.append(
        _upper(
            "Scoring kernel: one Numba call, p50 (as the guard calls it)",
            nested_get(base, "kernel", "p50_us"),
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
            nested_get(asgi, "stacks", "abuseguard-memory", "overhead", "p50_us"),
            10.0,
            "µs",
            why_missing=why,
        )
    )
    out.append(
        _upper(
            "ASGI overhead, same behind a trusted proxy (X-Forwarded-For), p50",
            nested_get(asgi, "stacks", "abuseguard-memory-proxied", "overhead", "p50_us"),
            10.0,
            "µs",
            why_missing=why,
        )
    )
    http = results.get("http") or {}
    why = http.get("error") or http.get("skipped") or ""
    ag_redis_why = nested_get(http, "unavailable", "abuseguard-redis-proxied") or why or "no result"
    out.append(
        _ratio(
            "HTTP throughput, abuseguard memory (uvicorn + wrk)",
            nested_get(http, "stacks", "abuseguard-memory-proxied", "ratio_to_bare", "median"),
            0.90,
            why_missing=why or "no result",
        )
    )
    out.append(
        _ratio(
            "HTTP throughput, abuseguard Redis, inline mode (exact, one round trip)",
            nested_get(http, "stacks", "abuseguard-redis-proxied", "ratio_to_bare", "median"),
            0.50,
            why_missing=ag_redis_why,
        )
    )
    synced_why = (
        nested_get(http, "unavailable", "abuseguard-redis-synced-proxied") or why or "no result"
    )
    out.append(
        _ratio(
            "HTTP throughput, abuseguard Redis, synced mode (local decisions, 10 ms sync)",
            nested_get(
                http, "stacks", "abuseguard-redis-synced-proxied", "ratio_to_bare", "median"
            ),
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
    out += _fast_path_budgets(results)
    out += _degrade_budgets(results)
    cold = nested_get(results, "decision", "cold_start", "default", "warm_cache")
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


def _degrade_budgets(results: dict[str, Any]) -> list[Budget]:
    """Issue 20: rewriting adds <= 5 µs to a degraded request of a few hundred bytes;
    filtering a stream adds <= 2 µs per event (CPU time, bench_degrade.py)."""
    degrade = results.get("degrade")
    if degrade is None:
        return []
    why = degrade.get("error") or "no result"
    size = degrade.get("body_bytes")
    return [
        _upper(
            f"Degrade: request rewrite ({size or '?'}-byte chat body, parse + rewrite + encode)",
            degrade.get("rewrite_us"),
            5.0,
            "µs",
            "{:.2f}",
            why_missing=why,
        ),
        _upper(
            "Degrade: stream filter per event, chat content (send wrapper, Degrade - Allow)",
            degrade.get("exchange_stream_per_event_us"),
            2.0,
            "µs",
            "{:.2f}",
            why_missing=why,
        ),
        _upper(
            "Degrade: stream filter per event, chat reasoning chunk in a run of alike chunks "
            "(withheld unparsed)",
            degrade.get("filter_reasoning_us"),
            2.0,
            "µs",
            "{:.2f}",
            why_missing=why,
        ),
        _upper(
            "Degrade: stream filter per event, chat reasoning chunk with its own padding field "
            "(withheld unparsed)",
            degrade.get("filter_reasoning_parsed_us"),
            2.0,
            "µs",
            "{:.2f}",
            why_missing=why,
        ),
        _upper(
            "Degrade: stream filter per event, chat chunk with content and reasoning "
            "(reasoning cut from the bytes)",
            degrade.get("filter_mixed_us"),
            2.0,
            "µs",
            "{:.2f}",
            why_missing=why,
        ),
        _upper(
            "Degrade: stream filter per event, Anthropic thinking delta (withheld)",
            degrade.get("filter_thinking_us"),
            2.0,
            "µs",
            "{:.2f}",
            why_missing=why,
        ),
        _upper(
            "Degrade: stream filter per event, Responses delta renumbered after a withheld item",
            degrade.get("filter_responses_renumbered_us"),
            2.0,
            "µs",
            "{:.2f}",
            why_missing=why,
        ),
    ]


def _api_key_bytes(scale: dict[str, Any]) -> tuple[str, float] | None:
    """bench_scale.py's memory per API-key client: RSS per client of its largest run with
    API-key clients (``keys``, one entry per client count), else the first
    ``*bytes_per*`` figure whose name mentions a key."""
    runs = [
        run
        for run in scale.get("keys") or ()
        if isinstance(run, dict) and isinstance(run.get("bytes_per_client"), int | float)
    ]
    if runs:
        largest = max(runs, key=lambda run: run.get("clients", 0))
        return f"RSS per client at {largest.get('clients', 0):,} clients", float(
            largest["bytes_per_client"]
        )
    parts = [("", scale)] + [(f"{k}.", v) for k, v in scale.items() if isinstance(v, dict)]
    for prefix, part in parts:
        for name, value in part.items():
            if "bytes_per" in name and "key" in name and isinstance(value, int | float):
                return prefix + name, float(value)
    return None


def _fast_path_budgets(results: dict[str, Any]) -> list[Budget]:
    """Issue 17's targets, each from >= 10,000 clients with their own keys and addresses."""
    out: list[Budget] = []
    asgi = results.get("asgi")
    if asgi is not None:
        why = asgi.get("error") or "stack unavailable"
        for key, method, limit in (("stacks", "GET", 8.0), ("stacks_post", "POST", 14.0)):
            out.append(
                _upper(
                    f"Issue 17: ASGI overhead, {method}, 10,000 keys each on its own address "
                    "(CPU µs added per request, median of rounds)",
                    nested_get(asgi, key, "abuseguard-memory", "cpu_overhead_us", "median"),
                    limit,
                    "µs",
                    why_missing=why,
                )
            )
    http = results.get("http")
    if http is not None:
        why = http.get("error") or http.get("skipped") or "no result"
        for key, method in (("stacks", "GET"), ("stacks_post", "POST")):
            out.append(
                _ratio(
                    f"Issue 17: HTTP throughput, {method}, abuseguard memory (10,000 clients)",
                    nested_get(http, key, "abuseguard-memory-proxied", "ratio_to_bare", "median"),
                    0.75,
                    why_missing=why,
                )
            )
    scale = results.get("scale")
    if scale is not None:
        found = _api_key_bytes(scale)
        out.append(
            _upper(
                "Issue 17: memory per API-key client (own key, own address)"
                + (f" [{found[0]}]" if found else ""),
                found[1] if found else None,
                400.0,
                "B",
                "{:.0f}",
                why_missing=scale.get("error") or "bench_scale.py reports no API-key figure",
            )
        )
    return out
