"""End to end: 4 uvicorn processes, one Redis, real HTTP (httpx).

Exactness: concurrent requests of one client spread over the 4 processes are admitted
exactly up to the burst. Faults under load: Redis paused (SIGSTOP), resumed, killed and
restarted while requests flow: every response is a correct decision or the route's fail
mode (never a 500, never a hang past the client timeout), and exact limits resume after
the restart (which also empties Redis of its scripts: NOSCRIPT reload).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
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
BURST = 24
CLIENT_TIMEOUT = 5.0


def create_app() -> Any:
    """The app each uvicorn process serves (``--factory``), configured by environment."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from abuseguard import AbuseGuard, Policy, TokenBucket
    from abuseguard.policy import FailMode

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    policy = Policy(
        bucket=TokenBucket("1/hour", burst=BURST),
        scoring=None,
        network=None,
        max_identities=4096,
        fail_mode=FailMode(open=True, routes={"/closed": False}),
        unverified_keys=None,  # a fresh key per request: about faults and buckets, not keys
    )
    app = Starlette(routes=[Route("/open", ok), Route("/closed", ok)])
    backend = (
        os.environ["AG_TEST_REDIS"] + "?budget=0.05&breaker_threshold=3&breaker_cooldown=0.2"
        f"&breaker_max_cooldown=0.5&fallback_workers={WORKERS}&prefix=" + os.environ["AG_PREFIX"]
    )
    return AbuseGuard(app, policy=policy, backend=backend)


class Workers:
    def __init__(self, redis_url: str, logs: Path) -> None:
        self.ports = [free_port() for _ in range(WORKERS)]
        self.redis_url = redis_url
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = {**os.environ, "AG_TEST_REDIS": self.redis_url, "AG_PREFIX": f"e2e{os.getpid()}"}
        env.pop("WEB_CONCURRENCY", None)
        for port in self.ports:
            log = open(self.logs / f"uvicorn-{port}.log", "wb")  # noqa: SIM115 - closed by the process
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "tests.test_redis_e2e:create_app",
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
        for port in self.ports:
            wait_for_port(port, timeout=90)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs.glob("uvicorn-*.log"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Workers]]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `make test` installs Debian's redis-server")
    tmp = tmp_path_factory.mktemp("redis-e2e")
    server = RedisServer(tmp)
    server.start()
    workers = Workers(server.url, tmp)
    try:
        workers.start()
        yield server, workers
    finally:
        workers.stop()
        server.stop()


async def _hit(client: httpx.AsyncClient, url: str, key: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(url, headers={"authorization": f"Bearer {key}"})
    body: dict[str, Any] = {}
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        body = json.loads(response.content)
    return response.status_code, body


async def _burst_admissions(ports: list[int], key: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits) as client:
        urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/closed" for i in range(n)]
        results = await asyncio.gather(*(_hit(client, url, key) for url in urls))
    return [status for status, _ in results]


def test_four_processes_admit_exactly_the_burst(stack: tuple[RedisServer, Workers]) -> None:
    _, workers = stack
    statuses = asyncio.run(_burst_admissions(workers.ports, f"sk-exact-{uuid.uuid4()}", 4 * BURST))
    assert statuses.count(200) == BURST
    assert statuses.count(429) == 3 * BURST


async def _load(
    ports: list[int],
    stop: asyncio.Event,
    phase: list[str],
    records: list[tuple[str, str, int, dict[str, Any]]],
) -> None:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits) as client:

        async def loop(i: int) -> None:
            route = "/open" if i % 2 else "/closed"
            n = 0
            while not stop.is_set():
                n += 1
                key = f"sk-load-{i}-{n}"  # a fresh client each time: only faults can refuse
                at = phase[0]
                status, body = await _hit(
                    client, f"http://127.0.0.1:{ports[n % len(ports)]}{route}", key
                )
                records.append((at, route, status, body))

        await asyncio.gather(*(loop(i) for i in range(12)))


async def _until_every_worker_answers(ports: list[int]) -> None:
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
        for port in ports:
            deadline = time.monotonic() + 15
            while True:
                status, _ = await _hit(
                    client, f"http://127.0.0.1:{port}/closed", f"sk-probe-{uuid.uuid4()}"
                )
                if status == 200:
                    break
                assert time.monotonic() < deadline, f"worker on {port} never recovered"
                await asyncio.sleep(0.1)


def test_faults_under_load_then_exact_limits_again(stack: tuple[RedisServer, Workers]) -> None:
    server, workers = stack
    records: list[tuple[str, str, int, dict[str, Any]]] = []

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        phase = ["up"]
        load = asyncio.create_task(_load(workers.ports, stop, phase, records))
        await asyncio.sleep(0.6)
        assert server.process is not None
        phase[0] = "paused"
        server.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(1.2)
        server.process.send_signal(signal.SIGCONT)
        phase[0] = "resumed"
        await asyncio.sleep(0.8)
        phase[0] = "killed"
        server.process.kill()
        server.process.wait()
        await asyncio.sleep(1.0)
        server.start()  # same port, empty: no data, no scripts
        phase[0] = "restarted"
        await asyncio.sleep(1.0)
        stop.set()
        await load
        await _until_every_worker_answers(workers.ports)
        return await _burst_admissions(workers.ports, f"sk-after-{uuid.uuid4()}", 3 * BURST)

    after = asyncio.run(scenario())
    phases = {at for at, *_ in records}
    assert phases == {"up", "paused", "resumed", "killed", "restarted"}, phases
    for at, route, status, body in records:
        if route == "/open":
            assert status == 200, (at, route, status, body)
        else:
            assert status == 200 or (
                status == 429 and body["reasons"] == ["backend_unavailable"]
            ), (at, route, status, body)
    refused = [at for at, route, status, _ in records if route == "/closed" and status == 429]
    assert {"paused", "killed"} <= set(refused)
    assert sum(1 for at, route, status, _ in records if at == "up" and status == 200) > 0
    assert after.count(200) == BURST and after.count(429) == 2 * BURST
    logs = workers.log_text()
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000 :][:6000]
