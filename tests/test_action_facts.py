"""The facts about each Action live in one table (issue 15 item 4): every action has every
fact, the facts agree with each other and with what the middleware does over real HTTP."""

from __future__ import annotations

import dataclasses
from itertools import pairwise
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Action, Decision, Enforcement, Guard, Policy, RequestInfo
from abuseguard.decision import ActionFacts
from abuseguard.engine.params import serves
from abuseguard.testing import serve


def test_every_action_has_every_fact() -> None:
    names = [f.name for f in dataclasses.fields(ActionFacts)]
    assert {"severity", "serves", "serves_in_full", "denies", "refusal_status"} <= set(names)
    for action in Action:
        facts = action.facts
        assert isinstance(facts, ActionFacts)
        for name in names:
            assert getattr(action, name) == getattr(facts, name), (action, name)


def test_severities_are_strictly_ordered_mildest_first() -> None:
    severities = [action.severity for action in Action]
    assert all(a < b for a, b in pairwise(severities))
    assert Action.ALLOW.severity == min(severities)
    assert Action.BLOCK.severity == max(severities)


def test_facts_agree_with_each_other() -> None:
    for action in Action:
        assert action.denies is not action.serves, action
        assert (action.refusal_status is not None) is action.denies, action
        if action.serves_in_full:
            assert action.serves, action
        # The kernel keeps its own copy of "served" (engine/params.py); they must agree.
        assert serves(action) is action.serves, action
    # Serving actions come before refusing ones on the ladder.
    assert max(a.severity for a in Action if a.serves) < min(a.severity for a in Action if a.denies)


def test_decision_served_reads_the_table() -> None:
    for action in Action:
        assert Decision(action).served is action.serves
        assert Decision(action, shadow=True).served


class ForcedGuard(Guard):
    """Decides one chosen action for every request."""

    forced = Action.ALLOW

    def check(self, info: RequestInfo, read_without_body: object = None) -> Decision:
        return Decision(self.forced, ("rate",), 0.5, 1.0, 0.0, False, "forced")


def test_served_and_refused_as_the_middleware_does_over_http() -> None:
    reached: list[str] = []

    async def home(request: Request) -> PlainTextResponse:
        reached.append(request.url.path)
        return PlainTextResponse("served")

    guard = ForcedGuard(Policy(enforcement=Enforcement(delay_seconds=0.0)))
    app = AbuseGuard(Starlette(routes=[Route("/{name}", home)]), guard=guard)
    with serve(app, timeout=90.0) as url, httpx.Client(base_url=url) as client:
        for action in Action:
            guard.forced = action
            reached.clear()
            response = client.get(f"/{action.value}")
            if action.serves:
                assert reached == [f"/{action.value}"], action
                assert response.status_code == 200, action
                assert response.text == "served"
            else:
                assert reached == [], action
                assert response.status_code == action.refusal_status, action


@pytest.mark.parametrize("name", ["severity", "serves", "denies", "refusal_status"])
def test_facts_are_read_only(name: str) -> None:
    facts: Any = Action.BLOCK.facts
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(facts, name, None)
