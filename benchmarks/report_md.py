"""RESULTS.md: the machine, the budgets, the plots and one section per benchmark part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import nested_get
from budgets import budgets


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
            f"`Guard.check` on {first['requests']:,} requests from "
            # results written before the field existed came from bench_decision's 10,000
            f"{first.get('accounts', 10_000):,} accounts (each on its own address), "
            f"intel from {first['intel_source']}, generous limits; stages timed "
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
                cells += [
                    _f(nested_get(s, "p50_us"), "{:.2f}"),
                    _f(nested_get(s, "p99_us"), "{:.2f}"),
                ]
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


def _asgi_rows(entries: dict[str, Any], unavailable: dict[str, str]) -> list[str]:
    lines = [
        "| stack | CPU µs / request | + CPU µs (rounds) | p50 µs | p99 µs | + p50 µs | + p99 µs "
        "| round spread µs | statuses | decisions | self-check |",
        "|---|---:|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for name, e in entries.items():
        over = e.get("overhead") or {}
        spread = f"{over['round_p50_min_us']:.1f} to {over['round_p50_max_us']:.1f}" if over else ""
        cpu = nested_get(e, "cpu_us_per_request", "median")
        cpu_over = e.get("cpu_overhead_us") or {}
        cpu_over_text = (
            f"{cpu_over['median']:+.1f} ({cpu_over['min']:+.1f} to {cpu_over['max']:+.1f})"
            if cpu_over
            else ""
        )
        lines.append(
            f"| {name} | {_f(cpu)} | {cpu_over_text} | "
            f"{e['latency']['p50_us']:.1f} | {e['latency']['p99_us']:.1f} | "
            f"{_f(over.get('p50_us'))} | {_f(over.get('p99_us'))} | {spread} | "
            f"{e.get('statuses')} | {e.get('decisions')} | {e.get('self_check') or '—'} |"
        )
    for name, reason in unavailable.items():
        lines.append(f"| {name} | not run: {reason} | | | | | | | | | |")
    return [*lines, ""]


def _section_asgi(results: dict[str, Any]) -> list[str]:
    if "asgi" not in results:
        return []
    asgi = results.get("asgi") or {}
    lines = ["## 2. ASGI overhead without HTTP", ""]
    if "error" in asgi:
        return [*lines, f"Failed: {asgi['error']}", "```", *asgi.get("output_tail", []), "```", ""]
    addresses = asgi.get("distinct_addresses")
    lines += [
        f"A trivial Starlette app called directly as an ASGI callable (synthetic scope, receive "
        f"and send) in one {asgi.get('loop', '?')} event loop; {asgi.get('rounds')} alternating "
        f"rounds of {asgi.get('per_round'):,} requests per stack ({asgi.get('per_round_redis'):,} "
        f"for Redis stacks) over {asgi.get('clients'):,} clients"
        + (
            f", each with its own API key and address ({addresses:,} addresses)"
            if addresses
            else ""
        )
        + ", every client seen once before measuring. "
        f"Intel: {asgi.get('intel')}. "
        "CPU µs / request = the event loop thread's CPU time over a round / its requests "
        "(waiting, for Redis or for a core, is not in it; redis-server's work is not either); "
        "+ CPU µs = its excess over the baseline's, median and range over rounds. "
        "Overhead = the stack's percentile minus its baseline's (bare Starlette; bare FastAPI "
        "for fastapi-limiter); spread = min and max of the per-round p50 differences. "
        "Self-check: with tiny limits the second request from one client must get 429.",
        "",
        "GET `/`:",
        "",
    ]
    lines += _asgi_rows(asgi.get("stacks") or {}, asgi.get("unavailable") or {})
    if asgi.get("stacks_post"):
        lines += [
            f"POST `/v1/chat/completions` with a chat body of about "
            f"{asgi.get('post_body_bytes')} bytes (the endpoint reads it; abuseguard scores "
            "its content):",
            "",
        ]
        lines += _asgi_rows(asgi["stacks_post"], {})
    lines += [
        "`abuseguard-memory`: the client connects directly. `abuseguard-memory-proxied`:"
        " the peer is a trusted loopback proxy and the client is read from "
        "X-Forwarded-For (the path every HTTP figure below takes). `limits-asgi`, "
        "`throttled-asgi`: a hand-written pure-ASGI middleware over `limits` / throttled-py "
        "(fixed window per API key, one header scan, one premade header added).",
        "",
    ]
    return lines


def _http_rows(entries: dict[str, Any], unavailable: dict[str, str]) -> list[str]:
    lines = [
        "| stack | **CPU µs / request** (spread) | + bare CPU µs | CPU x bare | req/s (median) "
        "| spread | x bare | x own baseline | p50 ms | p99 ms | non-2xx | socket errors "
        "| decisions seen by the endpoint (GET and POST) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, e in entries.items():
        ratio = e.get("ratio_to_bare") or {}
        own = e.get("ratio_to_fastapi-bare") or {}
        cpu = e.get("cpu_us_per_request") or {}
        cpu_over = e.get("cpu_us_over_bare") or {}
        cpu_ratio = e.get("cpu_ratio_to_bare") or {}
        ratio_text = (
            f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "1.00"
        )
        own_text = f"{own['median']:.2f} vs FastAPI" if own else ""
        cpu_text = f"**{cpu['median']:.1f}** ({cpu['min']:.1f}-{cpu['max']:.1f})" if cpu else "—"
        over_text = (
            f"{cpu_over['median']:+.1f} ({cpu_over['min']:+.1f} to {cpu_over['max']:+.1f})"
            if cpu_over
            else ""
        )
        cpu_ratio_text = f"{cpu_ratio['median']:.2f}" if cpu_ratio else "1.00"
        lines.append(
            f"| {name} | {cpu_text} | {over_text} | {cpu_ratio_text} | {e['rps_median']:.0f} | "
            f"{e['rps_min']:.0f}-{e['rps_max']:.0f} | {ratio_text} | {own_text} | "
            f"{e['p50_ms']:.2f} | {e['p99_ms']:.2f} | {e['non_2xx']} | {e['socket_errors']} | "
            f"{e['decisions']} |"
        )
    for name, reason in unavailable.items():
        lines.append(f"| {name} | not run: {reason} | | | | | | | | | | | |")
    return [*lines, ""]


def _section_http(results: dict[str, Any]) -> list[str]:
    if "http" not in results:
        return []
    http = results.get("http") or {}
    lines = ["## 3. HTTP cost and throughput (uvicorn + wrk, loopback)", ""]
    if "error" in http:
        return [*lines, f"Failed: {http['error']}", "```", *http.get("output_tail", []), "```", ""]
    if "skipped" in http:
        return [*lines, f"Skipped: {http['skipped']}", ""]
    lines += [
        f"Server: {http.get('server')}. Load: {http.get('load')}. "
        f"Cores: {http.get('pinning', 'not pinned')}. {http.get('rounds')} rounds per "
        f"stack and method, alternating, the order rotated each round. Intel: "
        f"{http.get('intel')}. The primary figure is the server's CPU time per request "
        "(utime + stime of the server process over a round, from /proc, divided by the "
        "requests completed): it moves less than requests/s on a shared machine. Ratios "
        "are taken against the bare app measured in the same round (median over rounds, with "
        "min-max). Limits are far above the offered load; every response must be 2xx and every "
        "guard decision `allow`.",
        "",
        "GET `/`:",
        "",
    ]
    lines += _http_rows(http.get("stacks") or {}, http.get("unavailable") or {})
    if http.get("stacks_post"):
        lines += [
            f"POST `/v1/chat/completions` with a chat body of about "
            f"{http.get('post_body_bytes')} bytes:",
            "",
        ]
        lines += _http_rows(http["stacks_post"], {})
    for key in ("stacks", "stacks_post"):
        for name, e in (http.get(key) or {}).items():
            if e.get("server_log_lines") and key == "stacks":
                sample = "; ".join(f"`{x[:160]}`" for x in e.get("server_log_sample", [])[:3])
                lines.append(
                    f"\nThe {name} server logged {e['server_log_lines']} lines during the "
                    f"run, e.g. {sample}"
                )
    noop = nested_get(http, "stacks", "noop", "ratio_to_bare")
    if noop:
        lines.append(
            f"\nThe no-op middleware measured {noop['median']:.2f}x bare (rounds "
            f"{noop['min']:.2f} to {noop['max']:.2f}): that is the noise floor of this run."
        )
    lines += [
        "",
        "slowapi keys on the peer address (every request comes from 127.0.0.1); "
        "fastapi-limiter on X-Forwarded-For + path; `limits-asgi` and `throttled-asgi` on the "
        "API key; abuseguard on the API key and the client address from X-Forwarded-For "
        "behind a trusted loopback proxy.",
        "",
    ]
    return lines


_SHOWN_IDENTITY_FIELDS = frozenset(
    {
        "max_identities",
        "clients",
        "rss_after_import_mb",
        "rss_after_guard_mb",
        "rss_end_mb",
        "rss_end_anon_mb",
        "rss_end_file_mb",
        "rss_at_1m_mb",
        "rss_at_1m_extrapolated",
        "bytes_per_identity",
        "engine_preallocated_mb",
        "table_rows",
        "table_row_bytes",
        "checks_per_second",
        "error",
    }
)
_SHOWN_SCALE_PARTS = frozenset({"identities", "flood", "replay", "seconds", "error"})
_NOT_FIGURES = frozenset({"samples", "budget_mb"})  # the plot's points, a constant


def _other_scale_figures(scale: dict[str, Any], ident: dict[str, Any]) -> list[str]:
    """Figures bench_scale.py reports beyond those tabled above (memory per API-key client,
    for one), listed as they come so that a new field reaches RESULTS.md."""
    rows = [(k, v) for k, v in ident.items() if k not in _SHOWN_IDENTITY_FIELDS]
    for part, value in scale.items():
        if part in _SHOWN_SCALE_PARTS:
            continue
        if isinstance(value, dict):
            rows += [(f"{part}.{k}", v) for k, v in value.items()]
        else:
            rows.append((part, value))
    rows = [
        (name, value)
        for name, value in rows
        if name.rsplit(".", 1)[-1] not in _NOT_FIGURES and not isinstance(value, list | dict)
    ]
    if not rows:
        return []
    lines = ["Other figures of bench_scale.py:", "", "| figure | value |", "|---|---:|"]
    for name, value in rows:
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown[:200]} |")
    return [*lines, ""]


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
    lines += _other_scale_figures(scale, ident)
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


_DEGRADE_ROWS = {
    "yardstick_stdlib_roundtrip_us": "yardstick: stdlib `json.dumps(json.loads(body))`",
    "rewrite_us": "request rewrite (`rewrite_request`)",
    "exchange_json_us": "one exchange with a JSON reply, Degrade - Allow (read, rewrite, filter)",
    "yardstick_stdlib_parse_chunk_us": "yardstick: stdlib `json.loads` of one chat chunk",
    "filter_content_us": "stream filter, chat content chunk (`StreamFilter.feed`)",
    "filter_reasoning_us": "stream filter, chat reasoning chunk in a run of alike ones "
    "(withheld unparsed)",
    "filter_reasoning_parsed_us": "stream filter, chat reasoning chunk, own padding field "
    "(withheld unparsed, template with holes)",
    "filter_reasoning_unmatched_us": "stream filter, chat reasoning chunk, own id (parsed)",
    "filter_mixed_us": "stream filter, chat chunk with content and reasoning "
    "(reasoning cut from the bytes)",
    "filter_mixed_unmatched_us": "stream filter, chat chunk with content and reasoning, "
    "own id (parsed, re-encoded)",
    "filter_responses_renumbered_us": "stream filter, Responses delta renumbered in place",
    "filter_thinking_us": "stream filter, Anthropic thinking delta (withheld)",
    "exchange_stream_per_event_us": "chat stream through the send wrapper, Degrade - Allow",
}


def _section_degrade(results: dict[str, Any]) -> list[str]:
    if "degrade" not in results:
        return []
    deg = results.get("degrade") or {}
    lines = ["## 5. Degrade cost (issue 20)", ""]
    if "error" in deg:
        return [*lines, f"Failed: {deg['error']}", "```", *deg.get("output_tail", []), "```", ""]
    lines += [
        f"`benchmarks/bench_degrade.py`: CPU time of the process (not wall time), median of "
        f"repeats with their min-max. Request body {deg.get('body_bytes')} B, JSON reply "
        f"{deg.get('reply_bytes')} B, chat chunk {deg.get('chat_chunk_bytes')} B, Responses "
        f"delta {deg.get('responses_delta_bytes')} B; the stream exchange sends "
        f"{deg.get('stream_events_per_exchange')} events, one per ASGI message. Requests that "
        "are not degraded never reach this code (their enforcer is another one).",
        "",
        "| figure | µs | repeats min-max |",
        "|---|---:|---|",
    ]
    spreads = deg.get("spreads_us") or {}
    for key, label in _DEGRADE_ROWS.items():
        spread = spreads.get(key)
        spread_text = f"{spread[0]:.2f}-{spread[1]:.2f}" if spread else ""
        lines.append(f"| {label} | {_f(deg.get(key), '{:.2f}')} | {spread_text} |")
    lines.append("")
    return lines


def _section_extra(results: dict[str, Any]) -> list[str]:
    if "extra" not in results:
        return []
    extra = results.get("extra") or {}
    lines = ["## 6. Other benchmarks (output kept as printed)", ""]
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
    lines += _section_degrade(results)
    lines += _section_extra(results)
    path.write_text("\n".join(lines).rstrip() + "\n")
