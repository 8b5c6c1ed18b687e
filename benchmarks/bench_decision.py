"""In-process decision latency: p50/p99 per request, by stage, memory backend.

Run: .venv/bin/python benchmarks/bench_decision.py [--requests N] [--json out.json]
     [--quick] [--cold-start] [--intel {mmdb,fields}]

Traffic: ten thousand accounts (API keys), each on its own address in an ordinary network
of the tests' small MaxMind world and with one User-Agent, in virtual time at about one
request per second per account; generous limits, so the measured path is the common one
(allowed). Intel comes from a GeoIntel over that world (``--intel mmdb``, the default), or
from enrichment fields on each request, as a CDN log would carry them (``--intel fields``).

Stages, each timed per call on the same warmed guard:

- ``asgi_request_info``: the middleware turning an ASGI scope into a RequestInfo (direct
  client; ``..._proxied``: behind a trusted proxy, the client in X-Forwarded-For);
- ``identity`` (``Guard.identity_of``: address and key), ``intel`` (``NetworkView.profile``:
  cached network profile), ``client`` (User-Agent class and header persona),
  ``content_fingerprint`` (prompt fingerprint, when on), ``prepare`` (``Guard.prepare``: all
  of these), ``engine`` (``Guard.run_engine``: state-table rows plus the one Numba call that
  runs buckets, sketches and the score), ``decide`` (``Guard.decision_from_engine``: kernel
  outputs to a Decision; it reads the plain-allow flag back from the outputs, which
  ``Guard.check`` gets from the kernel: about 0.2 us more), ``headers`` (RateLimit headers),
  ``complete`` (``Guard.complete``: outcome fed back after the response);
- ``total``: ``Guard.check`` alone; ``kernel``: the Numba call alone, as the guard makes it
  (``Engine.decide_with`` on ``Engine.last_kernel_inputs()``), ``kernel_dispatch`` the same
  through the Numba dispatcher, ``empty_kernel_same_args`` an empty Numba function.

Every stage goes through public API except ``client``: the guard's cached client lookup
has no public entry point yet.

``--cold-start`` also times import-to-first-decision in fresh processes: with an empty
Numba cache (NUMBA_CACHE_DIR pointing at a new temporary directory, so every kernel
compiles) and with the cache that run left behind (kernels load from disk). On an empty
cache the first decision is made by the kernels' Python twin while a background thread
compiles them; ``compiled_s`` is import to the switch to the compiled kernels (then
``content_s`` to content scoring on, content policy only), and ``twin_decisions`` counts
the requests decided meanwhile by a client sending one every 10 ms.
Every figure includes the cost of reading the clock, which is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

from abuseguard import (
    AbuseGuard,
    Guard,
    NetworkPolicy,
    Policy,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.engine import kernel_set
from abuseguard.guard import Prepared
from abuseguard.headers import rate_limit_headers

ACCOUNTS = 10_000  # distinct API keys, each on its own address (the budgets need >= 10,000)
STAGE_REQUESTS_MAX = 20_000
KEEP_SAMPLES = 4000


def make_requests(
    n: int,
    *,
    seed: int = 7,
    body: bool = False,
    fields: bool = False,
    start: float = 1_700_000_000.0,
) -> list[RequestInfo]:
    rng = random.Random(seed)
    clients = benchlib.benign_clients(ACCOUNTS)
    enrichment = {c.key: (rng.choice([7922, 21928, 25]), "US") for c in clients}
    out = []
    ts = start
    for _ in range(n):
        ts += rng.expovariate(float(ACCOUNTS))
        c = rng.choice(clients)
        headers = {
            "host": "api.example.com",
            "user-agent": c.ua,
            "accept": "application/json",
            "content-type": "application/json",
            "authorization": f"Bearer {c.key}",
        }
        payload = None
        if body:
            prompt = benchlib.benign_prompt(rng)
            payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]})
        asn, country = enrichment[c.key] if fields else (None, None)
        out.append(
            RequestInfo(
                ip=c.ip,
                ts=ts,
                key=c.key,
                method="POST",
                path="/v1/chat/completions",
                ua=c.ua,
                headers=headers,
                body=payload,
                asn=asn,
                country=country,
            )
        )
    return out


def scope_of(info: RequestInfo, *, proxied: bool) -> dict[str, Any]:
    headers = [(k.encode(), v.encode()) for k, v in info.headers.items()]
    if proxied:
        headers.append((b"x-forwarded-for", str(info.ip).encode()))
    return {
        "type": "http",
        "method": info.method,
        "path": info.path,
        "headers": headers,
        "client": ("127.0.0.1" if proxied else info.ip, 50000),
    }


def measure(fn: Callable[[Any], Any], items: list[Any]) -> list[int]:
    lat = []
    clock = time.perf_counter_ns
    for item in items:
        t0 = clock()
        fn(item)
        lat.append(clock() - t0)
    return lat


def _policy(content: bool, proxied: bool = False) -> Policy:
    generous = TokenBucket("1000/second", burst=5000)
    return Policy(
        bucket=generous,
        network=NetworkPolicy(per_ip=generous),
        scoring=Scoring(content=content),
        trusted_proxies=("127.0.0.1/32",) if proxied else (),
    )


def _client_stage(guard: Guard) -> Callable[[RequestInfo], Any] | None:
    """The guard's cached client lookup (the client enricher's own entry point)."""
    client_of = guard.client_enricher.client_of
    return lambda info: client_of(info.ua, info.headers)


def _kernel_call(guard: Guard, prepared: Prepared) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(what the guard calls, the bare Numba dispatch) replaying one request's inputs."""
    from abuseguard.engine import kernels

    args = _kernel_inputs(guard, prepared)
    entry = guard.engine.decide_with
    return (lambda: entry(*args)), (lambda: kernels.decide_with(*args))


def _kernel_inputs(guard: Guard, prepared: Prepared) -> tuple[Any, ...]:
    """The arguments of the guard's kernel call for one prepared request."""
    guard.run_engine(prepared)
    profile = prepared.profile
    return guard.engine.last_kernel_inputs(scored=profile is None or not profile.allowed)


def _empty_kernel(arity: int) -> Callable[..., Any]:
    """A Numba function that takes ``arity`` arguments and does nothing: the dispatch floor."""
    from numba import njit

    names = ", ".join(f"a{i}" for i in range(arity))
    namespace: dict[str, Any] = {}
    exec(f"def empty({names}):\n    return None\n", namespace)
    return njit(namespace["empty"])  # type: ignore[no-any-return]


def run(
    n: int, content: bool = False, *, intel: str = "mmdb", mmdb_dir: Path | None = None
) -> dict[str, Any]:
    fields = intel == "fields" or mmdb_dir is None
    world = None if fields else benchlib.open_world(mmdb_dir)  # type: ignore[arg-type]
    kernel_set.compiled()  # time the compiled kernels, not their twin (empty Numba cache)
    guard = Guard(_policy(content), intel=world)
    stage_n = min(n, STAGE_REQUESTS_MAX)
    warm = make_requests(5000, seed=3, body=content, fields=fields)
    stream = make_requests(n + stage_n, body=content, fields=fields, start=warm[-1].ts + 1.0)  # type: ignore[operator]
    total_part, stage_part = stream[:n], stream[n:]
    # The origin has answered every account before (one a second, the hour before): their
    # keys are accepted, as in a steady deployment, and draw from no unverified-key budget.
    for i, c in enumerate(benchlib.benign_clients(ACCOUNTS)):
        info = RequestInfo(ip=c.ip, ts=warm[0].ts - 3600.0 + i, key=c.key)  # type: ignore[operator]
        guard.complete(info, guard.check(info), status=200)
    for info in warm:
        guard.check(info)
    result: dict[str, Any] = {
        "requests": n,
        "accounts": ACCOUNTS,
        "content": content,
        "intel_source": "request fields" if fields else "GeoIntel (mmdb world)",
    }
    samples: dict[str, list[int]] = {}
    actions: dict[str, int] = {}

    def check(info: RequestInfo) -> None:
        d = guard.check(info)
        actions[d.action.value] = actions.get(d.action.value, 0) + 1

    samples["total"] = measure(check, total_part)
    result["actions"] = actions

    # Stages without side effects on the engine state.
    for proxied in (False, True):
        mw = AbuseGuard(_noop_app, policy=_policy(content, proxied), intel=world)
        scopes = [scope_of(info, proxied=proxied) for info in stage_part]
        suffix = "_proxied" if proxied else ""
        samples[f"asgi_request_info{suffix}"] = measure(mw.request_info, scopes)
    samples["identity"] = measure(guard.identity_of, stage_part)
    if guard.network is not None:
        network = guard.network
        addresses = [guard.identity_of(info)[2] for info in stage_part]
        pairs = list(zip(addresses, stage_part, strict=True))
        samples["intel"] = measure(
            lambda pair: network.profile(
                pair[0],
                pair[1].asn,
                pair[1].as_org,
                pair[1].country,
                pair[1].anon,
                pair[1].anon_confidence,
            ),
            pairs,
        )
    client = _client_stage(guard)
    if client is not None:
        samples["client"] = measure(client, stage_part)
    if guard.content is not None:
        fingerprint = guard.content.fingerprint
        samples["content_fingerprint"] = measure(
            lambda info: fingerprint(info.body, info.headers.get("content-type")), stage_part
        )
    prepared = []
    clock = time.perf_counter_ns
    lat_prepare = []
    for info in stage_part:
        t0 = clock()
        p = guard.prepare(info)
        lat_prepare.append(clock() - t0)
        prepared.append(p)
    samples["prepare"] = lat_prepare

    # Stages that move the engine: one pass in time order, each stage timed in turn.
    lat_engine, lat_decide, lat_headers, lat_complete = [], [], [], []
    for info, p in zip(stage_part, prepared, strict=True):
        t0 = clock()
        guard.run_engine(p)
        t1 = clock()
        decision = guard.decision_from_engine(info, p)
        t2 = clock()
        rate_limit_headers(decision)
        t3 = clock()
        guard.complete(info, decision, status=200)
        t4 = clock()
        lat_engine.append(t1 - t0)
        lat_decide.append(t2 - t1)
        lat_headers.append(t3 - t2)
        lat_complete.append(t4 - t3)
    samples.update(engine=lat_engine, decide=lat_decide, headers=lat_headers, complete=lat_complete)
    guarded_call, numba_call = _kernel_call(guard, prepared[-1])
    samples["kernel"] = measure(lambda _: guarded_call(), stage_part)
    samples["kernel_dispatch"] = measure(lambda _: numba_call(), stage_part)
    args = _kernel_inputs(guard, prepared[-1])
    empty = _empty_kernel(len(args))
    empty(*args)
    samples["empty_kernel_same_args"] = measure(lambda _: empty(*args), stage_part)

    rng = random.Random(5)
    for stage, lat in samples.items():
        stats: dict[str, Any] = dict(benchlib.percentiles(lat))
        kept = lat if len(lat) <= KEEP_SAMPLES else rng.sample(lat, KEEP_SAMPLES)
        stats["samples_us"] = [round(x / 1000, 3) for x in kept]
        result[stage] = stats
    return result


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:
    return None


# ----------------------------------------------------------------------------- cold start

_COLD_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from abuseguard import Guard, Policy, RequestInfo, Scoring
t1 = time.perf_counter()
guard = Guard(Policy(scoring=Scoring(content=sys.argv[1] == "content")))
t2 = time.perf_counter()
guard.check(RequestInfo(ip="73.20.30.40", ts=1.7e9, key="sk-cold", method="POST",
                        path="/v1/chat/completions", ua="OpenAI/Python 1.40.0",
                        headers={"content-type": "application/json"},
                        body='{"messages":[{"role":"user","content":"Hello there"}]}'))
t3 = time.perf_counter()
twin_decisions = 0
for i in range(60_000):  # a light client until the switch: one request every 10 ms
    if guard.kernels_compiled:
        break
    guard.check(RequestInfo(ip="73.20.30.41", ts=1.7e9 + i * 0.01, key=f"sk-{i % 50}",
                            path="/v1/models"))
    twin_decisions += 1
    time.sleep(0.01)
t4 = time.perf_counter()
if guard.content is not None:
    guard.content.wait_ready(600)
t5 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "construct_s": t2 - t1, "first_decision_s": t3 - t2,
                  "total_s": t3 - t0, "compiled_s": t4 - t0, "content_s": t5 - t0,
                  "twin_decisions": twin_decisions}))
"""


def cold_start(repeats: int) -> dict[str, Any]:
    """Import to first decision in fresh processes: empty Numba cache, then warm cache."""
    out: dict[str, Any] = {}
    for variant in ("default", "content"):
        with tempfile.TemporaryDirectory(prefix="abuseguard-bench-numba-") as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            runs: dict[str, list[dict[str, float]]] = {"empty_cache": [], "warm_cache": []}
            for i in range(1 + repeats):
                done = subprocess.run(
                    [sys.executable, "-c", _COLD_SCRIPT, variant],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if done.returncode != 0:
                    out[variant] = {"error": done.stderr.strip().splitlines()[-3:]}
                    break
                runs["empty_cache" if i == 0 else "warm_cache"].append(
                    json.loads(done.stdout.strip().splitlines()[-1])
                )
            else:
                warm = runs["warm_cache"]
                out[variant] = {
                    "empty_cache": runs["empty_cache"][0],
                    "warm_cache": {key: benchlib.median([r[key] for r in warm]) for key in warm[0]},
                    "warm_repeats": len(warm),
                }
    return out


# ----------------------------------------------------------------------------- report

STAGE_ORDER = (
    "asgi_request_info",
    "asgi_request_info_proxied",
    "identity",
    "intel",
    "client",
    "content_fingerprint",
    "prepare",
    "engine",
    "decide",
    "headers",
    "complete",
    "total",
    "kernel",
    "kernel_dispatch",
    "empty_kernel_same_args",
)


def report(results: list[dict[str, Any]], cold: dict[str, Any] | None, timer_ns: float) -> None:
    for r in results:
        label = "with content fingerprinting" if r["content"] else "scoring + intel + buckets"
        print(
            f"decision latency ({label}; intel from {r['intel_source']}), {r['requests']} requests,"
            f" actions {r['actions']}"
        )
        for stage in STAGE_ORDER:
            stats = r.get(stage)
            if stats:
                print(
                    f"  {stage:26s} p50 {stats['p50_us']:7.2f} us   p99 {stats['p99_us']:7.2f} us"
                )
    print(f"  (each sample includes reading the clock: {timer_ns:.0f} ns)")
    if cold:
        for variant, entry in cold.items():
            if "error" in entry:
                print(f"cold start ({variant}): failed: {entry['error']}")
                continue
            for cache in ("empty_cache", "warm_cache"):
                c = entry[cache]
                print(
                    f"cold start ({variant} policy, {cache.replace('_', ' ')}): import "
                    f"{c['import_s']:.2f} s, Guard() {c['construct_s']:.2f} s, first decision "
                    f"{c['first_decision_s'] * 1000:.1f} ms, total {c['total_s']:.2f} s; "
                    f"compiled kernels from {c['compiled_s']:.1f} s "
                    f"({c['twin_decisions']:.0f} requests on the twin), "
                    f"content from {c['content_s']:.1f} s"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true", help="30,000 requests, one warm repeat")
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="also time import to first decision (empty and warm Numba cache)",
    )
    parser.add_argument("--intel", choices=("mmdb", "fields"), default="mmdb")
    args = parser.parse_args()
    n = min(args.requests, 30_000) if args.quick else args.requests
    timer_ns = benchlib.timer_overhead_ns()
    with tempfile.TemporaryDirectory(prefix="abuseguard-bench-mmdb-") as tmp:
        mmdb_dir = Path(tmp) if benchlib.build_mmdb_world(Path(tmp)) else None
        results = [
            run(n, intel=args.intel, mmdb_dir=mmdb_dir),
            run(min(n, 50_000), content=True, intel=args.intel, mmdb_dir=mmdb_dir),
        ]
    cold = cold_start(1 if args.quick else 3) if args.cold_start else None
    report(results, cold, timer_ns)
    if args.json:
        payload = {"runs": results, "cold_start": cold, "timer_overhead_ns": timer_ns}
        Path(args.json).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
