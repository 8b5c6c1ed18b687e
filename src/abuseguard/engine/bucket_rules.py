"""How risk and NAT fairness scale the token buckets, written once.

These are plain Python functions: the kernel compiles them (``njit(inline="always")`` in
`kernels`), and code outside the kernel that plans or syncs the same buckets (the Redis
planner, the syncer, the failover) can call them as they are, so that every place a bucket
is refilled follows the same rule. tests/test_bucket_model.py checks them against the
kernel's decisions.
"""

from __future__ import annotations


def risk_refill_factor(
    coupling_score: float, coupling: float, risk_floor: float, min_factor: float
) -> float:
    """The share of the key bucket's refill rate left at this risk.

    ``coupling_score`` is the smoothed score while a strong signal holds, else 0
    (`layout.F_COUPLING_SCORE`). Scores up to ``risk_floor`` leave the refill alone; above
    it the factor falls linearly with ``coupling`` per unit of risk above the floor
    (rescaled to 0..1), and never below ``min_factor``. With the policy's
    `TokenBucket.risk_coupling`, `risk_floor` and `min_refill_factor`."""
    factor = 1.0
    risk = coupling_score - risk_floor
    if risk > 0.0:
        factor = 1.0 - coupling * risk / (1.0 - risk_floor)
    if factor < min_factor:
        factor = min_factor
    return factor


def nat_multiplier(fan_in: float, eligible: bool, per_account: float, nat_max: float) -> float:
    """How much an IP's or prefix's bucket (rate and burst) grows with the distinct
    accounts behind it: ``1 + per_account * (fan_in - 1)``, at most ``nat_max``; 1 when the
    network is not eligible (`NetworkProfile.nat_eligible`) or one account at most is seen.
    ``per_account`` is 0 when `NetworkPolicy.nat_fairness` is off."""
    multiplier = 1.0
    if eligible and fan_in > 1.0:
        multiplier = 1.0 + per_account * (fan_in - 1.0)
        if multiplier > nat_max:
            multiplier = nat_max
    return multiplier
