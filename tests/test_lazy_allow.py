"""The plain-allow path builds no Decision until something asks (`Guard.check_lazily`):
the Decision built later, the RateLimit headers and what the settle stage learns are
what the eager path (`Guard.check`) gives for the same requests."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Action, Policy, Quota, TokenBucket, current_decision
from abuseguard.decision import Decision, PolicyState, plain_allow_decision
from abuseguard.engine import layout as L
from abuseguard.guard import Guard
from abuseguard.headers import (
    plain_allow_header_items,
    ratelimit_policy_value,
    ratelimit_value,
)
from abuseguard.policy import Enforcement, NetworkPolicy, Scoring
from abuseguard.request import RequestInfo
from abuseguard.testing import ManualClock, fresh_guard, serve

GENEROUS = TokenBucket("100/second", burst=1000)
DEGRADE_LADDER = ((0.05, Action.DEGRADE),)

SCENARIOS: dict[str, Policy] = {
    "allow": Policy(bucket=GENEROUS, scoring=Scoring()),
    "throttle": Policy(bucket=TokenBucket("2/minute", burst=3), scoring=Scoring()),
    "shadow throttle": Policy(bucket=TokenBucket("2/minute", burst=3), shadow=True),
    "degrade": Policy(
        bucket=GENEROUS,
        enforcement=Enforcement(ladder=DEGRADE_LADDER),
        unverified_keys=None,
    ),
    "shadow degrade": Policy(
        bucket=GENEROUS,
        enforcement=Enforcement(ladder=DEGRADE_LADDER, shadow=True),
        unverified_keys=None,
    ),
    "no bucket": Policy(bucket=None, scoring=Scoring()),
    "quota": Policy(bucket=GENEROUS, quotas=(Quota("4/hour"),)),
    "deny rule": Policy(bucket=GENEROUS, network=NetworkPolicy(deny_cidrs=["203.0.113.0/28"])),
    "tight network bucket": Policy(
        bucket=GENEROUS, network=NetworkPolicy(per_ip=TokenBucket("1/minute", burst=2))
    ),
}


def requests() -> list[RequestInfo]:
    """Keyed and anonymous clients, some from a denied range or over Tor, repeating."""
    out = []
    for round_ in range(6):
        for n in range(4):
            out.append(
                RequestInfo(
                    f"203.0.113.{n * 7}",
                    key=f"sk-lazy-{n}" if n % 2 else None,
                    ua="python-requests/2.31" if n == 3 else "Mozilla/5.0",
                    anon="tor" if n == 2 else None,
                    anon_confidence=1.0 if n == 2 else None,
                    cost=1.0 + round_ % 2,
                )
            )
    return out


def every_field(decision: Decision) -> dict[str, Any]:
    """All of a Decision, the fields left out of its equality included."""
    return {f.name: getattr(decision, f.name) for f in dataclasses.fields(decision)}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_lazily_built_decision_is_the_eager_one(scenario: str) -> None:
    policy = SCENARIOS[scenario]
    eager_clock, lazy_clock = ManualClock(), ManualClock()
    eager_guard = fresh_guard(policy, clock=eager_clock)
    lazy_guard = fresh_guard(policy, clock=lazy_clock)
    kinds = set()
    for info in requests():
        eager = eager_guard.check(info)
        answered = lazy_guard.check_lazily(info)
        if isinstance(answered, tuple):
            kinds.add("plain")
            lazy = plain_allow_decision(answered)
        else:
            kinds.add(answered.action.value)
            lazy = answered
        assert every_field(lazy) == every_field(eager), info
        for clock in (eager_clock, lazy_clock):
            clock.advance(0.25)
    if scenario == "allow":
        assert kinds == {"plain"}
    elif scenario == "no bucket":
        assert "plain" in kinds
    else:  # each case reaches the non-plain answer it is named after
        assert kinds - {"plain"}, kinds


def test_observers_see_a_decision_for_a_plain_allow() -> None:
    seen: list[Decision] = []
    guard = fresh_guard(Policy(bucket=GENEROUS), observers=[lambda _, d: seen.append(d)])
    answered = guard.check_lazily(RequestInfo("198.51.100.4", key="sk-watched"))
    assert isinstance(answered, Decision)
    assert seen == [answered]


@settings(max_examples=400, deadline=None)
@given(
    remaining=st.floats(min_value=-3.0, max_value=40.0, allow_nan=False),
    reset=st.floats(min_value=-3.0, max_value=40.0, allow_nan=False),
    name=st.sampled_from(["default", "burst", "per-key_2"]),
    quota=st.sampled_from([10.0, 40.5, 1000.0]),
    window=st.sampled_from([0.4, 1.0, 2.5, 60.0]),
)
def test_plain_allow_headers_are_the_formatters_bytes(
    remaining: float, reset: float, name: str, quota: float, window: float
) -> None:
    """The prebuilt items of a plain allow (shared between examples, so a key that lumps
    two different headers together shows) against the string formatters."""
    state = PolicyState(name, quota, window, remaining, reset)
    plain = ("k:x", 0.0, remaining, reset, 1.0, (name, quota, window))
    assert plain_allow_header_items(plain) == (
        (b"ratelimit-policy", ratelimit_policy_value([state]).encode("latin-1")),
        (b"ratelimit", ratelimit_value([state]).encode("latin-1")),
    )
    no_bucket = ("k:x", 0.0, remaining, reset, 1.0, None)
    assert plain_allow_header_items(no_bucket) == ()
    assert not math.isnan(plain_allow_decision(plain).score)


def _app(observed: bool, clock: ManualClock) -> Starlette:
    async def show(request: Request) -> JSONResponse:
        decision = current_decision(request)
        assert decision is not None
        assert current_decision(request) is decision  # built once, then kept
        fields = every_field(decision)
        fields["policies"] = [dataclasses.astuple(p) for p in decision.policies]
        return JSONResponse(fields)

    async def quiet(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", status_code=int(request.query_params.get("status", 200)))

    app = Starlette(routes=[Route("/show", show), Route("/quiet", quiet)])
    app.add_middleware(
        AbuseGuard,
        policy=Policy(bucket=TokenBucket("5/minute", burst=3), scoring=Scoring()),
        observers=[lambda _, __: None] if observed else [],
        clock=clock,
    )
    return app


def _exchange(app: Starlette) -> list[tuple[int, str | None, str | None, Any]]:
    out = []
    with serve(app, timeout=90.0) as url, httpx.Client(base_url=url, timeout=60) as client:
        for n in range(9):
            path = "/show" if n % 3 == 0 else "/quiet"
            params = {"status": "500"} if n == 4 else {}
            response = client.get(
                path, params=params, headers={"authorization": f"Bearer sk-e2e-{n % 2}"}
            )
            body = response.json() if path == "/show" and response.status_code == 200 else None
            out.append(
                (
                    response.status_code,
                    response.headers.get("ratelimit"),
                    response.headers.get("ratelimit-policy"),
                    body,
                )
            )
    return out


def test_the_lazy_path_answers_http_as_the_eager_one() -> None:
    """The same requests through the middleware with an observer (every Decision built up
    front) and without (plain allows left lazy): same statuses, headers and decisions."""
    lazy = _exchange(_app(False, ManualClock()))
    eager = _exchange(_app(True, ManualClock()))
    assert lazy == eager
    assert [status for status, *_ in lazy].count(429) >= 1  # the bucket ran out
    assert all(ratelimit is not None for _, ratelimit, _, _ in lazy)


def test_settling_a_plain_allow_learns_what_complete_learns() -> None:
    """Statuses after plain allows (errors, invalid and accepted keys): the lazy path's
    `complete_plain_allow` leaves the error shares and accepted keys `complete` leaves."""
    guards = []
    for lazy in (False, True):
        clock = ManualClock()
        guard = fresh_guard(Policy(bucket=GENEROUS, scoring=Scoring()), clock=clock)
        for n, status in enumerate([200, 500, 401, 200, 503, 429, 200, 404, 500, 200] * 3):
            info = RequestInfo(f"198.51.100.{n % 3}", key=f"sk-settle-{n % 4}", ts=clock())
            if lazy:
                answered = guard.check_lazily(info)
                assert isinstance(answered, tuple)
                guard.settlement.complete_plain_allow(info, answered[0], status)
            else:
                guard.complete(info, guard.check(info), status=status)
            clock.advance(0.5)
        guards.append(guard)
    eager, lazy = guards
    identities = [eager.identity_of(RequestInfo("198.51.100.0", key=f"sk-settle-{n}"))[0]
                  for n in range(4)]  # fmt: skip
    error_shares = []
    for guard in guards:
        table = guard.engine.tables[L.KIND_KEY]
        error_shares.append([table.data_view[table.index[i], L.F_ERR] for i in identities])
    assert error_shares[0] == error_shares[1]
    assert any(share > 0 for share in error_shares[0])
    assert eager.unverified_keys is not None and lazy.unverified_keys is not None
    assert list(eager.unverified_keys.accepted) == list(lazy.unverified_keys.accepted)


def test_a_guard_that_settles_its_own_way_sees_every_complete() -> None:
    """A Guard subclass overriding `complete` is called for every served request, plain
    allows included (the lazy path would otherwise settle them without it)."""
    completed: list[int | None] = []

    class CountingGuard(Guard):
        def complete(self, info: RequestInfo, decision: Decision, **outcome: Any) -> None:
            completed.append(outcome.get("status"))
            super().complete(info, decision, **outcome)

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    guard = CountingGuard(Policy(bucket=GENEROUS), clock=ManualClock())
    app = AbuseGuard(Starlette(routes=[Route("/", home)]), guard=guard)
    with serve(app, timeout=90.0) as url, httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(3):
            assert client.get("/").status_code == 200
    assert completed == [200, 200, 200]
