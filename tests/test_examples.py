"""Every example runs: imported, served by real uvicorn (or ASGI for the Redis one), driven."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from abuseguard import Action, Enforcement, Policy, RequestInfo, Scoring, TokenBucket
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
    """A policy under which every client scores >= 0.5 and gets ``action`` (no signal is
    weak, so that the bias alone may refuse)."""
    return Policy(
        scoring=Scoring(bias=0.0, weak_signals=()),
        enforcement=Enforcement(ladder=((0.4, action),)),
    )


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
    # The daily token quota counts the real tokens too (issue 14).
    assert ratelimit_remaining(first, "daily-tokens") == 200_000 - 300
    assert ratelimit_remaining(second, "daily-tokens") == 200_000 - 12 - 300


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
    assert ratelimit_remaining(second, "daily-tokens") == 200_000 - 4 - 20


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


# -- examples/demo.py and examples/demo_traffic.py -----------------------------------------


def test_demo_runs_and_tells_the_story(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = load("demo")
    plot = tmp_path / "plots" / "demo.png"
    args = ["--hours", "1", "--scale", "0.05", "--seconds", "5", "--plot", str(plot)]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    # The burst: six hand-written clients, request by request, then the metrics.
    assert "what the guard decided, request by request ==" in out
    assert "throttle" in out and "concurrency" in out and "rate" in out
    assert 'abuseguard_decisions_total{action="throttle",shadow="false"}' in out
    for client in ("alice", "bob", "harvester", "parallel", "no-key", "router"):
        assert f"  {client} " in out
    # The simulated hour over HTTP: the command, the report table, the comparison, the plot.
    assert "== An hour of simulated benign and abusive clients, over real HTTP ==" in out
    assert "$ abuseguard simulate --hours 1 --scale 0.05 --seed 0 --start " in out
    assert re.search(r"sent [\d,]+ of [\d,]+ requests in", out)
    assert re.search(r"^abusive +\d+ ", out, re.MULTILINE)
    assert re.search(r"^benign +\d+ ", out, re.MULTILINE)
    assert "(abusive)" in out and "(benign)" in out
    assert "The same trace replayed in virtual time" in out
    summary = re.search(r"detection: over real HTTP, (\d+) of (\d+) abusive actors", out)
    assert summary is not None and int(summary[1]) > 0
    assert plot.stat().st_size > 0


@pytest.mark.parametrize(
    "args", [["--scale", "0"], ["--hours", "-1"], ["--seconds", "0"], ["--scale", "many"]]
)
def test_demo_rejects_bad_arguments(args: list[str]) -> None:
    demo = load("demo")
    with pytest.raises(SystemExit) as exc:
        demo.main(args)
    assert exc.value.code == 2


def test_demo_trace_time_header_sets_the_clock_and_is_removed() -> None:
    traffic = load("demo_traffic")
    clock = traffic.TraceClock(100.0)
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    wrapper = traffic.TraceTimeFromHeader(app, clock)

    def request(*headers: tuple[bytes, bytes]) -> float:
        asyncio.run(wrapper({"type": "http", "headers": list(headers)}, None, None))
        return float(clock())

    ua = (b"user-agent", b"x")
    assert request(ua, (b"x-demo-trace-time", b"160.5")) == 160.5
    assert seen[-1]["headers"] == [ua]  # the guard never sees the demo's header
    assert request((b"x-demo-trace-time", b"120")) == 160.5  # time never runs backwards
    assert request((b"x-demo-trace-time", b"soon"), ua) == 160.5  # not a number: ignored
    assert seen[-1]["headers"] == [ua]
    assert request(ua) == 160.5
    lifespan = {"type": "lifespan"}
    asyncio.run(wrapper(lifespan, None, None))
    assert seen[-1] is lifespan  # other scopes pass untouched


def test_demo_player_sends_the_trace_headers_and_survives_unsendable_ones() -> None:
    traffic = load("demo_traffic")
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(scope["headers"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def record(ts: float, headers: dict[str, str], ua: str | None) -> Any:
        info = RequestInfo("203.0.113.9", ts, "sk-k", "POST", "/v1/x", None, ua, headers, "{}")
        return traffic.TraceRecord(info, 1, actor="a", label="abusive", kind="k")

    records = [
        record(10.0, {"accept": "*/*", "x-stainless-lang": "python"}, "OpenAI/Python 1.0"),
        record(10.5, {"x-note": "caf\u00e9"}, None),  # not ASCII: httpx cannot send it
        record(11.0, {}, None),
    ]
    with serve(app) as base:
        player = traffic.Player(base, records, 1000.0, 1, time.monotonic() + 30)
        asyncio.run(player.play())
    assert player.sent == 3
    assert player.statuses == [204, None, 204]
    assert player.errors == {"UnicodeEncodeError": 1}
    names = [name for name, _ in seen[0]]
    assert names == [
        b"host", b"accept", b"x-stainless-lang", b"user-agent", b"authorization",
        b"x-forwarded-for", b"x-request-id", b"x-demo-trace-time", b"content-length",
    ]  # fmt: skip
    assert dict(seen[0])[b"x-forwarded-for"] == b"203.0.113.9"
    assert dict(seen[1])[b"x-request-id"] == b"2"
    assert b"user-agent" not in dict(seen[1])  # no User-Agent in the trace: none sent


def test_demo_trace_starts_yesterday_at_the_simulators_hour() -> None:
    traffic = load("demo_traffic")
    for now in (1795379842.5, 1795392000.0, 1795391999.0):  # mid-day, midnight, just before
        start = traffic.trace_start(now)
        assert start % 86400 == 14 * 3600  # 14:00 UTC, the simulator's default hour
        assert now - 2 * 86400 < start <= now - 10 * 3600


def test_demo_web_routes_need_a_session(llm_api: ModuleType) -> None:
    traffic = load("demo_traffic")
    app = llm_api.create_app()
    traffic.add_web_routes(app)
    reset_guards(app, ManualClock())
    body = {"messages": [{"role": "user", "content": "two words"}], "max_tokens": 3}
    with serve(app) as base, httpx.Client(base_url=base) as http:
        assert http.post("/api/chat", json=body).status_code == 401
        assert http.get("/api/conversations").status_code == 401
        session = {"authorization": "Bearer acct_1"}
        reply = http.post("/api/chat", json=body, headers=session)
        assert reply.status_code == 200
        assert reply.headers[llm_api.USAGE_HEADER] == "5"
        assert http.post("/api/chat", json={"messages": []}, headers=session).status_code == 422
        assert http.get("/api/conversations", headers=session).json()["data"] == []


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
