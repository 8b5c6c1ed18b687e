"""`make demo`: the LLM API example under real uvicorn, a burst from a few clients, what the
guard decided for each request and why; then a simulated hour replayed through the core.

The demo starts ``examples/llm_api.py`` on a free loopback port (uvicorn in a thread),
plays the clients below over real HTTP with httpx, and prints one row per request
(status, action, reasons, risk score, RateLimit header) and the Prometheus counters the
guard exported. The demo plays a reverse proxy on loopback: each client sends its
address in ``X-Forwarded-For`` and the app trusts ``127.0.0.1/32`` as a proxy.

Sections run in order from ``SECTIONS``; add one by appending ``(title, function)`` where
the function takes the :class:`Demo` (the server is still up while sections run).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_api import create_app, example_policy

from abuseguard import Concurrency, Decision, RequestInfo
from abuseguard.metrics import PrometheusObserver
from abuseguard.testing import serve

REQUEST_ID = "x-demo-request"
DEMO_DEADLINE_SECONDS = 28.0  # the whole demo, start-up included, stays under half a minute
HTTP_DEADLINE_SECONDS = 15.0
SDK_UA = "OpenAI/Python 1.51.0"
SCRIPT_UA = "python-requests/2.32.3"
HEADLESS_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/126.0.0.0 Safari/537.36"
)


class DecisionRecorder:
    """An observer that files each decision under the demo's request id header."""

    def __init__(self) -> None:
        self.by_request: dict[str, Decision] = {}

    def __call__(self, info: RequestInfo, decision: Decision) -> None:
        request_id = info.headers.get(REQUEST_ID)
        if request_id is not None:
            self.by_request[request_id] = decision


@dataclass
class Row:
    seq: int  # the order in which requests were sent
    client: str
    request_id: str
    status: int
    ratelimit: str
    retry_after: str
    decision: Decision | None = None


@dataclass
class Demo:
    base_url: str
    recorder: DecisionRecorder
    registry: CollectorRegistry
    out: TextIO = sys.stdout
    rows: list[Row] = field(default_factory=list)
    sent: int = 0
    started: float = field(default_factory=time.monotonic)

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


@dataclass(frozen=True)
class Client:
    name: str
    ip: str
    key: str | None
    ua: str
    story: str


async def call(
    demo: Demo,
    http: httpx.AsyncClient,
    client: Client,
    n: int,
    *,
    max_tokens: int = 64,
    path: str = "/v1/chat/completions",
    key: str | None = None,
) -> None:
    request_id = f"{client.name}-{n}"
    seq = demo.sent = demo.sent + 1
    headers = {"user-agent": client.ua, "x-forwarded-for": client.ip, REQUEST_ID: request_id}
    key = key or client.key
    if key:
        headers["authorization"] = f"Bearer {key}"
    if path.endswith("/models"):
        response = await http.get(path, headers=headers)
    else:
        body = {
            "model": "tiny",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"question number {n}, please"}],
        }
        response = await http.post(path, headers=headers, json=body)
    demo.rows.append(
        Row(
            seq,
            client.name,
            request_id,
            response.status_code,
            response.headers.get("ratelimit", "-"),
            response.headers.get("retry-after", "-"),
        )
    )


async def play(demo: Demo) -> None:
    alice = Client(
        "alice",
        "198.51.100.10",
        "sk-alice",
        SDK_UA,
        "an SDK user, one short completion every 0.2 s",
    )
    bob = Client(
        "bob",
        "198.51.100.11",
        "sk-bob",
        SDK_UA,
        "tiny completions back to back: charged 300 up front, refunded to real use",
    )
    harvester = Client(
        "harvester",
        "203.0.113.66",
        "sk-harvest",
        SCRIPT_UA,
        "a script pulling 256-token completions, ignoring Retry-After",
    )
    parallel = Client(
        "parallel",
        "203.0.113.77",
        "sk-par",
        SCRIPT_UA,
        "6 slow completions at once against a concurrency limit of 4",
    )
    anonymous = Client(
        "no-key",
        "192.0.2.200",
        None,
        SCRIPT_UA,
        "no API key: identified by IP; the app itself answers 401",
    )
    router = Client(
        "router",
        "203.0.113.99",
        None,
        HEADLESS_UA,
        "a reseller: 40 accounts behind one egress IP, headless browser",
    )
    demo.print("Clients:")
    for c in (alice, bob, harvester, parallel, anonymous, router):
        demo.print(f"  {c.name:<10} {c.ip:<15} {c.story}")
    demo.print()
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=demo.base_url, timeout=10, limits=limits) as http:
        for n in range(5):
            await call(demo, http, alice, n)
            await asyncio.sleep(0.2)
        for n in range(12):
            await call(demo, http, bob, n, max_tokens=8)
        for n in range(16):
            await call(demo, http, harvester, n, max_tokens=256)
        await asyncio.gather(*(call(demo, http, parallel, n, max_tokens=1000) for n in range(6)))
        for n in range(3):
            await call(demo, http, anonymous, n, path="/v1/models")
        for n in range(40):
            await call(demo, http, router, n, max_tokens=16, key=f"sk-router-{n}")


def traffic_section(demo: Demo) -> None:
    policy = example_policy()
    bucket = policy.bucket
    assert bucket is not None and isinstance(bucket.cost, dict)
    assert isinstance(policy.concurrency, Concurrency)
    demo.print(
        f"Policy: bucket {bucket.name!r} of {bucket.capacity:g} model tokens per API key, "
        f"refilling {bucket.per_second * 60:g}/minute; a chat completion is charged "
        f"{bucket.cost['POST /v1/chat/completions']:g} up front and reconciled from the "
        f"{bucket.cost_header} response header; at most {policy.concurrency.limit} "
        "requests in flight per key."
    )
    asyncio.run(asyncio.wait_for(play(demo), HTTP_DEADLINE_SECONDS))
    demo.rows.sort(key=lambda row: row.seq)
    for row in demo.rows:
        row.decision = demo.recorder.by_request.get(row.request_id)
    header = (
        f"{'request':<14} {'status':>6}  {'action':<16} {'reasons':<18} {'score':>5}  "
        f"{'retry':>5}  RateLimit"
    )
    demo.print(header)
    demo.print("-" * len(header))
    for row in demo.rows:
        d = row.decision
        action = "-" if d is None else d.action.value + (" (shadow)" if d.shadow else "")
        reasons = "-" if d is None or not d.reasons else ",".join(d.reasons)
        score = "-" if d is None else f"{d.score:.2f}"
        demo.print(
            f"{row.request_id:<14} {row.status:>6}  {action:<16} {reasons:<18} "
            f"{score:>5}  {row.retry_after:>5}  {row.ratelimit}"
        )
    demo.print()
    demo.print("Per client:")
    by_client: dict[str, list[Row]] = {}
    for row in demo.rows:
        by_client.setdefault(row.client, []).append(row)
    for name, rows in by_client.items():
        statuses = Counter(r.status for r in rows)
        actions = Counter(r.decision.action.value for r in rows if r.decision is not None)
        top = max((r.decision.score for r in rows if r.decision is not None), default=0.0)
        demo.print(
            f"  {name:<10} {len(rows):>3} requests  status "
            f"{_counts(statuses):<16} actions {_counts(actions):<28} max score {top:.2f}"
        )


def metrics_section(demo: Demo) -> None:
    demo.print("Prometheus counters exported by the guard (abuseguard.metrics):")
    for metric in demo.registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                demo.print(f"  {sample.name}{{{labels}}} {sample.value:g}")


def replay_section(demo: Demo) -> None:
    """A simulated hour of benign and abusive clients, replayed in virtual time."""
    cli = [sys.executable, "-m", "abuseguard.cli"]
    left = DEMO_DEADLINE_SECONDS - (time.monotonic() - demo.started)
    if left < 4.0:
        demo.print("(skipped: not enough time left in the demo's budget)")
        return
    deadline = time.monotonic() + left
    with tempfile.TemporaryDirectory() as tmp:
        trace = str(Path(tmp) / "trace.jsonl")
        try:
            subprocess.run(
                [*cli, "simulate", "--hours", "1", "--scale", "0.3", "-q", "-o", trace],
                check=True,
                timeout=left / 2,
            )
            report = subprocess.run(
                [*cli, "replay", trace],
                check=True,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            demo.print(f"(skipped: the simulator or replay did not finish: {exc})")
            return
    demo.print(report.stdout.rstrip())


def _counts(counter: Counter[Any]) -> str:
    return " ".join(f"{key}x{count}" for key, count in sorted(counter.items()))


SECTIONS: list[tuple[str, Callable[[Demo], None]]] = [
    ("What the guard decided, request by request", traffic_section),
    ("Metrics", metrics_section),
    ("One simulated hour of benign and abusive clients, replayed in virtual time", replay_section),
]


def main() -> int:
    started = time.monotonic()
    recorder = DecisionRecorder()
    registry = CollectorRegistry()
    app = create_app(
        observers=[recorder, PrometheusObserver(registry)], trusted_proxies=["127.0.0.1/32"]
    )
    with serve(app, proxy_headers=False) as base_url:
        demo = Demo(base_url, recorder, registry, started=started)
        demo.print(f"abuseguard demo: examples/llm_api.py under uvicorn at {base_url}")
        for title, section in SECTIONS:
            demo.print()
            demo.print(f"== {title} ==")
            section(demo)
    demo.print()
    demo.print(f"done in {time.monotonic() - demo.started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
