"""A plan's quotas and concurrency replace the app-wide ones for the plan's clients
(issue 18: ``plans[name]`` replaces the app-wide limits), field by field: a plan that
sets ``quotas`` (``concurrency``) is counted in its own instead of `Policy.quotas`
(`Policy.concurrency`); a plan that leaves the field unset inherits the app-wide one. On
the memory backend and Redis inline, in the pre-check, the real-cost reconcile, the
headers, replay and the startup line."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    Concurrency,
    Decision,
    Guard,
    Limits,
    Policy,
    Quota,
    RequestInfo,
    TokenBucket,
)
from abuseguard.cli import main as cli_main
from abuseguard.startup_log import describe_policy
from abuseguard.testing import serve
from abuseguard.traces import trace_fields, trace_line

SLOW = "1/hour"
_names = itertools.count()


def policy_with(**kwargs: Any) -> Policy:
    """App-wide: a large bucket, a daily quota of 3 and one request in flight. The pro
    plan sets its own quota and concurrency; the free plan only its bucket; the team plan
    only its concurrency."""
    kwargs.setdefault("bucket", TokenBucket(SLOW, burst=100))
    kwargs.setdefault("quotas", (Quota("3/day", name="daily"),))
    kwargs.setdefault("concurrency", 1)
    kwargs.setdefault("plan_func", lambda conn: None)  # replay and these tests set info.plan
    kwargs.setdefault(
        "plans",
        {
            "pro": Limits(quotas=(Quota("6/day", name="daily"),), concurrency=3),
            "free": Limits(bucket=TokenBucket(SLOW, burst=50)),
            "team": Limits(concurrency=2),
        },
    )
    return Policy(
        network=None,
        scoring=None,
        unverified_keys=None,
        max_identities=512,
        **kwargs,
    )


def on_plan(plan: str | None, key: str, **kwargs: Any) -> RequestInfo:
    info = RequestInfo("198.51.100.9", key=key, method="GET", path="/v1/models", **kwargs)
    info.plan = plan
    return info


def names(decision: Decision) -> set[str]:
    return {state.name for state in decision.policies}


async def _decide(
    guard: Guard, requests: list[RequestInfo], complete: bool, cost: float | None
) -> list[Decision]:
    out = []
    for info in requests:
        decision = await guard.acheck(info)
        out.append(decision)
        if complete:
            guard.complete(info, decision, status=200, cost=cost)
            if guard.backend.shared:
                await asyncio.sleep(0.02)  # the release and reconcile go in the background
    return out


def decide_all(
    policy: Policy,
    backend: str | None,
    requests: list[RequestInfo],
    *,
    complete: bool = True,
    cost: float | None = None,
) -> list[Decision]:
    """Decide ``requests`` in order on one guard; each one completed (its slot released,
    ``cost`` reconciled) before the next, unless ``complete`` is False."""

    async def main() -> list[Decision]:
        guard = Guard(policy, backend, clock=None if backend else lambda: 1000.0)
        await guard.startup()
        try:
            return await _decide(guard, requests, complete, cost)
        finally:
            await guard.shutdown()

    return asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    server = request.getfixturevalue("redis_server")
    return f"{server.url}?budget=0.5&deny_cache_seconds=0&prefix=po{os.getpid()}x{next(_names)}"


def test_a_plans_quota_replaces_the_app_wide_quota(backend: str | None) -> None:
    plans = ("pro", "free", "team", "gold", None)
    requests = [on_plan(plan, f"sk-q-{plan}") for plan in plans for _ in range(8)]
    decisions = decide_all(policy_with(), backend, requests)
    served = {
        plan: sum(d.served for d in decisions[i * 8 : i * 8 + 8]) for i, plan in enumerate(plans)
    }
    # pro: its own 6 a day, not stopped by the app-wide 3; the others inherit the 3
    assert served == {"pro": 6, "free": 3, "team": 3, "gold": 3, None: 3}
    pro_served, pro_refused = decisions[0], decisions[6]
    assert "plan-pro-daily" in names(pro_served) and "daily" not in names(pro_served)
    assert pro_refused.reasons == ("quota",)
    assert [s.name for s in pro_refused.policies if s.violated] == ["plan-pro-daily"]
    free_refused = decisions[8 + 3]
    assert free_refused.reasons == ("quota",)
    assert [s.name for s in free_refused.policies if s.violated] == ["daily"]


def test_a_plans_concurrency_replaces_the_app_wide_concurrency(backend: str | None) -> None:
    plans = ("pro", "team", "free", None)
    # nothing completed: every served request holds its slot
    requests = [on_plan(plan, f"sk-c-{plan}") for plan in plans for _ in range(5)]
    decisions = decide_all(policy_with(quotas=()), backend, requests, complete=False)
    served = {
        plan: sum(d.served for d in decisions[i * 5 : i * 5 + 5]) for i, plan in enumerate(plans)
    }
    assert served == {"pro": 3, "team": 2, "free": 1, None: 1}
    pro = decisions[0]
    assert pro.held == ("c:" + pro.identity + ":plan-pro",)  # the plan's slot, not "c:<id>"
    pro_refused = decisions[3]
    assert pro_refused.reasons == ("concurrency",)
    assert [s.name for s in pro_refused.policies if s.violated] == ["plan-pro-concurrency"]
    free_refused = decisions[10 + 1]
    assert free_refused.reasons == ("concurrency",) and free_refused.held == ()


def test_the_plans_slots_are_released_after_the_response(backend: str | None) -> None:
    requests = [on_plan("pro", "sk-release") for _ in range(6)]
    decisions = decide_all(policy_with(quotas=()), backend, requests, complete=True)
    assert all(d.served for d in decisions)  # each one released before the next


def test_the_real_cost_is_reconciled_in_the_plans_quota_only(backend: str | None) -> None:
    """A pro client's real cost counts in the pro quota, never in the app-wide quota it
    does not meet: back on no plan, the same key still has the whole app-wide quota."""
    policy = policy_with(
        bucket=TokenBucket(SLOW, burst=100_000),  # the real cost is charged here too
        quotas=(Quota("1000/day", by_cost=True, name="tokens"),),
        concurrency=None,
        plans={"pro": Limits(quotas=(Quota("5000/day", by_cost=True, name="tokens"),))},
    )
    key = "sk-tokens"

    async def scenario() -> tuple[list[Decision], Decision]:
        guard = Guard(policy, backend, clock=None if backend else lambda: 1000.0)
        await guard.startup()
        try:
            pro = await _decide(guard, [on_plan("pro", key) for _ in range(3)], True, 600.0)
            back = await _decide(guard, [on_plan(None, key, cost=900.0)], False, None)
            return pro, back[0]
        finally:
            await guard.shutdown()

    pro, back = asyncio.run(scenario())
    assert all(d.served for d in pro)
    # the third pro request shows the first two's real 600 tokens each and its estimate 1
    assert next(s for s in pro[-1].policies if s.name == "plan-pro-tokens").remaining == 3799
    assert back.served
    assert next(s for s in back.policies if s.name == "tokens").remaining == 1000 - 900


def test_the_precheck_follows_the_plans_replacement() -> None:
    guard = Guard(policy_with(concurrency=None), clock=lambda: 1000.0)
    pro, free = on_plan("pro", "sk-pre-pro"), on_plan("free", "sk-pre-free")

    def served(info: RequestInfo) -> bool:
        decision = guard.check(info)
        guard.complete(info, decision, status=200)  # its slot released
        return decision.served

    for _ in range(3):
        assert served(pro) and served(free)
    assert guard.precheck(pro) is None  # over the app-wide 3, within its own 6
    refusal = guard.precheck(free)
    assert refusal is not None and refusal.reasons == ("quota",)
    for _ in range(3):
        assert served(pro)
    refusal = guard.precheck(pro)
    assert refusal is not None and [s.name for s in refusal.policies if s.violated] == [
        "plan-pro-daily"
    ]


def test_a_remembered_app_wide_quota_refusal_does_not_refuse_an_upgraded_client(
    redis_server: Any,
) -> None:
    """Redis' deny cache remembers an app-wide quota refusal per identity; once the key's
    plan replaces the app-wide quotas it asks Redis again (and is counted there)."""
    url = (
        f"{redis_server.url}?budget=0.5&deny_cache_seconds=30&prefix=po{os.getpid()}x{next(_names)}"
    )
    policy = policy_with(concurrency=None)
    key = "sk-upgraded"
    before = [on_plan(None, key) for _ in range(4)]
    upgraded = [on_plan("pro", key) for _ in range(7)]
    decisions = decide_all(policy, url, before + upgraded)
    assert [d.served for d in decisions[:4]] == [True] * 3 + [False]
    assert [d.served for d in decisions[4:]] == [True] * 6 + [False]
    assert decisions[-1].reasons == ("quota",)


class PlanFromToken(AuthenticationBackend):
    """The bearer token "<plan>-<user>" authenticates a user whose name is the plan."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        return AuthCredentials(["authenticated"]), SimpleUser(token.split("-")[0])


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_the_headers_name_the_plans_limits_over_uvicorn() -> None:
    policy = policy_with(plan_func=lambda conn: str(conn.user.username))
    app = Starlette(routes=[Route("/v1/models", ok)])
    app.add_middleware(AbuseGuard, policy=policy)
    app.add_middleware(AuthenticationMiddleware, backend=PlanFromToken())  # outside the guard
    with serve(app) as url, httpx.Client(base_url=url) as client:
        pro = [
            client.get("/v1/models", headers={"authorization": "Bearer pro-alice"})
            for _ in range(7)
        ]
        free = [
            client.get("/v1/models", headers={"authorization": "Bearer free-bob"}) for _ in range(4)
        ]
    assert [r.status_code for r in pro] == [200] * 6 + [429]
    assert [r.status_code for r in free] == [200] * 3 + [429]
    pro_policy = pro[0].headers["ratelimit-policy"]
    assert '"plan-pro-daily";q=6;w=86400' in pro_policy
    assert '"daily"' not in pro_policy
    assert '"plan-pro-daily";r=0' in pro[5].headers["ratelimit"]
    assert pro[6].headers["retry-after"]
    free_policy = free[0].headers["ratelimit-policy"]
    assert '"daily";q=3;w=86400' in free_policy and "plan-pro" not in free_policy


def test_the_startup_line_shows_each_plans_effective_limits() -> None:
    line = describe_policy(Guard(policy_with(concurrency=Concurrency(1, per="ip"))))
    assert "quotas=daily:3/86400s" in line and "concurrency=1/ip" in line
    plans = line.split("plans=")[1].split(" ")[0]
    assert plans.split(";") == [
        "plan-pro[app:bucket:0.000277778/s:burst=100,daily:6/86400s,concurrency:3]",
        "plan-free[bucket:0.000277778/s:burst=50,app:daily:3/86400s,app:concurrency:1/ip]",
        "plan-team[app:bucket:0.000277778/s:burst=100,app:daily:3/86400s,concurrency:2]",
    ]


REPLAY_POLICY = """
from abuseguard import Limits, Policy, Quota, TokenBucket

POLICY = Policy(
    network=None,
    scoring=None,
    unverified_keys=None,
    bucket=TokenBucket("1/hour", burst=100),
    quotas=(Quota("3/day", name="daily"),),
    plans={"pro": Limits(quotas=(Quota("8/day", name="daily"),)), "free": Limits()},
    plan_func=lambda conn: conn.user.username,  # the middleware's; replay reads the trace
)
"""


def test_replay_applies_a_plans_quota_in_place_of_the_app_wide_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = []
    for i in range(10):
        for actor, plan in (("free", "free"), ("pro", "pro"), ("none", None)):
            fields: dict[str, Any] = {
                "ts": 1000 + i,
                "ip": "10.0.0.1",
                "key": f"sk-{actor}",
                "path": "/v1/models",
                "actor": actor,
            }
            if plan is not None:
                fields["plan"] = plan
            lines.append(trace_line(trace_fields(**fields)))
    (tmp_path / "tiers.py").write_text(textwrap.dedent(REPLAY_POLICY))
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    args = ["replay", str(trace), "--policy", f"{tmp_path}/tiers.py:POLICY"]
    assert cli_main([*args, "--format", "json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    limited = {actor: stats["limited"] for actor, stats in report["actors"].items()}
    assert limited == {"free": 7, "pro": 2, "none": 7}


def test_a_plans_quota_in_shadow_mode_reports_and_serves(backend: str | None) -> None:
    """A plan's ``Quota(shadow=True)`` is shadowed like the app-wide one it replaces: its
    refusal is reported (reason, violated state) and the request served."""
    shadowed = Quota("2/day", name="daily", shadow=True)
    policy = policy_with(
        quotas=(shadowed,), concurrency=None, plans={"pro": Limits(quotas=(shadowed,))}
    )
    requests = [on_plan(plan, f"sk-shadow-{plan}") for plan in ("pro", None) for _ in range(4)]
    decisions = decide_all(policy, backend, requests)
    assert all(d.served for d in decisions)
    seen = [(d.shadow, d.reasons) for d in decisions]
    assert (
        seen
        == [(False, ())] * 2
        + [(True, ("quota",))] * 2
        + [(False, ())] * 2
        + [(True, ("quota",))] * 2
    )
    pro_over = decisions[2]
    assert pro_over.policies[-1].name == "plan-pro-daily" and pro_over.policies[-1].violated
    assert [s.name for s in pro_over.policies].count("plan-pro-daily") == 1


def test_a_shadowed_route_refusal_is_counted_as_an_allow() -> None:
    """Shadow mode serves a route limit's refusal and counts it as it counts an allow, on
    the memory backend as Redis' script does (issue 14: a shadowed refusal costs what an
    allow costs): the route bucket goes into debt, so the wait grows with each request."""
    policy = policy_with(
        quotas=(),
        concurrency=None,
        plans={},
        plan_func=None,
        shadow=True,
        routes={"/v1/models": Limits(bucket=TokenBucket(SLOW, burst=2))},
    )
    decisions = decide_all(policy, None, [on_plan(None, "sk-debt") for _ in range(5)])
    assert all(d.served for d in decisions)
    assert [d.shadow for d in decisions] == [False, False, True, True, True]
    # 4 requests charged: 2 - 4 = -2 tokens; the 5th needs 1, refilled at 1 an hour
    assert decisions[-1].retry_after == pytest.approx(3 * 3600, rel=1e-3)
