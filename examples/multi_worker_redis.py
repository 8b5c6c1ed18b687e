"""Several uvicorn workers sharing their limits through Redis.

With the default memory backend every worker keeps its own buckets, so four workers admit
four times the configured burst. With ``backend="redis://…"`` the buckets, quotas and
concurrency counts live in Redis and every worker sees the same numbers; the risk scoring
still runs in each process.

Run it (Redis on localhost, four workers)::

    ABUSEGUARD_BACKEND=redis://127.0.0.1:6379/0 python examples/multi_worker_redis.py

or with uvicorn directly::

    uvicorn multi_worker_redis:app --app-dir examples --workers 4

``ABUSEGUARD_BACKEND`` takes any backend URI: ``redis://``, ``rediss://`` (TLS),
``redis+cluster://`` (Redis Cluster) or ``memory://``. ``ABUSEGUARD_WORKERS`` sets the number
of workers and ``PORT`` the port.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Policy, Quota, TokenBucket

BACKEND = os.environ.get("ABUSEGUARD_BACKEND", "redis://127.0.0.1:6379/0")


async def work(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})  # which worker answered


app = Starlette(routes=[Route("/", work)])
app.add_middleware(
    AbuseGuard,
    policy=Policy(
        bucket=TokenBucket(rate="5/second", burst=10),
        quotas=(Quota("1000/hour"),),
        concurrency=8,
    ),
    backend=BACKEND,
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        "multi_worker_redis:app",
        app_dir=str(Path(__file__).resolve().parent),
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8000")),
        workers=int(os.environ.get("ABUSEGUARD_WORKERS", "4")),
    )
