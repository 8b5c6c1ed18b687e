"""HTTP throughput: each stack under uvicorn (uvloop + httptools), driven by wrk on loopback.

One uvicorn process per stack (one worker), all started up front; wrk (1 thread, a few
dozen connections, bounded in time) drives them in alternating rounds, the order rotated
each round. Requests rotate over a thousand clients (API key, User-Agent, and the client
address in X-Forwarded-For from the loopback proxy) with the same bytes for every stack.
Reported per stack: median requests/s over rounds, its spread, latency percentiles, and
the ratio to the bare app measured in the same round (the median of those ratios).

Limits are far above what wrk can send; every response must be 2xx (wrk's non-2xx count)
and every guard decision seen by the endpoint ``allow`` (read from ``/__stats`` at the end).

    .venv/bin/python benchmarks/bench_http.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import serve
import stacks

HTTP_STACKS: tuple[str, ...] = (
    "bare",
    "noop",
    "abuseguard-memory-proxied",
    "abuseguard-redis-proxied",
    "abuseguard-redis-synced-proxied",
    "slowapi-memory",
    "slowapi-redis",
    "fastapi-bare",
    "fastapi-limiter-redis",
)
CLIENTS = 10_000
CONNECTIONS = 32


def lua_script(clients: list[benchlib.Client]) -> str:
    """A wrk script that sends prebuilt requests, one per client, clients drawn at random
    (round-robin would give every client a metronome's cadence, which the guard scores)."""
    rows = ",\n".join(f'  {{"{c.ip}", "{c.key}", "{c.ua}"}}' for c in clients)
    return f"""local clients = {{
{rows}
}}
local reqs = {{}}
for idx, c in ipairs(clients) do
  reqs[idx] = wrk.format("GET", "/", {{
    ["Host"] = "api.example.com",
    ["User-Agent"] = c[3],
    ["Accept"] = "application/json",
    ["Authorization"] = "Bearer " .. c[2],
    ["X-Forwarded-For"] = c[1],
  }})
end
local n = #reqs
local random = math.random
request = function()
  return reqs[random(n)]
end
"""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), non-2xx responses and socket errors."""
    out: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    out["rps"] = float(match.group(1)) if match else float("nan")
    match = re.search(r"(\d+) requests in", output)
    out["requests"] = int(match.group(1)) if match else 0
    for pct in ("50", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.MULTILINE)
        out[f"p{pct}_ms"] = _ms(match.group(1)) if match else float("nan")
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if match:
        out["non_2xx"] = int(match.group(1))
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if match:
        out["socket_errors"] = sum(int(g) for g in match.groups())
    return out


def run_wrk(port: int, script: Path, seconds: float) -> dict[str, Any]:
    command = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(done.stdout + done.stderr)


@contextlib.contextmanager
def servers(names: list[str], config: stacks.StackConfig, logs: Path) -> Iterator[dict[str, int]]:
    """Start one uvicorn per stack, stderr to ``logs/<stack>.log``; yields stack -> port;
    stops them all afterwards."""
    processes: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            port = benchlib.free_port()
            command = [
                sys.executable,
                str(Path(serve.__file__)),
                "--stack",
                name,
                "--port",
                str(port),
            ]
            if config.redis_url:
                command += ["--redis-url", config.redis_url]
            if config.mmdb_dir:
                command += ["--mmdb-dir", str(config.mmdb_dir)]
            with open(logs / f"{name}.log", "wb") as log:
                processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
            ports[name] = port
        for (name, port), process in zip(ports.items(), processes, strict=True):
            deadline = time.monotonic() + 120
            while not benchlib.port_open(port):
                if process.poll() is not None:
                    raise RuntimeError(f"the {name} server exited with {process.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {name} server did not listen within 120 s")
                time.sleep(0.1)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def server_stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__stats", timeout=10) as response:
        stats: dict[str, int] = json.loads(response.read())
    return stats


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    rounds = 2 if quick else 5
    seconds = 2 if quick else 5
    warmup = 1
    result: dict[str, Any] = {
        "server": f"uvicorn {benchlib.machine_info()['packages']['uvicorn']}, "
        f"loop={serve.LOOP}, http={serve.HTTP}, 1 worker",
        "load": f"wrk, 1 thread, {CONNECTIONS} connections, {seconds}s per round, loopback, "
        f"{CLIENTS} clients drawn at random (X-Forwarded-For from a loopback proxy)",
        "rounds": rounds,
        "seconds": seconds,
        "unavailable": {},
        "stacks": {},
    }
    if shutil.which("wrk") is None:
        result["skipped"] = "wrk is not installed (Debian package 'wrk'; `make bench` installs it)"
        return result
    with (
        tempfile.TemporaryDirectory(prefix="abuseguard-bench-http-") as tmp,
        benchlib.redis_server() as redis_url,
    ):
        tmp_path = Path(tmp)
        paths = benchlib.build_mmdb_world(tmp_path / "mmdb")
        result["intel"] = (
            f"GeoIntel over the tests' MaxMind world ({len(paths)} databases)"
            if paths
            else "no MaxMind databases (tests/mmdb_fixtures.py missing)"
        )
        config = stacks.StackConfig(
            redis_url=redis_url, mmdb_dir=tmp_path / "mmdb" if paths else None
        )
        names = []
        for name in HTTP_STACKS:
            if args.stacks is not None and name not in args.stacks:
                continue
            reason = stacks.unavailable_reason(name, config)
            if reason is None:
                names.append(name)
            else:
                result["unavailable"][name] = reason
        script = tmp_path / "clients.lua"
        script.write_text(lua_script(benchlib.benign_clients(CLIENTS)))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        with servers(names, config, tmp_path) as ports:
            for name in names:
                run_wrk(ports[name], script, warmup)
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    runs[name].append(run_wrk(ports[name], script, seconds))
                    time.sleep(0.2)
            decisions = {name: server_stats(ports[name]) for name in names}
        server_logs = {
            name: (tmp_path / f"{name}.log").read_text(errors="replace").splitlines()
            for name in names
        }
        for name in names:
            rps = [x["rps"] for x in runs[name]]
            entry: dict[str, Any] = {
                "rounds": runs[name],
                "rps_median": benchlib.median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms": benchlib.median([x["p50_ms"] for x in runs[name]]),
                "p99_ms": benchlib.median([x["p99_ms"] for x in runs[name]]),
                "non_2xx": sum(x["non_2xx"] for x in runs[name]),
                "socket_errors": sum(x["socket_errors"] for x in runs[name]),
                "decisions": decisions[name],
                "server_log_lines": len(server_logs[name]),
                "server_log_sample": sorted(set(server_logs[name]))[:5],
            }
            for base in ("bare", stacks.BASELINE[name]):
                if base in runs and base != name:
                    ratios = [
                        a["rps"] / b["rps"] for a, b in zip(runs[name], runs[base], strict=True)
                    ]
                    entry[f"ratio_to_{base}"] = {
                        "median": benchlib.median(ratios),
                        "min": min(ratios),
                        "max": max(ratios),
                    }
            result["stacks"][name] = entry
    return result


def report(result: dict[str, Any]) -> None:
    print(f"HTTP throughput: {result['server']}; {result['load']}")
    if "skipped" in result:
        print(f"  skipped: {result['skipped']}")
        return
    print(
        f"  {'stack':26s} {'req/s':>8s} {'spread':>15s} {'x bare':>7s} {'p50 ms':>7s}"
        f" {'p99 ms':>7s}  non-2xx  decisions"
    )
    for name, e in result["stacks"].items():
        ratio = e.get("ratio_to_bare", {}).get("median", 1.0)
        print(
            f"  {name:26s} {e['rps_median']:8.0f} {e['rps_min']:7.0f}-{e['rps_max']:<7.0f}"
            f" {ratio:7.2f} {e['p50_ms']:7.2f} {e['p99_ms']:7.2f}  {e['non_2xx']:7d}"
            f"  {e['decisions']}"
        )
        if e["server_log_lines"]:
            print(
                f"  {'':26s} server logged {e['server_log_lines']} lines, e.g. "
                f"{e['server_log_sample'][:2]}"
            )
    for name, reason in result["unavailable"].items():
        print(f"  {name:26s} skipped: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--stacks", nargs="*", help=f"subset of {', '.join(HTTP_STACKS)}")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
