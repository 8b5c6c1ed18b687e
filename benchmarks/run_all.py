"""Run every benchmark, then write benchmarks/RESULTS.md, results.json and the PNG plots.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only decision asgi http scale degrade extra]

Each part runs in its own process (so one part's memory, caches and compiled kernels do not
colour another's) and hands its figures back as JSON:

- decision: bench_decision.py (in-process latency by stage, the kernel, cold start)
- asgi:     bench_asgi.py (ASGI overhead without HTTP, GET and POST, against slowapi,
            fastapi-limiter and hand-written middlewares over limits and throttled-py)
- http:     bench_http.py (uvicorn + wrk: server CPU µs per request, throughput, ratios to
            the bare app; GET and POST; server and wrk on separate cores)
- scale:    bench_scale.py (memory per identity, RSS at 1M, IPv6 flood, replay speed)
- degrade:  bench_degrade.py (the degrade action's request rewrite and stream filter, issue 20)
- extra:    bench_redis.py and bench_content.py, when present, their output kept verbatim

The report states every budget of DESIGN.md with the figure measured here and, when a
budget is missed, by how much. The machine is usually shared: ratios taken side by side in
one run are what to trust, absolute figures less so.

This module runs the parts and collects their results; the rest has a module per job:
budgets.py (the budgets and their verdicts), plots.py (the figures) and report_md.py
(RESULTS.md).
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from budgets import budgets
from plots import PLOTS
from report_md import write_report

BENCH = benchlib.BENCH_DIR
PARTS = ("decision", "asgi", "http", "scale", "degrade", "extra")
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
        if "degrade" in parts:
            results["degrade"] = json_part("bench_degrade.py", quick, tmp_path)
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
    drawn = [name for name, plot in PLOTS.items() if plot(results, out_dir / name)]
    (out_dir / "results.json").write_text(json.dumps(strip_samples(results), indent=1) + "\n")
    write_report(results, drawn, out_dir / "RESULTS.md")
    print(
        f"\nwrote {out_dir / 'RESULTS.md'}, results.json and {len(drawn)} plots "
        f"in {results['seconds']:.0f} s"
    )
    print("\nBudgets:")
    for b in budgets(results):
        print(f"  {b.name}: {b.measured} (limit {b.limit}): {b.verdict.replace('**', '')}")


if __name__ == "__main__":
    main()
