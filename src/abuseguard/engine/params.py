"""The kernel's parameter vector, built once from a Policy: the one place the kernel's
numbers come from. The signals' weights, weak mask and ramps follow their declarations
(`signals.SIGNALS`); the slots are allocated in `layout`."""

from __future__ import annotations

import numpy as np

from abuseguard.decision import Action
from abuseguard.engine import layout as L
from abuseguard.engine.signals import SIGNALS
from abuseguard.policy import DEFAULT_CLIENT_RISK, Policy, Scoring, TokenBucket

_CLIENT_CLASS_ORDER = (
    "empty",
    "browser",
    "mobile",
    "sdk",
    "script",
    "headless",
    "crawler",
    "unknown",
)


def _set_bucket(prm: np.ndarray, kind: int, bucket: TokenBucket | None) -> None:
    if bucket is not None:
        prm[L.P_BUCKET + 2 * kind] = bucket.per_second
        prm[L.P_BUCKET + 2 * kind + 1] = bucket.capacity


def plan_slots(policy: Policy) -> dict[str, int]:
    """The plans (`Policy.plans`) the kernel tells apart: those with their own bucket, which
    replaces the policy's for their clients, or their own quotas, which replace the policy's
    (and so the spend allowance). Plan name -> its slot (1-based) in ``P_PLAN_BUCKET``,
    ``P_PLAN_ALLOWANCE`` and the key row's ``F_PLAN``: the plans with a bucket first (each
    needs its slot; more than ``MAX_PLAN_BUCKETS`` of them is an error where the slots are
    used), then the plans with only quotas while slots remain (one left without a slot has
    its clients' signals measured against the app-wide allowances), each in policy order."""
    slots: dict[str, int] = {}
    for name, limits in policy.plans.items():
        if limits.bucket is not None:
            slots[name] = len(slots) + 1
    for name, limits in policy.plans.items():
        if limits.bucket is None and limits.quotas and len(slots) < L.MAX_PLAN_BUCKETS:
            slots[name] = len(slots) + 1
    return slots


def build_params(policy: Policy, *, local_buckets: bool = True) -> np.ndarray:
    """Parameters for `kernels.decide`. With ``local_buckets`` False (a shared backend holds
    the buckets) every bucket is off in the kernel, which then only observes and scores."""
    prm = np.zeros(L.N_PARAMS, dtype=np.float64)
    network = policy.network
    if local_buckets:
        _set_bucket(prm, L.KIND_KEY, policy.bucket)
        if network is not None:
            _set_bucket(prm, L.KIND_IP, network.per_ip)
            _set_bucket(prm, L.KIND_PREFIX, network.per_prefix)
            _set_bucket(prm, L.KIND_ASN, network.per_asn)
        for name, slot in plan_slots(policy).items():
            plan_bucket = policy.plans[name].bucket
            if slot <= L.MAX_PLAN_BUCKETS and plan_bucket is not None:
                prm[L.P_PLAN_BUCKET + 2 * (slot - 1)] = plan_bucket.per_second
                prm[L.P_PLAN_BUCKET + 2 * (slot - 1) + 1] = plan_bucket.capacity
    bucket = policy.bucket
    prm[L.P_COUPLING] = bucket.risk_coupling if bucket is not None else 0.0
    prm[L.P_MIN_FACTOR] = bucket.min_refill_factor if bucket is not None else 1.0
    prm[L.P_RISK_FLOOR] = bucket.risk_floor if bucket is not None else 0.0
    prm[L.P_BASELINE_AGE] = 600.0
    # Volume and burst are measured against the key bucket as configured, whether the kernel
    # or a shared backend enforces it; without a bucket, against 1 request per second.
    prm[L.P_ALLOWANCE_RATE] = bucket.per_second if bucket is not None else 1.0
    prm[L.P_ALLOWANCE_BURST] = bucket.capacity if bucket is not None else 0.0

    scoring = policy.scoring if policy.scoring is not None else Scoring(enabled=False)
    prm[L.P_SCORING] = 1.0 if scoring.enabled else 0.0
    prm[L.P_TAU_SHORT] = 10.0
    prm[L.P_TAU_LONG] = 1800.0
    prm[L.P_ALPHA_IA] = 0.1
    prm[L.P_ERR_ALPHA] = 0.1
    prm[L.P_MIN_EVENTS] = float(scoring.min_events)
    prm[L.P_HORIZON] = scoring.sketch_horizon
    prm[L.P_CMS_HALF_LIFE] = scoring.sketch_horizon
    prm[L.P_HAMMING] = 6.0
    prm[L.P_BIAS] = scoring.bias
    prm[L.P_REASON_MIN] = scoring.reason_min
    weak_mask = 0
    for s, signal in enumerate(SIGNALS):
        prm[L.P_WEIGHTS + s] = scoring.weights[signal.name]
        if signal.name in scoring.weak_signals:
            weak_mask |= 1 << s
        for ramp in signal.ramps:
            lo, hi = L.RAMP_PARAMS[ramp.param]
            section = scoring if ramp.section == "scoring" else network
            value = None if section is None else getattr(section, ramp.field)
            prm[lo], prm[hi] = ramp.absent if value is None else value
    prm[L.P_WEAK_MASK] = float(weak_mask)
    for c, name in enumerate(_CLIENT_CLASS_ORDER):
        prm[L.P_CLIENT_RISK + c] = scoring.client_risk.get(name, DEFAULT_CLIENT_RISK[name])
    if network is not None:
        prm[L.P_NAT_PER_ACCOUNT] = network.nat_per_account if network.nat_fairness else 0.0
        prm[L.P_NAT_MAX] = network.nat_max
        for kind, scale in zip(
            (L.KIND_IP, L.KIND_PREFIX, L.KIND_ASN, L.KIND_PERSONA),
            network.fan_in_scales,
            strict=True,
        ):
            prm[L.P_FANIN_SCALE + kind] = scale
    else:
        prm[L.P_FANIN_SCALE : L.P_FANIN_SCALE + L.N_KINDS] = 1.0
        prm[L.P_NAT_MAX] = 1.0

    enforcement = policy.enforcement
    ladder = enforcement.ladder if scoring.enabled else ()
    prm[L.P_LADDER_N] = len(ladder)
    prm[L.P_LADDER_SERVES] = 1.0
    for i, (threshold, action) in enumerate(ladder):
        prm[L.P_LADDER + i] = threshold
        served = serves(Action(action)) or shadowed(policy, Action(action))
        prm[L.P_LADDER_SERVES + i + 1] = 1.0 if served else 0.0
    prm[L.P_SHADOW_KINDS] = float(shadow_kinds(policy))
    serving_levels = 0
    for _, action in ladder:
        if not serves(Action(action)):
            break
        serving_levels += 1
    prm[L.P_SERVING_LEVELS] = serving_levels
    prm[L.P_HYSTERESIS] = enforcement.hysteresis
    prm[L.P_SCORE_ALPHA] = enforcement.score_alpha
    prm[L.P_SCORE_HALF_LIFE] = enforcement.score_half_life
    prm[L.P_BAN_LEVEL] = enforcement.ban_level()
    prm[L.P_BAN_SECONDS] = enforcement.ban_seconds
    _set_evidence(prm, scoring, ladder)
    _set_spend(prm, policy)
    _set_plan_allowances(prm, policy)
    return prm


# Spend is read as cost units per day; the decayed sum forgets over a day.
SECONDS_PER_DAY = 86400.0
SPEND_MIN_AGE = 3600.0
SPEND_QUANTILE = 0.9
SPEND_STEP = 0.05
SPEND_SAMPLE_SECONDS = 600.0


def _set_evidence(
    prm: np.ndarray, scoring: Scoring, ladder: tuple[tuple[float, Action | str], ...]
) -> None:
    """The evidence steps as ladder levels: each holds the first ladder step at least as
    severe as its action (the top step when none is). No ladder, no steps."""
    evidence = scoring.evidence
    prm[L.P_EV_DRIFT] = evidence.drift
    prm[L.P_EV_WEAK_CAP] = evidence.weak_cap
    prm[L.P_EV_SIGNAL_CAP] = evidence.signal_cap
    prm[L.P_EV_MAX_STEP] = evidence.max_step
    prm[L.P_EV_HALF_LIFE] = evidence.half_life
    prm[L.P_EV_QUIET] = evidence.quiet_period
    if not evidence.enabled or not ladder:
        return
    for i, (threshold, action) in enumerate(evidence.steps):
        severity = Action(action).severity
        level = next(
            (n + 1 for n, (_, a) in enumerate(ladder) if Action(a).severity >= severity),
            len(ladder),
        )
        prm[L.P_EV_THRESHOLD + i] = threshold
        prm[L.P_EV_LEVEL + i] = level
    prm[L.P_EV_STEPS_N] = len(evidence.steps)


def spend_allowance(policy: Policy, plan: str | None = None) -> float:
    """The key's allowance of real cost per day: the key bucket's rate when it counts the
    cost a response header reports, else the tightest by-cost key quota; 0 when neither.
    For a client of ``plan``, the plan's bucket and quotas where it sets them
    (`Policy.plans`); the reported cost is read as the app-wide bucket says."""
    limits = policy.plans.get(plan) if plan is not None else None
    quotas = limits.quotas if limits is not None and limits.quotas else policy.quotas
    allowances = [
        q.amount / q.window * SECONDS_PER_DAY for q in quotas if q.by_cost and q.per == "key"
    ]
    bucket = policy.bucket
    if bucket is not None and bucket.cost_header is not None:
        plan_bucket = limits.bucket if limits is not None else None
        rate = plan_bucket.per_second if plan_bucket is not None else bucket.per_second
        allowances.append(rate * SECONDS_PER_DAY)
    return min(allowances) if allowances else 0.0


def _set_spend(prm: np.ndarray, policy: Policy) -> None:
    prm[L.P_SPEND_TAU] = SECONDS_PER_DAY
    prm[L.P_SPEND_MIN_AGE] = SPEND_MIN_AGE
    prm[L.P_SPEND_ALLOWANCE] = spend_allowance(policy)
    prm[L.P_SPEND_QUANTILE] = SPEND_QUANTILE
    prm[L.P_SPEND_STEP] = SPEND_STEP
    prm[L.P_SPEND_SAMPLE] = SPEND_SAMPLE_SECONDS


def _set_plan_allowances(prm: np.ndarray, policy: Policy) -> None:
    """What volume, burst and spend measure a plan's client against (`plan_slots`): its
    plan's bucket and spend allowance, the policy's where the plan sets none. Set whether
    or not the kernel holds the buckets, as ``P_ALLOWANCE_*`` are."""
    for name, slot in plan_slots(policy).items():
        if slot > L.MAX_PLAN_BUCKETS:
            break
        base = L.P_PLAN_ALLOWANCE + L.PLAN_ALLOWANCE_WIDTH * (slot - 1)
        plan_bucket = policy.plans[name].bucket
        if plan_bucket is not None:
            prm[base + L.PA_RATE] = plan_bucket.per_second
            prm[base + L.PA_BURST] = plan_bucket.capacity
        else:
            prm[base + L.PA_RATE] = prm[L.P_ALLOWANCE_RATE]
            prm[base + L.PA_BURST] = prm[L.P_ALLOWANCE_BURST]
        prm[base + L.PA_SPEND] = spend_allowance(policy, name)


def serves(action: Action) -> bool:
    """Whether a request under this action reaches the app (and so spends tokens)."""
    return action in (Action.ALLOW, Action.LOG, Action.DELAY, Action.DEGRADE)


def shadowed(policy: Policy, action: Action) -> bool:
    """Whether a ladder level's action is only reported (shadow): its requests are served,
    so they spend tokens as an allow does."""
    enforcement = policy.enforcement
    return policy.shadow or enforcement.shadow or action in enforcement.shadow_actions


def shadow_kinds(policy: Policy) -> int:
    """Bitmask of the kinds (key, ip, prefix, asn) whose bucket refusals are shadowed: such
    a request is served, so it is charged as an allow and nobody is told to wait."""
    if policy.shadow or Action.THROTTLE in policy.enforcement.shadow_actions:
        return (1 << L.N_KINDS) - 1
    mask = 0
    if policy.bucket is not None and policy.bucket.shadow:
        mask |= 1 << L.KIND_KEY
    network = policy.network
    if network is not None:
        for kind, bucket in (
            (L.KIND_IP, network.per_ip),
            (L.KIND_PREFIX, network.per_prefix),
            (L.KIND_ASN, network.per_asn),
        ):
            if bucket is not None and (bucket.shadow or network.shadow):
                mask |= 1 << kind
    return mask


def bucket_kinds(policy: Policy) -> int:
    """Bitmask of the kinds (key, ip, prefix, asn) that have a token bucket."""
    mask = 1 << L.KIND_KEY if policy.bucket is not None else 0
    network = policy.network
    if network is not None:
        for kind, bucket in (
            (L.KIND_IP, network.per_ip),
            (L.KIND_PREFIX, network.per_prefix),
            (L.KIND_ASN, network.per_asn),
        ):
            if bucket is not None:
                mask |= 1 << kind
    return mask
