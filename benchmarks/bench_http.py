"""HTTP cost and throughput: each stack under uvicorn (uvloop + httptools), driven by wrk.

One uvicorn process per stack (one worker), all started up front; wrk (1 thread, a few
dozen connections, bounded in time) drives them in alternating rounds, the order rotated
each round, GET ``/`` and POST ``/v1/chat/completions`` (a chat prompt of about 400 bytes)
in rounds of their own. Requests are drawn at random over 10,000 clients, each with its own
API key, User-Agent and address (X-Forwarded-For from the loopback proxy), the same bytes
for every stack. Where the machine has two cores or more, the servers run pinned to one core
and wrk to another (``sched_setaffinity``, what ``taskset`` does).

The primary figure is the server's CPU time per request: the utime + stime the server
process spent over a round (``/proc/<pid>/stat``) divided by the requests wrk completed in
it; on a shared machine it moves less than requests/s. Reported per stack and method: that
figure and its spread over rounds, its excess over the bare app's, requests/s, latency
percentiles, and the ratios to the bare app measured in the same round (medians of those
ratios).

Limits are far above what wrk can send; every response must be 2xx (wrk's non-2xx count)
and every guard decision seen by the endpoint ``allow`` (read from ``/__stats`` at the end).
Before measuring, each server is sent every client in turn while its memory-backend guard's
clock moves on 0.5 s a request (`serve.WarmUp`), so that the 10,000 keys are accepted
customers when the measurement starts, not 10,000 new keys in one second that the
unverified-key budgets of the busiest networks would refuse (``warm_up_non_2xx`` counts
that warm-up's refusals).

    .venv/bin/python benchmarks/bench_http.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
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
    "limits-asgi",
    "throttled-asgi",
    "fastapi-bare",
    "fastapi-limiter-redis",
)
METHODS = ("GET", "POST")
CLIENTS = 10_000
CONNECTIONS = 32
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" if b < 32 or b in (34, 92) or b > 126 else chr(b)
                         for b in data) + '"'  # fmt: skip


def lua_script(
    clients: list[benchlib.Client], bodies: list[bytes] | None = None, *, in_turn: bool = False
) -> str:
    """A wrk script that sends prebuilt requests, one per client, clients drawn at random
    (round-robin would give every client a metronome's cadence, which the guard scores);
    with ``bodies``, each client POSTs its own chat body. ``in_turn``: the clients in turn
    instead, for the warm-up (every client seen within its first 10,000 requests)."""
    if bodies is None:
        rows = ",\n".join(f'  {{"{c.ip}", "{c.key}", "{c.ua}"}}' for c in clients)
        method, path, extra, body = "GET", "/", "", "nil"
    else:
        rows = ",\n".join(
            f'  {{"{c.ip}", "{c.key}", "{c.ua}", {_lua_string(b)}}}'
            for c, b in zip(clients, bodies, strict=True)
        )
        method, path, body = "POST", stacks.CHAT_PATH, "c[4]"
        extra = '    ["Content-Type"] = "application/json",\n'
    return f"""local clients = {{
{rows}
}}
local reqs = {{}}
for idx, c in ipairs(clients) do
  reqs[idx] = wrk.format("{method}", "{path}", {{
    ["Host"] = "api.example.com",
    ["User-Agent"] = c[3],
    ["Accept"] = "application/json",
    ["Authorization"] = "Bearer " .. c[2],
    ["X-Forwarded-For"] = c[1],
{extra}  }}, {body})
end
local n = #reqs
""" + (
        """local turn = 0
request = function()
  turn = turn % n + 1
  return reqs[turn]
end
"""
        if in_turn
        else """local random = math.random
request = function()
  return reqs[random(n)]
end
"""
    )


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


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(the servers' core, wrk's core), or (None, None) when there are fewer than two."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    return {usable[-1]}, {usable[0]}


SERVER_CORE, WRK_CORE = cores()


def pin_to(core: set[int] | None) -> Any:
    """A preexec_fn that pins the child process to ``core`` (None: leave it free)."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, core)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_wrk(port: int, script: Path, seconds: float, pid: int | None = None) -> dict[str, Any]:
    """One wrk run; with ``pid``, also the server's CPU µs per completed request."""
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
    before = cpu_seconds(pid) if pid is not None else 0.0
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=pin_to(WRK_CORE),
    )
    out = parse_wrk(done.stdout + done.stderr)
    if pid is not None:
        spent = cpu_seconds(pid) - before
        out["server_cpu_s"] = spent
        out["cpu_us_per_request"] = (
            spent / out["requests"] * 1e6 if out["requests"] else float("nan")
        )
    return out


@contextlib.contextmanager
def servers(
    names: list[str], config: stacks.StackConfig, logs: Path
) -> Iterator[tuple[dict[str, int], dict[str, int]]]:
    """Start one uvicorn per stack, stderr to ``logs/<stack>.log``, pinned to the servers'
    core; yields (stack -> port, stack -> pid); stops them all afterwards."""
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
                processes.append(
                    subprocess.Popen(
                        command,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        preexec_fn=pin_to(SERVER_CORE),
                    )
                )
            ports[name] = port
        for (name, port), process in zip(ports.items(), processes, strict=True):
            deadline = time.monotonic() + 120
            while not benchlib.port_open(port):
                if process.poll() is not None:
                    raise RuntimeError(f"the {name} server exited with {process.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {name} server did not listen within 120 s")
                time.sleep(0.1)
        yield ports, {name: p.pid for name, p in zip(ports, processes, strict=True)}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def end_warm_up(port: int) -> None:
    """Tell the server its warm-up is over (`serve.WarmUp`): its clock runs in real time."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{serve.WARMED_PATH}", timeout=10):
        pass


def server_stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__stats", timeout=10) as response:
        stats: dict[str, int] = json.loads(response.read())
    return stats


def run(args: argparse.Namespace) -> dict[str, Any]:
    benchlib.warm_kernels()  # fills Numba's cache here: the servers only load the kernels
    quick = args.quick
    rounds = 2 if quick else 5
    seconds = 2 if quick else 5
    warmup = 2 if quick else 4  # seconds per stack and method before the measured rounds
    pinning = (
        f"servers pinned to core {min(SERVER_CORE)}, wrk to core {min(WRK_CORE)}"
        if SERVER_CORE is not None and WRK_CORE is not None
        else "not pinned (fewer than two cores)"
    )
    result: dict[str, Any] = {
        "server": f"uvicorn {benchlib.machine_info()['packages']['uvicorn']}, "
        f"loop={serve.LOOP}, http={serve.HTTP}, 1 worker",
        "load": f"wrk, 1 thread, {CONNECTIONS} connections, {seconds}s per round, loopback, "
        f"{CLIENTS:,} clients drawn at random, each with its own key and address "
        "(X-Forwarded-For from a loopback proxy)",
        "pinning": pinning,
        "rounds": rounds,
        "seconds": seconds,
        "unavailable": {},
        "stacks": {},
        "stacks_post": {},
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
        clients = benchlib.benign_clients(CLIENTS)
        rng = random.Random(11)
        bodies = [benchlib.chat_body(rng) for _ in clients]
        result["post_body_bytes"] = round(sum(map(len, bodies)) / len(bodies))
        scripts = {"GET": tmp_path / "get.lua", "POST": tmp_path / "post.lua"}
        scripts["GET"].write_text(lua_script(clients))
        scripts["POST"].write_text(lua_script(clients, bodies))
        warm_up_script = tmp_path / "warm_up.lua"
        warm_up_script.write_text(lua_script(clients, in_turn=True))
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {
            (method, name): [] for method in METHODS for name in names
        }
        warm_up_statuses: dict[str, int] = {}
        result["warm_up_non_2xx"] = warm_up_statuses
        with servers(names, config, tmp_path) as (ports, pids):
            for name in names:  # every client once at least, on the servers' warm-up clock
                warm_up_statuses[name] = run_wrk(ports[name], warm_up_script, warmup)["non_2xx"]
                end_warm_up(ports[name])
            for method in METHODS:
                for name in names:
                    run_wrk(ports[name], scripts[method], warmup)
                for r in range(rounds):
                    order = names[r % len(names) :] + names[: r % len(names)]
                    for name in order:
                        measured = run_wrk(ports[name], scripts[method], seconds, pids[name])
                        runs[method, name].append(measured)
                        time.sleep(0.2)
            decisions = {name: server_stats(ports[name]) for name in names}
        server_logs = {
            name: (tmp_path / f"{name}.log").read_text(errors="replace").splitlines()
            for name in names
        }
        for method in METHODS:
            key = "stacks" if method == "GET" else "stacks_post"
            for name in names:
                result[key][name] = summarize(
                    name, runs, method, names, decisions[name], server_logs[name]
                )
    return result


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": benchlib.median(values), "min": min(values), "max": max(values)}


def summarize(
    name: str,
    runs: dict[tuple[str, str], list[dict[str, Any]]],
    method: str,
    names: list[str],
    decisions: dict[str, int],
    server_log: list[str],
) -> dict[str, Any]:
    """One stack's figures for one method, with its ratios to the bare app (and to its own
    baseline) taken round by round."""
    own = runs[method, name]
    rps = [x["rps"] for x in own]
    cpu = [x["cpu_us_per_request"] for x in own]
    entry: dict[str, Any] = {
        "rounds": own,
        "rps_median": benchlib.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "cpu_us_per_request": _spread(cpu),
        "p50_ms": benchlib.median([x["p50_ms"] for x in own]),
        "p99_ms": benchlib.median([x["p99_ms"] for x in own]),
        "non_2xx": sum(x["non_2xx"] for x in own),
        "socket_errors": sum(x["socket_errors"] for x in own),
        "decisions": decisions,
        "server_log_lines": len(server_log),
        "server_log_sample": sorted(set(server_log))[:5],
    }
    for base in ("bare", stacks.BASELINE[name]):
        if base in names and base != name:
            theirs = runs[method, base]
            entry[f"ratio_to_{base}"] = _spread(
                [a["rps"] / b["rps"] for a, b in zip(own, theirs, strict=True)]
            )
            entry[f"cpu_ratio_to_{base}"] = _spread(
                [
                    a["cpu_us_per_request"] / b["cpu_us_per_request"]
                    for a, b in zip(own, theirs, strict=True)
                ]
            )
            entry[f"cpu_us_over_{base}"] = _spread(
                [
                    a["cpu_us_per_request"] - b["cpu_us_per_request"]
                    for a, b in zip(own, theirs, strict=True)
                ]
            )
    return entry


def report(result: dict[str, Any]) -> None:
    print(f"HTTP cost and throughput: {result['server']}; {result['load']}; {result['pinning']}")
    if "skipped" in result:
        print(f"  skipped: {result['skipped']}")
        return
    for key, title in (
        ("stacks", "GET /"),
        ("stacks_post", f"POST {stacks.CHAT_PATH}, ~{result.get('post_body_bytes')} B chat body"),
    ):
        print(f"  {title}")
        print(
            f"  {'stack':32s} {'CPU us/req':>10s} {'+ bare':>7s} {'req/s':>8s} {'spread':>15s}"
            f" {'x bare':>7s} {'p50 ms':>7s} {'p99 ms':>7s}  non-2xx  decisions"
        )
        for name, e in result[key].items():
            ratio = e.get("ratio_to_bare", {}).get("median", 1.0)
            over = e.get("cpu_us_over_bare", {}).get("median", 0.0)
            print(
                f"  {name:32s} {e['cpu_us_per_request']['median']:10.1f} {over:7.1f}"
                f" {e['rps_median']:8.0f} {e['rps_min']:7.0f}-{e['rps_max']:<7.0f}"
                f" {ratio:7.2f} {e['p50_ms']:7.2f} {e['p99_ms']:7.2f}  {e['non_2xx']:7d}"
                f"  {e['decisions']}"
            )
            if e["server_log_lines"]:
                print(
                    f"  {'':32s} server logged {e['server_log_lines']} lines, e.g. "
                    f"{e['server_log_sample'][:2]}"
                )
    for name, reason in result["unavailable"].items():
        print(f"  {name:32s} skipped: {reason}")


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
