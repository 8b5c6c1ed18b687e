"""`make demo`: an LLM-style API under real uvicorn, a few clients over real HTTP, what the
guard decided and why; then a short simulated trace replayed through the same guard core."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI, Request

from abuseguard import AbuseGuard, Policy, TokenBucket, current_decision

app = FastAPI()


@app.post("/v1/chat/completions")
async def chat(request: Request) -> dict[str, object]:
    decision = current_decision(request)
    degraded = bool(getattr(request.state, "abuseguard_degraded", False))
    return {"choices": [{"message": {"content": "hello"}}], "degraded": degraded,
            "score": round(decision.score, 3) if decision else None}


app.add_middleware(AbuseGuard, policy=Policy(bucket=TokenBucket(rate="5/second", burst=10)))

BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
           "accept": "*/*", "accept-language": "en-US", "accept-encoding": "gzip",
           "sec-fetch-mode": "cors", "sec-fetch-site": "same-origin", "sec-fetch-dest": "empty"}
CLIENTS = {
    "person (browser)": {**BROWSER, "authorization": "Bearer sk-person"},
    "sdk backend": {"user-agent": "OpenAI/Python 1.40.0", "x-stainless-lang": "python",
                    "x-stainless-package-version": "1.40.0", "accept-encoding": "gzip",
                    "authorization": "Bearer sk-app"},
    "script (no UA)": {"authorization": "Bearer sk-script", "user-agent": ""},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drive(url: str) -> None:
    print(f"{'client':18s} {'#':>3s} {'status':>6s}  {'RateLimit':32s} reasons")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for name, headers in CLIENTS.items():
            burst = 14 if name != "person (browser)" else 6
            for i in range(burst):
                r = await client.post("/v1/chat/completions", headers=headers,
                                      json={"messages": [{"role": "user", "content": f"q{i}"}]})
                reasons = ",".join(r.json().get("reasons", [])) if r.status_code >= 400 else ""
                if i in (0, burst - 5, burst - 4, burst - 1) or r.status_code != 200:
                    print(f"{name:18s} {i + 1:3d} {r.status_code:6d}  "
                          f"{r.headers.get('ratelimit', ''):32s} {reasons}")
        await asyncio.sleep(0.5)
        r = await client.post("/v1/chat/completions", headers=CLIENTS["script (no UA)"], json={})
        print(f"{'script, 0.5 s later':18s} {'':3s} {r.status_code:6d}  {r.headers.get('ratelimit', '')}")


def http_part() -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    print(f"== 1. An API on uvicorn at http://127.0.0.1:{port}, bucket 5/second burst 10 ==")
    try:
        asyncio.run(drive(f"http://127.0.0.1:{port}"))
    finally:
        server.should_exit = True
        thread.join(5)


def replay_part() -> None:
    print("\n== 2. One simulated hour of benign and abusive clients, replayed in virtual time ==")
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.jsonl")
        cli = [sys.executable, "-m", "abuseguard.cli"]
        subprocess.run([*cli, "simulate", "--hours", "1", "--scale", "0.3", "-q", "-o", trace],
                       check=True)
        subprocess.run([*cli, "replay", trace], check=True)


if __name__ == "__main__":
    http_part()
    replay_part()
