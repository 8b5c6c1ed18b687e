"""The real cost reported after the response is reconciled in route and plan quotas."""

from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection

from abuseguard import Guard, Limits, Policy, Quota, RequestInfo, TokenBucket


def tokens_policy(**kwargs: object) -> Policy:
    return Policy(
        bucket=TokenBucket("1000/second", burst=100_000),  # the tokens are the quotas' to count
        network=None,
        scoring=None,
        unverified_keys=None,
        **kwargs,  # type: ignore[arg-type]
    )


def plan_free(conn: HTTPConnection) -> str:
    return "free"


TOKENS = (Quota("1000/day", by_cost=True, name="tokens"),)


@pytest.mark.parametrize(
    ("policy", "plan", "name"),
    [
        (tokens_policy(routes={"POST /v1/chat": Limits(quotas=TOKENS)}), None,
         "route-POST-v1-chat-tokens"),
        (tokens_policy(plans={"free": Limits(quotas=TOKENS)}, plan_func=plan_free), "free",
         "plan-free-tokens"),
    ],
)  # fmt: skip
def test_real_cost_is_reconciled_in_route_and_plan_quotas(
    policy: Policy, plan: str | None, name: str
) -> None:
    guard = Guard(policy, clock=lambda: 1000.0)

    def chat() -> RequestInfo:
        info = RequestInfo("10.0.0.1", key="sk-tokens", method="POST", path="/v1/chat")
        info.plan = plan
        return info

    served = []
    for _ in range(2):
        info = chat()
        decision = guard.check(info)
        served.append(decision.served)
        guard.complete(info, decision, status=200, cost=600)
    third = guard.check(chat())
    assert served == [True, True]
    assert (third.served, third.reasons) == (False, ("quota",))
    state = next(s for s in third.policies if s.name == name)
    assert state.violated and state.remaining == 0


def test_a_refund_gives_route_quota_back() -> None:
    guard = Guard(
        tokens_policy(routes={"POST /v1/chat": Limits(quotas=(Quota("10/day", by_cost=True),))}),
        clock=lambda: 1000.0,
    )
    info = RequestInfo("10.0.0.1", key="sk-r", method="POST", path="/v1/chat", cost=8)
    decision = guard.check(info)
    guard.complete(info, decision, status=200, cost=2)  # 6 given back
    again = guard.check(RequestInfo("10.0.0.1", key="sk-r", method="POST", path="/v1/chat", cost=8))
    assert again.served
