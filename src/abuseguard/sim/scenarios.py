"""The scenario library and the named mixes.

A scenario is a parameter dataclass (its docstring says what it simulates, its fields
are the knobs with their defaults) and a builder that turns the parameters into sources.
A mix names scenarios with parameter overrides; ``default`` is the mix the detection
targets are measured on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from abuseguard.sim import abusive, benign, capable
from abuseguard.sim.core import SimContext, Source


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    params: type[Any]
    build: Callable[[SimContext, Any], list[Source]]

    @property
    def summary(self) -> str:
        doc = (self.params.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.name

    def make_params(self, overrides: Mapping[str, Any] | None = None) -> Any:
        return dataclasses.replace(self.params(), **dict(overrides or {}))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("browser_chat", "benign", benign.BrowserChat, benign.browser_chat),
        Scenario("sdk_backend", "benign", benign.SdkBackend, benign.sdk_backend),
        Scenario("campus_nat", "benign", benign.CampusNat, benign.campus_nat),
        Scenario("mobile_roaming", "benign", benign.MobileRoaming, benign.mobile_roaming),
        Scenario("corporate_vpn", "benign", benign.CorporateVpn, benign.corporate_vpn),
        Scenario("resi_pool", "abusive", abusive.ResiPool, abusive.resi_pool),
        Scenario("router", "abusive", abusive.Router, abusive.router),
        Scenario("bulk_harvest", "abusive", abusive.BulkHarvest, abusive.bulk_harvest),
        Scenario("low_and_slow", "abusive", abusive.LowAndSlow, abusive.low_and_slow),
        Scenario("tor", "abusive", abusive.Tor, abusive.tor),
        Scenario("eval_harness", "benign", capable.EvalHarness, capable.eval_harness),
        Scenario("researcher", "benign", capable.Researcher, capable.researcher),
        Scenario("prompt_dev", "benign", capable.PromptDev, capable.prompt_dev),
        Scenario(
            "multilingual_chat", "benign", capable.MultilingualChat, capable.multilingual_chat
        ),
        Scenario("hydra", "abusive", capable.Hydra, capable.hydra),
        Scenario("trace_coercion", "abusive", capable.TraceCoercion, capable.trace_coercion),
        Scenario("reseller", "abusive", capable.Reseller, capable.reseller),
    )
}

# The first version's scenarios: the ``default`` and ``hard`` mixes keep to them, so their
# reports stay comparable across releases.
CLASSIC = (
    "browser_chat", "sdk_backend", "campus_nat", "mobile_roaming", "corporate_vpn",
    "resi_pool", "router", "bulk_harvest", "low_and_slow", "tor",
)  # fmt: skip
BENIGN = tuple(name for name, s in SCENARIOS.items() if s.label == "benign")
ABUSIVE = tuple(name for name, s in SCENARIOS.items() if s.label == "abusive")

Mix = dict[str, dict[str, Any]]

MIXES: dict[str, Mix] = {
    # The detection targets are measured on this one: every scenario at its defaults.
    "default": {name: {} for name in CLASSIC},
    "benign": {name: {} for name in BENIGN if name in CLASSIC},
    "abusive": {name: {} for name in ABUSIVE if name in CLASSIC},
    # Harder variants of every scenario: fewer flagged exits, looser cadence, better
    # forgeries, more legitimate automation. For checking that tuning generalises.
    "hard": {
        "browser_chat": {"heavy_share": 0.15, "vpn_share": 0.12, "flagged_home_share": 0.05},
        "sdk_backend": {"apps": 40, "rate_median": 0.15, "batch_share": 0.5},
        "campus_nat": {"students": 160, "assignment_share": 0.6},
        "mobile_roaming": {"users": 120, "handover_share": 0.4},
        "corporate_vpn": {"companies": 5, "sdk_share": 0.3},
        "resi_pool": {
            "flagged_share": 0.3,
            "jitter": 0.4,
            "sticky_share": 0.7,
            "elicitation_share": 0.3,
        },
        "router": {"accounts_per_router": 120, "egress_ips_max": 12},
        "bulk_harvest": {"workers_max": 4, "home_share": 0.6},
        "low_and_slow": {
            "jitter": 0.35,
            "shared_persona_share": 0.2,
            "shared_templates": 6,
            "flagged_share": 0.2,
            "interval_median": 900.0,
        },
        "tor": {"browser_share": 0.7},
    },
    # The capable adversary of 2026 (sim/capable.py: hydra operations on unflagged
    # residential exits with genuine personas, a multilingual trace-coercion campaign, a
    # reseller forging the SDK exactly) among the honest users a detector hurts: eval
    # harnesses, researchers asking for step-by-step reasoning, students behind one NAT
    # pasting one assignment, SDK backends, prompt developers, people writing in their own
    # language. Written from public accounts, not from the detector.
    "capable": {
        "browser_chat": {},
        "sdk_backend": {"apps": 30},
        "campus_nat": {"assignment_share": 0.6},
        "mobile_roaming": {},
        "corporate_vpn": {},
        "eval_harness": {},
        "researcher": {},
        "prompt_dev": {},
        "multilingual_chat": {},
        "hydra": {},
        "trace_coercion": {},
        "reseller": {},
    },
}


# Mixes whose traces carry the host app's account facts (the ``account`` field) by default.
FACTS_MIXES = frozenset({"capable"})


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"resi_pool.jitter=0.3"`` -> ("resi_pool", "jitter", 0.3), typed by the field."""
    target, sep, raw = text.partition("=")
    scenario_name, dot, field_name = target.strip().partition(".")
    if not sep or not dot:
        raise ValueError(f"expected SCENARIO.PARAM=VALUE, got {text!r}")
    scenario = SCENARIOS.get(scenario_name)
    if scenario is None:
        raise ValueError(f"unknown scenario {scenario_name!r} (known: {', '.join(SCENARIOS)})")
    fields = {f.name: f for f in dataclasses.fields(scenario.params)}
    if field_name not in fields:
        raise ValueError(
            f"{scenario_name} has no parameter {field_name!r} (known: {', '.join(fields)})"
        )
    default = getattr(scenario.params(), field_name)
    raw = raw.strip()
    value: Any
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value = raw.lower() in ("true", "1", "yes")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise ValueError(
            f"{scenario_name}.{field_name} expects {type(default).__name__}, got {raw!r}"
        ) from None
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ValueError(f"{scenario_name}.{field_name} must be >= 0, got {raw!r}")
    return scenario_name, field_name, value
