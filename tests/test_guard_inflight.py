"""The middleware's count of requests in flight reaches the engine stage, which slows
refills under load (`Policy.load_target`): served over real HTTP by uvicorn."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Policy, TokenBucket
from abuseguard.testing import serve


def test_requests_in_flight_while_the_app_answers_them_slow_the_refills() -> None:
    seen: list[tuple[int, float]] = []
    both_arrived = asyncio.Event()

    async def handler(request: Request) -> JSONResponse:
        guard = middleware.guard
        seen.append((guard.inflight, guard.engine_run.load_factor()))
        if len(seen) == 2:
            both_arrived.set()
        await asyncio.wait_for(both_arrived.wait(), timeout=30.0)
        return JSONResponse({})

    app = Starlette(routes=[Route("/chat", handler)])
    policy = Policy(bucket=TokenBucket("100/second", burst=100), load_target=1)
    middleware = AbuseGuard(app, policy=policy)
    with serve(middleware, timeout=90.0) as base, ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: httpx.get(f"{base}/chat", timeout=60.0), range(2)))
    assert [reply.status_code for reply in replies] == [200, 200]
    # The first in alone; the second in while the first waits: two in flight against a
    # target of one, half-speed refills.
    assert seen == [(1, 1.0), (2, 0.5)]
    assert middleware.guard.inflight == 0
    assert middleware.guard.engine_run.load_factor() == 1.0
