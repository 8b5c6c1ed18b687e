"""The lane's popularity baseline: a phrase or template that established accounts use
everywhere stops raising risk; an operation's own new accounts cannot make their template
common; what the crowd stopped using is forgotten."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import NamedTuple

import pytest

from abuseguard import Decision, Guard, Policy, RequestInfo
from abuseguard.engine import layout as L
from abuseguard.errors import ConfigError
from abuseguard.intel.content import ELICITATION_MARKERS, ContentFingerprinter
from abuseguard.lane import BackgroundLane
from abuseguard.operations.popularity import (
    PopularityBaseline,
    PopularityConfig,
    publish_templates,
)
from abuseguard.report import ReportBuilder, render_table
from tests.test_operations import (
    BROWSER_HEADERS,
    CHROME,
    FIREFOX,
    RESIDENTIAL,
    SAFARI,
    SDK_UA,
    sdk_headers,
)

THINK = 1 + [phrase for phrase, _ in ELICITATION_MARKERS].index("think step by step")

# A public benchmark's prompt format, as eval harnesses of unrelated teams send it.
BENCHMARK = (
    "The following is a multiple choice question. Choose the single best answer and reply "
    "with the letter only.\n\nQuestion: {question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\n\nAnswer:"
)
# One operation's harvesting template.
HARVEST = (
    "Solve the following problem and show your complete reasoning.\n\n"
    "Problem: a tank holds {n} litres and loses {m} litres per hour; when is it empty?"
)
WORDS = ["river", "copper", "violin", "tax", "orbit", "harvest", "glacier", "ledger", "spore"]


class Sent(NamedTuple):
    ts: float
    key: str
    ip: str
    asn: int
    ua: str
    headers: dict[str, str]
    text: str


def _chat(text: str) -> str:
    return json.dumps({"model": "atlas-1", "messages": [{"role": "user", "content": text}]})


def _question(rng: random.Random) -> str:
    a, b = rng.sample(WORDS, 2)
    return f"How does the {a} relate to the {b} in case {rng.randrange(10_000)}?"


def _persona(i: int) -> tuple[str, dict[str, str]]:
    return [
        (CHROME, dict(BROWSER_HEADERS)),
        (FIREFOX, dict(BROWSER_HEADERS)),
        (SAFARI, dict(BROWSER_HEADERS)),
        (SDK_UA, sdk_headers()),
    ][i % 4]


def _crowd(
    rng: random.Random, accounts: int, hours: float, text: Callable[[int, random.Random], str]
) -> list[Sent]:
    """Honest accounts, each from its own network, one request every ~10 minutes."""
    sent = []
    for i in range(accounts):
        ua, headers = _persona(i)
        ts = rng.uniform(0.0, 600.0)
        while ts < hours * 3600.0:
            ip = f"100.{64 + i // 200}.{i % 200}.{rng.randrange(1, 250)}"
            sent.append(Sent(ts, f"honest{i}", ip, 30_000 + i, ua, headers, text(i, rng)))
            ts += rng.uniform(400.0, 800.0)
    return sent


def _operation(rng: random.Random, members: int, start: float, hours: float) -> list[Sent]:
    """Members from residential exits, one SDK persona, one template with fresh fill-ins."""
    headers = sdk_headers(extra=("x-router-trace",))
    sent = []
    for i in range(members):
        ts = start + rng.uniform(0.0, 600.0)
        while ts < start + hours * 3600.0:
            asn = rng.choice(RESIDENTIAL)
            ip = f"73.{asn % 250}.{rng.randrange(256)}.{rng.randrange(1, 250)}"
            fill = HARVEST.format(n=rng.randrange(100, 9999), m=rng.randrange(1, 99))
            sent.append(Sent(ts, f"op{i}", ip, asn, SDK_UA, headers, fill))
            ts += rng.uniform(500.0, 900.0)
    return sent


def _info(s: Sent) -> RequestInfo:
    return RequestInfo(
        ip=s.ip,
        key=s.key,
        ts=s.ts,
        method="POST",
        path="/v1/chat/completions",
        ua=s.ua,
        headers={**s.headers, "content-type": "application/json"},
        body=_chat(s.text),
        asn=s.asn,
    )


def _replay(
    sent: list[Sent], created: dict[str, float] | None = None, **lane_options: object
) -> tuple[Guard, BackgroundLane]:
    """A real guard and lane over the requests in time order, the lane flushed each minute
    of the requests' time. ``created``: the host app's creation time of each key."""
    guard = Guard(Policy(unverified_keys=None))
    assert guard.content is not None and guard.content.wait_ready(600)
    lane_options.setdefault("popularity", PopularityConfig())
    if created is not None:
        by_identity = {
            guard.identity_of(RequestInfo(ip="192.0.2.1", key=key))[0]: ts
            for key, ts in created.items()
        }
        lane_options["created_of"] = by_identity.get
    lane = BackgroundLane(guard, **lane_options)  # type: ignore[arg-type]
    guard.observers.append(lane)
    boundary = 60.0
    for s in sorted(sent):
        if s.ts >= boundary:
            lane.flush()
            boundary = (s.ts // 60.0 + 1) * 60.0
        info = _info(s)
        guard.complete(info, guard.check(info), status=200)
    lane.flush()
    return guard, lane


def _next(guard: Guard, s: Sent) -> Decision:
    return guard.check(_info(s))


def _contribution(decision: Decision, signal: str) -> float:
    return dict(decision.contributions).get(signal, 0.0)


def _last_contribution(guard: Guard, signal: int) -> float:
    """A signal's part in the guard's last decision, as the kernel left it."""
    return float(guard.engine.io[L.O_CONTRIB + signal])


# -- through the guard and the lane ---------------------------------------------------------


def test_a_universal_phrase_of_established_accounts_stops_raising_risk() -> None:
    rng = random.Random(3)
    # 120 accounts on 120 networks; 70 of every 100 end their questions with the phrase.
    sent = _crowd(
        rng,
        120,
        3.0,
        lambda i, r: _question(r) + (" Think step by step." if i % 10 < 7 else ""),
    )
    asking = Sent(3.05 * 3600, "honest1", "100.64.1.9", 30_001, FIREFOX, BROWSER_HEADERS, "")
    asking = asking._replace(text="Why is the sky blue at noon? Think step by step.")

    guard, lane = _replay(sent)
    learned = _next(guard, asking)
    plain_guard, _ = _replay(sent, popularity=None)
    plain = _next(plain_guard, asking)

    discount, share = lane.common_phrases[THINK]
    assert share >= 0.5 and discount >= 0.7
    assert guard.content.phrase_discounts[THINK] == discount  # type: ignore[union-attr]
    assert "elicitation" in plain.reasons and _contribution(plain, "elicitation") >= 2.0
    assert _contribution(learned, "elicitation") <= 0.3 * _contribution(plain, "elicitation")
    assert learned.score < plain.score
    baseline = lane.baseline_report()
    assert baseline["phrases"][0]["phrase"] == "think step by step"  # type: ignore[index]


def test_a_benchmark_format_of_many_teams_keeps_little_of_its_shared_template_signal() -> None:
    rng = random.Random(4)

    def benchmark(i: int, r: random.Random) -> str:
        a, b, c, d = r.sample(WORDS, 4)
        return BENCHMARK.format(question=_question(r), a=a, b=b, c=c, d=d)

    sent = _crowd(rng, 120, 3.0, benchmark)
    fill = BENCHMARK.format(
        question="Which metal conducts best?", a="tin", b="iron", c="lead", d="copper"
    )
    asking = Sent(3.05 * 3600, "honest2", "100.64.2.9", 30_002, SAFARI, BROWSER_HEADERS, fill)

    guard, lane = _replay(sent)
    learned = _next(guard, asking)
    learned_shared = _last_contribution(guard, L.S_SHARED_TEMPLATE)
    plain_guard, _ = _replay(sent, popularity=None)
    plain = _next(plain_guard, asking)
    plain_shared = _last_contribution(plain_guard, L.S_SHARED_TEMPLATE)

    template_id = ContentFingerprinter().fingerprint(_chat(fill)).template_id
    discount, accounts = lane.common_templates[template_id]
    assert accounts >= 60 and discount == pytest.approx(0.8)
    # Alone, the signal leaves the request allowed, with no contributions listed: its
    # part is read where the kernel leaves it, in the engine's output vector.
    assert plain_shared >= 0.2
    assert learned_shared <= 0.25 * plain_shared
    assert learned.score < plain.score
    report = ReportBuilder().build(operations={"baseline": lane.baseline_report()})
    text = render_table(report)
    assert f"common among {accounts:.0f} established accounts" in text


def test_an_operation_of_new_accounts_does_not_make_its_own_template_common() -> None:
    rng = random.Random(5)
    honest = _crowd(rng, 60, 3.0, lambda i, r: _question(r))
    ops = _operation(rng, 220, 600.0, 2.5)
    created = {s.key: -90.0 * 86400.0 for s in honest}  # months old
    for s in sorted(ops, reverse=True):
        created[s.key] = s.ts - 600.0  # ten minutes before its first request

    guard, lane = _replay(honest + ops, created)
    template_id = ContentFingerprinter().fingerprint(_chat(ops[0].text)).template_id
    assert lane.popularity is not None
    assert lane.popularity.template_stats(template_id) == (0.0, 0.0, 0.0)
    assert template_id not in lane.common_templates
    member = _next(guard, ops[-1]._replace(ts=3.2 * 3600))
    assert "shared_template" in member.reasons


def test_established_members_of_one_persona_do_not_make_their_template_common() -> None:
    # No creation times: the operation's members are established by the lane's own clock
    # after an hour, but they all speak through one client persona.
    rng = random.Random(6)
    honest = _crowd(rng, 60, 3.5, lambda i, r: _question(r))
    ops = _operation(rng, 200, 0.0, 3.5)
    _, lane = _replay(honest + ops)
    template_id = ContentFingerprinter().fingerprint(_chat(ops[0].text)).template_id
    assert lane.popularity is not None
    assert lane.popularity.template_discount(template_id) == 0.0
    assert template_id not in lane.common_templates


# -- the baseline itself --------------------------------------------------------------------


def _teach_crowd(baseline: PopularityBaseline, ts: float, accounts: int = 100) -> None:
    for account in range(1, accounts + 1):
        baseline.learn(ts, account, 1000 + account, 1 + account % 3, 77, THINK)


def test_the_baseline_forgets_what_the_crowd_stopped_using() -> None:
    config = PopularityConfig(half_life=3600.0)
    baseline = PopularityBaseline(config)
    _teach_crowd(baseline, 1000.0)
    assert baseline.template_discount(77) == pytest.approx(0.8)
    assert baseline.phrase_discount(THINK) == pytest.approx(0.8)
    # Eight half-lives later, the crowd talks about something else.
    for account in range(1, 101):
        baseline.learn(1000.0 + 8 * 3600.0, account, 1000 + account, 1 + account % 3, 78, 0)
    assert baseline.template_discount(77) == 0.0
    assert baseline.phrase_discount(THINK) == 0.0
    assert 77 not in baseline.template_discounts()


def test_an_account_counts_once_per_item_per_window() -> None:
    baseline = PopularityBaseline(PopularityConfig(window=3600.0))
    for n in range(50):
        baseline.learn(1000.0 + n, 1, 2, 3, 77, THINK)
    assert baseline.template_stats(77) == (1.0, 1.0, 1.0)
    assert baseline.phrase_stats(THINK)[0] == 1.0
    assert baseline.template_discount(77) == 0.0


def test_an_account_teaches_at_most_items_per_window() -> None:
    baseline = PopularityBaseline(PopularityConfig(items_per_window=3))
    for template_id in range(1, 20):
        baseline.learn(1000.0, 1, 2, 3, template_id, 0)
    assert sum(baseline.template_stats(t)[0] for t in range(1, 20)) == 3.0


def test_a_crowd_on_few_networks_is_not_spread_enough() -> None:
    baseline = PopularityBaseline()
    for account in range(1, 201):
        baseline.learn(1000.0, account, 1 + account % 5, 1 + account % 3, 77, THINK)
    assert baseline.template_discount(77) == 0.0
    assert baseline.phrase_discount(THINK) == 0.0


def test_publish_templates_replaces_the_table_and_keeps_the_larger_discount() -> None:
    guard = Guard(Policy(unverified_keys=None))
    cms = guard.engine.cms
    slots = L.COMMON_SLOTS
    assert publish_templates(cms, [(5, 0.5), (5 + slots, 0.7), (-3, 0.2)]) == 2
    ids = cms[L.CMS_DEPTH].view("int64")
    at = L.CB_COMMON + 2 * 5
    assert ids[at] == 5 + slots and cms[L.CMS_DEPTH, at + 1] == pytest.approx(0.3)
    publish_templates(cms, [])
    assert not ids[L.CB_COMMON : L.CB_COMMON + 2 * slots].any()


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError):
        PopularityConfig(max_discount=1.5)
    with pytest.raises(ConfigError):
        PopularityConfig(phrase_share_lo=0.5, phrase_share_hi=0.4)
    with pytest.raises(ConfigError):
        PopularityConfig(width=1000)


def test_what_a_linked_account_taught_is_taken_back_and_it_teaches_no_more() -> None:
    baseline = PopularityBaseline(PopularityConfig(half_life=3600.0, window=3600.0))
    _teach_crowd(baseline, 1000.0)
    assert baseline.template_discount(77) == pytest.approx(0.8)
    for account in range(1, 91):  # the lane links 90 of the 100 into an operation
        baseline.retract(account)
    assert baseline.template_stats(77)[0] == pytest.approx(10.0)
    assert baseline.template_discount(77) == 0.0
    assert baseline.phrase_discount(THINK) == 0.0
    _teach_crowd(baseline, 1000.0 + 2 * 3600.0)  # a later window: only the ten still count
    assert baseline.template_stats(77)[0] == pytest.approx(10.0 / 4 + 10.0)
