"""Accounting: a refused request costs nothing, by-cost limits count the real cost, and a
shadowed refusal leaves the state exactly as an allow would (issue 14, items 1-3)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Policy, Quota, TokenBucket
from abuseguard.decision import Decision
from abuseguard.engine import layout as L
from abuseguard.guard import Guard
from abuseguard.policy import NetworkPolicy, Scoring
from abuseguard.request import RequestInfo
from abuseguard.testing import ManualClock, fresh_guard
from abuseguard.testing import serve as serve_app

QUOTA = Quota("5000/day", by_cost=True, name="daily")
ISSUE_POLICY = Policy(
    bucket=TokenBucket("1/minute", burst=1000, cost=300), concurrency=1, quotas=(QUOTA,)
)


_redis_prefixes = iter(range(10**6))


def _prefix() -> str:
    import os

    return f"acc{os.getpid()}x{next(_redis_prefixes)}"


def serve(app: Any) -> Any:
    return serve_app(app, timeout=90.0)


def remaining(response: httpx.Response) -> dict[str, int]:
    """The ``r`` of every policy in the RateLimit header, by policy name."""
    out = {}
    for item in response.headers["ratelimit"].split(","):
        name, *params = item.strip().split(";")
        values = dict(p.split("=") for p in params)
        out[name.strip('"')] = int(values["r"])
    return out


def holding_app() -> tuple[Starlette, threading.Event, threading.Event]:
    """An app whose /hold waits until released: it keeps the one concurrency slot."""
    entered, release = threading.Event(), threading.Event()

    async def hold(request: Request) -> PlainTextResponse:
        entered.set()
        await asyncio.to_thread(release.wait, 30)
        return PlainTextResponse("held")

    async def chat(request: Request) -> PlainTextResponse:
        cost = request.query_params.get("tokens")
        headers = {"x-tokens": cost} if cost is not None else {}
        if "state" in request.query_params and cost is not None:
            request.scope["state"]["abuseguard_cost"] = float(cost)
            headers = {}
        return PlainTextResponse("ok", headers=headers)

    app = Starlette(routes=[Route("/hold", hold), Route("/", chat)])
    return app, entered, release


def concurrency_refusals_cost_nothing(url: str, entered: threading.Event, release: Any) -> None:
    """The issue's scenario: one request holds the slot, two are refused for concurrency,
    the next served request shows the bucket and the quota charged twice, not four times."""
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.get, "/hold")
        assert entered.wait(30)
        for _ in range(2):
            refused = client.get("/")
            assert refused.status_code == 429
            assert "concurrency" in refused.text
            assert remaining(refused) == {"default": 700, "daily": 4700}
        release.set()
        first = held.result()
        assert first.status_code == 200
        assert remaining(first) == {"default": 700, "daily": 4700}
        second = client.get("/")
        assert second.status_code == 200
        assert remaining(second) == {"default": 400, "daily": 4400}


def test_concurrency_refusals_cost_nothing_over_http() -> None:
    app, entered, release = holding_app()
    app.add_middleware(AbuseGuard, policy=ISSUE_POLICY)
    with serve(app) as url:
        concurrency_refusals_cost_nothing(url, entered, release)


def info(key: str = "k1", ip: str = "203.0.113.7", cost: float | None = None) -> RequestInfo:
    return RequestInfo(method="POST", path="/v1/chat", ip=ip, key=key, cost=cost)


def states(decision: Decision) -> dict[str, float]:
    return {p.name: p.remaining for p in decision.policies}


def test_a_quota_refusal_leaves_the_bucket_and_the_other_quotas_alone() -> None:
    policy = Policy(
        bucket=TokenBucket("1/minute", burst=10),
        quotas=(Quota("100/day", name="day"), Quota("2/minute", name="minute")),
    )
    guard = fresh_guard(policy)
    assert states(guard.check(info())) == {"default": 9, "day": 99, "minute": 1}
    assert states(guard.check(info())) == {"default": 8, "day": 98, "minute": 0}
    for _ in range(3):
        refused = guard.check(info())
        assert refused.reasons == ("quota",) and not refused.served
    guard.clock.advance(61)  # type: ignore[attr-defined]
    after = states(guard.check(info()))
    assert after == {"default": pytest.approx(8 + 61 / 60 - 1), "day": 97, "minute": 1}


def test_a_deny_listed_network_is_not_charged() -> None:
    network = NetworkPolicy(
        per_ip=TokenBucket("1/minute", burst=5, name="ip"), deny_cidrs=("203.0.113.0/24",)
    )
    policy = Policy(bucket=TokenBucket("1/minute", burst=5), network=network)
    guard = fresh_guard(policy)
    for _ in range(3):
        assert not guard.check(info()).served
    key_row = guard.engine.tables[L.KIND_KEY].index["k:" + _hash(guard, "k1")]
    assert guard.engine.tables[L.KIND_KEY].data[key_row, L.F_TOKENS] == 5.0


def _hash(guard: Guard, key: str) -> str:
    from abuseguard.identity import hash_key

    return hash_key(guard.policy.secret, key)


# -- item 2: the real cost reaches every by-cost limit ---------------------------------------


def test_complete_reconciles_by_cost_quotas_and_network_buckets() -> None:
    network = NetworkPolicy(per_ip=TokenBucket("1/hour", burst=1000, name="ip"))
    policy = Policy(
        bucket=TokenBucket("1/hour", burst=1000, cost=200),
        quotas=(QUOTA,),
        network=network,
    )
    guard = fresh_guard(policy)
    for real in (47, 10):
        request = info()
        decision = guard.check(request)
        assert decision.served
        guard.complete(request, decision, status=200, cost=real)
    after = guard.check(info(cost=0))
    assert states(after)["daily"] == 5000 - 57
    assert states(after)["default"] == pytest.approx(1000 - 57, abs=0.1)
    ip_table = guard.engine.tables[L.KIND_IP]
    ip_row = ip_table.index[guard.addresses.resolve("203.0.113.7").ip_key]
    assert ip_table.data[ip_row, L.F_TOKENS] == pytest.approx(1000 - 57, abs=0.1)


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_complete_reconciles_every_quota_strategy(strategy: Any) -> None:
    policy = Policy(
        bucket=TokenBucket("1/hour", burst=1000, cost=200),
        quotas=(Quota("5000/day", by_cost=True, name="daily", strategy=strategy),),
    )
    guard = fresh_guard(policy)
    for real in (47, 10, 400):
        request = info()
        decision = guard.check(request)
        guard.complete(request, decision, status=200, cost=real)
    assert states(guard.check(info(cost=0)))["daily"] == 5000 - 457


@pytest.mark.parametrize("where", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_the_next_response_shows_the_reconciled_quota_over_http(
    where: str, request: pytest.FixtureRequest
) -> None:
    backend = "memory://"
    if where == "redis":
        redis_url = request.getfixturevalue("redis_server").url
        backend = f"{redis_url}?prefix={_prefix()}&budget=0.5"
    app, _, _ = holding_app()
    bucket = TokenBucket("1/hour", burst=1000, cost=200, cost_header="x-tokens")
    app.add_middleware(AbuseGuard, policy=Policy(bucket=bucket, quotas=(QUOTA,)), backend=backend)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert remaining(client.get("/?tokens=47")) == {"default": 800, "daily": 4800}
        # The estimate was 200 and the chat really used 47: both limits get 153 back.
        assert remaining(client.get("/?tokens=10&state=1")) == {"default": 753, "daily": 4753}
        assert remaining(client.get("/?tokens=0")) == {"default": 743, "daily": 4743}


# -- item 3: shadow leaves the state as an allow would ---------------------------------------


def _run_burst(policy: Policy, n: int) -> tuple[Guard, list[Decision]]:
    clock = ManualClock()
    guard = Guard(policy, "memory://", clock=clock)
    decisions = []
    for _ in range(n):
        clock.advance(0.2)
        decisions.append(guard.check(info()))
    return guard, decisions


@pytest.mark.parametrize(
    "shadowed",
    [
        Policy(bucket=TokenBucket("1/minute", burst=3), shadow=True, scoring=Scoring()),
        Policy(bucket=TokenBucket("1/minute", burst=3, shadow=True), scoring=Scoring()),
    ],
    ids=["policy-shadow", "bucket-shadow"],
)
def test_shadowed_refusals_leave_the_state_of_allows(shadowed: Policy) -> None:
    n = 12
    shadow_guard, shadow_decisions = _run_burst(shadowed, n)
    # The same traffic with a bucket so large that it never refuses: every request an allow.
    roomy = Policy(bucket=TokenBucket("1/minute", burst=1_000_000), scoring=Scoring())
    allow_guard, allow_decisions = _run_burst(roomy, n)
    assert [d.reasons for d in shadow_decisions[3:]] == [("rate",)] * (n - 3)
    assert all(d.shadow and d.served for d in shadow_decisions[3:])
    assert [d.score for d in shadow_decisions] == [d.score for d in allow_decisions]
    shadow_keys = shadow_guard.engine.tables[L.KIND_KEY].data
    allow_keys = allow_guard.engine.tables[L.KIND_KEY].data
    for field in (L.F_WAIT_UNTIL, L.F_IMPATIENCE, L.F_SCORE, L.F_LEVEL, L.F_COUNT):
        assert shadow_keys[0, field] == allow_keys[0, field]
    assert shadow_keys[0, L.F_WAIT_UNTIL] == 0.0
    # Every shadowed request was charged as an allow: 12 tokens taken, little refilled.
    assert 3 - n < shadow_keys[0, L.F_TOKENS] < 3 - n + 0.05


def test_shadow_responses_carry_the_headers_an_allow_would_send() -> None:
    app, _, _ = holding_app()
    policy = Policy(bucket=TokenBucket("1/minute", burst=2), shadow=True)
    app.add_middleware(AbuseGuard, policy=policy)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        seen = [client.get("/") for _ in range(4)]
    assert [r.status_code for r in seen] == [200] * 4
    assert [remaining(r)["default"] for r in seen] == [1, 0, 0, 0]
    assert all("retry-after" not in r.headers for r in seen)


# -- a reference model -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.integers(0, 400),  # the estimate charged at admission
            st.integers(0, 400),  # the real cost reported on completion
            st.booleans(),  # keep the concurrency slot until the next request of the other key
            st.integers(0, 30),  # seconds before the request (one token a second)
        ),
        max_size=30,
    )
)
def test_limits_change_only_by_what_served_requests_really_cost(
    steps: list[tuple[str, int, int, bool, int]],
) -> None:
    policy = Policy(
        bucket=TokenBucket(1.0, burst=1000),
        concurrency=1,
        quotas=(Quota("3000/day", by_cost=True, name="daily"), Quota("40/hour", name="hourly")),
        scoring=Scoring(enabled=False),
    )
    clock = ManualClock()
    guard = fresh_guard(policy, clock=clock)
    # The bucket as the engine keeps it: refilled when its identity sends a request, and a
    # reconciliation applied to the tokens as they were at that refill (capped at the burst).
    tokens = {"a": 1000.0, "b": 1000.0}
    refilled = {"a": clock.now, "b": clock.now}
    daily = {"a": 0, "b": 0}
    hourly = {"a": 0, "b": 0}
    held: dict[str, tuple[RequestInfo, Decision, int]] = {}

    def refill(key: str) -> None:
        tokens[key] = min(1000.0, tokens[key] + clock.now - refilled[key])
        refilled[key] = clock.now

    def finish(key: str, request: RequestInfo, decision: Decision, real: int) -> None:
        guard.complete(request, decision, status=200, cost=real)
        tokens[key] = min(1000.0, tokens[key] - (real - decision.cost))
        daily[key] += real - int(decision.cost)

    for key, estimate, real, hold, pause in steps:
        clock.advance(pause)
        refill(key)
        request = info(key, cost=estimate)
        decision = guard.check(request)
        expect_served = (
            key not in held
            and tokens[key] >= estimate
            and daily[key] + estimate <= 3000
            and hourly[key] < 40
        )
        assert decision.served == expect_served, (decision, tokens[key], daily[key])
        if decision.served:
            tokens[key] -= estimate
            daily[key] += estimate
            hourly[key] += 1
            if hold:
                held[key] = (request, decision, real)
            else:
                finish(key, request, decision, real)
        other = "b" if key == "a" else "a"
        if other in held:
            finish(other, *held.pop(other))
        for k in tokens:
            if k in held or hourly[k] >= 40:
                continue
            refill(k)
            probe_request = info(k, cost=0)
            probe = guard.check(probe_request)
            if tokens[k] < 0:  # a debt: real costs above the estimates took the bucket below 0
                assert probe.reasons == ("rate",)
                continue
            assert probe.served
            hourly[k] += 1
            assert states(probe) == {
                "default": max(tokens[k], 0.0),
                "daily": max(0, 3000 - daily[k]),
                "hourly": 40 - hourly[k],
            }
            guard.complete(probe_request, probe, status=200)


# -- Redis: inline (one script decides) and synced (local decisions merged) ------------------


def _redis_get(url: str, key: str) -> str | None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        raw = client.get(key)
    finally:
        client.close()
    return raw.decode() if raw is not None else None


def _shared_tokens(url: str, key: str, burst: float) -> float:
    raw = _redis_get(url, key)
    return float(raw.split()[0]) if raw is not None else burst


@pytest.mark.redis
def test_concurrency_refusals_cost_nothing_on_redis_inline_over_http(redis_server: Any) -> None:
    app, entered, release = holding_app()
    backend = f"{redis_server.url}?prefix={_prefix()}&budget=0.5"
    app.add_middleware(AbuseGuard, policy=ISSUE_POLICY, backend=backend)
    with serve(app) as url:
        concurrency_refusals_cost_nothing(url, entered, release)


@pytest.mark.redis
def test_a_quota_refusal_leaves_the_redis_bucket_and_quotas_alone(redis_server: Any) -> None:
    policy = Policy(
        bucket=TokenBucket("1/hour", burst=10),
        quotas=(Quota("100/day", name="day"), Quota("2/hour", name="hour")),
        scoring=None,
    )

    async def main() -> tuple[list[dict[str, float]], float]:
        guard = Guard(policy, f"{redis_server.url}?prefix={_prefix()}&budget=0.5")
        await guard.startup()
        try:
            decisions = [await guard.acheck(info()) for _ in range(5)]
            backend: Any = guard.backend
            key = backend.keys.of(decisions[0].identity).bucket
        finally:
            await guard.shutdown()
        return [states(d) for d in decisions], _shared_tokens(redis_server.url, key, 10)

    seen, tokens = asyncio.run(main())
    assert [s["hour"] for s in seen] == [1, 0, 0, 0, 0]
    assert [s["day"] for s in seen] == [99, 98, 98, 98, 98]
    assert tokens == pytest.approx(8, abs=0.01)


@pytest.mark.redis
def test_complete_reconciles_quotas_and_network_buckets_on_redis_inline(redis_server: Any) -> None:
    # (NAT fairness off: one account's fan-in estimate of ~1.004 would grow the IP's burst.)
    network = NetworkPolicy(per_ip=TokenBucket("1/hour", burst=1000, name="ip"), nat_fairness=False)
    policy = Policy(
        bucket=TokenBucket("1/hour", burst=1000, cost=200),
        quotas=(
            QUOTA,
            Quota("5000/day", by_cost=True, name="sliding", strategy="sliding-window-counter"),
        ),
        network=network,
        scoring=None,
    )
    prefix = _prefix()

    async def main() -> tuple[dict[str, float], float]:
        guard = Guard(policy, f"{redis_server.url}?prefix={prefix}&budget=0.5")
        await guard.startup()
        try:
            for real in (47, 10):
                request = info()
                decision = await guard.acheck(request)
                assert decision.served
                guard.complete(request, decision, status=200, cost=real)
            after = states(await guard.acheck(info(cost=0)))
            backend: Any = guard.backend
            ip_key = guard.addresses.resolve("203.0.113.7").ip_key
            ip_bucket = backend.keys.network_base(L.KIND_IP, ip_key) + ":b"
        finally:
            await guard.shutdown()
        return after, _shared_tokens(redis_server.url, ip_bucket, 1000)

    after, ip_tokens = asyncio.run(main())
    assert after["daily"] == 5000 - 57
    assert after["sliding"] == 5000 - 57
    assert after["default"] == pytest.approx(1000 - 57, abs=0.1)
    assert ip_tokens == pytest.approx(1000 - 57, abs=0.1)


@pytest.mark.redis
def test_shadowed_refusals_on_redis_inline_are_charged_and_tell_nobody_to_wait(
    redis_server: Any,
) -> None:
    policy = Policy(bucket=TokenBucket("1/hour", burst=3), shadow=True)
    prefix = _prefix()

    async def main() -> tuple[list[Decision], float, float]:
        guard = Guard(policy, f"{redis_server.url}?prefix={prefix}&budget=0.5")
        await guard.startup()
        try:
            decisions = [await guard.acheck(info()) for _ in range(6)]
            backend: Any = guard.backend
            key = backend.keys.of(decisions[0].identity).bucket
            key_table = guard.engine.tables[L.KIND_KEY]
            wait_until = float(
                key_table.data[key_table.index[decisions[0].identity], L.F_WAIT_UNTIL]
            )
        finally:
            await guard.shutdown()
        return decisions, _shared_tokens(redis_server.url, key, 3), wait_until

    decisions, tokens, wait_until = asyncio.run(main())
    assert all(d.served for d in decisions)
    assert [d.shadow for d in decisions] == [False] * 3 + [True] * 3
    assert tokens == pytest.approx(3 - 6, abs=0.01)
    assert wait_until == 0.0


def _synced(url: str, prefix: str) -> str:
    return f"{url}?mode=synced&prefix={prefix}&sync_interval=0.005&budget=0.5"


async def _until_synced(guard: Guard) -> None:
    backend: Any = guard.backend
    syncs = backend.stats()["syncs"]
    for _ in range(2000):
        await asyncio.sleep(0.005)
        if backend.stats()["syncs"] >= syncs + 2 and backend.stats()["pending"] == 0:
            return
    raise AssertionError("no sync")


@pytest.mark.redis
def test_refusals_are_not_reported_as_usage_in_synced_mode(redis_server: Any) -> None:
    network = NetworkPolicy(
        per_ip=TokenBucket("1/hour", burst=100, name="ip"), deny_cidrs=("203.0.113.0/24",)
    )
    policy = Policy(bucket=TokenBucket("1/hour", burst=100, cost=30), network=network)
    prefix = _prefix()

    async def main() -> tuple[list[Decision], float, float]:
        guard = Guard(policy, _synced(redis_server.url, prefix))
        await guard.startup()
        try:
            decisions = [guard.check(info()) for _ in range(3)]
            decisions.append(guard.check(info(ip="198.51.100.9")))
            await _until_synced(guard)
            backend: Any = guard.backend
            key = backend.keys.of(decisions[0].identity).bucket
        finally:
            await guard.shutdown()
        key_table = guard.engine.tables[L.KIND_KEY]
        local = float(key_table.data[key_table.index[decisions[0].identity], L.F_TOKENS])
        return decisions, _shared_tokens(redis_server.url, key, 100), local

    decisions, shared, local = asyncio.run(main())
    assert [d.served for d in decisions] == [False, False, False, True]
    assert shared == pytest.approx(70, abs=0.01)
    assert local == pytest.approx(70, abs=0.01)


@pytest.mark.redis
def test_complete_reconciles_network_buckets_in_synced_mode(redis_server: Any) -> None:
    network = NetworkPolicy(per_ip=TokenBucket("1/hour", burst=1000, name="ip"), nat_fairness=False)
    policy = Policy(bucket=TokenBucket("1/hour", burst=1000, cost=200), network=network)
    prefix = _prefix()

    async def main() -> tuple[float, float]:
        guard = Guard(policy, _synced(redis_server.url, prefix))
        await guard.startup()
        try:
            for real in (47, 10):
                request = info()
                decision = guard.check(request)
                guard.complete(request, decision, status=200, cost=real)
            await _until_synced(guard)
            backend: Any = guard.backend
            ip_key = guard.addresses.resolve("203.0.113.7").ip_key
            ip_bucket = backend.keys.network_base(L.KIND_IP, ip_key) + ":b"
            key = backend.keys.of(decision.identity).bucket
        finally:
            await guard.shutdown()
        return (
            _shared_tokens(redis_server.url, key, 1000),
            _shared_tokens(redis_server.url, ip_bucket, 1000),
        )

    key_tokens, ip_tokens = asyncio.run(main())
    assert key_tokens == pytest.approx(1000 - 57, abs=0.1)
    assert ip_tokens == pytest.approx(1000 - 57, abs=0.1)


SHADOW_WITH_QUOTA = Policy(
    bucket=TokenBucket("1/hour", burst=2),
    quotas=(Quota("100/day", name="day"),),
    shadow=True,
    scoring=None,
)


def test_a_shadowed_bucket_refusal_is_counted_in_the_quotas_as_an_allow() -> None:
    guard = fresh_guard(SHADOW_WITH_QUOTA)
    decisions = [guard.check(info()) for _ in range(4)]
    assert [d.shadow for d in decisions] == [False, False, True, True]
    assert [states(d)["day"] for d in decisions] == [99, 98, 97, 96]


@pytest.mark.redis
def test_a_shadowed_bucket_refusal_is_counted_in_the_quotas_on_redis_inline(
    redis_server: Any,
) -> None:
    async def main() -> list[Decision]:
        guard = Guard(SHADOW_WITH_QUOTA, f"{redis_server.url}?prefix={_prefix()}&budget=0.5")
        await guard.startup()
        try:
            return [await guard.acheck(info()) for _ in range(4)]
        finally:
            await guard.shutdown()

    decisions = asyncio.run(main())
    assert [d.shadow for d in decisions] == [False, False, True, True]
    assert [states(d)["day"] for d in decisions] == [99, 98, 97, 96]


@pytest.mark.redis
def test_deny_listed_refusals_cost_nothing_in_synced_mode_over_http(redis_server: Any) -> None:
    network = NetworkPolicy(
        per_ip=TokenBucket("1/hour", burst=100, name="ip"), deny_cidrs=("203.0.113.0/24",)
    )
    policy = Policy(
        bucket=TokenBucket("1/hour", burst=100, cost=30),
        network=network,
        trusted_proxies=("127.0.0.1/32",),
    )
    app, _, _ = holding_app()
    app.add_middleware(AbuseGuard, policy=policy, backend=_synced(redis_server.url, _prefix()))
    key = {"authorization": "Bearer sk-synced"}
    with serve(app) as url, httpx.Client(base_url=url, timeout=30, headers=key) as client:
        denied = [
            client.get("/", headers={"x-forwarded-for": "203.0.113.7"}).status_code
            for _ in range(3)
        ]
        served = client.get("/", headers={"x-forwarded-for": "198.51.100.9"})
    assert denied == [403] * 3
    assert served.status_code == 200
    assert remaining(served)["default"] == 70


def test_a_cost_set_in_the_state_counts_even_when_the_app_took_the_decision_out() -> None:
    """The middleware reads the state once after the response, and only when the app set
    something there: a cost is reconciled even when the app removed the decision it found
    in the state (the state then holds only the cost)."""

    async def chat(request: Request) -> PlainTextResponse:
        state = request.scope["state"]
        state.pop("abuseguard_decision")
        state["abuseguard_cost"] = 0.0
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", chat)])
    bucket = TokenBucket("1/hour", burst=1000, cost=200)
    app.add_middleware(AbuseGuard, policy=Policy(bucket=bucket, scoring=None))
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert remaining(client.get("/")) == {"default": 800}
        # The first request really cost nothing: its 200 are back before the second.
        assert remaining(client.get("/")) == {"default": 800}
