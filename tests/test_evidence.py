"""Accumulated evidence per account (`policy.Evidence`, `kernels.evidence_stage`) and the
spend signal (`kernels.add_spend`, `kernels.spend_signal`).

The kernel's stage is checked against a plain-Python reference model with hypothesis; the
guard end to end for the hold (it outlasts the score), its forgiveness (quiet period,
`Guard.forgive`), honest heavy users who must never be held, and a harvester that is.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard import Action, ConfigError, Enforcement, Evidence, Guard, Policy, Quota, Scoring
from abuseguard.decision import Decision
from abuseguard.engine import kernels
from abuseguard.engine import layout as L
from abuseguard.engine.params import build_params, spend_allowance
from abuseguard.policy import TokenBucket
from abuseguard.request import RequestInfo

# -- the reference model -------------------------------------------------------------------


def reference_step(contribs: list[float], weak: frozenset[int], ev: Evidence) -> float:
    capped = [min(c, ev.signal_cap) for c in contribs]
    strong = sum(c for s, c in enumerate(capped) if c > 0 and s not in weak)
    weak_sum = min(sum(c for s, c in enumerate(capped) if c > 0 and s in weak), ev.weak_cap)
    return min(strong + weak_sum - ev.drift, ev.max_step)


class ReferenceAccount:
    """The evidence of one account, as `policy.Evidence` describes it."""

    def __init__(self, ev: Evidence, levels: list[int]) -> None:
        self.ev = ev
        self.levels = levels  # the ladder level of each step
        self.evidence = 0.0
        self.last = 0.0
        self.held_ts = 0.0
        self.sticky = 0

    def request(self, ts: float, contribs: list[float], weak: frozenset[int]) -> int:
        ev = self.ev
        if ts > self.last:
            self.evidence *= 0.5 ** ((ts - self.last) / ev.half_life)
            self.last = ts
        self.evidence = max(0.0, self.evidence + reference_step(contribs, weak, ev))
        thresholds = [t for t, _ in ev.steps]
        if self.evidence >= thresholds[0]:
            self.held_ts = ts
        elif self.sticky and ts - self.held_ts >= ev.quiet_period:
            self.sticky = 0
        for threshold, level in zip(thresholds, self.levels, strict=True):
            if self.evidence >= threshold:
                self.sticky = max(self.sticky, level)
        return self.sticky


contribution = st.one_of(st.just(0.0), st.floats(0.0, 4.0, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(
    drift=st.floats(0.5, 5.0),
    weak_share=st.floats(0.0, 1.0),
    signal_cap=st.floats(0.1, 5.0),
    max_step=st.floats(0.1, 5.0),
    half_life=st.floats(10.0, 1e6),
    quiet=st.floats(0.0, 5000.0),
    thresholds=st.tuples(st.floats(1.0, 30.0), st.floats(1.0, 30.0)),
    weak_mask=st.integers(0, (1 << L.N_SIGNALS) - 1),
    requests=st.lists(
        st.tuples(
            st.floats(0.0, 3000.0),
            st.lists(contribution, min_size=L.N_SIGNALS, max_size=L.N_SIGNALS),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_the_kernel_accumulates_as_the_reference_model(
    drift: float,
    weak_share: float,
    signal_cap: float,
    max_step: float,
    half_life: float,
    quiet: float,
    thresholds: tuple[float, float],
    weak_mask: int,
    requests: list[tuple[float, list[float]]],
) -> None:
    low, high = sorted(thresholds)
    if high == low:
        high = low + 1.0
    ev = Evidence(
        steps=((low, "challenge"), (high, "block")),
        drift=drift,
        weak_cap=drift * weak_share,
        signal_cap=signal_cap,
        max_step=max_step,
        half_life=half_life,
        quiet_period=quiet,
    )
    policy = Policy(scoring=Scoring(evidence=ev))
    prm = build_params(policy)
    prm[L.P_WEAK_MASK] = float(weak_mask)
    weak = frozenset(s for s in range(L.N_SIGNALS) if weak_mask & (1 << s))
    levels = [int(prm[L.P_EV_LEVEL]), int(prm[L.P_EV_LEVEL + 1])]
    assert levels == [3, 5]  # challenge and block on the default ladder
    model = ReferenceAccount(ev, levels)
    row = np.zeros(L.KEY_WIDTH)
    io = np.zeros(L.IO_SIZE)
    ts = 1000.0
    for gap, contribs in requests:
        ts += gap
        io[L.O_CONTRIB : L.O_CONTRIB + L.N_SIGNALS] = contribs
        reasons = kernels.evidence_stage(row, io, ts, 0, prm)
        sticky = model.request(ts, contribs, weak)
        assert math.isclose(row[L.F_EVIDENCE], model.evidence, rel_tol=1e-9, abs_tol=1e-9)
        assert row[L.F_STICKY] == sticky
        assert bool(reasons & (1 << L.R_EVIDENCE)) == (sticky > 0)


@settings(max_examples=100, deadline=None)
@given(
    weak_contribs=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=L.N_SIGNALS),
    n=st.integers(1, 500),
)
def test_weak_signals_alone_never_accumulate(weak_contribs: list[float], n: int) -> None:
    """Whatever the weak signals of each request, with the default Evidence."""
    prm = build_params(Policy())
    weak = [s for s in range(L.N_SIGNALS) if int(prm[L.P_WEAK_MASK]) & (1 << s)]
    row = np.zeros(L.KEY_WIDTH)
    io = np.zeros(L.IO_SIZE)
    for i in range(n):
        for j, s in enumerate(weak):
            io[L.O_CONTRIB + s] = weak_contribs[(i + j) % len(weak_contribs)]
        kernels.evidence_stage(row, io, 1.0 + i, 0, prm)
        assert row[L.F_EVIDENCE] == 0.0 and row[L.F_STICKY] == 0.0


def test_one_strong_signal_with_every_weak_one_does_not_accumulate_by_default() -> None:
    prm = build_params(Policy())
    row = np.zeros(L.KEY_WIDTH)
    io = np.zeros(L.IO_SIZE)
    io[L.O_CONTRIB : L.O_CONTRIB + L.N_SIGNALS] = 3.0  # every weak signal at full
    for s in range(L.N_SIGNALS):
        if not int(prm[L.P_WEAK_MASK]) & (1 << s):
            io[L.O_CONTRIB + s] = 0.0
    io[L.O_CONTRIB + L.S_ELICIT] = 2.5  # one strong signal at full
    for i in range(1000):
        kernels.evidence_stage(row, io, 1.0 + i, 0, prm)
    assert row[L.F_EVIDENCE] == 0.0
    io[L.O_CONTRIB + L.S_FAN_OUT] = 1.5  # a second, independent one
    ev = Evidence()
    per_request = ev.signal_cap + 1.5 + ev.weak_cap - ev.drift
    assert per_request > 0
    for i in range(1000, 1012):
        kernels.evidence_stage(row, io, 1.0 + i, 0, prm)
    assert row[L.F_EVIDENCE] == pytest.approx(12 * per_request, rel=1e-3)


# -- the guard, end to end -----------------------------------------------------------------

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)
BROWSER = {
    "accept": "text/html",
    "accept-language": "en-US,en;q=0.9",
    "accept-encoding": "gzip, deflate, br",
}
SDK_UA = "OpenAI/Python 1.40.0"
SDK = {"x-stainless-lang": "python", "x-stainless-package-version": "1.40.0"}


def chat(text: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": text}]})


def harvest_request(i: int, t: float, key: str = "harvester") -> RequestInfo:
    """An account of a pool on residential proxy exits (a low-confidence flag, a new ISP
    every few requests) asking for reasoning on a sweep of topics."""
    return RequestInfo(
        ip=f"203.0.{113 + i % 3}.{i % 50 + 1}",
        key=key,
        ts=t,
        method="POST",
        path="/v1/chat/completions",
        ua=CHROME,
        headers=BROWSER,
        body=chat(
            f"Explain your reasoning step by step with a full chain of thought: why does "
            f"topic {i * 7919 % 1000} of the syllabus matter?"
        ),
        asn=7922 + i % 6,
        country="US",
        anon=("residential_proxy",),
        anon_confidence=40,
    )


def held(decision: Decision) -> bool:
    return "evidence" in decision.reasons


def quiet_policy(**evidence: Any) -> Policy:
    """A score too low to refuse on its own (bias -12): only the evidence holds."""
    return Policy(
        unverified_keys=None,
        scoring=Scoring(bias=-12.0, evidence=Evidence(**evidence)),
    )


def test_a_harvester_is_held_within_n_requests_while_its_score_stays_low() -> None:
    guard = Guard(quiet_policy())
    decisions = []
    for i in range(40):
        info = harvest_request(i, i * 45.0)
        decision = guard.check(info)
        guard.complete(info, decision, status=200)
        decisions.append(decision)
    first = next(i for i, d in enumerate(decisions) if held(d))
    # 24 of evidence at no more than 2 a request: 12 requests at the least.
    assert 12 <= first <= 20
    assert all(d.action == Action.ALLOW for d in decisions[:first])
    assert all(d.score < 0.5 for d in decisions)
    assert decisions[first].action == Action.CHALLENGE
    # The second step (60) blocks.
    assert decisions[-1].action == Action.BLOCK and held(decisions[-1])


def clean_request(t: float, key: str = "harvester") -> RequestInfo:
    return RequestInfo(
        ip="198.51.100.77",
        key=key,
        ts=t,
        method="POST",
        path="/v1/chat/completions",
        ua=CHROME,
        headers=BROWSER,
        body=chat(f"What rhymes with orange? ({t})"),
        asn=3320,
        country="DE",
    )


def test_the_hold_outlasts_the_score_until_the_quiet_period() -> None:
    guard = Guard(quiet_policy(quiet_period=3600.0, steps=((24.0, "challenge"),)))
    t = 0.0
    for i in range(21):
        t = i * 45.0
        decision = guard.check(harvest_request(i, t))
    assert held(decision)
    row = guard.engine.key_table.index[decision.identity]
    # Clean requests: the score is low; the evidence falls once the account's fan-out
    # sketches forget the harvest (an hour), the hold stays a quiet period more.
    below_since = None
    released_at = None
    for i in range(1, 400):
        now = t + i * 50.0
        decision = guard.check(clean_request(now))
        assert decision.score < 0.5
        if guard.engine.key_table.data[row, L.F_EVIDENCE] < 24.0:
            below_since = now if below_since is None else below_since
        if not held(decision):
            released_at = now
            break
        assert decision.action == Action.CHALLENGE
    assert below_since is not None and released_at is not None
    # Released on the first request a quiet period after the last one at the threshold
    # (one 50 s gap before the first one below it).
    assert 3600.0 - 50.0 <= released_at - below_since <= 3600.0
    assert guard.check(clean_request(released_at + 1.0)).action == Action.ALLOW


def test_forgive_clears_the_hold_and_a_ban_but_not_the_limits() -> None:
    policy = Policy(
        unverified_keys=None,
        bucket=TokenBucket("1/second", burst=200),
        scoring=Scoring(bias=-12.0),
        enforcement=Enforcement(ban_at="block", ban_seconds=86400.0),
    )
    guard = Guard(policy)
    decisions = [guard.check(harvest_request(i, i * 45.0)) for i in range(40)]
    banned = guard.check(clean_request(40 * 45.0))
    assert banned.action == Action.BLOCK and "banned" in banned.reasons
    key_table = guard.engine.key_table
    tokens_before = key_table.data[key_table.index[banned.identity], L.F_TOKENS]
    assert guard.forgive(decisions[-1].identity)
    after = guard.check(clean_request(40 * 45.0 + 1))
    assert after.action == Action.ALLOW and not held(after)
    row = guard.engine.key_table.index[after.identity]
    assert guard.engine.key_table.data[row, L.F_EVIDENCE] == 0.0
    # The bucket was not refilled by the forgiveness (1 token a second, 1 request taken).
    assert guard.engine.key_table.data[row, L.F_TOKENS] <= tokens_before + 1.0
    assert not guard.forgive("k:never-seen")


def test_an_eval_harness_from_one_cloud_address_is_never_held() -> None:
    """Many workers of one key on one hosting address, the official SDK, benchmark
    prompts (one template, some asking to think step by step), for an hour at about 8
    requests a second within its bucket."""
    guard = Guard(Policy(unverified_keys=None, bucket=TokenBucket("20/second", burst=200)))
    for i in range(30000):
        t = i * 0.12
        info = RequestInfo(
            ip="198.51.100.10",
            key="eval-harness",
            ts=t,
            method="POST",
            path="/v1/chat/completions",
            ua=SDK_UA,
            headers=SDK,
            body=chat(
                f"Question {i}: {'Think step by step. ' if i % 3 == 0 else ''}Which of the "
                f"following is a prime number? (A) {i * 2 + 4} (B) {i * 2 + 6} (C) 7 (D) 9"
            ),
            asn=16509,
            country="US",
        )
        decision = guard.check(info)
        guard.complete(info, decision, status=200, usage=300.0)
        assert not held(decision), i


def test_a_researcher_asking_for_reasoning_is_never_held() -> None:
    """A researcher in a browser at home, every prompt asking for the full reasoning, a
    few hundred prompts a day for three days."""
    guard = Guard(Policy(unverified_keys=None))
    for i in range(900):
        t = i * 290.0
        info = RequestInfo(
            ip="192.0.2.44",
            key="researcher",
            ts=t,
            method="POST",
            path="/v1/chat/completions",
            ua=CHROME,
            headers=BROWSER,
            body=chat(
                f"Show your reasoning step by step, with the complete chain of thought: "
                f"prove lemma {i} of chapter {i % 12} of my notes on measure theory."
            ),
            asn=3320,
            country="DE",
        )
        decision = guard.check(info)
        guard.complete(info, decision, status=200, usage=2500.0)
        assert not held(decision), i


# -- spend -------------------------------------------------------------------------------


def spend_value(guard: Guard) -> float:
    """The spend signal's contribution in the last decision."""
    return float(guard.engine.io[L.O_CONTRIB + L.S_SPEND])


def test_spend_against_the_allowance_tells_reasoning_harvest_from_an_sdk_backend() -> None:
    """16 requests a minute of 2,000-token answers against a 2M tokens/day allowance, and
    an SDK backend at 1 request a second of short answers within it."""
    policy = Policy(unverified_keys=None, quotas=(Quota("2000000/day", by_cost=True),))
    assert spend_allowance(policy) == pytest.approx(2_000_000.0)
    guard = Guard(policy)
    heavy: list[float] = []
    light: list[float] = []
    for i in range(3 * 3600):
        t = float(i)
        info = RequestInfo(ip="192.0.2.9", key="sdk-backend", ts=t, ua=SDK_UA, headers=SDK)
        decision = guard.check(info)
        light.append(spend_value(guard))
        guard.complete(info, decision, status=200, usage=12.0)
        if i % 4 == 0:  # 15 a minute
            info = RequestInfo(ip="192.0.2.10", key="reasoning", ts=t, ua=CHROME, headers=BROWSER)
            decision = guard.check(info)
            heavy.append(spend_value(guard))
            guard.complete(info, decision, status=200, usage=2000.0)
    weight = Scoring().weights["spend"]
    assert heavy[-1] == pytest.approx(weight)
    assert max(light) == 0.0


@pytest.mark.parametrize("cohort", [None, (4.0, 16.0)])
def test_spend_against_the_cohort_without_an_allowance(
    cohort: tuple[float, float] | None,
) -> None:
    policy = Policy(unverified_keys=None, scoring=Scoring(spend_cohort=cohort))
    assert spend_allowance(policy) == 0.0
    guard = Guard(policy)
    t = 0.0
    for hour in range(4):
        for user in range(120):
            t = hour * 3600.0 + user * 20.0
            info = RequestInfo(ip=f"192.0.2.{user}", key=f"user-{user}", ts=t)
            decision = guard.check(info)
            assert spend_value(guard) == 0.0
            guard.complete(info, decision, status=200, usage=400.0 + user)
    for i in range(600):
        info = RequestInfo(ip="198.51.100.3", key="heavy", ts=t + i * 4.0)
        decision = guard.check(info)
        guard.complete(info, decision, status=200, usage=2000.0)
    # Off by default: the cohort is not compared.
    assert (spend_value(guard) > 0.0) == (cohort is not None)
    # A light user stays under the cohort's ramp.
    info = RequestInfo(ip="192.0.2.1", key="user-1", ts=t + 2401.0)
    guard.check(info)
    assert spend_value(guard) == 0.0


def test_a_refused_request_spends_nothing_and_usage_skips_reconciliation() -> None:
    guard = Guard(Policy(unverified_keys=None, bucket=TokenBucket("1/second", burst=5)))
    info = RequestInfo(ip="192.0.2.9", key="k", ts=0.0)
    decision = guard.check(info)
    row = guard.engine.key_table.index[decision.identity]
    tokens = guard.engine.key_table.data[row, L.F_TOKENS]
    guard.complete(info, decision, status=200, usage=500.0)
    assert guard.engine.key_table.data[row, L.F_SPEND] == 500.0
    assert guard.engine.key_table.data[row, L.F_TOKENS] == tokens
    refused = Decision(Action.BLOCK, ("fan_in",), identity=decision.identity)
    guard.complete(info, refused, status=403, usage=500.0)
    assert guard.engine.key_table.data[row, L.F_SPEND] == 500.0


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": ()}, "Evidence.steps"),
        ({"steps": ((10.0, "challenge"), (5.0, "block"))}, "Evidence.steps[1]"),
        ({"steps": ((10.0, "block"), (20.0, "challenge"))}, "Evidence.steps[1]"),
        ({"steps": ((10.0, "log"),)}, "Evidence.steps[0]"),
        ({"steps": ((10.0, "delay"),)}, "Evidence.steps[0]"),
        ({"steps": ((0.0, "block"),)}, "Evidence.steps[0]"),
        ({"steps": ((10.0, "nonsense"),)}, "Evidence.steps[0]"),
        ({"steps": (10.0,)}, "Evidence.steps[0]"),
        ({"steps": ((-1.0, "block"),)}, "Evidence.steps[0]"),
        ({"steps": ((float("nan"), "block"),)}, "Evidence.steps[0]"),
        ({"drift": 0.0}, "Evidence.drift"),
        ({"drift": -1.0}, "Evidence.drift"),
        ({"drift": float("inf")}, "Evidence.drift"),
        ({"weak_cap": 4.0}, "Evidence.weak_cap"),
        ({"weak_cap": -0.5}, "Evidence.weak_cap"),
        ({"signal_cap": 0.0}, "Evidence.signal_cap"),
        ({"max_step": 0.0}, "Evidence.max_step"),
        ({"half_life": 0.0}, "Evidence.half_life"),
        ({"half_life": "1 day"}, "Evidence.half_life"),
        ({"quiet_period": -1.0}, "Evidence.quiet_period"),
        ({"enabled": "yes"}, "Evidence.enabled"),
    ],
)
def test_bad_evidence_values_are_config_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Evidence(**kwargs)
    assert caught.value.args[0].startswith(field)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"evidence": "on"}, "Scoring.evidence"),
        ({"evidence": None}, "Scoring.evidence"),
        ({"spend_share": (1.0, 0.5)}, "Scoring.spend_share"),
        ({"spend_share": (1.0,)}, "Scoring.spend_share"),
        ({"spend_cohort": (-1.0, 2.0)}, "Scoring.spend_cohort"),
        ({"spend_cohort": "4-16"}, "Scoring.spend_cohort"),
    ],
)
def test_bad_scoring_values_are_config_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Scoring(**kwargs)
    assert caught.value.args[0].startswith(field)


def test_steps_hold_the_first_ladder_step_at_least_as_severe() -> None:
    ladder = ((0.5, "log"), (0.7, "throttle"), (0.9, "block"))
    policy = Policy(
        scoring=Scoring(evidence=Evidence(steps=((5.0, "degrade"), (9.0, "challenge")))),
        enforcement=Enforcement(ladder=ladder),
    )
    prm = build_params(policy)
    assert prm[L.P_EV_STEPS_N] == 2
    assert (prm[L.P_EV_LEVEL], prm[L.P_EV_LEVEL + 1]) == (2.0, 2.0)  # both at throttle
    top = build_params(
        Policy(
            scoring=Scoring(evidence=Evidence(steps=((5.0, "block"),))),
            enforcement=Enforcement(ladder=((0.5, "log"), (0.8, "challenge"))),
        )
    )
    assert top[L.P_EV_LEVEL] == 2.0  # no step as severe: the top one
    off = build_params(Policy(scoring=Scoring(evidence=Evidence(enabled=False))))
    assert off[L.P_EV_STEPS_N] == 0
    no_ladder = build_params(Policy(enforcement=Enforcement(ladder=())))
    assert no_ladder[L.P_EV_STEPS_N] == 0


def test_an_evidence_hold_is_named_in_the_reasons() -> None:
    guard = Guard(quiet_policy())
    decisions = [guard.check(harvest_request(i, i * 45.0)) for i in range(20)]
    assert decisions[-1].reasons[-1] == "evidence"
    assert "evidence" not in decisions[0].reasons


def test_a_trusted_account_is_capped_not_held() -> None:
    """An allow-listed key (Policy.accounts) keeps its cap under accumulated evidence: its
    requests are served and not reported as held."""
    from abuseguard.policy import Accounts

    policy = Policy(
        unverified_keys=None,
        scoring=Scoring(bias=-12.0),
        accounts=Accounts(trusted_keys=["harvester"]),
    )
    guard = Guard(policy)
    decisions = [guard.check(harvest_request(i, i * 45.0)) for i in range(40)]
    row = guard.engine.key_table.index[decisions[-1].identity]
    assert guard.engine.key_table.data[row, L.F_STICKY] > 0  # the evidence crossed ...
    assert all(d.served and not held(d) for d in decisions)  # ... the cap wins
