"""Limits per route and per plan (issue 18), over real uvicorn on the memory backend."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from abuseguard import (
    AbuseGuard,
    ConfigError,
    Decision,
    Guard,
    Limits,
    Policy,
    Quota,
    RequestInfo,
    TokenBucket,
)
from abuseguard.startup_log import describe_policy
from abuseguard.testing import serve

# Slow refills: nothing comes back while a test runs.
SLOW = "1/hour"


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_app(policy: Policy) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", ok, methods=["POST"]),
            Route("/v1/models", ok),
            Route("/v1/models/{model}", ok),
            Mount("/admin", routes=[Route("/stats", ok)]),
        ]
    )
    app.add_middleware(AbuseGuard, policy=policy)
    return app


def quiet_policy(**kwargs: object) -> Policy:
    """Only the limits under test: no scoring, network rules or unverified-key budgets."""
    kwargs.setdefault("bucket", TokenBucket(SLOW, burst=100))
    return Policy(network=None, scoring=None, unverified_keys=None, **kwargs)  # type: ignore[arg-type]


class PlanFromToken(AuthenticationBackend):
    """The bearer token "<plan>-<user>" authenticates a user whose name is the plan."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        return AuthCredentials(["authenticated"]), SimpleUser(token.split("-")[0])


def plan_of_user(conn: HTTPConnection) -> str | None:
    return str(conn.user.username)


def test_free_and_pro_keys_on_the_same_route_get_their_own_limits() -> None:
    policy = quiet_policy(
        plans={
            "free": Limits(bucket=TokenBucket(SLOW, burst=2)),
            "pro": Limits(bucket=TokenBucket(SLOW, burst=5)),
        },
        plan_func=plan_of_user,
    )
    app = make_app(policy)
    app.add_middleware(AuthenticationMiddleware, backend=PlanFromToken())  # outside the guard
    with serve(app) as url, httpx.Client(base_url=url) as client:
        statuses = {}
        for token in ("free-alice", "pro-bob", "unknown-carol"):
            headers = {"authorization": f"Bearer {token}"}
            statuses[token] = [
                client.get("/v1/models", headers=headers).status_code for _ in range(7)
            ]
        refused = client.get("/v1/models", headers={"authorization": "Bearer free-alice"})
    assert statuses["free-alice"] == [200] * 2 + [429] * 5
    assert statuses["pro-bob"] == [200] * 5 + [429] * 2
    assert statuses["unknown-carol"] == [200] * 7  # no known plan: app-wide limits only
    assert '"plan-free-default"' in refused.headers["ratelimit-policy"]
    assert '"plan-free-default";r=0' in refused.headers["ratelimit"]


def test_a_plans_own_route_limits_replace_the_routes_for_its_clients() -> None:
    policy = quiet_policy(
        routes={"POST /v1/chat/completions": Limits(bucket=TokenBucket(SLOW, burst=3))},
        plans={
            "free": Limits(
                routes={"POST /v1/chat/completions": Limits(bucket=TokenBucket(SLOW, burst=1))}
            ),
            "pro": Limits(),
        },
        plan_func=plan_of_user,
    )
    app = make_app(policy)
    app.add_middleware(AuthenticationMiddleware, backend=PlanFromToken())
    with serve(app) as url, httpx.Client(base_url=url) as client:
        statuses = {
            token: [
                client.post(
                    "/v1/chat/completions", headers={"authorization": f"Bearer {token}"}
                ).status_code
                for _ in range(4)
            ]
            for token in ("free-alice", "pro-bob")
        }
        refused = client.post(
            "/v1/chat/completions", headers={"authorization": "Bearer free-alice"}
        )
    assert statuses == {"free-alice": [200] + [429] * 3, "pro-bob": [200] * 3 + [429]}
    assert '"plan-free-route-POST-v1-chat-completions-default"' in refused.headers["ratelimit"]


def test_plan_func_may_be_async() -> None:
    async def plan_func(conn: HTTPConnection) -> str:
        await asyncio.sleep(0)
        return "free"

    policy = quiet_policy(
        plans={"free": Limits(bucket=TokenBucket(SLOW, burst=1))}, plan_func=plan_func
    )
    with serve(make_app(policy)) as url, httpx.Client(base_url=url) as client:
        first = client.get("/v1/models")
        second = client.get("/v1/models")
    assert (first.status_code, second.status_code) == (200, 429)


def test_a_routes_bucket_refuses_while_another_route_serves_and_refusals_cost_nothing() -> None:
    policy = quiet_policy(
        bucket=TokenBucket(SLOW, burst=10),
        routes={"POST /v1/chat/completions": Limits(bucket=TokenBucket(SLOW, burst=3))},
    )
    headers = {"authorization": "Bearer sk-one"}
    with serve(make_app(policy)) as url, httpx.Client(base_url=url, headers=headers) as client:
        chat = [client.post("/v1/chat/completions").status_code for _ in range(8)]
        refused = client.post("/v1/chat/completions")
        models = client.get("/v1/models")
        other_key = client.post("/v1/chat/completions", headers={"authorization": "Bearer sk-2"})
    assert chat == [200] * 3 + [429] * 5
    assert refused.status_code == 429
    assert '"route-POST-v1-chat-completions-default";r=0' in refused.headers["ratelimit"]
    assert models.status_code == 200
    # 3 chats and this request took from the app-wide bucket; the 6 refusals took nothing
    assert '"default";r=6' in models.headers["ratelimit"]
    assert "route-" not in models.headers["ratelimit-policy"]
    assert other_key.status_code == 200  # its own state per identity


def test_head_follows_get_and_templates_match_every_model() -> None:
    policy = quiet_policy(routes={"GET /v1/models/{model}": Limits(bucket=TokenBucket(SLOW, 2))})
    with serve(make_app(policy)) as url, httpx.Client(base_url=url) as client:
        statuses = [
            client.get("/v1/models/gpt-a").status_code,
            client.head("/v1/models/gpt-b").status_code,
            client.get("/v1/models/gpt-c").status_code,
            client.get("/v1/models").status_code,
        ]
    assert statuses == [200, 200, 429, 200]


def test_concurrent_requests_against_a_route_burst_admit_exactly_the_burst() -> None:
    burst = 7
    policy = quiet_policy(routes={"/v1/models/{model}": Limits(bucket=TokenBucket(SLOW, burst))})

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=url, limits=httpx.Limits(max_connections=40)
        ) as client:
            return await asyncio.gather(*(client.get(f"/v1/models/m{i}") for i in range(40)))

    with serve(make_app(policy)) as url:
        responses = asyncio.run(send_all(url))
    assert sorted(r.status_code for r in responses).count(200) == burst
    assert {r.status_code for r in responses} == {200, 429}


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        (quiet_policy(routes={"POST /v1/chat/completion": Limits(concurrency=1)}), "completion"),
        (quiet_policy(routes={"DELETE /v1/models": Limits(concurrency=1)}), "DELETE /v1/models"),
        (quiet_policy(routes={"/admin/stat": Limits(concurrency=1)}), "/admin/stat"),
        (quiet_policy(bucket=TokenBucket(SLOW, cost={"POST /v1/chat": 5})), "POST /v1/chat"),
        (
            quiet_policy(
                plans={"pro": Limits(routes={"GET /v1/model": Limits(concurrency=1)})},
                plan_func=plan_of_user,
            ),
            "GET /v1/model",
        ),
    ],
)
def test_a_typo_in_a_route_pattern_fails_at_startup(
    policy: Policy, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with (
        pytest.raises(RuntimeError, match="did not start"),
        serve(make_app(policy), log_config=None),
    ):
        pass
    assert named in caplog.text
    assert "no route of the app matches" in caplog.text


def test_patterns_that_name_real_routes_start() -> None:
    policy = quiet_policy(
        bucket=TokenBucket(SLOW, burst=100, cost={"POST /v1/chat/completions": 3}),
        routes={
            "HEAD /v1/models": Limits(concurrency=2),
            "/admin/stats": Limits(concurrency=1),
            "/v1/models/{model}": Limits(concurrency=1),
        },
    )
    with serve(make_app(policy)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/admin/stats").status_code == 200


def test_route_quota_and_concurrency_count_only_served_requests() -> None:
    clock = [1000.0]
    policy = quiet_policy(
        bucket=TokenBucket(SLOW, burst=50),
        routes={"/v1/chat": Limits(quotas=(Quota("2/day", name="daily"),), concurrency=1)},
    )
    guard = Guard(policy, clock=lambda: clock[0])

    def chat() -> RequestInfo:
        return RequestInfo("10.0.0.1", key="sk-q", method="POST", path="/v1/chat")

    first = guard.check(chat())
    assert first.served and first.held
    busy = guard.check(chat())
    assert (busy.served, busy.reasons) == (False, ("concurrency",))
    assert busy.policies[0].name == "route-v1-chat-concurrency"
    guard.release(first)
    second = guard.check(chat())
    guard.release(second)
    third = guard.check(chat())
    assert (second.served, third.served, third.reasons) == (True, False, ("quota",))
    assert third.policies[0].name == "route-v1-chat-daily"
    # 2 served; the 2 refusals took nothing from the app-wide bucket
    app_wide = guard.check(RequestInfo("10.0.0.1", key="sk-q", path="/other"))
    assert app_wide.policies[0].name == "default"
    assert app_wide.policies[0].remaining == pytest.approx(47, abs=0.01)


def test_shadow_reports_a_route_refusal_and_serves() -> None:
    policy = Policy(
        network=None,
        scoring=None,
        unverified_keys=None,
        shadow=True,
        routes={"/v1/chat": Limits(bucket=TokenBucket(SLOW, burst=1))},
    )
    guard = Guard(policy)
    info = RequestInfo("10.0.0.1", key="sk-s", path="/v1/chat")
    guard.check(info)
    second = guard.check(info)
    assert (second.served, second.shadow, second.reasons) == (True, True, ("rate",))


def test_the_startup_line_lists_route_and_plan_limits() -> None:
    policy = quiet_policy(
        routes={"POST /v1/chat/completions": Limits(bucket=TokenBucket("60/minute", burst=20))},
        plans={
            "pro": Limits(
                quotas=(Quota("1000/day", name="tokens"),),
                concurrency=4,
                routes={"/v1/models": Limits(concurrency=8)},
            )
        },
        plan_func=plan_of_user,
    )
    line = describe_policy(Guard(policy))
    assert "routes=route-POST-v1-chat-completions[bucket:1/s:burst=20]" in line
    assert (
        "plans=plan-pro[app:bucket:0.000277778/s:burst=100,tokens:1000/86400s,concurrency:4];"
        "plan-pro-route-v1-models[concurrency:8]" in line
    )


def test_limits_and_route_patterns_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"Limits\.concurrency"):
        Limits(concurrency=0)
    with pytest.raises(ConfigError, match=r"Policy\.routes"):
        Policy(routes={"chat": Limits(concurrency=1)})
    with pytest.raises(ConfigError, match=r"Policy\.routes"):
        Policy(routes={"FETCH /chat": Limits(concurrency=1)})
    with pytest.raises(ConfigError, match=r"Policy\.routes"):
        Policy(routes={"/chat": Limits(routes={"/chat": Limits(concurrency=1)})})
    with pytest.raises(ConfigError, match=r"Limits\.routes"):
        Limits(routes={"chat": Limits(concurrency=1)})
    with pytest.raises(ConfigError, match=r"Policy\.plan_func"):
        Policy(plans={"pro": Limits(concurrency=1)})


def test_precheck_refuses_a_route_over_its_limit_before_the_body() -> None:
    policy = quiet_policy(routes={"POST /v1/chat": Limits(bucket=TokenBucket(SLOW, burst=1))})
    guard = Guard(policy)
    info = RequestInfo("10.0.0.1", key="sk-p", method="POST", path="/v1/chat")
    assert guard.precheck(info) is None
    assert guard.check(info).served
    refusal = guard.precheck(info)
    assert refusal is not None and refusal.reasons == ("rate",)
    assert refusal.policies[0].name == "route-POST-v1-chat-default"


def test_observers_see_the_route_limits_answer() -> None:
    seen: list[Decision] = []
    policy = Policy(
        network=None,
        scoring=None,
        unverified_keys=None,
        shadow=True,
        routes={"/v1/chat": Limits(bucket=TokenBucket(SLOW, burst=1))},
    )
    guard = Guard(policy, observers=[lambda info, decision: seen.append(decision)])
    info = RequestInfo("10.0.0.1", key="sk-o", path="/v1/chat")
    guard.check(info)
    guard.check(info)
    assert [d.reasons for d in seen] == [(), ("rate",)]
    assert "route-v1-chat-default" in [state.name for state in seen[0].policies]
    assert seen[1].shadow and seen[1].policies[-1].violated


def test_a_route_bucket_in_shadow_mode_reports_and_serves() -> None:
    """``TokenBucket(shadow=True)`` on a route: its refusal is reported, the request served
    (it used to be enforced: the route limiter ignored the bucket's own shadow flag)."""
    policy = quiet_policy(
        routes={"/v1/chat": Limits(bucket=TokenBucket(SLOW, burst=1, shadow=True))},
    )
    guard = Guard(policy)
    info = RequestInfo("10.0.0.1", key="sk-bs", path="/v1/chat")
    decisions = [guard.check(info) for _ in range(3)]
    assert all(d.served for d in decisions)
    assert [(d.shadow, d.reasons) for d in decisions] == [
        (False, ()),
        (True, ("rate",)),
        (True, ("rate",)),
    ]
    assert decisions[1].policies[-1].name == "route-v1-chat-default"
    assert decisions[1].policies[-1].violated


def test_a_route_bucket_in_shadow_mode_still_lets_other_limits_refuse() -> None:
    """A shadowed route bucket does not shadow the route's enforced quota."""
    policy = quiet_policy(
        routes={
            "/v1/chat": Limits(
                bucket=TokenBucket(SLOW, burst=1, shadow=True),
                quotas=(Quota("2/day", name="daily"),),
            )
        },
    )
    guard = Guard(policy)
    info = RequestInfo("10.0.0.1", key="sk-bq", path="/v1/chat")
    decisions = [guard.check(info) for _ in range(3)]
    assert [d.served for d in decisions] == [True, True, False]
    assert decisions[2].reasons == ("rate", "quota")


def test_a_plan_bucket_cannot_differ_from_the_app_wide_bucket_in_shadow_mode() -> None:
    with pytest.raises(ConfigError, match=r"Policy\.plans\['pro'\]\.bucket"):
        quiet_policy(
            plans={"pro": Limits(bucket=TokenBucket(SLOW, burst=5, shadow=True))},
            plan_func=plan_of_user,
        )
    with pytest.raises(ConfigError, match=r"shadow=True"):
        quiet_policy(
            bucket=TokenBucket(SLOW, burst=100, shadow=True),
            plans={"pro": Limits(bucket=TokenBucket(SLOW, burst=5))},
            plan_func=plan_of_user,
        )
    both = quiet_policy(
        bucket=TokenBucket(SLOW, burst=100, shadow=True),
        plans={"pro": Limits(bucket=TokenBucket(SLOW, burst=5, shadow=True))},
        plan_func=plan_of_user,
    )
    assert both.plans["pro"].bucket is not None
