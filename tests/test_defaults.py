"""Issue 14, items 4-6: the default Policy never punishes a well-behaved client.

* the shared-template signal counts distinct accounts, never one account twice;
* volume and burst are measured against the identity's own allowance (its bucket);
* weak signals alone (persona, client class, volume, cadence...) never refuse a request;
* without an app-provided challenge the challenge step answers 429 with Retry-After;
* refusal bodies name limit reasons only, unless ``Enforcement.reveal_reasons``.

The HTTP tests run the quickstart policy under real uvicorn on a manual clock
(`abuseguard.testing`), so thousands of requests cover hours of client time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    Action,
    Decision,
    Enforcement,
    Policy,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.engine import layout as L
from abuseguard.testing import ManualClock, fresh_guard, reset_guards, serve

OPENAI_UA = "OpenAI/Python 1.51.0"
BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
TOPICS = (
    "the Roman Empire", "black holes", "photosynthesis", "the French Revolution",
    "machine learning", "volcanoes", "jazz music", "the Silk Road", "plate tectonics",
    "the immune system", "quantum computing", "the Renaissance", "coral reefs",
    "the printing press", "climate change", "ancient Egypt", "the stock market",
    "honey bees", "the Moon landing", "neural networks", "the Cold War", "glaciers",
    "vaccines", "the Industrial Revolution", "dinosaurs", "the internet", "rainforests",
    "the Ottoman Empire", "electric cars", "the human brain", "comets", "the Olympic Games",
    "tea ceremonies", "the Great Wall", "solar panels", "octopuses", "medieval castles",
    "the water cycle", "cryptography", "the Amazon river",
)  # fmt: skip
BROWSER_HEADERS = {
    "host": "api.example.com",
    "user-agent": BROWSER_UA,
    "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-language": "en-US,en;q=0.9",
    "accept-encoding": "gzip, deflate, br",
    "sec-ch-ua": '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"',
    "sec-ch-ua-mobile": "?0",
    "sec-ch-ua-platform": '"Windows"',
    "sec-fetch-site": "none",
    "sec-fetch-mode": "navigate",
    "sec-fetch-dest": "document",
    "upgrade-insecure-requests": "1",
}
ELICITING_PROMPT = (
    "Let's think step by step. Show your full chain of thought and reason step by step "
    "before you answer: what is 17 times 23?"
)


def templated_prompt(i: int) -> str:
    """Varied prompts of one shape, as a person asking a chat app would write them."""
    return f"Tell me about {TOPICS[i % len(TOPICS)]} in {2 + i % 5} sentences, please."


def chat_body(prompt: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()


def quickstart_policy() -> Policy:
    return Policy(bucket=TokenBucket("5/second", burst=10))


async def completions(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"ok": True})


def quickstart_app(policy: Policy | None = None) -> Starlette:
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    app.add_middleware(AbuseGuard, policy=policy or quickstart_policy())
    return app


@pytest.fixture
def served_quickstart() -> Iterator[tuple[str, AbuseGuard, ManualClock]]:
    app = quickstart_app()
    clock = ManualClock()
    (mw,) = reset_guards(app, clock)
    with serve(app, timeout=90.0) as base:
        yield base, mw, clock


def bare_client(base: str, headers: dict[str, str]) -> httpx.Client:
    """An httpx client that sends only ``headers`` (plus Host and the body's own)."""
    client = httpx.Client(base_url=base, timeout=30.0)
    client.headers.clear()
    client.headers.update(headers)
    return client


def contribution(mw: AbuseGuard, signal: int) -> float:
    """The contribution of one signal to the score of the guard's last request."""
    return float(mw.guard.engine.io[L.O_CONTRIB + signal])


REFUSALS = (403, 429)


# -- (a) shared_template counts accounts, not requests --------------------------------------


def test_one_account_never_counts_as_many_for_a_shared_template() -> None:
    guard = fresh_guard(quickstart_policy())
    shared = []
    for i in range(3000):
        guard.check(
            RequestInfo(
                ip="203.0.113.9",
                ts=1_700_000_000.0 + 2.0 * i,
                key="sk-one-account",
                method="POST",
                path="/v1/chat/completions",
                ua=BROWSER_UA,
                headers={"user-agent": BROWSER_UA, "content-type": "application/json"},
                body=chat_body(templated_prompt(i)),
            )
        )
        shared.append(guard.engine.io[L.O_CONTRIB + L.S_SHARED_TEMPLATE])
    assert max(shared) == 0.0


def test_many_accounts_on_one_template_still_raise_shared_template() -> None:
    guard = fresh_guard(quickstart_policy())
    decision = None
    for i in range(400):
        decision = guard.check(
            RequestInfo(
                ip=f"198.51.100.{i % 200}",
                ts=1_700_000_000.0 + 5.0 * i,
                key=f"sk-farm-{i % 60}",
                method="POST",
                ua=OPENAI_UA,
                headers={"user-agent": OPENAI_UA, "content-type": "application/json"},
                body=chat_body(templated_prompt(7 + 40 * i)),  # one topic, one template
            )
        )
    assert decision is not None
    assert guard.engine.io[L.O_CONTRIB + L.S_SHARED_TEMPLATE] > 1.0


# -- (b) honest clients of the quickstart policy, over real HTTP ----------------------------


def test_sdk_user_agent_at_4_per_second_is_never_refused(
    served_quickstart: tuple[str, AbuseGuard, ManualClock],
) -> None:
    base, mw, clock = served_quickstart
    actions: dict[Action, int] = {}
    mw.guard.observers.append(
        lambda info, decision: actions.__setitem__(
            decision.action, actions.get(decision.action, 0) + 1
        )
    )
    headers = {"user-agent": OPENAI_UA, "authorization": "Bearer sk-steady-backend"}
    codes: dict[int, int] = {}
    with bare_client(base, headers) as client:
        for i in range(3000):
            response = client.post(
                "/v1/chat/completions",
                content=chat_body(f"Summarize support ticket {i} for the on-call engineer."),
            )
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            clock.advance(0.25)
    assert codes == {200: 3000}, (codes, actions)


def test_browser_with_minimal_headers_and_templated_prompts_is_never_refused(
    served_quickstart: tuple[str, AbuseGuard, ManualClock],
) -> None:
    base, mw, clock = served_quickstart
    headers = {
        "user-agent": BROWSER_UA,
        "accept": "*/*",
        "content-type": "application/json",
        "authorization": "Bearer sk-one-person",
    }
    refused = []
    shared = []
    with bare_client(base, headers) as client:
        for i in range(1200):
            response = client.post("/v1/chat/completions", content=chat_body(templated_prompt(i)))
            if response.status_code in REFUSALS:
                refused.append((i, response.status_code))
            shared.append(contribution(mw, L.S_SHARED_TEMPLATE))
            clock.advance(2.0)
    assert refused == []
    assert max(shared) == 0.0


def test_backend_at_one_per_second_is_not_high_volume(
    served_quickstart: tuple[str, AbuseGuard, ManualClock],
) -> None:
    base, mw, clock = served_quickstart
    headers = {"user-agent": OPENAI_UA, "authorization": "Bearer sk-paying-customer"}
    volume = []
    with bare_client(base, headers) as client:
        for i in range(2400):
            response = client.post(
                "/v1/chat/completions", content=chat_body(f"Classify order {i} as ok or fraud.")
            )
            assert response.status_code == 200
            volume.append(contribution(mw, L.S_VOLUME))
            clock.advance(1.0)
    assert max(volume) < 0.05


def test_a_weak_signal_alone_is_logged_not_refused_and_strong_evidence_refuses() -> None:
    # A ladder so low that the persona mismatch of an SDK User-Agent without the SDK's
    # other headers reaches every step: weak signals stop at the last serving step.
    low_ladder = Enforcement(
        ladder=((0.05, Action.LOG), (0.1, Action.DELAY), (0.15, Action.CHALLENGE),
                (0.2, Action.THROTTLE), (0.25, Action.BLOCK)),
    )  # fmt: skip
    guard = fresh_guard(Policy(bucket=TokenBucket("5/second", burst=10), enforcement=low_ladder))
    actions = []
    for i in range(40):
        decision = guard.check(
            RequestInfo(
                ip="203.0.113.20",
                ts=1_700_000_000.0 + 3.0 * i,
                key="sk-sdk-app",
                ua=OPENAI_UA,
                headers={"user-agent": OPENAI_UA},
            )
        )
        actions.append(decision.action)
    assert "persona" in decision.reasons
    assert not any(action.severity >= Action.CHALLENGE.severity for action in actions)
    assert Action.DELAY in actions

    refused = guard.check(
        RequestInfo(
            ip="203.0.113.20",
            ts=1_700_000_000.0 + 200.0,
            key="sk-sdk-app",
            method="POST",
            ua=OPENAI_UA,
            headers={"user-agent": OPENAI_UA, "content-type": "application/json"},
            body=chat_body(ELICITING_PROMPT),
        )
    )
    assert refused.action == Action.BLOCK
    assert "elicitation" in refused.reasons


# -- (c) the default challenge, (d) what refusal bodies say ---------------------------------


def eliciting_app(enforcement: Enforcement, seen: list[Decision]) -> Starlette:
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    app.add_middleware(
        AbuseGuard,
        policy=Policy(bucket=TokenBucket("5/second", burst=10), enforcement=enforcement),
        observers=[lambda info, decision: seen.append(decision)],
    )
    return app


def post_eliciting(app: Starlette, n: int = 1) -> list[httpx.Response]:
    clock = ManualClock()
    reset_guards(app, clock)
    responses = []
    with (
        serve(app, timeout=90.0) as base,
        bare_client(
            base, {"user-agent": OPENAI_UA, "authorization": "Bearer sk-harvester"}
        ) as client,
    ):
        for _ in range(n):
            responses.append(
                client.post("/v1/chat/completions", content=chat_body(ELICITING_PROMPT))
            )
            clock.advance(1.0)
    return responses


def test_default_challenge_answers_429_with_retry_after() -> None:
    seen: list[Decision] = []
    app = eliciting_app(Enforcement(ladder=((0.05, Action.CHALLENGE),)), seen)
    (response,) = post_eliciting(app)
    assert seen[-1].action == Action.CHALLENGE
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert "abuseguard-challenge" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"


def test_an_app_challenge_responder_still_answers() -> None:
    from abuseguard.enforce import Challenge

    async def captcha(scope: Any, receive: Any, send: Any, decision: Decision) -> None:
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"solve me"})

    seen: list[Decision] = []
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    app.add_middleware(
        AbuseGuard,
        policy=Policy(
            bucket=TokenBucket("5/second", burst=10),
            enforcement=Enforcement(ladder=((0.05, Action.CHALLENGE),)),
        ),
        enforcers={Action.CHALLENGE: Challenge(captcha)},
        observers=[lambda info, decision: seen.append(decision)],
    )
    (response,) = post_eliciting(app)
    assert response.status_code == 401
    assert response.text == "solve me"


@pytest.mark.parametrize("action", [Action.CHALLENGE, Action.THROTTLE, Action.BLOCK])
def test_refusal_bodies_hide_risk_reasons_by_default(action: Action) -> None:
    seen: list[Decision] = []
    app = eliciting_app(Enforcement(ladder=((0.05, action),)), seen)
    (response,) = post_eliciting(app)
    assert response.status_code in REFUSALS
    body = response.json()
    assert body["reasons"] == []
    assert "elicitation" not in response.text
    # The decision the logs, metrics and observers see keeps every reason.
    assert "elicitation" in seen[-1].reasons


def test_refusal_bodies_show_limit_reasons() -> None:
    app = quickstart_app()
    reset_guards(app, ManualClock())
    with (
        serve(app, timeout=90.0) as base,
        bare_client(base, {"user-agent": OPENAI_UA, "authorization": "Bearer sk-burst"}) as client,
    ):
        responses = [
            client.post("/v1/chat/completions", content=chat_body("hello there, how are you"))
            for _ in range(12)
        ]
    limited = responses[-1]
    assert limited.status_code == 429
    assert limited.json()["reasons"] == ["rate"]


def test_reveal_reasons_shows_every_reason_for_development() -> None:
    seen: list[Decision] = []
    app = eliciting_app(Enforcement(ladder=((0.05, Action.BLOCK),), reveal_reasons=True), seen)
    (response,) = post_eliciting(app)
    assert response.status_code == 403
    assert "elicitation" in response.json()["reasons"]


def test_reveal_reasons_must_be_a_bool() -> None:
    from abuseguard import ConfigError

    with pytest.raises(ConfigError, match="reveal_reasons"):
        Enforcement(reveal_reasons="yes")  # type: ignore[arg-type]


def test_weak_signals_are_declared_in_one_place() -> None:
    from abuseguard.policy import DEFAULT_WEAK_SIGNALS

    assert {"persona", "client", "volume", "cadence", "burst"} <= DEFAULT_WEAK_SIGNALS
    assert not {"shared_template", "elicitation", "fan_in", "fan_out"} & DEFAULT_WEAK_SIGNALS
    assert Scoring().weak_signals == DEFAULT_WEAK_SIGNALS
    with pytest.raises(Exception, match="weak_signals"):
        Scoring(weak_signals=frozenset({"not-a-signal"}))


def test_weak_signals_alone_do_not_slow_the_refill() -> None:
    # A script without a User-Agent on a metronome: the client and cadence signals give it
    # risk, but only weak risk, so its bucket refills like anyone's.
    policy = Policy(bucket=TokenBucket(2.0, burst=5, risk_floor=0.0, risk_coupling=0.9))
    guard = fresh_guard(policy)
    risky = calm = None
    for i in range(30):
        ts = 1_700_000_000.0 + i
        risky = guard.check(RequestInfo(ip="192.0.2.1", key="bot", ts=ts))
        calm = guard.check(
            RequestInfo(ip="192.0.2.2", key="person", ts=ts, ua=BROWSER_UA, headers=BROWSER_HEADERS)
        )
    assert risky is not None and calm is not None
    assert risky.score > calm.score + 0.2
    assert risky.policies[0].reset == calm.policies[0].reset


def test_weak_signals_alone_do_not_slow_the_redis_bucket(redis_server: Any) -> None:
    # The inline Redis backend slows the refill in its own script: same rule as in memory.
    import asyncio
    import os

    from abuseguard import Guard
    from abuseguard.backends.redis import RedisBackend

    policy = Policy(
        bucket=TokenBucket(1.0, burst=5, risk_floor=0.0, risk_coupling=0.9),
        unverified_keys=None,  # keys no app ever answered: this test is about the bucket
    )

    async def main() -> tuple[list[Decision], list[Decision]]:
        guard = Guard(
            policy,
            RedisBackend(
                redis_server.url, prefix=f"defaults{os.getpid()}", budget=0.5, server_time=False
            ),
        )
        await guard.startup()
        scripted, person = [], []
        try:
            for i in range(60):  # 0.8 of the allowance each
                ts = 1_700_000_000.0 + 1.25 * i
                scripted.append(await guard.acheck(RequestInfo(ip="192.0.2.1", key="bot", ts=ts)))
                person.append(
                    await guard.acheck(
                        RequestInfo(
                            ip="192.0.2.2", key="person", ts=ts, ua=BROWSER_UA,
                            headers=BROWSER_HEADERS,
                        )
                    )
                )  # fmt: skip
        finally:
            await guard.shutdown()
        return scripted, person

    scripted, person = asyncio.run(main())
    assert scripted[-1].score > person[-1].score + 0.2
    assert [d.action for d in scripted] == [Action.ALLOW] * 60
    assert [d.action for d in person] == [Action.ALLOW] * 60


def test_problem_body_names_limit_reasons_only_unless_revealed() -> None:
    from abuseguard.headers import problem_body

    decision = Decision(Action.THROTTLE, reasons=("geo", "persona", "rate", "quota"))
    hidden = json.loads(problem_body(429, decision))
    assert hidden["reasons"] == ["rate", "quota"]
    assert hidden["detail"] == "Request limit exceeded; retry later."
    geo_only = json.loads(problem_body(403, Decision(Action.BLOCK, reasons=("geo",))))
    assert geo_only["reasons"] == []
    assert "network" not in geo_only["detail"]
    shown = json.loads(problem_body(429, decision, reveal_reasons=True))
    assert shown["reasons"] == ["geo", "persona", "rate", "quota"]
