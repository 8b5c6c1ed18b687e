"""The policy's limits as numbers, compiled once from a `Policy`.

The Redis planner (inline mode), the syncer (synced mode), the Cluster network sync and the
failover read the token buckets, quotas and concurrency limit from one `CompiledLimits`
built when the backend is attached, and apply the kernel's two bucket rules through the
functions re-exported here: the risk-scaled refill of the key bucket (`risk_refill_factor`)
and the NAT multiplier of the per-IP and per-prefix buckets (`nat_multiplier`). They are
`engine/bucket_rules.py`'s, the very functions the kernel compiles, so the Python side and
the kernel cannot drift (tests/test_compiled_limits.py, tests/test_bucket_model.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from abuseguard.engine import layout as L
from abuseguard.engine.bucket_rules import nat_multiplier, risk_refill_factor
from abuseguard.policy import Concurrency, Policy, Quota, TokenBucket


class NetworkBucket(NamedTuple):
    """A per-IP, per-prefix or per-ASN bucket of the policy (``kind``: engine layout kind)."""

    kind: int
    bucket: TokenBucket
    shadow: bool  # the bucket's own shadow flag or the network policy's


@dataclass(frozen=True, slots=True)
class CompiledLimits:
    """The limits of a `Policy` as the backends read them. Build with `from_policy`."""

    key_bucket: TokenBucket | None
    network_buckets: tuple[NetworkBucket, ...]
    quotas: tuple[Quota, ...]
    quota_names: tuple[str, ...]
    concurrency: Concurrency | None
    # The lowest load factor the guard applies to every refill (1 when load_target is off).
    load_floor: float
    # The slowest refill of the key bucket (risk and load at their floors): its keys' TTL.
    key_ttl_rate: float
    nat_per_account: float  # 0 when NAT fairness is off
    nat_max: float

    @classmethod
    def from_policy(cls, policy: Policy) -> CompiledLimits:
        bucket = policy.bucket
        load_floor = 0.1 if policy.load_target > 0 else 1.0
        network = policy.network
        network_buckets: list[NetworkBucket] = []
        if network is not None:
            for kind, net_bucket in (
                (L.KIND_IP, network.per_ip),
                (L.KIND_PREFIX, network.per_prefix),
                (L.KIND_ASN, network.per_asn),
            ):
                if net_bucket is not None:
                    network_buckets.append(
                        NetworkBucket(kind, net_bucket, net_bucket.shadow or network.shadow)
                    )
        concurrency = policy.concurrency
        return cls(
            key_bucket=bucket,
            network_buckets=tuple(network_buckets),
            quotas=tuple(policy.quotas),
            quota_names=tuple(q.name or "quota" for q in policy.quotas),
            concurrency=concurrency if isinstance(concurrency, Concurrency) else None,
            load_floor=load_floor,
            key_ttl_rate=(
                bucket.per_second * bucket.min_refill_factor * load_floor if bucket else 0.0
            ),
            nat_per_account=(
                network.nat_per_account if network is not None and network.nat_fairness else 0.0
            ),
            nat_max=network.nat_max if network is not None else 1.0,
        )

    def key_refill_factor(self, coupling_score: float) -> float:
        """`risk_refill_factor` with the key bucket's parameters (1 without a key bucket)."""
        bucket = self.key_bucket
        if bucket is None:
            return 1.0
        return risk_refill_factor(
            coupling_score, bucket.risk_floor, bucket.risk_coupling, bucket.min_refill_factor
        )

    def nat_multiplier(self, eligible: bool, fan_in: float) -> float:
        """`nat_multiplier` with the network policy's parameters; 1 when not ``eligible``."""
        if not eligible:
            return 1.0
        return nat_multiplier(fan_in, self.nat_per_account, self.nat_max)

    def bucket_vector(self) -> list[float]:
        """(rate, burst) of every kind's bucket, in the kernel's parameter order (0, 0 where
        the policy has none): the kernel's bucket parameters when it enforces the buckets."""
        vector = [0.0] * (2 * L.N_KINDS)
        bucket = self.key_bucket
        if bucket is not None:
            vector[2 * L.KIND_KEY] = bucket.per_second
            vector[2 * L.KIND_KEY + 1] = bucket.capacity
        for net in self.network_buckets:
            vector[2 * net.kind] = net.bucket.per_second
            vector[2 * net.kind + 1] = net.bucket.capacity
        return vector

    def network_bucket(self, kind: int) -> NetworkBucket | None:
        for net in self.network_buckets:
            if net.kind == kind:
                return net
        return None


__all__ = ["CompiledLimits", "NetworkBucket", "nat_multiplier", "risk_refill_factor"]
