"""Every example runs: imported, served by real uvicorn (or ASGI for the Redis one), driven."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from abuseguard import Action, Enforcement, Policy, Scoring, TokenBucket
from abuseguard.testing import ManualClock, reset_guards, serve

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHAT = "/v1/chat/completions"


def load(name: str) -> ModuleType:
    """Import examples/<name>.py as a fresh module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the example's annotations through it
    spec.loader.exec_module(module)
    return module


def ratelimit_remaining(response: httpx.Response, policy: str) -> int:
    for item in response.headers["ratelimit"].split(","):
        name, *params = item.strip().split(";")
        if name == f'"{policy}"':
            return int(dict(p.split("=") for p in params)["r"])
    raise AssertionError(f"no {policy} in {response.headers['ratelimit']}")


def chat_body(max_tokens: int, words: int = 4) -> dict[str, Any]:
    content = " ".join(["word"] * words)
    return {
        "model": "tiny",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}],
    }


def risky_everyone(action: Action) -> Policy:
    """A policy under which every client scores >= 0.5 and gets ``action``."""
    return Policy(scoring=Scoring(bias=0.0), enforcement=Enforcement(ladder=((0.4, action),)))


# -- examples/llm_api.py -------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_api() -> ModuleType:
    return load("llm_api")


def test_llm_api_reconciles_chat_cost_from_the_usage_header(llm_api: ModuleType) -> None:
    app = llm_api.create_app()
    reset_guards(app, ManualClock())  # frozen time: no refill between requests
    auth = {"authorization": "Bearer sk-test"}
    with serve(app) as base, httpx.Client(base_url=base, headers=auth) as http:
        first = http.post(CHAT, json=chat_body(max_tokens=8, words=4))
        second = http.post(CHAT, json=chat_body(max_tokens=8, words=4))
    assert first.status_code == second.status_code == 200
    usage = first.json()["usage"]
    assert usage == {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12}
    assert first.headers[llm_api.USAGE_HEADER] == "12"
    # Each request is charged 300 up front; after the reply, the real 12 replaces it.
    assert ratelimit_remaining(first, "tokens") == 2000 - 300
    assert ratelimit_remaining(second, "tokens") == 2000 - 12 - 300


def test_llm_api_reconciles_embeddings_from_request_state(llm_api: ModuleType) -> None:
    app = llm_api.create_app()
    reset_guards(app, ManualClock())
    auth = {"authorization": "Bearer sk-test"}
    with serve(app) as base, httpx.Client(base_url=base, headers=auth) as http:
        first = http.post("/v1/embeddings", json={"input": ["one two three", "four"]})
        second = http.post("/v1/embeddings", json={"input": "five"})
    assert first.json()["usage"]["total_tokens"] == 4
    assert ratelimit_remaining(first, "tokens") == 2000 - 20
    assert ratelimit_remaining(second, "tokens") == 2000 - 4 - 20


def test_llm_api_throttles_big_completions_by_tokens(llm_api: ModuleType) -> None:
    app = llm_api.create_app()
    clock = ManualClock()
    reset_guards(app, clock)
    auth = {"authorization": "Bearer sk-big"}
    with serve(app) as base, httpx.Client(base_url=base, headers=auth) as http:
        codes = [http.post(CHAT, json=chat_body(256)).status_code for _ in range(8)]
        refused = http.post(CHAT, json=chat_body(256))
        clock.advance(10.0)  # 3000/minute: 500 tokens
        again = http.post(CHAT, json=chat_body(256))
    # 2000 tokens: six at 260 real tokens leave 440 >= 300, the seventh leaves 180 < 300.
    assert codes == [200] * 7 + [429]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"] == "application/problem+json"
    assert again.status_code == 200


def test_llm_api_degrade_caps_max_tokens(llm_api: ModuleType) -> None:
    app = llm_api.create_app(risky_everyone(Action.DEGRADE))
    reset_guards(app, ManualClock())
    with serve(app) as base:
        response = httpx.post(
            base + CHAT, json=chat_body(1000), headers={"authorization": "Bearer sk-risky"}
        )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == llm_api.DEGRADED_MAX_TOKENS
    assert response.headers["x-max-tokens-capped"] == str(llm_api.DEGRADED_MAX_TOKENS)


def test_llm_api_bad_requests_are_the_apps_4xx(llm_api: ModuleType) -> None:
    app = llm_api.create_app()
    reset_guards(app, ManualClock())
    with serve(app) as base, httpx.Client(base_url=base) as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers={"authorization": "Basic eA=="}).status_code == 401
        auth = {"authorization": "Bearer sk-x"}
        assert http.post(CHAT, json={"messages": []}, headers=auth).status_code == 422
        assert http.post(CHAT, content=b"\xff\xfe", headers=auth).status_code == 422
        assert http.get("/v1/models", headers=auth).json()["data"][0]["id"] == "tiny"


def test_llm_api_trusted_proxies_from_the_environment(
    llm_api: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABUSEGUARD_TRUSTED_PROXIES", " 10.0.0.0/8, ::1/128 ,")
    assert llm_api.trusted_proxies_from_env() == ("10.0.0.0/8", "::1/128")
    policy = llm_api.example_policy(llm_api.trusted_proxies_from_env())
    assert [str(n) for n in policy.trusted_proxies] == ["10.0.0.0/8", "::1/128"]


def test_demo_runs_and_explains_decisions(capsys: pytest.CaptureFixture[str]) -> None:
    demo = load("demo")
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "== What the guard decided, request by request ==" in out
    assert "throttle" in out and "concurrency" in out and "rate" in out
    assert 'abuseguard_decisions_total{action="throttle",shadow="false"}' in out
    for client in ("alice", "bob", "harvester", "parallel", "no-key", "router"):
        assert f"  {client} " in out


# -- examples/starlette_app.py -------------------------------------------------------------


def test_starlette_example_burst_429_and_refill() -> None:
    example = load("starlette_app")
    clock = ManualClock()
    reset_guards(example.app, clock)
    with serve(example.app) as base, httpx.Client(base_url=base) as http:
        codes = [http.get("/").status_code for _ in range(10)]
        refused = http.get("/")
        health = http.get("/healthz")
        clock.advance(0.2)  # one token at 5/second
        served = http.get("/")
        who = http.get("/whoami", headers={"x-api-key": "secret-key"}).json()
    assert codes == [200] * 10
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit-policy"] == '"default";q=10;w=2'
    assert refused.headers["ratelimit"].startswith('"default";r=0')
    assert health.status_code == 200 and "ratelimit" not in health.headers
    assert served.status_code == 200
    assert who["guarded"] is True and who["action"] == "allow"
    assert who["identity"].startswith("k:") and "secret-key" not in who["identity"]


# -- examples/multi_worker_redis.py --------------------------------------------------------


def test_multi_worker_example_on_memory_through_asgi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABUSEGUARD_BACKEND", "memory://")
    example = load("multi_worker_redis")
    assert example.BACKEND == "memory://"
    transport = httpx.ASGITransport(app=example.app, client=("198.51.100.1", 1234))

    async def burst() -> list[int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            return [(await http.get("/")).status_code for _ in range(12)]

    assert asyncio.run(burst()) == [200] * 10 + [429] * 2


def _redis_backend_available() -> bool:
    return importlib.util.find_spec("abuseguard.backends.redis") is not None


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.skipif(not _redis_backend_available(), reason="abuseguard.backends.redis missing")
def test_multi_worker_example_shares_one_bucket_across_workers(redis_server: Any) -> None:
    from tests.conftest import free_port, wait_for_port

    port = free_port()
    env = {
        **os.environ,
        "ABUSEGUARD_BACKEND": redis_server.url,
        "ABUSEGUARD_WORKERS": "2",
        "PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "multi_worker_redis.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=60)
        # A new connection per request, so that both workers take their share.
        headers = {"connection": "close", "x-api-key": "sk-shared"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20, headers=headers) as http:
            assert http.get("/").status_code == 200  # a worker is up; one token is spent
            started = time.monotonic()
            responses = [http.get("/") for _ in range(30)]
            elapsed = time.monotonic() - started
        admitted = [r for r in responses if r.status_code == 200]
        # One bucket of burst 10 at 5/second for both workers: never the 2 x 10 that two
        # separate memory buckets would admit (the bound grows with what refilled).
        assert 9 <= len(admitted) <= 9 + math.ceil(5 * elapsed) + 1
        assert {r.status_code for r in responses} == {200, 429}
    finally:
        process.terminate()
        process.wait(20)


# -- examples/custom_challenge.py ----------------------------------------------------------


@pytest.fixture(scope="module")
def challenge() -> ModuleType:
    return load("custom_challenge")


def test_custom_challenge_round_trip(challenge: ModuleType) -> None:
    app = challenge.create_app(risky_everyone(Action.CHALLENGE), bits=8, secret=b"s3cret")
    reset_guards(app, ManualClock())
    key = {"authorization": "Bearer sk-risky"}
    with serve(app) as base, httpx.Client(base_url=base, headers=key) as http:
        asked = http.get("/")
        puzzle = asked.json()["challenge"]
        nonce = challenge.solve(puzzle, 8)
        solved = http.get(
            "/", headers={"abuseguard-challenge": puzzle, "abuseguard-solution": nonce}
        )
        wrong = http.get(
            "/",
            headers={"abuseguard-challenge": puzzle, "abuseguard-solution": str(int(nonce) + 1)},
        )
        stolen = http.get(
            "/",
            headers={
                "authorization": "Bearer sk-other",
                "abuseguard-challenge": puzzle,
                "abuseguard-solution": nonce,
            },
        )
        garbage = http.get(
            "/", headers={"abuseguard-challenge": "x|y", "abuseguard-solution": "not-a-number"}
        )
    assert asked.status_code == 401
    assert asked.headers["content-type"] == "application/problem+json"
    assert asked.headers["abuseguard-challenge"].startswith("pow; bits=8;")
    assert solved.status_code == 200 and solved.text == "the resource\n"
    # a wrong nonce may still meet 8 bits by chance (1 in 256): then it is a valid solution
    assert wrong.status_code in (200, 401)
    assert stolen.status_code == 401  # bound to the identity it was issued to
    assert garbage.status_code == 401


def test_custom_challenge_puzzles_expire_and_resist_tampering(challenge: ModuleType) -> None:
    clock = ManualClock()
    enforcer = challenge.ProofOfWorkChallenge(b"k", bits=4, ttl=60, clock=clock)
    puzzle = enforcer.issue("k:abc")
    nonce = challenge.solve(puzzle, 4)
    assert enforcer.verify("k:abc", puzzle, nonce)
    assert not enforcer.verify("k:other", puzzle, nonce)
    identity, expires, salt, signature = puzzle.split("|")
    forged = f"{identity}|{int(expires) + 3600}|{salt}|{signature}"
    assert not enforcer.verify("k:abc", forged, challenge.solve(forged, 4))
    assert not enforcer.verify("k:abc", puzzle, "9" * 40)
    clock.advance(61)
    assert not enforcer.verify("k:abc", puzzle, nonce)


@pytest.mark.parametrize(
    "kwargs", [{"secret": b""}, {"secret": b"k", "bits": 0}, {"secret": b"k", "bits": 64}]
)
def test_custom_challenge_rejects_bad_settings(challenge: ModuleType, kwargs: Any) -> None:
    with pytest.raises(ValueError):
        challenge.ProofOfWorkChallenge(**kwargs)


def test_example_policies_use_sensible_defaults(challenge: ModuleType, llm_api: ModuleType) -> None:
    ladder = challenge.challenge_policy().enforcement.ladder
    assert [a for _, a in ladder] == [Action.LOG, Action.CHALLENGE, Action.BLOCK]
    bucket = llm_api.example_policy().bucket
    assert isinstance(bucket, TokenBucket) and bucket.cost_header == llm_api.USAGE_HEADER
