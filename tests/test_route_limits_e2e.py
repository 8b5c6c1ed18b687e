"""Route limits end to end: 4 uvicorn processes, one Redis (inline mode), real HTTP.

Concurrent requests of one client against a route, spread over the 4 processes, are
admitted exactly up to the route's burst (and its quota); the refusals cost nothing in
the app-wide bucket; a route that refuses does not block another route.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RedisServer, free_port, wait_for_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 4
APP_BURST = 1000
ROUTE_BURST = 9
QUOTA = 5


def create_app() -> Any:
    """The app each uvicorn process serves (``--factory``), configured by environment."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from abuseguard import AbuseGuard, Limits, Policy, Quota, TokenBucket

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    policy = Policy(
        bucket=TokenBucket("1/hour", burst=APP_BURST),
        routes={
            "POST /v1/chat": Limits(bucket=TokenBucket("1/hour", burst=ROUTE_BURST)),
            "/v1/daily": Limits(quotas=(Quota(f"{QUOTA}/day", name="daily"),)),
        },
        scoring=None,
        network=None,
        max_identities=4096,
        unverified_keys=None,
    )
    app = Starlette(
        routes=[
            Route("/v1/chat", ok, methods=["POST"]),
            Route("/v1/daily", ok),
            Route("/v1/models", ok),
        ]
    )
    backend = os.environ["AG_TEST_REDIS"] + "?budget=0.5&prefix=" + os.environ["AG_PREFIX"]
    return AbuseGuard(app, policy=policy, backend=backend)


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `make test` installs Debian's redis-server")
    tmp = tmp_path_factory.mktemp("route-e2e")
    server = RedisServer(tmp)
    server.start()
    env = {**os.environ, "AG_TEST_REDIS": server.url, "AG_PREFIX": f"re2e{os.getpid()}"}
    env.pop("WEB_CONCURRENCY", None)
    worker_ports = [free_port() for _ in range(WORKERS)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in worker_ports:
            log = open(tmp / f"uvicorn-{port}.log", "wb")  # noqa: SIM115 - closed by the process
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "tests.test_route_limits_e2e:create_app",
                        "--factory",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                        "--lifespan",
                        "on",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        for port in worker_ports:
            wait_for_port(port, timeout=90)
        yield worker_ports
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        server.stop()


async def _spread(
    ports: list[int], method: str, path: str, key: str, n: int
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=64)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=10.0, limits=limits, headers=headers) as client:
        return list(
            await asyncio.gather(
                *(
                    client.request(method, f"http://127.0.0.1:{ports[i % len(ports)]}{path}")
                    for i in range(n)
                )
            )
        )


def test_four_processes_admit_exactly_the_route_burst_and_refusals_cost_nothing(
    ports: list[int],
) -> None:
    key = f"sk-route-{uuid.uuid4()}"

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        chats = await _spread(ports, "POST", "/v1/chat", key, 5 * ROUTE_BURST)
        others = await _spread(ports, "GET", "/v1/models", key, WORKERS)
        return chats, others

    chats, others = asyncio.run(scenario())
    statuses = [r.status_code for r in chats]
    assert statuses.count(200) == ROUTE_BURST
    assert statuses.count(429) == 4 * ROUTE_BURST
    refused = next(r for r in chats if r.status_code == 429)
    assert '"route-POST-v1-chat-default"' in refused.headers["ratelimit-policy"]
    # the route refuses, another route still serves on every worker
    assert [r.status_code for r in others] == [200] * WORKERS
    # the app-wide bucket paid for the served chats and these requests only
    remaining = sorted(
        int(r.headers["ratelimit"].split('"default";r=')[1].split(";")[0]) for r in others
    )
    assert remaining[0] == APP_BURST - ROUTE_BURST - WORKERS


def test_four_processes_admit_exactly_the_route_quota(ports: list[int]) -> None:
    key = f"sk-daily-{uuid.uuid4()}"
    responses = asyncio.run(_spread(ports, "GET", "/v1/daily", key, 8 * QUOTA))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == QUOTA
    assert statuses.count(429) == 7 * QUOTA
