"""Host-app account facts and allow-lists (`Policy.accounts`, #16 item 5): a trusted account
is never acted on for risk beyond its cap while its limits still apply; young unverified
accounts start with a prior; the facts come from a hook through the middleware, from the
trace in replay, and from the simulator."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    AccountFacts,
    Accounts,
    Action,
    ConfigError,
    Enforcement,
    Guard,
    Policy,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.account import ladder_cap
from abuseguard.sim import simulate
from abuseguard.testing import serve
from abuseguard.traces import TraceError, parse_line, trace_fields, trace_line

HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36"
)


def risky_policy(**kw: Any) -> Policy:
    """Only the client class scores: a headless browser is blocked on its first request."""
    kw.setdefault("bucket", TokenBucket("100/second", burst=100))
    return Policy(
        scoring=Scoring(bias=-4.0, weights={"client": 10.0}, weak_signals=()),
        enforcement=Enforcement(
            ladder=((0.3, Action.LOG), (0.5, Action.CHALLENGE), (0.9, Action.BLOCK))
        ),
        network=None,
        unverified_keys=None,
        **kw,
    )


def ask(guard: Guard, key: str, ts: float, account: AccountFacts | None = None) -> Any:
    info = RequestInfo(ip="203.0.113.7", ts=ts, key=key, ua=HEADLESS, account=account)
    return guard.check(info)


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"trusted_tags": "benchmark"}, "Accounts.trusted_tags"),
        ({"trusted_keys": [1]}, "Accounts.trusted_keys"),
        ({"trusted_orgs": [""]}, "Accounts.trusted_orgs"),
        ({"trusted_max_action": Action.BLOCK}, "Accounts.trusted_max_action"),
        ({"trusted_max_action": "log"}, "Accounts.trusted_max_action"),
        ({"new_account_prior": 1.5}, "Accounts.new_account_prior"),
        ({"new_account_prior": True}, "Accounts.new_account_prior"),
        ({"new_account_days": -1}, "Accounts.new_account_days"),
        ({"new_account_days": float("nan")}, "Accounts.new_account_days"),
        ({"facts": "not callable"}, "Accounts.facts"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Accounts(**kwargs)
    assert field in str(caught.value)


def test_policy_accounts_must_be_accounts() -> None:
    with pytest.raises(ConfigError, match=r"Policy\.accounts"):
        Policy(accounts={"trusted_tags": ["x"]})  # type: ignore[arg-type]


def test_ladder_cap_is_the_last_level_no_harsher_than_the_cap() -> None:
    ladder = (Action.ALLOW, Action.LOG, Action.DEGRADE, Action.CHALLENGE, Action.BLOCK)
    assert ladder_cap(Accounts(), ladder) == 1
    assert ladder_cap(Accounts(trusted_max_action=Action.DEGRADE), ladder) == 2
    assert ladder_cap(Accounts(trusted_max_action=Action.ALLOW), ladder) == 0


def test_facts_from_a_mapping_drop_what_has_the_wrong_type() -> None:
    facts = AccountFacts.from_mapping(
        {"age_days": "old", "verified": "yes", "plan": 3, "org": "acme", "tags": ["a", 1, ""]}
    )
    assert facts == AccountFacts(org="acme", tags=frozenset({"a"}))
    assert AccountFacts.from_mapping({"age_days": -2.0}).age_days is None
    assert AccountFacts.from_mapping({"age_days": float("inf")}).age_days is None
    assert AccountFacts.from_mapping({"tags": "benchmark"}).tags == frozenset()


# --- the guard ----------------------------------------------------------------------------


def test_a_trusted_account_is_served_while_scored_and_an_untrusted_one_is_blocked() -> None:
    guard = Guard(risky_policy())
    plain = ask(guard, "sk-plain", 1.0)
    assert plain.action is Action.BLOCK
    trusted = ask(guard, "sk-bench", 1.0, AccountFacts(tags=frozenset({"benchmark"})))
    assert trusted.action is Action.LOG
    assert trusted.served
    assert "client" in trusted.reasons  # the evidence is still there
    assert trusted.score > 0.9


def test_trust_by_key_and_by_org_and_losing_it() -> None:
    guard = Guard(risky_policy(accounts=Accounts(trusted_keys=["sk-known"], trusted_orgs=["acme"])))
    assert ask(guard, "sk-known", 1.0).served
    assert ask(guard, "sk-org", 1.0, AccountFacts(org="acme")).served
    # the same account without its organisation is no longer trusted
    assert ask(guard, "sk-org", 2.0, AccountFacts(org="other")).action is Action.BLOCK


def test_rate_limits_still_apply_to_a_trusted_account() -> None:
    guard = Guard(risky_policy(bucket=TokenBucket("1/minute", burst=3)))
    facts = AccountFacts(tags=frozenset({"trusted"}))
    served = [ask(guard, "sk-bench", 1.0 + i * 0.01, facts) for i in range(6)]
    assert [d.served for d in served] == [True, True, True, False, False, False]
    assert served[-1].action is Action.THROTTLE
    assert "rate" in served[-1].reasons


def test_accounts_none_ignores_facts() -> None:
    guard = Guard(risky_policy(accounts=None))
    assert ask(guard, "sk-b", 1.0, AccountFacts(tags=frozenset({"benchmark"}))).action is (
        Action.BLOCK
    )


def test_a_young_unverified_account_starts_with_a_prior() -> None:
    policy = Policy(
        scoring=Scoring(weak_signals=()),
        network=None,
        unverified_keys=None,
        accounts=Accounts(new_account_prior=0.8),
    )
    guard = Guard(policy)
    young = ask(guard, "sk-young", 1.0, AccountFacts(age_days=0.5, verified=False))
    old = ask(guard, "sk-old", 1.0, AccountFacts(age_days=400.0, verified=False))
    verified = ask(guard, "sk-verified", 1.0, AccountFacts(age_days=0.5, verified=True))
    assert "prior" in dict(young.contributions)
    assert "prior" not in dict(old.contributions)
    assert "prior" not in dict(verified.contributions)
    assert young.score > old.score


# --- the middleware -----------------------------------------------------------------------


class KeyAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        key = conn.headers.get("x-api-key")
        return (AuthCredentials(["authenticated"]), SimpleUser(key)) if key else None


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def app_with(accounts: Accounts) -> Any:
    policy = risky_policy(accounts=accounts)
    return AbuseGuard(
        Starlette(
            routes=[Route("/", ok)],
            middleware=[Middleware(AuthenticationMiddleware, backend=KeyAuth())],
        ),
        policy,
    )


def test_the_hook_sees_the_request_sync_and_async() -> None:
    seen: list[str] = []

    def facts(conn: HTTPConnection) -> AccountFacts | None:
        seen.append(conn.headers.get("x-api-key", ""))
        return AccountFacts(tags=frozenset({"benchmark"})) if "bench" in seen[-1] else None

    async def afacts(conn: HTTPConnection) -> dict[str, Any]:
        return {"tags": ["trusted"]} if conn.headers.get("x-api-key") == "sk-vip" else {}

    # AbuseGuard wraps the app, so the hook gets the connection before authentication
    # ran: it reads the request itself (here the header) or the state of outer middleware.
    for hook, trusted_key in ((facts, "sk-bench"), (afacts, "sk-vip")):
        with (
            serve(app_with(Accounts(facts=hook)), timeout=90.0) as url,
            httpx.Client(base_url=url, timeout=30.0) as client,
        ):
            headers = {"user-agent": HEADLESS}
            trusted = client.get("/", headers={**headers, "x-api-key": trusted_key})
            other = client.get("/", headers={**headers, "x-api-key": "sk-other"})
        assert trusted.status_code == 200, trusted.text
        assert other.status_code == 403
    assert seen[:2] == ["sk-bench", "sk-other"]


def test_a_hook_that_raises_is_logged_and_the_request_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(conn: HTTPConnection) -> AccountFacts:
        raise RuntimeError("database down")

    policy = Policy(network=None, unverified_keys=None, accounts=Accounts(facts=broken))
    app = AbuseGuard(Starlette(routes=[Route("/", ok)]), policy)
    with (
        caplog.at_level(logging.ERROR, logger="abuseguard"),
        serve(app, timeout=90.0) as url,
        httpx.Client(base_url=url, timeout=30.0) as client,
    ):
        response = client.get("/", headers={"x-api-key": "sk-1"})
    assert response.status_code == 200
    assert "Accounts.facts raised" in caplog.text


# --- traces, replay and the simulator ----------------------------------------------------


def test_the_trace_field_round_trips_and_rejects_a_non_object() -> None:
    facts = {"age_days": 2.5, "verified": False, "payment": "ab12", "tags": ["benchmark"]}
    line = trace_line(trace_fields(ts=1.0, ip="192.0.2.1", account=facts))
    record = parse_line(line)
    assert record.info.account == AccountFacts.from_mapping(facts)
    assert json.loads(line)["account"] == facts
    with pytest.raises(TraceError) as caught:
        parse_line('{"ts": 1, "ip": "192.0.2.1", "account": ["benchmark"]}')
    assert caught.value.reason == "bad_type"


def test_replay_applies_the_traces_facts() -> None:
    from abuseguard.replay import run_replay
    from abuseguard.report import ReportBuilder
    from abuseguard.traces import parse_object

    def lines(tags: list[str]) -> list[Any]:
        return [
            parse_object(
                {
                    "ts": 1000.0 + i,
                    "ip": "198.51.100.9",
                    "key": f"sk-{'-'.join(tags) or 'none'}",
                    "ua": HEADLESS,
                    "account": {"tags": tags},
                    "label": "benign",
                    "actor": "a" if tags else "b",
                    "kind": "k",
                }
            )
            for i in range(5)
        ]

    builder = ReportBuilder()
    records = sorted(lines(["benchmark"]) + lines([]), key=lambda r: r.info.ts or 0.0)
    run_replay(records, Guard(risky_policy()), builder)
    assert builder.actors["a"].mitigated == 0
    assert builder.actors["b"].mitigated == 5


def test_the_capable_mix_carries_account_facts_and_default_does_not() -> None:
    out = io.StringIO()
    simulate(out, mix="capable", hours=0.5, scale=0.1, seed=3)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows and all("account" in d for d in rows)
    hydra = [d["account"] for d in rows if d["kind"] == "hydra"]
    honest = [d["account"] for d in rows if d["label"] == "benign"]
    if hydra:
        assert max(a["age_days"] for a in hydra) < 50  # made in batches, recently
    assert any(a["age_days"] > 100 for a in honest)
    plain = io.StringIO()
    simulate(plain, mix="default", hours=0.25, scale=0.05, seed=3)
    assert '"account"' not in plain.getvalue()
    # and turning the facts on changes no other field
    with_facts = io.StringIO()
    simulate(with_facts, mix="default", hours=0.25, scale=0.05, seed=3, account_facts=True)
    stripped = [
        {k: v for k, v in json.loads(line).items() if k != "account"}
        for line in with_facts.getvalue().splitlines()
    ]
    assert stripped == [json.loads(line) for line in plain.getvalue().splitlines()]
