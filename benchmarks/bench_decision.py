"""In-process decision latency: p50/p99 per request, by stage, memory backend.

Run: .venv/bin/python benchmarks/bench_decision.py [--requests N] [--json out.json]
Traffic: a few thousand identities (API keys over many IPs, browser and SDK User-Agents),
virtual time, generous limits so the measured path is the common one (allowed).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from abuseguard import Guard, NetworkPolicy, Policy, RequestInfo, Scoring, TokenBucket

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)
BROWSER_HEADERS = {
    "accept": "application/json",
    "accept-language": "en-US,en;q=0.9",
    "accept-encoding": "gzip, deflate, br",
    "sec-fetch-site": "same-origin",
    "sec-fetch-mode": "cors",
    "sec-fetch-dest": "empty",
}
# (User-Agent, the other headers that client really sends)
CLIENTS = [
    (
        CHROME,
        {
            **BROWSER_HEADERS,
            "sec-ch-ua": '"Chromium";v="124", "Google Chrome";v="124"',
            "sec-ch-ua-mobile": "?0",
            "sec-ch-ua-platform": '"Windows"',
        },
    ),
    (SAFARI, BROWSER_HEADERS),
    (
        "OpenAI/Python 1.40.0",
        {
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "x-stainless-lang": "python",
            "x-stainless-package-version": "1.40.0",
            "x-stainless-os": "Linux",
            "x-stainless-arch": "x64",
            "x-stainless-runtime": "CPython",
            "x-stainless-runtime-version": "3.11.7",
        },
    ),
]


def make_requests(n: int, *, seed: int = 7, body: bool = False) -> list[RequestInfo]:
    rng = random.Random(seed)
    keys = [f"sk-test-{i:05d}" for i in range(2000)]
    # Each account keeps to its own address and client, as real users and apps do.
    home = {
        k: (f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.choice(CLIENTS))
        for k in keys
    }
    out = []
    ts = 1_700_000_000.0
    for _ in range(n):
        ts += rng.expovariate(2000.0)
        key = rng.choice(keys)
        ip, (ua, client_headers) = home[key]
        headers = {
            "host": "api.example.com",
            "user-agent": ua,
            **client_headers,
            "content-type": "application/json",
        }
        payload = None
        if body:
            payload = json.dumps(
                {
                    "model": "m",
                    "messages": [
                        {
                            "role": "user",
                            "content": f"Summarize item {rng.randrange(10**6)} in two sentences.",
                        }
                    ],
                }
            )
        out.append(
            RequestInfo(
                ip=ip,
                ts=ts,
                key=key,
                method="POST",
                path="/v1/chat/completions",
                ua=ua,
                headers=headers,
                body=payload,
                asn=rng.choice([7922, 3320, 16509]),
                country="US",
            )
        )
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    n = len(samples)
    return {
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[int(n * 0.99)] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
    }


def measure(fn: Callable[[RequestInfo], Any], requests: list[RequestInfo]) -> dict[str, float]:
    lat = []
    clock = time.perf_counter_ns
    for info in requests:
        t0 = clock()
        fn(info)
        lat.append(clock() - t0)
    return percentiles(lat)


def run(n: int, content: bool = False) -> dict[str, Any]:
    policy = Policy(
        bucket=TokenBucket("1000/second", burst=5000),
        network=NetworkPolicy(per_ip=TokenBucket("1000/second", burst=5000)),
        scoring=Scoring(content=content),
    )
    guard = Guard(policy)
    requests = make_requests(n, body=content)
    warm = make_requests(5000, seed=3, body=content)
    for info in warm:
        guard.check(info)
    prepared = [guard.prepare(info) for info in requests[:20000]]
    result: dict[str, Any] = {"requests": n, "content": content}
    result["total"] = measure(guard.check, requests)
    result["stage_identity"] = measure(guard.identity_of, requests[:20000])
    result["stage_prepare"] = measure(guard.prepare, requests[:20000])
    it = iter(prepared)
    result["stage_engine"] = measure(lambda _: guard.run_engine(next(it)), requests[:20000])
    result["stage_kernel"] = measure(lambda _: guard.engine.run(), requests[:20000])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = [run(args.requests), run(min(args.requests, 50_000), content=True)]
    for r in results:
        label = "with content fingerprinting" if r["content"] else "scoring + intel + buckets"
        print(f"decision latency ({label}), {r['requests']} requests")
        for stage, stats in r.items():
            if isinstance(stats, dict):
                print(
                    f"  {stage:16s} p50 {stats['p50_us']:6.2f} us   p99 {stats['p99_us']:6.2f} us"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
