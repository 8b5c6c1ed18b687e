"""The replay report: counting decisions per actor, label and kind, and rendering them.

Definitions (DESIGN.md, "Trace format"):

* ``allowed``: served in full, i.e. action ``allow``, ``log`` or ``delay``, and every
  shadow decision (decided but not enforced);
* ``limited``: not served in full, and every reason is a limit reason (``rate``,
  ``quota``, ``concurrency``);
* ``mitigated``: not served in full for any other reason (a risk signal, or none given);
* ``shadow``: decisions with ``shadow`` set; ``shadow_limited`` / ``shadow_mitigated``
  split the shadowed ones whose action would not have served in full, so a shadow-mode
  run still shows what enforcement would have done;
* ``degraded`` / ``shadow_degraded``: requests served degraded, and those shadow mode
  would have degraded (a degraded request also counts as mitigated);
* ``leakage``: allowed / requests, for abusive traffic only (null for other labels);
* an actor is mitigated once any of its requests was mitigated; ``first_mitigation`` is
  the number of requests it sent before that one (0: its first request was mitigated);
* the benign false-positive rates are the shares of benign actors and of benign
  requests that were mitigated (limited requests are not false positives: they are the
  configured limits doing their job);
* an actor is held once a decision names the ``evidence`` reason (its accumulated
  evidence crossed a step, `abuseguard.policy.Evidence`); ``held_at`` is the number of
  requests it sent before that one (the time to detection, in requests), and
  ``served_after_hold`` counts its requests from that one on that were allowed;
  ``served_after_hold_share`` is that count over the actor's (or group's) requests from
  the hold on;
* ``reasons`` counts reason codes per label over every decision that carries any (a
  ``log`` or ``delay`` decision has reasons too); ``actions`` counts decided actions,
  ``shadow:<action>`` for shadowed ones.

Records without ground truth are grouped under the label ``unknown`` and their actor is
the key, or the IP when there is no key. Scores are kept in 100 bins per kind, so score
quantiles are exact to 0.01; everything else is an exact count.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from abuseguard.decision import LIMIT_REASONS, Action, Decision

SCORE_BINS = 100
TIME_BIN_SECONDS = 60.0
MAX_TIMELINE_POINTS = 720
GROUP_LABELS: tuple[str, ...] = ("benign", "abusive")
UNKNOWN_LABEL = "unknown"

# Degraded requests count as mitigated in the report, so "served" here means in full.
_SERVED: frozenset[Action] = frozenset(a for a in Action if a.serves_in_full)
_LIMIT_REASONS = LIMIT_REASONS
_DEGRADE = Action.DEGRADE

# The reason of a decision made under the hold of accumulated evidence.
HELD_REASON = "evidence"

# Outcome codes returned by ReportBuilder.add.
ALLOWED, LIMITED, MITIGATED = 0, 1, 2


class ActorTally:
    """Counters of one actor; the hot path updates these attributes directly."""

    __slots__ = (
        "after_hold",
        "allowed",
        "degraded",
        "first_mitigation",
        "first_mitigation_ts",
        "held_at",
        "kind",
        "label",
        "limited",
        "mitigated",
        "requests",
        "served_after_hold",
        "shadow",
        "shadow_degraded",
        "shadow_limited",
        "shadow_mitigated",
    )

    def __init__(self, label: str, kind: str) -> None:
        self.label = label
        self.kind = kind
        self.requests = 0
        self.allowed = 0
        self.limited = 0
        self.mitigated = 0
        self.shadow = 0
        self.shadow_limited = 0
        self.shadow_mitigated = 0
        self.degraded = 0
        self.shadow_degraded = 0
        self.first_mitigation: int | None = None
        self.first_mitigation_ts: float | None = None
        self.held_at: int | None = None
        self.after_hold = 0
        self.served_after_hold = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "requests": self.requests,
            "allowed": self.allowed,
            "limited": self.limited,
            "mitigated": self.mitigated,
            "shadow": self.shadow,
            "shadow_limited": self.shadow_limited,
            "shadow_mitigated": self.shadow_mitigated,
            "first_mitigation": self.first_mitigation,
            "held_at": self.held_at,
            "served_after_hold": self.served_after_hold,
            "served_after_hold_share": _ratio(self.served_after_hold, self.after_hold),
        }


class ReportBuilder:
    """Accumulates decisions; ``build()`` turns them into the JSON-ready report dict.

    Memory is bounded by the number of actors, kinds and time bins, not by the number of
    requests, so multi-million-line traces are fine.
    """

    def __init__(self, time_bin: float = TIME_BIN_SECONDS) -> None:
        if not time_bin > 0:
            raise ValueError("time_bin must be > 0")
        self.time_bin = time_bin
        self.actors: dict[str, ActorTally] = {}
        # score histograms and sums per kind and per label
        self.score_hist: dict[str, list[int]] = {}
        self.score_sum: dict[str, float] = {}
        self.label_hist: dict[str, list[int]] = {}
        self.label_score_sum: dict[str, float] = {}
        self.reasons: dict[str, Counter[str]] = {}
        self.actions: dict[str, Counter[str]] = {}
        # time bin index -> [requests, allowed, mitigated] per label (benign, abusive)
        self.timeline: dict[int, list[int]] = {}
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def add(
        self,
        actor: str,
        label: str,
        kind: str,
        decision: Decision,
        ts: float,
    ) -> int:
        """Count one decision; return ALLOWED, LIMITED or MITIGATED."""
        tally = self.actors.get(actor)
        if tally is None:
            tally = self.actors[actor] = ActorTally(label, kind)
            if kind not in self.score_hist:
                self.score_hist[kind] = [0] * (SCORE_BINS + 1)
                self.score_sum[kind] = 0.0
            if label not in self.reasons:
                self.reasons[label] = Counter()
                self.actions[label] = Counter()
                self.label_hist[label] = [0] * (SCORE_BINS + 1)
                self.label_score_sum[label] = 0.0
        else:
            label = tally.label
            kind = tally.kind
        before = tally.requests
        tally.requests = before + 1
        action = decision.action
        reasons = decision.reasons
        if action is _DEGRADE:
            if decision.shadow:
                tally.shadow_degraded += 1
            else:
                tally.degraded += 1
        if decision.shadow:
            tally.allowed += 1
            tally.shadow += 1
            outcome = ALLOWED
            if action not in _SERVED:
                if reasons and _LIMIT_REASONS.issuperset(reasons):
                    tally.shadow_limited += 1
                else:
                    tally.shadow_mitigated += 1
            self.actions[label]["shadow:" + action.value] += 1
        elif action in _SERVED:
            tally.allowed += 1
            outcome = ALLOWED
            self.actions[label][action.value] += 1
        else:
            self.actions[label][action.value] += 1
            if reasons and _LIMIT_REASONS.issuperset(reasons):
                tally.limited += 1
                outcome = LIMITED
            else:
                tally.mitigated += 1
                outcome = MITIGATED
                if tally.first_mitigation is None:
                    tally.first_mitigation = before
                    tally.first_mitigation_ts = ts
        if reasons:
            self.reasons[label].update(reasons)
            if tally.held_at is None and HELD_REASON in reasons:
                tally.held_at = before
        if tally.held_at is not None:
            tally.after_hold += 1
            if outcome == ALLOWED:
                tally.served_after_hold += 1
        score = decision.score
        if not 0.0 <= score <= 1.0:
            score = 0.0 if score != score else min(max(score, 0.0), 1.0)
        score_bin = int(score * SCORE_BINS)
        self.score_hist[kind][score_bin] += 1
        self.score_sum[kind] += score
        self.label_hist[label][score_bin] += 1
        self.label_score_sum[label] += score
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts
        slot = int((ts - self.first_ts) // self.time_bin)
        row = self.timeline.get(slot)
        if row is None:
            row = self.timeline[slot] = [0, 0, 0, 0, 0, 0]
        offset = 3 if label == "abusive" else 0 if label == "benign" else -1
        if offset >= 0:
            row[offset] += 1
            if outcome == ALLOWED:
                row[offset + 1] += 1
            elif outcome == MITIGATED:
                row[offset + 2] += 1
        return outcome

    def build(self, **top_level: Any) -> dict[str, Any]:
        """The report dict: ``top_level`` items (timings, trace stats) come first."""
        labels = _group(self.actors.values(), by_kind=False)
        for name in GROUP_LABELS:
            labels.setdefault(name, _finish_group(name, []))
        for name, stats in labels.items():
            hist = self.label_hist.get(name, [0] * (SCORE_BINS + 1))
            stats["score"] = _score_summary(hist, self.label_score_sum.get(name, 0.0))
        kinds = _group(self.actors.values(), by_kind=True)
        for kind, stats in kinds.items():
            hist = self.score_hist[kind]
            stats["score"] = _score_summary(hist, self.score_sum[kind])
            stats["score_histogram"] = list(hist)
        requests = sum(t.requests for t in self.actors.values())
        report: dict[str, Any] = {"requests": requests}
        report.update(top_level)
        benign = labels["benign"]
        abusive = labels["abusive"]
        report["detection"] = {
            "abusive_actors_mitigated_share": abusive["actors_mitigated_share"],
            "abusive_leakage": abusive["leakage"],
            "benign_actors_mitigated_share": benign["actors_mitigated_share"],
            "benign_requests_mitigated_share": benign["mitigated_share"],
            "abusive_actors_held_share": abusive["actors_held_share"],
            "abusive_requests_to_hold": abusive["held_at"],
            "abusive_served_after_hold_share": abusive["served_after_hold_share"],
            "benign_actors_held_share": benign["actors_held_share"],
        }
        report["labels"] = labels
        report["kinds"] = dict(sorted(kinds.items(), key=lambda kv: (kv[1]["label"], kv[0])))
        report["reasons"] = {
            label: dict(counter.most_common()) for label, counter in sorted(self.reasons.items())
        }
        report["actions"] = {
            label: dict(counter.most_common()) for label, counter in sorted(self.actions.items())
        }
        report["timeline"] = self._timeline()
        report["actors"] = {actor: tally.as_dict() for actor, tally in self.actors.items()}
        return report

    def _timeline(self) -> dict[str, Any]:
        if not self.timeline:
            return {"bin_seconds": self.time_bin, "columns": _TIMELINE_COLUMNS, "rows": []}
        last = max(self.timeline)
        factor = max(1, math.ceil((last + 1) / MAX_TIMELINE_POINTS))
        rows: dict[int, list[int]] = {}
        for slot, counts in self.timeline.items():
            merged = rows.setdefault(slot // factor, [0] * len(counts))
            for i, value in enumerate(counts):
                merged[i] += value
        return {
            "bin_seconds": self.time_bin * factor,
            "columns": _TIMELINE_COLUMNS,
            "rows": [[slot, *rows[slot]] for slot in sorted(rows)],
        }


_TIMELINE_COLUMNS = [
    "bin",
    "benign_requests",
    "benign_allowed",
    "benign_mitigated",
    "abusive_requests",
    "abusive_allowed",
    "abusive_mitigated",
]


def _group(tallies: Iterable[ActorTally], *, by_kind: bool) -> dict[str, dict[str, Any]]:
    """Sum actor tallies per label, or per kind (a kind belongs to its first actor's label)."""
    members: dict[str, list[ActorTally]] = {}
    for tally in tallies:
        members.setdefault(tally.kind if by_kind else tally.label, []).append(tally)
    out: dict[str, dict[str, Any]] = {}
    for name, group in members.items():
        label = group[0].label if by_kind else name
        stats = _finish_group(label, group)
        out[name] = {"label": label, **stats} if by_kind else stats
    return out


def _finish_group(label: str, group: list[ActorTally]) -> dict[str, Any]:
    requests = sum(t.requests for t in group)
    allowed = sum(t.allowed for t in group)
    mitigated = sum(t.mitigated for t in group)
    firsts = sorted(t.first_mitigation for t in group if t.first_mitigation is not None)
    held = sorted(t.held_at for t in group if t.held_at is not None)
    actors = len(group)
    stats: dict[str, Any] = {
        "actors": actors,
        "actors_mitigated": len(firsts),
        "requests": requests,
        "allowed": allowed,
        "limited": sum(t.limited for t in group),
        "mitigated": mitigated,
        "shadow": sum(t.shadow for t in group),
        "shadow_limited": sum(t.shadow_limited for t in group),
        "shadow_mitigated": sum(t.shadow_mitigated for t in group),
        # Requests the degrade served less (with the built-in one: output capped, no
        # reasoning), and those it would have under shadow.
        "degraded": sum(t.degraded for t in group),
        "shadow_degraded": sum(t.shadow_degraded for t in group),
        "actors_would_be_mitigated": sum(
            1 for t in group if t.first_mitigation is not None or t.shadow_mitigated
        ),
        "leakage": _ratio(allowed, requests) if label == "abusive" else None,
        "actors_mitigated_share": _ratio(len(firsts), actors),
        "mitigated_share": _ratio(mitigated, requests),
        "first_mitigation": {
            "median": _quantile(firsts, 0.5),
            "p90": _quantile(firsts, 0.9),
            "max": firsts[-1] if firsts else None,
        },
        "actors_held": len(held),
        "actors_held_share": _ratio(len(held), actors),
        "held_at": {
            "median": _quantile(held, 0.5),
            "p90": _quantile(held, 0.9),
            "max": held[-1] if held else None,
        },
        "served_after_hold_share": _ratio(
            sum(t.served_after_hold for t in group), sum(t.after_hold for t in group)
        ),
    }
    if label == "benign":
        stats["false_positive_actors"] = stats["actors_mitigated_share"]
        stats["false_positive_requests"] = stats["mitigated_share"]
    return stats


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _quantile(sorted_values: list[int], q: float) -> float | None:
    """Nearest-rank quantile with linear interpolation (numpy's default method)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    value = sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)
    return round(value, 3)


def _score_summary(hist: list[int], score_sum: float) -> dict[str, float | None]:
    n = sum(hist)
    if n == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {
        "mean": round(score_sum / n, 4),
        "p50": _hist_quantile(hist, n, 0.5),
        "p90": _hist_quantile(hist, n, 0.9),
        "p99": _hist_quantile(hist, n, 0.99),
    }


def _hist_quantile(hist: list[int], n: int, q: float) -> float:
    """Lower edge of the bin holding the q-quantile (scores are binned by 1/SCORE_BINS)."""
    target = q * n
    running = 0
    for i, count in enumerate(hist):
        running += count
        if running >= target and count:
            return i / SCORE_BINS
    return 1.0


# ---------------------------------------------------------------------------------------
# Rendering


def _fmt_int(value: int) -> str:
    return f"{value:,}"


def _fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _fmt_num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}"


_GROUP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("actors", "actors"),
    ("actors_mitigated", "mitig"),
    ("actors_mitigated_share", "mitig%"),
    ("requests", "requests"),
    ("allowed", "allowed"),
    ("limited", "limited"),
    ("mitigated", "mitigated"),
    ("shadow", "shadow"),
    ("leakage", "leakage"),
    ("first_mitigation", "1st-mit"),
    ("score", "score p50/p90"),
)


def _group_cells(stats: Mapping[str, Any]) -> list[str]:
    cells = []
    for key, _ in _GROUP_COLUMNS:
        value = stats.get(key)
        if key in ("actors_mitigated_share", "leakage"):
            cells.append(_fmt_share(value))
        elif key == "first_mitigation":
            cells.append(_fmt_num(value["median"]) if value else "-")
        elif key == "score":
            cells.append(f"{_fmt_num(value['p50'])}/{_fmt_num(value['p90'])}" if value else "-")
        else:
            cells.append(_fmt_int(int(value or 0)))
    return cells


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return lines


def worst_actors(
    report: Mapping[str, Any], top: int
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Abusive actors that leaked most, and benign actors mitigated most, top N each."""
    actors: Mapping[str, dict[str, Any]] = report.get("actors", {})
    abusive = [(a, s) for a, s in actors.items() if s["label"] == "abusive" and s["allowed"]]
    benign = [(a, s) for a, s in actors.items() if s["label"] == "benign" and s["mitigated"]]
    abusive.sort(key=lambda item: (-item[1]["allowed"], item[0]))
    benign.sort(key=lambda item: (-item[1]["mitigated"], item[0]))
    return {"abusive_leaked": abusive[:top], "benign_mitigated": benign[:top]}


def _baseline_lines(baseline: Mapping[str, Any] | None) -> list[str]:
    """What the lane's popularity baseline discounts: common templates and phrases."""
    if not baseline:
        return []
    templates = baseline.get("templates", [])
    phrases = baseline.get("phrases", [])
    lines = [
        f"content baseline: {_fmt_int(round(baseline.get('established_accounts', 0)))} "
        f"established account(s); shared_template discounted for {len(templates)} "
        f"template(s), elicitation for {len(phrases)} phrase(s)"
    ]
    lines.extend(
        f"  template {t['template_id']:x}: common among {t['accounts']:.0f} established "
        f"accounts, shared_template -{t['discount']:.0%}"
        for t in templates[:5]
    )
    lines.extend(
        f"  phrase {p['phrase']!r}: used by {p['share']:.0%} of established accounts, "
        f"elicitation -{p['discount']:.0%}"
        for p in phrases[:5]
    )
    return lines


def _profile_lines(profile: Mapping[str, Any] | None) -> list[str]:
    """The harvest profile's verdicts: how many, and who stands judged, by label."""
    if not profile:
        return []
    judged = ", ".join(f"{label} {n}" for label, n in profile.get("judged", {}).items())
    standing = ", ".join(f"{label} {n}" for label, n in profile.get("standing", {}).items())
    return [
        f"harvest profile: accounts judged: {judged or 'none'}; "
        f"standing at the end: {standing or 'none'}"
    ]


def _operations_lines(operations: Mapping[str, Any] | None, top: int) -> list[str]:
    """The background lane's clusters: one row each, with the evidence that linked it."""
    if not operations:
        return []
    clusters = operations.get("clusters", [])
    lines = [
        "",
        f"operations (background lane, {_fmt_int(operations.get('flushes', 0))} flushes, "
        f"{operations.get('lane_seconds', 0.0):.2f} s): {len(clusters)} cluster(s), "
        f"{_fmt_int(operations.get('accounts_held', 0))} account(s) held by a lane verdict",
    ]
    lines.extend(_baseline_lines(operations.get("baseline")))
    lines.extend(_profile_lines(operations.get("profile")))
    if not clusters:
        return lines
    header = ["cluster", "size", "score", "linked by", "lift", "1-turn", "topics", "labels"]
    rows = [
        [
            c["id"],
            _fmt_int(c["size"]),
            f"{c['score']:.2f}",
            ", ".join(f"{kind} {n}" for kind, n in c["linked_by"].items()),
            f"{c['lift']:.1f}",
            _fmt_share(c["single_turn_share"]),
            _fmt_share(c["topic_spread"]),
            ", ".join(f"{label} {n}" for label, n in c.get("labels", {}).items()),
        ]
        for c in clusters[:top]
    ]
    lines.extend(_table(header, rows))
    for c in clusters[:top]:
        lines.append(f"  {c['id']}: {', '.join(c['members_sample'])}")
        behaviour = c.get("behaviour")
        if behaviour:
            # A behaviour link (linker step 3d): the tool's value and how its holders behave.
            lines.append(
                f"  {c['id']} behaviour: {behaviour['link']} held by {behaviour['holders']}, "
                f"{behaviour['members']} harvest by {behaviour['way']} (single-turn "
                f"{behaviour['single_turn'] * 100:.0f}%, reasoning asked "
                f"{behaviour['reasoning'] * 100:.0f}%, taking turns "
                f"{behaviour['turns'] * 100:.0f}%, new topics "
                f"{behaviour['new_topics'] * 100:.0f}%, top word "
                f"{behaviour['word_share'] * 100:.0f}%, topic spread "
                f"{behaviour['topic_spread'] * 100:.0f}%; "
                f"{behaviour['harvesting_share'] * 100:.0f}% of all accounts harvest, "
                f"surprise {behaviour['surprise']} nats)"
            )
    return lines


def render_table(report: Mapping[str, Any], top: int = 10) -> str:
    """A plain-text report for terminals: groups, reasons, worst actors."""
    lines: list[str] = []
    trace = report.get("trace", {})
    head = (
        f"abuseguard replay: {_fmt_int(report['requests'])} requests, "
        f"{_fmt_int(report.get('malformed_lines', 0))} malformed lines"
    )
    if trace.get("out_of_order"):
        head += f", {_fmt_int(trace['out_of_order'])} out of order (clamped)"
    if report.get("decisions_per_second") is not None:
        head += f", {report['decisions_per_second']:,.0f} decisions/s"
    lines.append(head)
    if trace.get("hours") is not None:
        lines.append(f"trace span: {trace['hours']:.2f} h")
    if trace.get("malformed_line_numbers"):
        numbers = ", ".join(str(n) for n in trace["malformed_line_numbers"])
        lines.append(f"malformed lines (first {len(trace['malformed_line_numbers'])}): {numbers}")
    lines.append("")
    header = ["label", *(title for _, title in _GROUP_COLUMNS)]
    rows = [
        [name, *_group_cells(stats)]
        for name, stats in report["labels"].items()
        if stats["requests"] or name in GROUP_LABELS
    ]
    lines.extend(_table(header, rows))
    kinds = report.get("kinds", {})
    if kinds:
        lines.append("")
        header = ["kind", *(title for _, title in _GROUP_COLUMNS)]
        rows = [[f"{name} ({s['label']})", *_group_cells(s)] for name, s in kinds.items()]
        lines.extend(_table(header, rows))
    detection = report.get("detection", {})
    lines.append("")
    lines.append(
        "detection: abusive actors mitigated "
        f"{_fmt_share(detection.get('abusive_actors_mitigated_share'))}, abusive leakage "
        f"{_fmt_share(detection.get('abusive_leakage'))}, benign actors mitigated "
        f"{_fmt_share(detection.get('benign_actors_mitigated_share'))} (requests "
        f"{_fmt_share(detection.get('benign_requests_mitigated_share'))})"
    )
    if "abusive_actors_held_share" in detection:
        to_hold = detection.get("abusive_requests_to_hold") or {}
        lines.append(
            "held by accumulated evidence: abusive actors "
            f"{_fmt_share(detection.get('abusive_actors_held_share'))} (requests before the "
            f"hold: median {_fmt_num(to_hold.get('median'))}, p90 "
            f"{_fmt_num(to_hold.get('p90'))}), their requests served after the hold "
            f"{_fmt_share(detection.get('abusive_served_after_hold_share'))}; benign actors "
            f"{_fmt_share(detection.get('benign_actors_held_share'))}"
        )
    degraded = [
        f"{name} {_fmt_int(stats.get('degraded', 0))} "
        f"(shadow {_fmt_int(stats.get('shadow_degraded', 0))})"
        for name, stats in report["labels"].items()
        if stats.get("degraded") or stats.get("shadow_degraded")
    ]
    if degraded:
        lines.append("requests degraded: " + ", ".join(degraded))
    for label, reasons in report.get("reasons", {}).items():
        if reasons:
            text = ", ".join(f"{r} {_fmt_int(n)}" for r, n in list(reasons.items())[:12])
            lines.append(f"reasons ({label}): {text}")
    lines.extend(_operations_lines(report.get("operations"), top))
    worst = worst_actors(report, top)
    for title, key, column in (
        ("abusive actors with most requests allowed", "abusive_leaked", "allowed"),
        ("benign actors with most requests mitigated", "benign_mitigated", "mitigated"),
    ):
        if not worst[key]:
            continue
        lines.append("")
        lines.append(f"{title} (top {len(worst[key])}):")
        header = ["actor", "kind", "requests", column, "limited", "1st-mit"]
        rows = [
            [
                actor,
                s["kind"],
                _fmt_int(s["requests"]),
                _fmt_int(s[column]),
                _fmt_int(s["limited"]),
                _fmt_num(s["first_mitigation"]),
            ]
            for actor, s in worst[key]
        ]
        lines.extend(_table(header, rows))
    return "\n".join(lines) + "\n"


def plot_report(
    report: Mapping[str, Any],
    path: str,
    ladder: Iterable[tuple[float, Action | str]] = (),
) -> None:
    """Score distribution per kind (with the ladder's thresholds) and leakage over time
    (per time window and cumulative), as one PNG.

    matplotlib is optional (the ``plot`` extra): ImportError carries an install hint.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'abuseguard[plot]'") from exc
    fig = draw_report(report, ladder)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def draw_report(
    report: Mapping[str, Any], ladder: Iterable[tuple[float, Action | str]] = ()
) -> Any:
    """The figure of :func:`plot_report` (a matplotlib Figure), for callers that keep it."""
    import matplotlib.pyplot as plt

    fig, (ax_score, ax_leak) = plt.subplots(1, 2, figsize=(15, 6.5))
    edges = [i / SCORE_BINS for i in range(SCORE_BINS + 1)]
    for kind, stats in report.get("kinds", {}).items():
        hist = stats.get("score_histogram")
        total = sum(hist) if hist else 0
        if not total:
            continue
        style = "-" if stats["label"] == "abusive" else "--"
        ax_score.step(
            edges, [c / total for c in hist], where="post", linestyle=style, label=f"{kind}"
        )
    ax_score.set_yscale("log")
    ax_score.set_xlim(0, 1)
    ax_score.set_xlabel("risk score")
    ax_score.set_ylabel("share of the kind's requests")
    ax_score.set_title("score distribution per kind (solid: abusive, dashed: benign)", pad=22)
    for threshold, action in ladder:
        # The thresholds apply to the smoothed score the ladder climbs, drawn on this axis.
        ax_score.axvline(threshold, color="0.35", linestyle=":", linewidth=1, zorder=0)
        ax_score.annotate(
            str(action),
            xy=(threshold, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.25",
        )
    if ax_score.get_legend_handles_labels()[0]:
        ax_score.legend(
            fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False
        )

    timeline = report.get("timeline", {})
    rows = timeline.get("rows", [])
    bin_hours = float(timeline.get("bin_seconds", TIME_BIN_SECONDS)) / 3600.0
    hours, leak, fp, window_leak, window_fp = [], [], [], [], []
    req = allowed = b_req = b_mit = 0
    for slot, b_r, _b_a, b_m, a_r, a_a, _a_m in rows:
        req += a_r
        allowed += a_a
        b_req += b_r
        b_mit += b_m
        hours.append((slot + 1) * bin_hours)
        leak.append(allowed / req if req else math.nan)
        fp.append(b_mit / b_req if b_req else math.nan)
        window_leak.append(a_a / a_r if a_r else math.nan)
        window_fp.append(b_m / b_r if b_r else math.nan)
    leak_color, fp_color = "tab:red", "tab:blue"
    window = f"{bin_hours * 60:g} min"
    ax_leak.step(
        hours, window_leak, where="pre", color=leak_color, alpha=0.5, linewidth=1,
        label=f"abusive leakage per {window} window",
    )  # fmt: skip
    ax_leak.plot(hours, leak, color=leak_color, linewidth=2, label="abusive leakage (cumulative)")
    ax_leak.step(
        hours, window_fp, where="pre", color=fp_color, alpha=0.5, linewidth=1,
        label=f"benign requests mitigated per {window} window",
    )  # fmt: skip
    ax_leak.plot(
        hours, fp, color=fp_color, linewidth=2, label="benign requests mitigated (cumulative)"
    )
    ax_leak.set_xlabel("hours into the trace")
    ax_leak.set_ylabel("share")
    ax_leak.set_ylim(0, 1)
    ax_leak.set_title("leakage over time: per window and cumulative", pad=22)
    ax_leak.legend(
        fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False
    )
    fig.tight_layout()
    return fig
