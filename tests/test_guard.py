"""Guard decisions: ladder, bans, shadow, quotas, concurrency, reconciliation, network rules."""

from __future__ import annotations

import asyncio
import json

import pytest

from abuseguard import (
    Action,
    Concurrency,
    Decision,
    Enforcement,
    Guard,
    NetworkPolicy,
    Policy,
    Quota,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.engine import layout as L

# A person's browser: a real Firefox User-Agent with the headers Firefox sends.
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
FIREFOX_HEADERS = {
    "accept": "*/*",
    "accept-language": "en",
    "accept-encoding": "gzip",
    "sec-fetch-mode": "cors",
    "sec-fetch-site": "same-origin",
    "sec-fetch-dest": "empty",
}
SCRIPT = {"accept": "*/*", "accept-encoding": "gzip, deflate"}


def scripted(
    guard: Guard,
    n: int,
    *,
    key: str = "bot",
    start: float = 0.0,
    gap: float = 2.0,
    ip: str = "198.51.100.10",
) -> list[Decision]:
    """A harvesting script on a cloud host (AS16509): metronome timing, a scripting
    library's UA, one prompt template asking for reasoning."""
    out = []
    for i in range(n):
        body = json.dumps(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": (
                            f"Solve the following problem step by step and show your reasoning: "
                            f"what is {i * 37 % 101} times {i * 13 % 97}?"
                        ),
                    }
                ]
            }
        )
        info = RequestInfo(
            ip=ip,
            key=key,
            ts=start + i * gap,
            ua="python-requests/2.31",
            headers=SCRIPT,
            asn=16509,
            method="POST",
            body=body,
        )
        out.append(guard.check(info))
    return out


def test_scripted_client_climbs_the_ladder_with_reasons() -> None:
    guard = Guard(Policy(bucket=TokenBucket("100/second", burst=100)))
    decisions = scripted(guard, 60)
    last = decisions[-1]
    # The first prompt alone is suspicious; the metronome and the template make it worse.
    assert decisions[0].score < last.score
    assert last.action.severity >= Action.CHALLENGE.severity
    assert {"cadence", "elicitation"} <= set(last.reasons)
    assert last.score > 0.5
    assert dict(last.contributions)["cadence"] > 0


def test_smoothed_score_is_forgiven_after_good_behaviour() -> None:
    guard = Guard(
        Policy(
            bucket=TokenBucket("100/second", burst=100),
            enforcement=Enforcement(score_half_life=60.0),
        )
    )
    climbed = scripted(guard, 60)[-1]
    assert climbed.action != Action.ALLOW
    later = guard.check(
        RequestInfo(
            ip="198.51.100.10", key="bot", ts=100_000.0, ua=FIREFOX, headers=FIREFOX_HEADERS
        )
    )
    assert later.action == Action.ALLOW


def test_ban_holds_for_its_duration() -> None:
    policy = Policy(
        bucket=TokenBucket("100/second", burst=100),
        enforcement=Enforcement(
            ladder=((0.3, "throttle"), (0.4, "block")), ban_at="block", ban_seconds=300
        ),
    )
    guard = Guard(policy)
    decisions = scripted(guard, 80)
    banned_at = next(i for i, d in enumerate(decisions) if d.action == Action.BLOCK)
    after = decisions[banned_at + 1]
    assert after.reasons == ("banned",) and after.action == Action.BLOCK
    assert after.retry_after is not None and 0 < after.retry_after <= 300
    t_ban = banned_at * 2.0
    assert guard.check(RequestInfo(ip="1.1.1.1", key="bot", ts=t_ban + 299)).reasons == ("banned",)
    assert "banned" not in guard.check(RequestInfo(ip="1.1.1.1", key="bot", ts=t_ban + 301)).reasons


def test_global_shadow_reports_but_never_enforces() -> None:
    guard = Guard(Policy(bucket=TokenBucket(1.0, burst=1), shadow=True, scoring=None))
    guard.check(RequestInfo(ip="192.0.2.1", ts=0.0))
    over = guard.check(RequestInfo(ip="192.0.2.1", ts=0.0))
    assert over.action == Action.THROTTLE and over.shadow
    assert over.enforced_action == Action.ALLOW and over.served


def test_shadow_per_rule() -> None:
    guard = Guard(
        Policy(
            bucket=TokenBucket(1.0, burst=1, shadow=True),
            quotas=(Quota("1/minute", name="minute"),),
            scoring=None,
        )
    )
    first = guard.check(RequestInfo(ip="192.0.2.1", ts=0.0))
    assert first.action == Action.ALLOW
    second = guard.check(RequestInfo(ip="192.0.2.1", ts=0.0))
    # The bucket (shadowed) and the quota (enforced) both trip: the quota wins.
    assert "rate" in second.reasons and "quota" in second.reasons
    assert second.action == Action.THROTTLE and not second.shadow


def test_quota_runs_on_virtual_time_through_limits() -> None:
    guard = Guard(Policy(bucket=None, quotas=(Quota("3/minute", name="minute"),), scoring=None))
    results = [guard.check(RequestInfo(ip="192.0.2.1", key="k", ts=10.0 + i)) for i in range(4)]
    assert [r.action for r in results] == [Action.ALLOW] * 3 + [Action.THROTTLE]
    assert results[3].reasons == ("quota",)
    state = results[3].policies[0]
    assert state.name == "minute" and state.violated and state.remaining == 0
    assert results[3].retry_after is not None and 55 <= results[3].retry_after <= 60
    assert guard.check(RequestInfo(ip="192.0.2.1", key="k", ts=75.0)).action == Action.ALLOW
    assert guard.check(RequestInfo(ip="192.0.2.1", key="other", ts=13.0)).action == Action.ALLOW


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
def test_other_quota_strategies(strategy: str) -> None:
    guard = Guard(
        Policy(
            bucket=None,
            quotas=(Quota("2/minute", strategy=strategy),),  # type: ignore[arg-type]
            scoring=None,
        )
    )
    actions = [guard.check(RequestInfo(ip="192.0.2.1", ts=float(i))).action for i in range(3)]
    assert actions == [Action.ALLOW, Action.ALLOW, Action.THROTTLE]


def test_concurrency_counts_in_flight_and_releases() -> None:
    guard = Guard(Policy(bucket=None, concurrency=Concurrency(2), scoring=None))
    info = RequestInfo(ip="192.0.2.1", key="k", ts=1.0)
    a, b, c = guard.check(info), guard.check(info), guard.check(info)
    assert (a.action, b.action, c.action) == (Action.ALLOW, Action.ALLOW, Action.THROTTLE)
    assert c.reasons == ("concurrency",)
    guard.complete(info, a, status=200)
    assert guard.check(info).action == Action.ALLOW
    guard.complete(info, c, status=429)  # a refused request held nothing
    assert guard.check(info).action == Action.THROTTLE


def test_release_gives_slots_back_once() -> None:
    guard = Guard(Policy(bucket=None, concurrency=Concurrency(1), scoring=None))
    info = RequestInfo(ip="192.0.2.1", key="k", ts=1.0)
    first = guard.check(info)
    assert first.held and guard.check(info).action == Action.THROTTLE
    guard.release(first)  # as the last body message goes out
    second = guard.check(info)
    assert second.action == Action.ALLOW
    # The first request completes later: its slot was given back already, so the second
    # request's slot stays taken.
    guard.complete(info, first, status=200, release=False)
    assert guard.check(info).action == Action.THROTTLE
    guard.complete(info, second, status=200)
    assert guard.check(info).action == Action.ALLOW


def test_cost_weighting_and_reconciliation() -> None:
    guard = Guard(
        Policy(bucket=TokenBucket(1.0, burst=100, cost={"POST /v1/chat": 10}), scoring=None)
    )
    info = RequestInfo(ip="192.0.2.1", key="k", ts=0.0, method="POST", path="/v1/chat")
    first = guard.check(info)
    assert first.cost == 10 and first.remaining == 90
    guard.complete(info, first, status=200, cost=50.0)  # the app reports the real cost
    second = guard.check(info)
    assert second.remaining == pytest.approx(40.0)  # 100 - 50 (real) - 10 (estimate)
    guard.complete(info, second, status=200, cost=0.0)  # refund of the estimate
    third = guard.check(RequestInfo(ip="192.0.2.1", key="k", ts=0.0, path="/other"))
    assert third.remaining == pytest.approx(49.0)
    guard.complete(info, third, status=200, cost=-5.0)  # nonsense costs are ignored
    guard.complete(info, third, status=200, cost=float("nan"))
    fresh = Guard(Policy(bucket=TokenBucket(1.0, burst=100, cost=10), scoring=None))
    first = fresh.check(info)
    fresh.complete(info, first, status=200, cost=0.0)
    fresh.complete(info, first, status=200, cost=0.0)  # refunds are capped at the burst
    assert fresh.check(info).remaining == pytest.approx(90.0)


def test_callable_cost_failure_charges_one() -> None:
    def broken(info: RequestInfo) -> float:
        raise RuntimeError("boom")

    guard = Guard(Policy(bucket=TokenBucket(1.0, burst=5, cost=broken), scoring=None))
    assert guard.check(RequestInfo(ip="192.0.2.1", ts=0.0)).remaining == 4.0


def test_error_outcomes_raise_the_error_signal() -> None:
    guard = Guard(Policy(bucket=TokenBucket("100/second", burst=100)))
    for i in range(40):
        info = RequestInfo(
            ip="198.51.100.20",
            key="prober",
            ts=i * 7.3 + (i % 3) * 2.1,
            ua="python-requests/2.31",
            headers=SCRIPT,
        )
        decision = guard.check(info)
        guard.complete(info, decision, status=404)
    from abuseguard.engine import layout

    assert guard.engine.io[layout.O_CONTRIB + layout.S_ERRORS] > 0


def test_fan_in_trips_for_many_accounts_behind_one_ip_not_across_many_ips() -> None:
    policy = Policy(
        bucket=TokenBucket("100/second", burst=100),
        network=NetworkPolicy(fan_in=(20.0, 60.0)),
        unverified_keys=None,  # 200 accounts never answered: about the score, not the keys
    )
    one_ip = Guard(policy)
    many_ips = Guard(policy)
    for i in range(200):
        ts = float(i)
        shared = one_ip.check(RequestInfo(ip="203.0.113.50", key=f"acct-{i}", ts=ts, asn=16509))
        spread = many_ips.check(
            RequestInfo(
                ip=f"198.51.{i // 250}.{i % 250 + 1}", key=f"acct-{i}", ts=ts, asn=16509 + i
            )
        )
    assert "fan_in" in dict(shared.contributions)
    assert dict(shared.contributions)["fan_in"] >= 2.0
    assert dict(spread.contributions).get("fan_in", 0.0) == 0.0


def test_fan_out_across_countries_and_networks() -> None:
    guard = Guard(Policy(bucket=TokenBucket("100/second", burst=100)))
    countries = ["US", "DE", "BR", "IN", "VN", "NG", "FR", "JP"]
    for i in range(40):
        decision = guard.check(
            RequestInfo(
                ip=f"100.{i}.0.1",
                key="pool-acct",
                ts=i * 30.0,
                asn=1000 + i,
                country=countries[i % len(countries)],
            )
        )
    assert dict(decision.contributions)["fan_out"] > 2.0


def test_network_rules_deny_and_allow_lists() -> None:
    policy = Policy(
        network=NetworkPolicy(
            deny_cidrs=["192.0.2.0/24"],
            deny_countries=["KP"],
            allow_cidrs=["198.51.100.0/24"],
            anonymizers={"tor": "block"},
        )
    )
    guard = Guard(policy)
    denied = guard.check(RequestInfo(ip="192.0.2.7", ts=0.0))
    assert denied.action == Action.BLOCK and denied.reasons[0] == "deny_list"
    geo = guard.check(RequestInfo(ip="8.8.8.8", ts=0.0, country="KP"))
    assert geo.action == Action.BLOCK and geo.reasons[0] == "geo"
    tor = guard.check(RequestInfo(ip="8.8.4.4", ts=0.0, anon=("tor",), anon_confidence=90))
    assert tor.action == Action.BLOCK and tor.reasons[0] == "anonymizer"
    # An allow list wins over scoring and rules, even for tor and an empty User-Agent.
    allowed = guard.check(RequestInfo(ip="198.51.100.9", ts=0.0, anon=("tor",), country="KP"))
    assert allowed.action == Action.ALLOW and allowed.score == 0.0


def test_profiles_from_request_fields_follow_the_address_only_when_rules_read_it() -> None:
    fields = {"asn": 64500, "country": "DE", "anon": ("residential_proxy",)}
    # No databases, no CIDR rules: the fields are the whole profile, shared across addresses.
    plain = Guard(Policy())
    assert plain.network is not None
    profiles = [
        plain.network.profile(plain.addresses.resolve(ip), 64500, None, "DE", fields["anon"])
        for ip in ("203.0.113.1", "203.0.113.2", "2001:db8::1")
    ]
    assert profiles[0] is profiles[1] is profiles[2]
    # A CIDR rule reads the address: the same fields from a denied network are blocked.
    ruled = Guard(Policy(network=NetworkPolicy(deny_cidrs=["192.0.2.0/24"])))
    inside = ruled.check(RequestInfo(ip="192.0.2.7", ts=0.0, **fields))  # type: ignore[arg-type]
    outside = ruled.check(RequestInfo(ip="198.51.100.7", ts=0.0, **fields))  # type: ignore[arg-type]
    assert inside.action == Action.BLOCK and inside.reasons[0] == "deny_list"
    assert "deny_list" not in outside.reasons


def test_exempt_paths_are_never_touched() -> None:
    guard = Guard(Policy(bucket=TokenBucket(1.0, burst=1), exempt_paths=("/health",)))
    for _ in range(5):
        assert (
            guard.check(RequestInfo(ip="192.0.2.1", ts=0.0, path="/health/live")).action
            == Action.ALLOW
        )


def test_observers_sync_and_async_see_decisions() -> None:
    seen: list[str] = []

    def sync_observer(info: RequestInfo, decision: Decision) -> None:
        seen.append("sync:" + decision.action.value)

    async def async_observer(info: RequestInfo, decision: Decision) -> None:
        seen.append("async:" + decision.action.value)

    def broken(info: RequestInfo, decision: Decision) -> None:
        raise RuntimeError("observer bug")

    guard = Guard(Policy(scoring=None), observers=[sync_observer, async_observer, broken])

    async def main() -> None:
        guard.check(RequestInfo(ip="192.0.2.1", ts=0.0))
        await asyncio.sleep(0)

    asyncio.run(main())
    assert seen == ["sync:allow", "async:allow"]


def test_raw_keys_never_appear_in_decisions() -> None:
    guard = Guard(Policy(scoring=None))
    decision = guard.check(RequestInfo(ip="192.0.2.1", key="sk-live-SECRET", ts=0.0))
    assert "SECRET" not in decision.identity and decision.identity.startswith("k:")
    assert "SECRET" not in repr(decision)


def test_bounded_state_under_a_flood_of_unique_ipv6_addresses() -> None:
    guard = Guard(Policy(max_identities=1000, ipv6_prefix=128, scoring=Scoring()))
    for i in range(20_000):
        guard.check(RequestInfo(ip=f"2001:db8::{i:x}", ts=float(i)))
    table = guard.engine.tables[0]
    assert len(table) == 1000 and table.evictions >= 19_000


def test_sync_check_refuses_shared_backend_clearly() -> None:
    class FakeShared(MemoryBackendLike, RoundTripDecider):
        shared = True

        async def reach(self, info: RequestInfo) -> bool:
            raise NotImplementedError

        async def answer(self, info: RequestInfo, p: object, io: object, ok: bool) -> object:
            raise NotImplementedError

    guard = Guard(Policy(scoring=None), backend=FakeShared())
    with pytest.raises(RuntimeError, match="acheck"):
        guard.check(RequestInfo(ip="192.0.2.1"))


from abuseguard.backends.base import RoundTripDecider  # noqa: E402
from abuseguard.backends.memory import MemoryBackend as MemoryBackendLike  # noqa: E402


def test_a_network_bucket_refusal_names_that_bucket() -> None:
    guard = Guard(
        Policy(
            bucket=TokenBucket("100/second", burst=100),
            network=NetworkPolicy(per_ip=TokenBucket("1/minute", burst=2), nat_fairness=False),
            scoring=None,
        )
    )
    decisions = [guard.check(RequestInfo(ip="198.51.100.3", key=f"k{i}", ts=1.0)) for i in range(3)]
    refused = decisions[2]
    assert refused.action == Action.THROTTLE and refused.reasons == ("rate",)
    names = {state.name: state for state in refused.policies}
    assert names["ip"].violated and names["ip"].remaining == 0 and names["ip"].quota == 2
    assert not names["default"].violated


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -5.0, "lots"])
def test_bad_request_costs_fall_back_to_the_policy_cost(bad: object) -> None:
    guard = Guard(
        Policy(
            bucket=TokenBucket(1.0, burst=10, cost=2),
            scoring=None,
            quotas=(Quota("100/day", by_cost=True),),
        )
    )
    decision = guard.check(RequestInfo(ip="192.0.2.1", ts=0.0, cost=bad))  # type: ignore[arg-type]
    assert decision.action == Action.ALLOW and decision.cost == 2 and decision.remaining == 8


def test_idle_forgiveness_without_any_bucket() -> None:
    """The smoothed score decays with the time since the last request, buckets or not."""
    guard = Guard(Policy(bucket=None, enforcement=Enforcement(score_half_life=60.0)))
    risky = scripted(guard, 40)[-1]
    assert risky.score > 0.5
    from abuseguard.engine import layout

    row = guard.engine.tables[0].find(risky.identity)
    assert row is not None
    before = guard.engine.tables[0].data[row, layout.F_SCORE]
    guard.check(
        RequestInfo(
            ip="198.51.100.10", key="bot", ts=80.0 + 600.0, ua=FIREFOX, headers=FIREFOX_HEADERS
        )
    )
    after = guard.engine.tables[0].data[row, layout.F_SCORE]
    assert before > 0.5 and after < 0.05  # without idle decay it would be ~0.66


def test_client_cache_keys_on_persona_values_and_stays_bounded() -> None:
    guard = Guard(Policy())
    sdk = {"user-agent": "OpenAI/Python 1.40.0", "x-stainless-lang": "python"}
    fresh = Guard(Policy())
    first = guard.reader.client_of(sdk["user-agent"], sdk)
    # Same names, another value of a persona header: another persona, not a cache hit.
    other = guard.reader.client_of(sdk["user-agent"], {**sdk, "x-stainless-lang": "js"})
    assert first[1] != other[1]
    assert other == fresh.reader.client_of(sdk["user-agent"], {**sdk, "x-stainless-lang": "js"})
    assert guard.reader.client_of(sdk["user-agent"], dict(sdk)) == first
    # A flood of header shapes (random names) cannot grow the caches without bound.
    for i in range(20_000):
        guard.reader.client_of("curl/8.0", {f"x-random-{i}": "1", "accept-encoding": str(i)})
    clients = guard.client_enricher
    assert len(clients.clients) <= 16384 and len(clients.shapes) <= 4096


@pytest.mark.parametrize("network", [None, NetworkPolicy()])
def test_template_signals_fire_with_and_without_a_network_policy(
    network: NetworkPolicy | None,
) -> None:
    guard = Guard(Policy(network=network, bucket=TokenBucket("100/second", burst=100)))
    prompt = (
        "You are a helpful assistant. Summarize the following customer review in exactly "
        "three bullet points and rate its sentiment from 1 to 5. Review: {}"
    )
    last = None
    for i in range(60):
        body = json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": prompt.format(i * 7919)}]}
        )
        info = RequestInfo(
            ip=f"198.51.100.{i + 1}",
            key=f"acct-{i}",
            ts=float(i),
            method="POST",
            path="/v1/chat/completions",
            ua=FIREFOX,
            headers={**FIREFOX_HEADERS, "content-type": "application/json"},
            body=body,
        )
        last = guard.check(info)
    assert last is not None
    # One template across 60 accounts: the shared-template signal counts them either way.
    assert guard.engine.io[L.O_CONTRIB + L.S_SHARED_TEMPLATE] > 0.0


def test_prepare_many_then_check_prepared_decides_as_check() -> None:
    policy = Policy(bucket=TokenBucket("1/second", burst=3), exempt_paths=("/health",))
    requests = [
        RequestInfo(ip="192.0.2.1", key="k", ts=float(i) * 0.1, path="/health" if i == 2 else "/")
        for i in range(8)
    ]
    one_by_one = Guard(policy)
    expected = [one_by_one.check(info) for info in requests]
    batched = Guard(policy)
    prepared = batched.prepare_many(requests)
    assert prepared[2] is None  # exempt
    got = [batched.check_prepared(info, p) for info, p in zip(requests, prepared, strict=True)]
    assert [(d.action, d.reasons, d.remaining) for d in got] == [
        (d.action, d.reasons, d.remaining) for d in expected
    ]
    assert [d.action for d in got].count(Action.THROTTLE) == 4


def test_explain_false_leaves_out_contributions_only() -> None:
    policy = Policy(bucket=TokenBucket("100/second", burst=100))
    explained = scripted(Guard(policy), 60)
    bare = scripted(Guard(policy, explain=False), 60)
    assert explained[-1].contributions and explained[-1].action != Action.ALLOW
    assert all(d.contributions == () for d in bare)
    assert [(d.action, d.reasons, d.score) for d in bare] == [
        (d.action, d.reasons, d.score) for d in explained
    ]


def test_observers_see_each_final_decision_once_on_every_path() -> None:
    """The stages (gates, decide) show nothing to the observers; the Guard shows each
    decision once, when it is final: an allow, a bucket refusal, an unverified-key
    refusal, a route limit's refusal, a shadowed route refusal (with the route's answer
    in it) and a pre-check's refusal."""
    from abuseguard.policy import Limits, UnverifiedKeys

    seen: list[Decision] = []

    def guard_of(**kwargs: object) -> Guard:
        policy = Policy(scoring=None, **kwargs)  # type: ignore[arg-type]
        return Guard(policy, observers=[lambda info, d: seen.append(d)])

    def one(guard: Guard, info: RequestInfo) -> Decision:
        seen.clear()
        decision = guard.check(info)
        assert seen == [decision] and seen[0] is decision
        return decision

    bucket = guard_of(bucket=TokenBucket("1/hour", burst=1), unverified_keys=None)
    assert one(bucket, RequestInfo(ip="192.0.2.1", ts=1.0)).action == Action.ALLOW
    assert one(bucket, RequestInfo(ip="192.0.2.1", ts=2.0)).reasons == ("rate",)

    unverified = guard_of(
        unverified_keys=UnverifiedKeys(per_ip=TokenBucket("1/hour", burst=1), per_prefix=None)
    )
    assert one(unverified, RequestInfo(ip="192.0.2.2", key="a", ts=1.0)).served
    refusal = one(unverified, RequestInfo(ip="192.0.2.2", key="b", ts=2.0))
    assert refusal.reasons == ("unverified_key",)

    for shadow in (False, True):
        routes = guard_of(
            routes={"/chat": Limits(bucket=TokenBucket("1/hour", burst=1))},
            unverified_keys=None,
            shadow=shadow,
        )
        info = RequestInfo(ip="192.0.2.3", path="/chat", route="/chat", ts=1.0)
        assert one(routes, info).action == Action.ALLOW
        second = one(routes, RequestInfo(ip="192.0.2.3", path="/chat", route="/chat", ts=2.0))
        assert second.action == Action.THROTTLE and second.shadow is shadow
        assert any(state.violated for state in second.policies)

    seen.clear()
    refused, _ = bucket.precheck_reading(RequestInfo(ip="192.0.2.1", ts=3.0))
    assert refused is not None and seen == [refused]
