"""Invented API keys must not multiply the allowance (Policy.unverified_keys).

One address sending a new random ``x-api-key`` per request used to get every request
served (each invented key had a fresh bucket). The attacks run over real HTTP (uvicorn +
httpx) against the memory backend and real Redis (inline and synced); the NAT and the
learning rules run on the Guard directly, in virtual time.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    Action,
    ConfigError,
    Decision,
    Guard,
    Policy,
    RequestInfo,
    TokenBucket,
    UnverifiedKeys,
    mark_invalid_key,
)
from abuseguard.engine import layout as L
from abuseguard.testing import serve as serve_app
from tests.conftest import RedisServer

DEFAULTS = UnverifiedKeys()
assert DEFAULTS.per_ip is not None
IP_BURST = DEFAULTS.per_ip.capacity
IP_RATE = DEFAULTS.per_ip.per_second
# Keys accepted behind one address that still grow its ceiling (and give their token back).
GROWTH_KEYS = math.ceil((DEFAULTS.max_growth - 1) / DEFAULTS.growth_per_key - 1e-9)


def serve(app: Any) -> Any:
    # The first server of a session may load or compile the Numba kernels at start-up.
    return serve_app(app, timeout=90.0)


class Origin:
    """A Starlette app that knows its valid keys (or accepts any) and counts what it saw."""

    def __init__(self, valid: set[str] | None = None, *, invalid_status: int = 401) -> None:
        self.valid = valid
        self.invalid_status = invalid_status
        self.hits = 0
        self.app = Starlette(routes=[Route("/", self.endpoint), Route("/soft", self.soft)])

    def known(self, request: Request) -> bool:
        return self.valid is None or request.headers.get("x-api-key") in self.valid

    async def endpoint(self, request: Request) -> PlainTextResponse:
        self.hits += 1
        if self.known(request):
            return PlainTextResponse("ok")
        return PlainTextResponse("bad key", status_code=self.invalid_status)

    async def soft(self, request: Request) -> JSONResponse:
        # Some APIs answer an unknown key with 200 and an error body: they say so explicitly.
        self.hits += 1
        if self.known(request):
            return JSONResponse({"ok": True})
        mark_invalid_key(request)
        return JSONResponse({"error": "invalid api key"})


def invent_keys(url: str, n: int, path: str = "/") -> tuple[list[httpx.Response], float]:
    """n requests from one address, each with a new random API key."""
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=10.0) as client:
        responses = [
            client.get(path, headers={"x-api-key": secrets.token_hex(16)}) for _ in range(n)
        ]
    return responses, time.monotonic() - started


def accept_all_bound(elapsed: float) -> float:
    """The most an address gets served with invented keys when the app answers 2xx to
    every key: the burst, one token back for each of the first keys accepted behind it,
    and the refill at most at the fully grown rate."""
    return IP_BURST + GROWTH_KEYS + math.ceil(elapsed * IP_RATE * DEFAULTS.max_growth) + 1


@pytest.fixture
def redis_uri(request: pytest.FixtureRequest) -> Iterator[str]:
    mode = request.param
    if mode == "memory":
        yield "memory://"
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    query = f"prefix=uk{uuid.uuid4().hex[:8]}" + ("&mode=synced" if mode == "synced" else "")
    yield f"{server.url}?{query}"


@pytest.mark.parametrize(
    "redis_uri",
    [
        "memory",
        pytest.param("inline", marks=pytest.mark.redis),
        pytest.param("synced", marks=pytest.mark.redis),
    ],
    indirect=True,
)
def test_a_new_random_key_per_request_is_bounded_over_http(redis_uri: str) -> None:
    # The attack under the default Policy, against the worst case: an app that
    # answers 200 to any key. It used to be served in full on every backend.
    origin = Origin()
    app = AbuseGuard(origin.app, policy=Policy(), backend=redis_uri)
    with serve(app) as url:
        responses, elapsed = invent_keys(url, 300)
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(served) + len(refused) == 300
    assert len(served) <= accept_all_bound(elapsed), (len(served), elapsed)
    assert origin.hits == len(served)
    over = refused[-1]
    assert over.json()["reasons"] == ["unverified_key"]
    assert over.json()["violated_policies"] == ["unverified-ip"]
    assert int(over.headers["retry-after"]) >= 1
    assert '"unverified-ip"' in over.headers["ratelimit-policy"]


@pytest.mark.parametrize(
    "redis_uri", ["memory", pytest.param("inline", marks=pytest.mark.redis)], indirect=True
)
def test_keys_the_app_answers_401_charge_the_address(redis_uri: str) -> None:
    origin = Origin(valid={"real-key"})
    app = AbuseGuard(origin.app, policy=Policy(), backend=redis_uri)
    with serve(app) as url:
        responses, elapsed = invent_keys(url, 60)
        with httpx.Client(base_url=url) as client:
            # The address is in debt: even a real key new to it waits now.
            late = client.get("/", headers={"x-api-key": "real-key"})
    assert late.status_code == 429 and late.json()["reasons"] == ["unverified_key"]
    answered = [r for r in responses if r.status_code == 401]
    # A burst of 20 pays for two invalid keys at 10 each; then one more per 10 / 0.5 s.
    cost = DEFAULTS.invalid_key_cost
    assert len(answered) <= math.ceil(IP_BURST / cost) + math.ceil(elapsed * IP_RATE / cost) + 1
    assert origin.hits == len(answered)
    assert all(r.status_code == 429 for r in responses if r.status_code != 401)


def test_an_app_that_answers_200_can_mark_the_key_invalid() -> None:
    origin = Origin(valid={"real-key"})
    app = AbuseGuard(origin.app, policy=Policy())
    with serve(app) as url:
        responses, elapsed = invent_keys(url, 40, path="/soft")
    answered = [r for r in responses if r.status_code == 200]
    cost = DEFAULTS.invalid_key_cost
    assert len(answered) <= math.ceil(IP_BURST / cost) + math.ceil(elapsed * IP_RATE / cost) + 1
    assert all(r.json() == {"error": "invalid api key"} for r in answered)
    assert app.guard.unverified_keys is not None
    assert app.guard.unverified_keys.accepted == {}  # none was taken as accepted


def test_fifty_real_keys_behind_one_nat_address_are_served_within_their_own_limits() -> None:
    keys = {f"tenant-{i}-{secrets.token_hex(4)}" for i in range(50)}
    origin = Origin(valid=keys)
    # Per-key limit 3; scoring off: this is about the ceilings, not fan-in risk.
    policy = Policy(bucket=TokenBucket("1/hour", burst=3), scoring=None)
    app = AbuseGuard(origin.app, policy=policy)
    outcomes: dict[str, list[int]] = {key: [] for key in keys}
    with serve(app) as url, httpx.Client(base_url=url) as client:
        for _ in range(4):
            for key in keys:
                response = client.get("/", headers={"x-api-key": key})
                outcomes[key].append(response.status_code)
                if response.status_code == 429:
                    assert response.json()["reasons"] == ["rate"]
    assert all(statuses == [200, 200, 200, 429] for statuses in outcomes.values()), outcomes


# -- the rules, on the Guard in virtual time -------------------------------------------


def request(key: str | None, ts: float, ip: str = "198.51.100.7") -> RequestInfo:
    return RequestInfo(ip, ts=ts, key=key)


def unverified_quota(guard: Guard, ts: float, ip: str = "198.51.100.7") -> float:
    """The address's ceiling, read from the refusal of invented keys at ``ts``."""
    for i in range(10_000):
        decision = guard.check(request(f"probe-{ts}-{i}", ts, ip))
        if decision.reasons == ("unverified_key",):
            return decision.policies[0].quota
    raise AssertionError("the invented keys were never refused")


def test_only_accepted_keys_raise_the_ceiling() -> None:
    guard = Guard(Policy(scoring=None, network=None))
    base = unverified_quota(guard, 1.0)
    assert base == IP_BURST
    for i in range(5):  # refused by the app: no growth
        info = request(f"bad-{i}", 1000.0 + i)
        guard.complete(info, guard.check(info), status=401)
    for i in range(5):  # served but never answered (client gone, app crashed): no growth
        info = request(f"gone-{i}", 2000.0 + i)
        guard.complete(info, guard.check(info), status=None)
    assert unverified_quota(guard, 3000.0) == base
    for i in range(5):  # accepted: each grows the ceiling by growth_per_key of itself
        info = request(f"good-{i}", 4000.0 + i)
        guard.complete(info, guard.check(info), status=200)
    assert unverified_quota(guard, 5000.0) == pytest.approx(
        base * (1 + 5 * DEFAULTS.growth_per_key)
    )


def test_a_key_never_answered_is_not_accepted_and_keeps_drawing() -> None:
    guard = Guard(Policy(scoring=None, network=None))
    info = request("quiet", 1.0)
    guard.complete(info, guard.check(info), status=None)
    assert guard.unverified_keys is not None
    assert not guard.unverified_keys.is_accepted(guard.identity_of(info)[0])
    served = sum(guard.check(request("quiet", 1.0)).action == Action.ALLOW for _ in range(100))
    assert served == IP_BURST - 1


def test_refused_invented_keys_create_no_key_rows() -> None:
    guard = Guard(Policy(scoring=None, network=None))
    decisions = [guard.check(request(f"invented-{i}", 1.0)) for i in range(500)]
    served = sum(d.action == Action.ALLOW for d in decisions)
    assert served == IP_BURST
    assert len(guard.engine.tables[L.KIND_KEY].index) == served


def test_the_prefix_ceiling_holds_across_addresses() -> None:
    guard = Guard(Policy(scoring=None, network=None))
    assert DEFAULTS.per_prefix is not None
    served = 0
    for host in range(1, 60):  # one /24, many addresses, invented keys from each
        for i in range(30):
            d = guard.check(request(f"k-{host}-{i}", 1.0, ip=f"203.0.113.{host}"))
            served += d.action == Action.ALLOW
    assert served == DEFAULTS.per_prefix.capacity


def test_anonymous_requests_are_unaffected() -> None:
    guard = Guard(Policy(bucket=TokenBucket("1/hour", burst=100), scoring=None, network=None))
    decisions = [guard.check(request(None, 1.0)) for _ in range(100)]
    assert all(d.action == Action.ALLOW for d in decisions)


def test_report_invalid_key_charges_and_forgets_acceptance() -> None:
    guard = Guard(Policy(scoring=None, network=None))
    info = request("stolen-then-revoked", 1.0)
    guard.complete(info, guard.check(info), status=200)
    assert guard.report_invalid_key(info) is True
    assert guard.unverified_keys is not None
    assert not guard.unverified_keys.is_accepted(guard.identity_of(info)[0])
    assert guard.report_invalid_key(request(None, 1.0)) is False
    # 20 tokens, one drawn and given back on acceptance, 10 charged: 10 left.
    served = sum(guard.check(request(f"n{i}", 1.0)).action == Action.ALLOW for i in range(50))
    assert served == IP_BURST - DEFAULTS.invalid_key_cost


def test_shadow_mode_reports_the_refusal_and_serves() -> None:
    guard = Guard(Policy(scoring=None, network=None, shadow=True))
    decisions = [guard.check(request(f"invented-{i}", 1.0)) for i in range(30)]
    assert all(d.served for d in decisions)
    shadowed = [d for d in decisions if d.reasons == ("unverified_key",)]
    assert len(shadowed) == 30 - IP_BURST and all(d.shadow for d in shadowed)


def test_exempt_paths_draw_nothing() -> None:
    guard = Guard(Policy(scoring=None, network=None, exempt_paths=("/health",)))
    for i in range(50):
        guard.check(RequestInfo("198.51.100.7", ts=1.0, key=f"k{i}", path="/health"))
    served = sum(guard.check(request(f"n{i}", 1.0)).action == Action.ALLOW for i in range(50))
    assert served == IP_BURST


def test_turned_off_invented_keys_are_limited_per_key_only() -> None:
    guard = Guard(Policy(scoring=None, network=None, unverified_keys=None))
    assert guard.unverified_keys is None
    decisions = [guard.check(request(f"invented-{i}", 1.0)) for i in range(100)]
    assert all(d.action == Action.ALLOW for d in decisions)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"per_ip": "10/second"}, "UnverifiedKeys.per_ip"),
        ({"invalid_key_cost": 0.5}, "UnverifiedKeys.invalid_key_cost"),
        ({"invalid_key_cost": float("nan")}, "UnverifiedKeys.invalid_key_cost"),
        ({"invalid_statuses": (401, 700)}, "UnverifiedKeys.invalid_statuses"),
        ({"invalid_statuses": "401"}, "UnverifiedKeys.invalid_statuses"),
        ({"accepted_statuses": (200, 401)}, "UnverifiedKeys.accepted_statuses"),
        ({"growth_per_key": -1}, "UnverifiedKeys.growth_per_key"),
        ({"max_growth": 0.5}, "UnverifiedKeys.max_growth"),
        ({"max_accepted_keys": 0}, "UnverifiedKeys.max_accepted_keys"),
        ({"max_addresses": 4}, "UnverifiedKeys.max_addresses"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        UnverifiedKeys(**kwargs)
    assert excinfo.value.field == field


def test_policy_checks_the_type() -> None:
    with pytest.raises(ConfigError) as excinfo:
        Policy(unverified_keys=TokenBucket("1/second"))  # type: ignore[arg-type]
    assert excinfo.value.field == "Policy.unverified_keys"


# -- Redis inline: the budgets live in Redis, shared by every worker --------------------


def inline_workers(url: str, n: int, policy: Policy, **kwargs: Any) -> list[Guard]:
    from abuseguard.backends.redis import RedisBackend

    name = f"uv{uuid.uuid4().hex[:8]}"
    return [
        Guard(policy, backend=RedisBackend(url, prefix=name, budget=0.5, **kwargs))
        for _ in range(n)
    ]


@pytest.mark.redis
def test_the_inline_ceiling_is_one_for_every_worker(redis_server: RedisServer) -> None:
    async def main() -> tuple[list[Decision], Any]:
        guards = inline_workers(redis_server.url, 3, Policy(scoring=None, network=None))
        decisions = [await guards[i % 3].acheck(request(f"invented-{i}", 1.0)) for i in range(120)]
        store = getattr(guards[0].unverified_keys, "store", None)
        for guard in guards:
            await guard.shutdown()
        return decisions, store

    decisions, store = asyncio.run(main())
    served = [d for d in decisions if d.action == Action.ALLOW]
    # Three workers, one ceiling: with a per-worker budget it would be three times this
    # (the Redis clock runs meanwhile: the refill of a few seconds at most is allowed).
    assert IP_BURST <= len(served) <= IP_BURST + 3
    assert store is not None and store.fallbacks == 0
    refused = [d for d in decisions if d.action != Action.ALLOW]
    assert all(d.reasons == ("unverified_key",) for d in refused)


@pytest.mark.redis
def test_inline_acceptances_and_charges_reach_every_worker(redis_server: RedisServer) -> None:
    async def main() -> tuple[float, Decision]:
        a, b = inline_workers(
            redis_server.url, 2, Policy(scoring=None, network=None), server_time=False
        )
        for i in range(5):  # accepted on worker a: the address's ceiling grows everywhere
            info = request(f"good-{i}", 1.0)
            a.complete(info, await a.acheck(info), status=200)
        await asyncio.sleep(0.2)  # acceptances are sent without waiting
        grown = await refusal_quota(b, 2.0)  # drains the budget on worker b
        info = request("guessed", 3.0)  # the refill since ts 2 pays for one more try...
        decision = await b.acheck(info)
        assert decision.action == Action.ALLOW
        b.complete(info, decision, status=401)  # ...which the app refuses: 9 more
        await asyncio.sleep(0.2)
        after = await a.acheck(request("next", 3.0))
        for guard in (a, b):
            await guard.shutdown()
        return grown, after

    grown, after = asyncio.run(main())
    scale = 1 + 5 * DEFAULTS.growth_per_key
    assert grown == pytest.approx(IP_BURST * scale)
    # Worker a waits for the debt worker b's 401 left (about 9 tokens at 0.75 a second),
    # not for the half token a bare draw would have left.
    assert after.reasons == ("unverified_key",)
    assert after.retry_after is not None
    assert after.retry_after > (DEFAULTS.invalid_key_cost - 2) / (IP_RATE * scale)


@pytest.mark.redis
def test_an_inline_flood_refused_once_costs_redis_nothing_more(redis_server: RedisServer) -> None:
    async def main() -> tuple[list[Decision], int]:
        (guard,) = inline_workers(
            redis_server.url, 1, Policy(scoring=None, network=None), server_time=False
        )
        await guard.startup()
        stats = guard.backend.stats  # type: ignore[attr-defined]
        first = [await guard.acheck(request(f"invented-{i}", 1.0)) for i in range(25)]
        trips = stats()["round_trips"]
        flood = [await guard.acheck(request(f"more-{i}", 1.0)) for i in range(200)]
        extra = stats()["round_trips"] - trips
        await guard.shutdown()
        return first + flood, extra

    decisions, extra = asyncio.run(main())
    assert sum(d.action == Action.ALLOW for d in decisions) == IP_BURST
    assert all(d.reasons == ("unverified_key",) for d in decisions[int(IP_BURST) :])
    assert all(d.retry_after and d.retry_after > 0 for d in decisions[int(IP_BURST) :])
    assert extra == 0  # refused in the worker until the address's budget can pay


@pytest.mark.redis
def test_the_inline_ceiling_holds_on_a_redis_cluster(redis_cluster: Any) -> None:
    from tests.test_redis_cluster import cluster_backend

    async def main() -> list[Decision]:
        name = f"uv{uuid.uuid4().hex[:8]}"
        policy = Policy(scoring=None, network=None)
        guards = [Guard(policy, backend=cluster_backend(redis_cluster, name)) for _ in range(2)]
        decisions = [await guards[i % 2].acheck(request(f"invented-{i}", 1.0)) for i in range(80)]
        for guard in guards:
            await guard.shutdown()
        return decisions

    decisions = asyncio.run(main())
    served = sum(d.action == Action.ALLOW for d in decisions)
    assert IP_BURST <= served <= IP_BURST + 3  # one ceiling for both workers


async def refusal_quota(guard: Guard, ts: float) -> float:
    for i in range(1000):
        decision = await guard.acheck(request(f"probe-{ts}-{i}", ts))
        if decision.reasons == ("unverified_key",):
            return decision.policies[0].quota
    raise AssertionError("the invented keys were never refused")
