"""How risk and NAT fairness scale the token buckets, written once.

These are plain Python functions: the kernel compiles them (``njit(inline="always")`` in
`kernels`), and code outside the kernel that plans or syncs the same buckets (the Redis
planner, the syncer, the failover) can call them as they are, so that every place a bucket
is refilled follows the same rule. tests/test_bucket_model.py checks them against the
kernel's decisions.
"""

from __future__ import annotations


def risk_refill_factor(
    coupling_score: float, risk_floor: float, risk_coupling: float, min_refill_factor: float
) -> float:
    """The share of the key bucket's refill rate left at this risk.

    ``coupling_score`` is the smoothed score while a strong signal holds, else 0
    (`layout.F_COUPLING_SCORE`). Scores up to ``risk_floor`` leave the refill alone; above
    it the factor falls linearly by ``risk_coupling`` per unit of risk above the floor
    (rescaled to 0..1), and never below ``min_refill_factor``: the policy's
    `TokenBucket.risk_floor`, `risk_coupling` and `min_refill_factor`."""
    factor = 1.0
    risk = coupling_score - risk_floor
    if risk > 0.0:
        factor = 1.0 - risk_coupling * risk / (1.0 - risk_floor)
    if factor < min_refill_factor:
        factor = min_refill_factor
    return factor


def key_bucket_shape(
    plan_rate: float, plan_burst: float, rate: float, burst: float
) -> tuple[float, float]:
    """The key bucket's (rate, burst) for one client: its plan's bucket (`Policy.plans`)
    when the plan has one (``plan_burst`` > 0), in place of the policy's (``rate``,
    ``burst``). Risk, load and the shadow flag then apply to it as to the policy's."""
    if plan_burst > 0.0:
        return plan_rate, plan_burst
    return rate, burst


def nat_multiplier(fan_in: float, per_account: float, most: float) -> float:
    """How much the bucket (rate and burst) of a NAT-eligible IP or prefix grows with the
    ``fan_in`` distinct accounts behind it: ``1 + per_account * (fan_in - 1)``, at most
    ``most`` (`NetworkPolicy.nat_max`); ``per_account`` is 0 when
    `NetworkPolicy.nat_fairness` is off. The caller checks the eligibility
    (`NetworkProfile.nat_eligible`)."""
    if fan_in <= 1.0:
        return 1.0
    multiplier = 1.0 + per_account * (fan_in - 1.0)
    return most if multiplier > most else multiplier
