"""Serve one benchmark stack with uvicorn (uvloop + httptools) on loopback.

    .venv/bin/python benchmarks/serve.py --stack abuseguard-memory-proxied --port 8123 \
        [--redis-url redis://127.0.0.1:6379/0] [--mmdb-dir DIR]

Used by bench_http.py; one process per stack, one worker, no access log.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import stacks
import uvicorn
from starlette.types import ASGIApp

LOOP = "uvloop"
HTTP = "httptools"
_ENV = "ABUSEGUARD_BENCH_STACK"


WARMED_PATH = "/__bench/warmed"
WARM_UP_STEP = 0.5  # seconds the memory guards' clock moves on after each warm-up request


class WarmUp:
    """In front of every stack alike: until ``GET /__bench/warmed``, each request moves the
    stack's `stacks.WarmUpClock` (the memory-backend guards' clock) on by WARM_UP_STEP, so
    the warm-up's 10,000 clients arrive over about 80 minutes and every key is an accepted
    customer when the measurement starts (in real time the unverified-key budgets of the
    busiest networks would refuse part of them); then it only passes requests on."""

    def __init__(self, app: stacks.ASGIApp, clock: stacks.WarmUpClock) -> None:
        self.app = app
        self.clock = clock
        self.warming = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.warming and scope["type"] == "http":
            if scope["path"] == WARMED_PATH:
                self.warming = False
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            await self.app(scope, receive, send)
            self.clock.advance(WARM_UP_STEP)
            return
        await self.app(scope, receive, send)


def app_factory() -> ASGIApp:
    """Build the stack named in the environment. uvicorn calls this inside its event loop,
    which fastapi-limiter's Redis bucket needs at construction."""
    name, redis_url, mmdb_dir = os.environ[_ENV].split("|")
    clock = stacks.WarmUpClock()
    config = stacks.StackConfig(
        redis_url=redis_url or None, mmdb_dir=Path(mmdb_dir) if mmdb_dir else None, clock=clock
    )
    return WarmUp(stacks.build(name, config), clock)


def main() -> None:
    parser = argparse.ArgumentParser(description="serve one benchmark stack")
    parser.add_argument("--stack", required=True, choices=stacks.STACKS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url")
    parser.add_argument("--mmdb-dir", type=Path)
    args = parser.parse_args()
    os.environ[_ENV] = f"{args.stack}|{args.redis_url or ''}|{args.mmdb_dir or ''}"
    if args.stack.startswith("abuseguard"):
        benchlib.warm_kernels()  # a warmed server: no request runs on the kernels' twin
    uvicorn.run(
        "serve:app_factory",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        loop=LOOP,
        http=HTTP,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
