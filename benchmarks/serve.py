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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import stacks
import uvicorn

LOOP = "uvloop"
HTTP = "httptools"
_ENV = "ABUSEGUARD_BENCH_STACK"


def app_factory() -> stacks.ASGIApp:
    """Build the stack named in the environment. uvicorn calls this inside its event loop,
    which fastapi-limiter's Redis bucket needs at construction."""
    name, redis_url, mmdb_dir = os.environ[_ENV].split("|")
    config = stacks.StackConfig(
        redis_url=redis_url or None, mmdb_dir=Path(mmdb_dir) if mmdb_dir else None
    )
    return stacks.build(name, config)


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
