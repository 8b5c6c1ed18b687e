"""Report arithmetic on tiny hand-made traces with hand-made decisions."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.decision import Action, Decision
from abuseguard.report import (
    ALLOWED,
    LIMITED,
    MITIGATED,
    ReportBuilder,
    render_table,
    worst_actors,
)

ALLOW = Decision(Action.ALLOW, (), 0.1)
LOG = Decision(Action.LOG, ("cadence",), 0.4)
DELAY = Decision(Action.DELAY, ("burst",), 0.5)
DEGRADE = Decision(Action.DEGRADE, ("template",), 0.6)
RATE = Decision(Action.THROTTLE, ("rate",), 0.2)
QUOTA_AND_CONC = Decision(Action.THROTTLE, ("quota", "concurrency"), 0.2)
RATE_AND_FAN_IN = Decision(Action.THROTTLE, ("rate", "fan_in"), 0.7)
BLOCK = Decision(Action.BLOCK, ("cadence", "anonymizer"), 0.9)
CHALLENGE_NO_REASON = Decision(Action.CHALLENGE, (), 0.8)
SHADOW_BLOCK = Decision(Action.BLOCK, ("fan_in",), 0.95, shadow=True)
SHADOW_RATE = Decision(Action.THROTTLE, ("rate",), 0.3, shadow=True)


def test_outcome_of_each_action() -> None:
    b = ReportBuilder()
    ts = 0.0
    expected = [
        (ALLOW, ALLOWED),
        (LOG, ALLOWED),
        (DELAY, ALLOWED),
        (DEGRADE, MITIGATED),
        (RATE, LIMITED),
        (QUOTA_AND_CONC, LIMITED),
        (RATE_AND_FAN_IN, MITIGATED),
        (BLOCK, MITIGATED),
        (CHALLENGE_NO_REASON, MITIGATED),
        (SHADOW_BLOCK, ALLOWED),
        (SHADOW_RATE, ALLOWED),
    ]
    for decision, outcome in expected:
        ts += 1
        assert b.add("x", "abusive", "k", decision, ts) == outcome, decision


def _tiny_report() -> dict[str, Any]:
    """Two benign actors, three abusive ones, one unlabeled client."""
    b = ReportBuilder(time_bin=10.0)
    rows = [
        # (ts, actor, label, kind, decision)
        (0.0, "alice", "benign", "browser", ALLOW),
        (1.0, "alice", "benign", "browser", RATE),
        (2.0, "alice", "benign", "browser", ALLOW),
        (3.0, "app", "benign", "sdk", ALLOW),
        (4.0, "app", "benign", "sdk", ALLOW),
        (5.0, "app", "benign", "sdk", BLOCK),  # a false positive
        (6.0, "app", "benign", "sdk", SHADOW_BLOCK),
        (7.0, "pool/a1", "abusive", "pool", ALLOW),
        (8.0, "pool/a1", "abusive", "pool", ALLOW),
        (9.0, "pool/a1", "abusive", "pool", BLOCK),  # first mitigation after 2 requests
        (10.0, "pool/a1", "abusive", "pool", BLOCK),
        (11.0, "pool/a2", "abusive", "pool", BLOCK),  # first mitigation at once
        (12.0, "pool/a2", "abusive", "pool", DELAY),
        (13.0, "bulk", "abusive", "bulk", RATE),
        (14.0, "bulk", "abusive", "bulk", RATE),
        (15.0, "bulk", "abusive", "bulk", SHADOW_BLOCK),
        (16.0, "bulk", "abusive", "bulk", ALLOW),
        (17.0, "203.0.113.9", "unknown", "unknown", ALLOW),
    ]
    for ts, actor, label, kind, decision in rows:
        b.add(actor, label, kind, decision, ts)
    return b.build(malformed_lines=3)


def test_label_counts_are_exact() -> None:
    report = _tiny_report()
    assert report["requests"] == 18
    assert report["malformed_lines"] == 3
    benign = report["labels"]["benign"]
    assert benign["actors"] == 2
    assert benign["actors_mitigated"] == 1
    assert (benign["requests"], benign["allowed"], benign["limited"], benign["mitigated"]) == (
        7,
        5,
        1,
        1,
    )
    assert benign["shadow"] == 1 and benign["shadow_mitigated"] == 1
    assert benign["leakage"] is None
    assert benign["false_positive_actors"] == 0.5
    assert math.isclose(benign["false_positive_requests"], round(1 / 7, 6))
    abusive = report["labels"]["abusive"]
    assert abusive["actors"] == 3
    assert abusive["actors_mitigated"] == 2
    assert (abusive["requests"], abusive["allowed"], abusive["limited"], abusive["mitigated"]) == (
        10,
        5,
        2,
        3,
    )
    assert abusive["leakage"] == 0.5
    assert abusive["shadow"] == 1
    # bulk was only shadow-mitigated: it would have been mitigated under enforcement
    assert abusive["actors_would_be_mitigated"] == 3
    assert abusive["first_mitigation"] == {"median": 1.0, "p90": 1.8, "max": 2}
    unknown = report["labels"]["unknown"]
    assert (unknown["actors"], unknown["requests"], unknown["allowed"]) == (1, 1, 1)


def test_kind_and_actor_counts_are_exact() -> None:
    report = _tiny_report()
    pool = report["kinds"]["pool"]
    assert pool["label"] == "abusive"
    assert (pool["actors"], pool["actors_mitigated"], pool["requests"]) == (2, 2, 6)
    assert (pool["allowed"], pool["limited"], pool["mitigated"]) == (3, 0, 3)
    assert pool["leakage"] == 0.5
    bulk = report["kinds"]["bulk"]
    assert (bulk["allowed"], bulk["limited"], bulk["mitigated"]) == (2, 2, 0)
    assert bulk["actors_mitigated"] == 0
    sdk = report["kinds"]["sdk"]
    assert sdk["label"] == "benign" and sdk["actors_mitigated"] == 1
    a1 = report["actors"]["pool/a1"]
    assert a1 == {
        "label": "abusive",
        "kind": "pool",
        "requests": 4,
        "allowed": 2,
        "limited": 0,
        "mitigated": 2,
        "shadow": 0,
        "shadow_limited": 0,
        "shadow_mitigated": 0,
        "first_mitigation": 2,
        "held_at": None,
        "served_after_hold": 0,
        "served_after_hold_share": None,
    }
    assert report["actors"]["pool/a2"]["first_mitigation"] == 0
    assert report["actors"]["alice"]["first_mitigation"] is None


def test_detection_summary_reasons_and_actions() -> None:
    report = _tiny_report()
    assert report["detection"] == {
        "abusive_actors_mitigated_share": round(2 / 3, 6),
        "abusive_leakage": 0.5,
        "benign_actors_mitigated_share": 0.5,
        "benign_requests_mitigated_share": round(1 / 7, 6),
        "abusive_actors_held_share": 0.0,
        "abusive_requests_to_hold": {"median": None, "p90": None, "max": None},
        "abusive_served_after_hold_share": None,
        "benign_actors_held_share": 0.0,
    }
    assert report["reasons"]["abusive"] == {
        "cadence": 3,
        "anonymizer": 3,
        "rate": 2,
        "burst": 1,
        "fan_in": 1,
    }
    assert report["actions"]["abusive"]["block"] == 3
    assert report["actions"]["abusive"]["shadow:block"] == 1


def test_sums_are_consistent_per_label_and_kind() -> None:
    report = _tiny_report()
    for group in [*report["labels"].values(), *report["kinds"].values()]:
        assert group["allowed"] + group["limited"] + group["mitigated"] == group["requests"]
    assert sum(g["requests"] for g in report["labels"].values()) == report["requests"]


def test_timeline_counts_per_bin() -> None:
    report = _tiny_report()
    timeline = report["timeline"]
    assert timeline["bin_seconds"] == 10.0
    rows = {row[0]: row[1:] for row in timeline["rows"]}
    # bin 0 is ts 0..9.99: benign 7 requests (5 allowed, 1 mitigated), abusive 3 (2, 1)
    assert rows[0] == [7, 5, 1, 3, 2, 1]
    assert rows[1] == [0, 0, 0, 7, 3, 2]


def test_score_quantiles_and_bad_scores() -> None:
    b = ReportBuilder()
    for i, score in enumerate([0.0, 0.25, 0.5, 0.75, 1.0, math.nan, -3.0, 7.0]):
        b.add(f"a{i}", "abusive", "k", Decision(Action.ALLOW, (), score), float(i))
    report = b.build()
    hist = report["kinds"]["k"]["score_histogram"]
    assert len(hist) == 101 and sum(hist) == 8
    assert hist[0] == 3  # 0.0, NaN -> 0, -3 -> 0
    assert hist[100] == 2  # 1.0 and 7 -> 1
    score = report["labels"]["abusive"]["score"]
    assert score["p50"] == 0.25
    assert score["p99"] == 1.0


def test_empty_report_has_both_labels() -> None:
    report = ReportBuilder().build()
    assert report["requests"] == 0
    for label in ("benign", "abusive"):
        group = report["labels"][label]
        assert group["actors"] == 0 and group["requests"] == 0
        assert group["actors_mitigated_share"] is None
    assert report["labels"]["abusive"]["leakage"] is None
    assert report["timeline"]["rows"] == []
    json.dumps(report)
    assert "0 requests" in render_table(report)


def test_long_traces_coarsen_the_timeline() -> None:
    b = ReportBuilder(time_bin=1.0)
    for i in range(3000):
        b.add("a", "abusive", "k", ALLOW, float(i))
    timeline = b.build()["timeline"]
    assert timeline["bin_seconds"] == 5.0
    assert len(timeline["rows"]) == 600
    assert sum(row[4] for row in timeline["rows"]) == 3000


def test_table_and_worst_actors() -> None:
    report = _tiny_report()
    worst = worst_actors(report, top=5)
    assert [a for a, _ in worst["abusive_leaked"]] == ["bulk", "pool/a1", "pool/a2"]
    assert [a for a, _ in worst["benign_mitigated"]] == ["app"]
    text = render_table(report, top=5)
    for needle in ("benign", "abusive", "pool (abusive)", "leakage", "50.00%", "bulk", "app"):
        assert needle in text
    json.dumps(report)


def test_label_of_an_actor_is_fixed_by_its_first_request() -> None:
    b = ReportBuilder()
    b.add("x", "abusive", "k1", ALLOW, 0.0)
    b.add("x", "benign", "k2", BLOCK, 1.0)
    report = b.build()
    assert report["labels"]["abusive"]["requests"] == 2
    assert report["labels"]["benign"]["requests"] == 0
    assert list(report["kinds"]) == ["k1"]


_decisions = st.sampled_from(
    [
        ALLOW,
        LOG,
        DELAY,
        DEGRADE,
        RATE,
        QUOTA_AND_CONC,
        RATE_AND_FAN_IN,
        BLOCK,
        CHALLENGE_NO_REASON,
        SHADOW_BLOCK,
        SHADOW_RATE,
    ]
)
_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["benign", "abusive"]), _decisions
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_rows)
def test_counts_always_add_up(rows: list[tuple[str, str, Decision]]) -> None:
    b = ReportBuilder()
    for i, (actor, label, decision) in enumerate(rows):
        b.add(f"{label}/{actor}", label, label, decision, float(i))
    report = b.build()
    assert report["requests"] == len(rows)
    for group in report["labels"].values():
        assert group["allowed"] + group["limited"] + group["mitigated"] == group["requests"]
        assert 0 <= group["actors_mitigated"] <= group["actors"]
        assert group["shadow"] <= group["allowed"]
    for actor in report["actors"].values():
        if actor["first_mitigation"] is not None:
            assert actor["mitigated"] >= 1
            assert actor["first_mitigation"] < actor["requests"]
        else:
            assert actor["mitigated"] == 0
