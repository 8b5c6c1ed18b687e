"""The tutorial's app (examples/openai_tiers.py, docs/tutorials/openai-api.md) behaves as
written, under real uvicorn."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from abuseguard.testing import ManualClock, reset_guards, serve

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "openai_tiers.py"
CHAT = "/v1/chat/completions"
FREE_A = {"authorization": "Bearer sk-free-alice"}
FREE_B = {"authorization": "Bearer sk-free-bob"}
PRO = {"authorization": "Bearer sk-pro-carol"}


@pytest.fixture(scope="module")
def tiers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_openai_tiers", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def client(tiers: ModuleType) -> Iterator[httpx.Client]:
    app = tiers.create_app()
    reset_guards(app, ManualClock())  # frozen time: nothing refills while the test runs
    with serve(app) as url, httpx.Client(base_url=url) as http:
        yield http


def chat(model: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hello"}]
    return {"messages": messages, "model": model, "max_tokens": max_tokens, **extra}


def remaining(response: httpx.Response, name: str) -> int:
    for item in response.headers["ratelimit"].split(","):
        policy, *params = item.strip().split(";")
        if policy == f'"{name}"':
            return int(dict(p.split("=") for p in params)["r"])
    raise AssertionError(f"no {name} in {response.headers['ratelimit']}")


def test_a_free_and_a_pro_key_on_the_same_route_get_their_own_per_model_limits(
    client: httpx.Client,
) -> None:
    free = [client.post(CHAT, json=chat("gpt-mini"), headers=FREE_A).status_code for _ in range(4)]
    pro = [client.post(CHAT, json=chat("gpt-mini"), headers=PRO).status_code for _ in range(4)]
    large = [
        client.post(CHAT, json=chat("gpt-large"), headers=FREE_A).status_code for _ in range(2)
    ]
    assert free == [200, 200, 200, 429]  # free: 3 requests a minute on gpt-mini
    assert pro == [200] * 4  # pro: 60
    assert large == [200, 429]  # gpt-large has its own limits: 1 a minute on free
    refused = client.post(CHAT, json=chat("gpt-large"), headers=FREE_A)
    assert '"plan-free-model-gpt-large-rpm";r=0' in refused.headers["ratelimit"]
    served = client.post(CHAT, json=chat("gpt-mini"), headers=PRO)
    assert remaining(served, "plan-pro-model-gpt-mini-rpm") == 55


def test_the_free_tier_shares_one_budget_per_address(client: httpx.Client) -> None:
    statuses = [
        client.post(CHAT, json=chat("gpt-mini"), headers=headers).status_code
        for headers in (FREE_A, FREE_B, FREE_A, FREE_B)
    ]
    assert statuses == [200, 200, 200, 429]  # two free keys, one address: 3 in all


def test_tokens_per_minute_count_the_estimate_per_model(client: httpx.Client) -> None:
    big = chat("gpt-mini", max_tokens=900)  # about 930 tokens up front
    statuses = [client.post(CHAT, json=big, headers=FREE_A).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # 2,000 tokens a minute on free
    refused = client.post(CHAT, json=big, headers=FREE_A)
    assert '"plan-free-model-gpt-mini-tpm"' in refused.headers["ratelimit-policy"]


def test_the_real_token_cost_is_reported_after_the_response_streamed_or_not(
    client: httpx.Client,
) -> None:
    def estimate(response: httpx.Response, max_tokens: int) -> int:
        return len(response.request.content) // 4 + max_tokens  # the example's estimate

    prompt_tokens = len(json.dumps([{"role": "user", "content": "hello"}])) // 4
    first = client.post(CHAT, json=chat("gpt-mini", max_tokens=8), headers=PRO)
    usage = int(first.headers["x-usage-total-tokens"])
    assert usage == prompt_tokens + 8 != estimate(first, 8)
    # the first request's estimate was replaced by its usage once it was answered
    second = client.post(CHAT, json=chat("gpt-mini", max_tokens=8), headers=PRO)
    assert remaining(second, "tokens") == 20000 - usage - estimate(second, 8)
    with client.stream("POST", CHAT, json=chat("gpt-mini", 32, stream=True), headers=PRO) as s:
        text = "".join(s.iter_text())
        before_stream_ends = remaining(s, "tokens")
    assert text.count("lorem") == 32 and text.endswith("data: [DONE]\n\n")
    # The guard settles the stream when the handler returns, a moment after the client
    # read its end: ask until it has (each GET costs 1).
    refund = estimate(s, 32) - (prompt_tokens + 32)
    for gets in range(1, 200):
        left = remaining(client.get("/v1/models", headers=PRO), "tokens")
        if left != before_stream_ends - gets:
            break
        time.sleep(0.02)
    # the stream's usage (request.state.abuseguard_cost) replaced its estimate
    assert left == before_stream_ends + refund - gets


def test_a_routes_own_bucket_refuses_while_another_route_still_serves(
    client: httpx.Client,
) -> None:
    embed = {"model": "text-embed", "input": "hello"}
    statuses = [
        client.post("/v1/embeddings", json=embed, headers=PRO).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]  # 300-token burst, 100 a call
    refused = client.post("/v1/embeddings", json=embed, headers=PRO)
    assert '"route-POST-v1-embeddings-default";r=0' in refused.headers["ratelimit"]
    assert client.post(CHAT, json=chat("gpt-mini"), headers=PRO).status_code == 200
    assert client.get("/v1/models", headers=PRO).status_code == 200


def test_a_route_local_limit_on_moderations(client: httpx.Client) -> None:
    responses = [client.post("/v1/moderations", headers=PRO) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    policies = responses[0].headers["ratelimit-policy"]
    assert '"tokens"' in policies and '"local-10-minute-default"' in policies


def test_in_shadow_mode_every_limit_is_reported_and_nothing_refused(tiers: ModuleType) -> None:
    app = tiers.create_app(shadow=True)
    reset_guards(app, ManualClock())
    with serve(app) as url, httpx.Client(base_url=url, headers=FREE_A) as http:
        responses = [http.post(CHAT, json=chat("gpt-large")) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert '"plan-free-model-gpt-large-rpm";r=0' in responses[-1].headers["ratelimit"]


def test_the_module_app_starts_in_shadow_mode(tiers: ModuleType) -> None:
    assert tiers.app.user_middleware  # the guard and the authentication middleware
    assert tiers.example_policy().shadow is False
    assert any(
        m.kwargs.get("policy", None) is not None and m.kwargs["policy"].shadow
        for m in tiers.app.user_middleware
    )


def test_replay_checks_the_tiers_on_a_log_before_deploying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from abuseguard.cli import main
    from abuseguard.traces import trace_fields, trace_line

    body = json.dumps(chat("gpt-mini"))
    lines = [
        trace_line(
            trace_fields(
                ts=1000.0 + i,
                ip="203.0.113.7",
                key=key,
                method="POST",
                path=CHAT,
                body=body,
                status=200,
                plan=plan,
                actor=actor,
            )
        )
        for i in range(4)
        for key, plan, actor in (
            (f"sk-free-{i}", "free", "free-keys"),  # a new free key each time, one address
            ("sk-pro-carol", "pro", "pro"),
        )
    ]
    trace = tmp_path / "access.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    args = ["replay", str(trace), "--policy", f"{EXAMPLE}:example_policy"]
    assert main([*args, "--format", "json", "--no-progress"]) == 0
    actors = json.loads(capsys.readouterr().out)["actors"]
    assert (actors["free-keys"]["limited"], actors["pro"]["limited"]) == (1, 0)
