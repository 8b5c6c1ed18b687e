"""A plan's concurrency replaces the app-wide one, end to end: 4 uvicorn processes, one
Redis (inline mode), real HTTP.

N concurrent requests of one pro client, spread over the 4 processes against a handler
that holds them until the test lets go, are admitted exactly up to the pro plan's
concurrency, not the app-wide one; a client without a plan gets the app-wide one.
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
APP_CONCURRENCY = 1
PRO_CONCURRENCY = 3
REQUESTS = 24


def create_app() -> Any:
    """The app each uvicorn process serves (``--factory``), configured by environment."""
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from abuseguard import AbuseGuard, Limits, Policy, TokenBucket

    release = Path(os.environ["AG_RELEASE"])

    async def held(request: Request) -> PlainTextResponse:
        # in flight until the test lets go (at most 20 s: a wrong count then fails the test)
        for _ in range(1000):
            if release.exists():
                break
            await asyncio.sleep(0.02)
        return PlainTextResponse("ok")

    def plan_of(conn: HTTPConnection) -> str | None:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        return token.split("-")[0] or None

    policy = Policy(
        bucket=TokenBucket("1/hour", burst=1000),
        concurrency=APP_CONCURRENCY,
        plans={"pro": Limits(concurrency=PRO_CONCURRENCY)},
        plan_func=plan_of,
        scoring=None,
        network=None,
        max_identities=4096,
        unverified_keys=None,
    )
    app = Starlette(routes=[Route("/v1/held", held)])
    backend = os.environ["AG_TEST_REDIS"] + "?budget=0.5&prefix=" + os.environ["AG_PREFIX"]
    return AbuseGuard(app, policy=policy, backend=backend)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[int], Path]]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `make test` installs Debian's redis-server")
    tmp = tmp_path_factory.mktemp("plan-e2e")
    server = RedisServer(tmp)
    server.start()
    release = tmp / "release"
    env = {
        **os.environ,
        "AG_TEST_REDIS": server.url,
        "AG_PREFIX": f"pe2e{os.getpid()}",
        "AG_RELEASE": str(release),
    }
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
                        "tests.test_plan_limits_e2e:create_app",
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
        yield worker_ports, release
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


async def _held_requests(ports: list[int], release: Path, key: str) -> list[httpx.Response]:
    """REQUESTS concurrent requests of ``key`` over the workers; the handler is let go
    once every request but the admitted ones could have been answered (refused)."""
    release.unlink(missing_ok=True)
    limits = httpx.Limits(max_connections=64)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30.0, limits=limits, headers=headers) as client:
        tasks = [
            asyncio.ensure_future(client.get(f"http://127.0.0.1:{ports[i % len(ports)]}/v1/held"))
            for i in range(REQUESTS)
        ]
        for answered, next_answer in enumerate(asyncio.as_completed(tasks), start=1):
            await next_answer
            if answered == REQUESTS - PRO_CONCURRENCY:
                break
        release.touch()
        return list(await asyncio.gather(*tasks))


def test_a_pro_client_is_admitted_exactly_its_plans_concurrency(
    workers: tuple[list[int], Path],
) -> None:
    ports, release = workers
    responses = asyncio.run(_held_requests(ports, release, f"pro-{uuid.uuid4()}"))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == PRO_CONCURRENCY
    assert statuses.count(429) == REQUESTS - PRO_CONCURRENCY
    refused = next(r for r in responses if r.status_code == 429)
    assert '"plan-pro-concurrency"' in refused.headers["ratelimit-policy"]
    assert '"concurrency"' not in refused.headers["ratelimit-policy"]


def test_a_client_without_a_plan_is_admitted_the_app_wide_concurrency(
    workers: tuple[list[int], Path],
) -> None:
    ports, release = workers
    responses = asyncio.run(_held_requests(ports, release, f"none-{uuid.uuid4()}"))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == APP_CONCURRENCY
    assert statuses.count(429) == REQUESTS - APP_CONCURRENCY
