"""One compiled policy for the backends (issue 15 item 2): `CompiledLimits` and its two
bucket rules, the risk-scaled refill and the NAT multiplier, against the kernel; the Redis
backends read their numbers from it."""

from __future__ import annotations

import numpy as np
import pytest

from abuseguard import Guard, NetworkPolicy, Policy, RequestInfo, Scoring, TokenBucket
from abuseguard.compiled import CompiledLimits, nat_multiplier, risk_refill_factor
from abuseguard.engine import layout as L
from abuseguard.engine.params import build_params
from abuseguard.policy import Concurrency, Quota


@pytest.mark.parametrize(
    "bucket",
    [
        TokenBucket(2.0, burst=50),
        TokenBucket(2.0, burst=50, risk_coupling=1.0, min_refill_factor=0.5, risk_floor=0.2),
    ],
)
def test_the_refill_rule_is_the_kernels(bucket: TokenBucket) -> None:
    """Drive one client's smoothed score up through the risk floor (a strong signal kept
    fresh, so the score couples to the refill) and predict each refill with the Python
    rule: the kernel's remaining tokens must match it exactly, clamped factors included
    (the ladder's refusals at the high scores charge nothing)."""
    guard = Guard(Policy(bucket=bucket, scoring=Scoring(), network=None))
    compiled = CompiledLimits.from_policy(guard.policy)
    table = guard.engine.tables[L.KIND_KEY]
    ts = 1000.0
    previous: float | None = None
    factors = set()
    for step in range(14):
        decision = guard.check(RequestInfo(ip="192.0.2.1", key="k1", ts=ts, cost=3.0))
        row = table.index[decision.identity]
        coupling = float(table.data[row, L.F_COUPLING_SCORE])
        assert decision.remaining is not None
        if previous is not None:
            factor = compiled.key_refill_factor(coupling)
            factors.add(factor)
            refilled = min(bucket.capacity, previous + 1.0 * bucket.per_second * factor)
            expected = refilled - 3.0 if decision.served else refilled  # a refusal costs 0
            assert decision.remaining == expected, (step, coupling)
        previous = decision.remaining
        table.data[row, L.F_STRONG_UNTIL] = 1e12  # corroborated: the score couples
        table.data[row, L.F_SCORE] = 0.25 + 0.06 * step
        ts += 1.0
    # the walk saw several slowed rates and (second bucket) the floor
    assert len(factors) > 5 and min(factors) < 0.9
    if bucket.min_refill_factor == 0.5:
        assert 0.5 in factors


def test_the_rules_as_functions() -> None:
    assert risk_refill_factor(0.3, 0.3, 0.8, 0.1) == 1.0
    assert risk_refill_factor(0.65, 0.3, 0.8, 0.1) == pytest.approx(0.6)
    assert risk_refill_factor(1.0, 0.3, 1.0, 0.25) == 0.25
    assert nat_multiplier(1.0, 0.5, 50.0) == 1.0
    assert nat_multiplier(5.0, 0.5, 50.0) == 3.0
    assert nat_multiplier(500.0, 0.5, 50.0) == 50.0


def test_the_nat_multiplier_is_the_kernels() -> None:
    """Accounts behind one IP widen its bucket as the kernel computes it: with a per-IP
    bucket of burst 4 and k accounts seen, the IP admits the multiplied burst."""
    network = NetworkPolicy(per_ip=TokenBucket("1/hour", burst=4), nat_per_account=0.5)
    policy = Policy(bucket=None, network=network, scoring=Scoring())
    compiled = CompiledLimits.from_policy(policy)
    guard = Guard(policy)
    accounts = 9
    for i in range(accounts):  # the fan-in sketch learns 9 accounts
        guard.check(RequestInfo(ip="203.0.113.9", key=f"acct-{i}", ts=1.0 + i * 1e-3))
    fan_in = float(guard.engine.io[L.O_FANIN])
    assert fan_in > 1.0
    multiplier = compiled.nat_multiplier(True, fan_in)
    assert multiplier == nat_multiplier(fan_in, 0.5, network.nat_max) > 1.0
    assert compiled.nat_multiplier(False, fan_in) == 1.0


def test_compiled_numbers_are_the_kernels_bucket_parameters() -> None:
    policy = Policy(
        bucket=TokenBucket("30/minute", burst=12),
        network=NetworkPolicy(
            per_ip=TokenBucket("5/second", burst=20),
            per_asn=TokenBucket("100/second", burst=300, shadow=True),
            nat_fairness=False,
        ),
        quotas=(Quota("100/day", name="daily"), Quota("5/minute")),
        concurrency=Concurrency(limit=3),
        load_target=64,
    )
    compiled = CompiledLimits.from_policy(policy)
    kernel = build_params(policy, local_buckets=True)[L.P_BUCKET : L.P_BUCKET + 2 * L.N_KINDS]
    assert np.array_equal(np.array(compiled.bucket_vector()), kernel)
    assert [(n.kind, n.shadow) for n in compiled.network_buckets] == [
        (L.KIND_IP, False),
        (L.KIND_ASN, True),
    ]
    assert compiled.quota_names == ("daily", "quota-5-60s")
    assert compiled.concurrency == Concurrency(limit=3)
    assert compiled.load_floor == 0.1 and compiled.nat_per_account == 0.0
    assert compiled.key_ttl_rate == pytest.approx(0.5 * 0.1 * 0.1)


def test_the_redis_backends_read_the_compiled_limits() -> None:
    from abuseguard.backends.redis import RedisBackend, SyncedRedisBackend

    policy = Policy(
        bucket=TokenBucket("30/minute", burst=12),
        network=NetworkPolicy(per_prefix=TokenBucket("50/second", burst=80)),
    )
    inline = Guard(policy, backend=RedisBackend("redis://127.0.0.1:1/0"))
    synced = Guard(policy, backend=SyncedRedisBackend("redis://127.0.0.1:1/0", workers=2))
    expected = CompiledLimits.from_policy(policy)
    for guard in (inline, synced):
        backend = guard.backend
        assert isinstance(backend, RedisBackend)
        assert backend.limits == expected
    synced_backend = synced.backend
    assert isinstance(synced_backend, SyncedRedisBackend)
    syncer = synced_backend.syncer
    assert syncer is not None
    assert syncer.rates == expected.bucket_vector()[0::2]
    assert syncer.bursts == expected.bucket_vector()[1::2]
