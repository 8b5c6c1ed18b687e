"""The risk signals, each declared once: name, default weight, weak or strong, its ramps
and the input that feeds it.

Everything else is derived from `SIGNALS`: the signal slots and reason bits of the kernel
(`layout.S_*`, `layout.SIGNAL_NAMES`), `policy.DEFAULT_WEIGHTS` and
`policy.DEFAULT_WEAK_SIGNALS` (which also validate `Scoring.weights` and
`Scoring.weak_signals`), the weights, the weak mask and the ramp parameters of the kernel's
parameter vector (`params.build_params`). This module imports nothing heavier than the
standard library: `policy` reads it at import.

Adding a signal: declare it here (at the end, so that existing reason bits keep their
meaning), give it a slot constant in `layout` (``S_NAME = signal_index("name")``), write its
stage in `kernels` (one ``@njit(inline="always")`` function writing ``sig[L.S_NAME]``), and
feed its input (an enricher filling a `Prepared` field and a kernel input). Its weight,
reason name, weak mask bit and ramp parameters follow from the declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RampSection = Literal["scoring", "network"]


@dataclass(frozen=True, slots=True)
class Ramp:
    """A (low, high) ramp of a signal: read from the policy's ``section.field`` (a pair),
    or ``absent`` when that section is not configured (a network ramp without a network
    policy). Its two parameters are allocated under ``param`` (``P_<PARAM>_LO`` and
    ``P_<PARAM>_HI`` in `layout`)."""

    param: str
    section: RampSection
    field: str
    absent: tuple[float, float] = (1e9, 2e9)


@dataclass(frozen=True, slots=True)
class Signal:
    """One risk signal: a value in 0..1 per request, weighted into the logistic score.

    ``weak``: an honest client can raise it on its own; alone (no strong signal within the
    score's half-life) it never refuses a request. ``feed`` names what the kernel reads to
    compute it (a row field, a kernel input or a sketch), for the docs and the reader."""

    name: str
    weight: float
    weak: bool
    feed: str
    ramps: tuple[Ramp, ...] = ()


# In contribution order: a signal's index is its slot in the io vector, its weight's offset
# in the parameters and its bit in the reasons bitmask. Append only.
SIGNALS: tuple[Signal, ...] = (
    Signal(
        "volume",
        1.5,
        weak=True,
        feed="key row: long-run request rate, as a share of the key bucket's rate (the "
        "client's plan's bucket under Policy.plans)",
        ramps=(Ramp("volume", "scoring", "volume_rate"),),
    ),
    Signal(
        "burst",
        0.8,
        weak=True,
        feed="key row: short-run rate above the long-run rate, against the key bucket's "
        "(or its plan's) 10 s",
        ramps=(Ramp("burst", "scoring", "burst_ratio"),),
    ),
    Signal(
        "cadence",
        1.5,
        weak=True,
        feed="key row: spread of log inter-arrival times (a falling ramp)",
        ramps=(Ramp("cadence", "scoring", "cadence_spread"),),
    ),
    Signal("client", 2.2, weak=True, feed="input ua_class, through Scoring.client_risk"),
    Signal("persona", 2.0, weak=True, feed="input persona (header/UA mismatch, 0..1)"),
    Signal("anonymizer", 3.0, weak=False, feed="input anon (network profile, 0..1)"),
    Signal("geo", 2.0, weak=True, feed="input geo (network profile, 0..1)"),
    Signal(
        "fan_in",
        4.0,
        weak=False,
        feed="network rows: distinct accounts per network, times input distrust",
        ramps=(Ramp("fanin", "network", "fan_in"),),
    ),
    Signal(
        "fan_out",
        3.0,
        weak=False,
        feed="account row: distinct ASNs, countries and prefixes of the account (the max)",
        ramps=(
            Ramp("fanout_asn", "network", "fan_out_asns"),
            Ramp("fanout_cc", "network", "fan_out_countries"),
            Ramp("fanout_pfx", "network", "fan_out_prefixes"),
        ),
    ),
    Signal(
        "errors",
        1.2,
        weak=True,
        feed="key row: EWMA share of 4xx/5xx outcomes",
        ramps=(Ramp("err", "scoring", "error_share"),),
    ),
    Signal(
        "impatience",
        2.5,
        weak=False,
        feed="key row: EWMA share of requests sent before Retry-After",
        ramps=(Ramp("impatience", "scoring", "impatience_share"),),
    ),
    Signal(
        "template",
        0.8,
        weak=True,
        feed="account row: share of prompts repeating a recent template (inputs simhash, "
        "template_id)",
        ramps=(Ramp("template", "scoring", "template_share"),),
    ),
    Signal(
        "shared_template",
        1.6,
        weak=False,
        feed="Count-Min: accounts using this prompt template (input template_id)",
        ramps=(Ramp("shared", "scoring", "shared_template_accounts"),),
    ),
    Signal("elicitation", 2.5, weak=False, feed="input elicit (content fingerprint, 0..1)"),
    Signal("prior", 3.0, weak=False, feed="key row: prior written by the background lane"),
    Signal(
        "spend",
        1.2,
        weak=True,
        feed="key row: real cost (tokens) per day reported after the responses, as a share "
        "of the account's token allowance (its plan's under Policy.plans), or without one "
        "(when Scoring.spend_cohort is set) as a multiple of the cohort's 90th percentile",
        ramps=(
            Ramp("spend_share", "scoring", "spend_share"),
            Ramp("spend_cohort", "scoring", "spend_cohort"),
        ),
    ),
)

SIGNAL_NAMES: tuple[str, ...] = tuple(s.name for s in SIGNALS)
RAMPS: tuple[Ramp, ...] = tuple(r for s in SIGNALS for r in s.ramps)
DEFAULT_WEIGHTS: dict[str, float] = {s.name: s.weight for s in SIGNALS}
DEFAULT_WEAK_SIGNALS: frozenset[str] = frozenset(s.name for s in SIGNALS if s.weak)


def signal_index(name: str) -> int:
    """The slot (and reason bit) of the signal ``name``."""
    return SIGNAL_NAMES.index(name)
