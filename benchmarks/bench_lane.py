"""Cost of the background lane with operations linking (issue 16 items 2 and 7).

A synthetic population of ``--accounts`` honest accounts (browsers on home ISPs, SDK apps
in clouds, a campus NAT, a popular system prompt) and ``--operations`` operations of
``--members`` accounts each (one persona, one request shape, a residential ASN mix), each
account with its own addresses, sends ``--rate`` requests per second of virtual time for
``--seconds`` seconds. Each request goes through ``Guard.check`` with the lane as an
observer; the lane is flushed every virtual second, as its task does in production.

Prints, as CPU time of this process (``time.process_time``, so the load of other
processes on a shared machine counts less than it would in wall time):

* ``append``: the observer's queue append per request (the only lane cost on the request
  path), median over repeats, in microseconds;
* ``lane``: the lane's flushes per virtual second, as a share of one core at ``--rate``
  requests per second (the target: <= 10% at 1,000/s), and per request in microseconds;
* the clusters found (size, labels), so the figures are of a lane that does its job.

    .venv/bin/python benchmarks/bench_lane.py [--accounts 12000] [--seconds 120]

Not part of run_all.py: run it alone.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from abuseguard import Guard, Policy, RequestInfo, Scoring
from abuseguard.lane import BackgroundLane

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
BROWSER = {
    "accept": "*/*",
    "accept-language": "en-US,en;q=0.9",
    "accept-encoding": "gzip, deflate, br",
    "content-type": "application/json",
    "sec-fetch-site": "same-origin",
    "sec-fetch-mode": "cors",
    "sec-fetch-dest": "empty",
}


def sdk(version: str, extra: str | None = None) -> dict[str, str]:
    headers = {
        "accept": "application/json",
        "accept-encoding": "gzip, deflate",
        "content-type": "application/json",
        "x-stainless-lang": "python",
        "x-stainless-package-version": version,
        "x-stainless-runtime": "CPython",
    }
    if extra:
        headers[extra] = "1"
    return headers


def population(rng: random.Random, accounts: int, operations: int, members: int) -> list[dict]:
    people = []
    for i in range(accounts):
        kind = rng.random()
        if kind < 0.6:
            people.append(
                {
                    "key": f"person{i}",
                    "ua": CHROME,
                    "headers": BROWSER,
                    "asns": [rng.randrange(1000, 1400)],
                    "system": None,
                    "shape": {"model": "atlas-1", "stream": True},
                    "label": "benign",
                }
            )
        else:
            version = f"1.{rng.randrange(20, 62)}.0"
            people.append(
                {
                    "key": f"app{i}",
                    "ua": f"OpenAI/Python {version}",
                    "headers": sdk(version),
                    "asns": [rng.choice([16509, 14618, 15169, 8075])],
                    "system": rng.choice([None, "You are a helpful assistant."]),
                    "shape": {"model": "atlas-1", "max_tokens": rng.choice([256, 1024, 4096])},
                    "label": "benign",
                }
            )
    for op in range(operations):
        pool = [rng.randrange(2000, 2100) for _ in range(12)]
        shape = {"model": "atlas-1-reasoning", "max_tokens": 8000 + op, "temperature": 0.6}
        for m in range(members):
            people.append(
                {
                    "key": f"op{op}-{m}",
                    "ua": "OpenAI/Python 1.59.7",
                    "headers": sdk("1.59.7", extra=f"x-router-{op}"),
                    "asns": pool,
                    "system": None,
                    "shape": shape,
                    "label": f"op{op}",
                }
            )
    return people


def body_of(rng: random.Random, who: dict) -> str:
    messages = []
    if who["system"]:
        messages.append({"role": "system", "content": who["system"]})
    messages.append({"role": "user", "content": f"question {rng.randrange(10**6)} about things"})
    return json.dumps({**who["shape"], "messages": messages})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=12_000)
    parser.add_argument("--operations", type=int, default=3)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--created",
        action="store_true",
        help="give accounts creation times (people over years, operations in batches of 10 "
        "a week apart): pair links and pooled batches do their work too",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    people = population(rng, args.accounts, args.operations, args.members)
    guard = Guard(Policy(scoring=Scoring(content=False), unverified_keys=None), explain=False)
    created_of = None
    if args.created:
        day = 86400.0
        created: dict[str, float] = {}
        for who in people:
            identity = guard.identity_of(RequestInfo(ip="192.0.2.1", key=who["key"]))[0]
            if who["label"] == "benign":
                created[identity] = 1_000_000.0 - rng.lognormvariate(5.4, 1.3) * day
            else:
                batch = int(who["key"].rsplit("-", 1)[1]) // 10
                created[identity] = 1_000_000.0 - (3 + 7 * batch) * day
        created_of = created.get
    lane = BackgroundLane(guard, created_of=created_of)
    guard.observers.append(lane)
    per_second = int(args.rate)
    # Every account once first (distinct identities from the start), then at random.
    order = list(range(len(people)))
    rng.shuffle(order)
    picks = order + [rng.randrange(len(people)) for _ in range(per_second * args.seconds)]
    picks = picks[: per_second * args.seconds]
    requests = []
    for n, at in enumerate(picks):
        who = people[at]
        ts = 1_000_000.0 + n / args.rate
        asn = rng.choice(who["asns"])
        requests.append(
            RequestInfo(
                ip=f"10.{asn % 250}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                key=who["key"],
                ts=ts,
                method="POST",
                path="/v1/chat/completions",
                ua=who["ua"],
                headers=who["headers"],
                body=body_of(rng, who),
                asn=asn,
            )
        )
    flush_cpu: list[float] = []
    for second in range(args.seconds):
        for info in requests[second * per_second : (second + 1) * per_second]:
            guard.check(info)
        t0 = time.process_time()
        lane.flush()
        flush_cpu.append(time.process_time() - t0)
    warm = flush_cpu[len(flush_cpu) // 4 :]  # after the first quarter: accounts known
    share = sum(warm) / len(warm)
    print(f"accounts {len(people):,}, {args.rate:,.0f} req/s for {args.seconds} s (virtual)")
    print(
        f"lane: {100 * share:.1f}% of one core (mean over the last 3/4), "
        f"{1e6 * share / per_second:.1f} us per request; p90 flush "
        f"{1e3 * sorted(warm)[int(0.9 * len(warm))]:.1f} ms, max {1e3 * max(warm):.1f} ms"
    )
    info, decision = requests[-1], guard.check(requests[-1])
    timer = timeit.Timer(lambda: lane(info, decision), timer=time.process_time)
    appends = [min(timer.repeat(5, 10_000)) / 10_000 for _ in range(5)]
    lane.queue.clear()
    print(f"append: {1e6 * statistics.median(appends):.2f} us per request")
    label_of = {
        guard.identity_of(RequestInfo(ip="192.0.2.1", key=p["key"]))[0]: p["label"] for p in people
    }
    assert lane.operations is not None
    for cluster in lane.operations.clusters.values():
        labels: dict[str, int] = {}
        for member in cluster.members:
            labels[label_of[member]] = labels.get(label_of[member], 0) + 1
        print(f"cluster {cluster.id}: {len(cluster.members)} members {labels}")


if __name__ == "__main__":
    main()
