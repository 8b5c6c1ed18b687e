"""The review's mends on the request path: one computation where there were two."""

from __future__ import annotations

import itertools

import pytest

from abuseguard import Action, Enforcement, Guard, NetworkPolicy, Policy, TokenBucket
from abuseguard.backends.memory import MemoryBackend
from abuseguard.engine import layout as L
from abuseguard.engine.params import bucket_kinds


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_peek_quota_answers_what_hit_quota_would_without_counting(strategy: str) -> None:
    now = [1000.0]
    backend = MemoryBackend()
    backend.bind(lambda: now[0])
    for _ in range(3):
        peeked = backend.peek_quota("5/minute", strategy, "k:a", 1)
        # nothing counted (the sliding window counter's reset follows the wall clock)
        assert peeked[:2] == backend.peek_quota("5/minute", strategy, "k:a", 1)[:2]
        hit = backend.hit_quota("5/minute", strategy, "k:a", 1)
        assert peeked[0] == hit[0]
        assert hit[1] == peeked[1] - 1  # the same window, one hit later
        now[0] += 1.0
    assert backend.peek_quota("5/minute", strategy, "k:a", 3)[:2] == (
        False,
        backend.quota_state("5/minute", strategy, "k:a")[0],
    )
    assert backend.peek_quota("5/minute", strategy, "k:a", 0)[0]


def _per_bucket_shadow(policy: Policy, denied: int) -> bool:
    """The definition `Guard._bucket_shadow` had before it read the shadow-kinds mask:
    every refusing bucket shadowed by its own flag (or, for a network one, the network's)."""
    shadows = []
    if denied & (1 << L.KIND_KEY) and policy.bucket is not None:
        shadows.append(policy.bucket.shadow)
    network = policy.network
    if network is not None:
        for kind, bucket in (
            (L.KIND_IP, network.per_ip),
            (L.KIND_PREFIX, network.per_prefix),
            (L.KIND_ASN, network.per_asn),
        ):
            if denied & (1 << kind) and bucket is not None:
                shadows.append(bucket.shadow or network.shadow)
    return bool(shadows) and all(shadows)


def _bucket(shadow: bool | None) -> TokenBucket | None:
    return None if shadow is None else TokenBucket("10/second", burst=10, shadow=shadow)


_CHOICES = (None, False, True)


@pytest.mark.parametrize("policy_wide", ["off", "policy.shadow", "throttle shadowed"])
def test_bucket_shadow_from_the_mask_agrees_with_the_per_bucket_definition(
    policy_wide: str,
) -> None:
    """The mask and the per-bucket loop agree on every combination of buckets, their shadow
    flags and refusing kinds; with a policy-wide shadow (`Policy.shadow`, THROTTLE in
    `Enforcement.shadow_actions`) every refusing bucket is shadowed, as the kernel has it."""
    compared = 0
    for key, ip, prefix, asn in itertools.product(_CHOICES, repeat=4):
        networks: list[NetworkPolicy | None] = [None]
        if (ip, prefix, asn) != (None, None, None):
            networks = [
                NetworkPolicy(
                    per_ip=_bucket(ip),
                    per_prefix=_bucket(prefix),
                    per_asn=_bucket(asn),
                    shadow=network_shadow,
                    nat_fairness=False,
                )
                for network_shadow in (False, True)
            ]
        for network in networks:
            policy = Policy(
                bucket=_bucket(key),
                network=network,
                shadow=policy_wide == "policy.shadow",
                enforcement=Enforcement(
                    shadow_actions=(
                        frozenset({Action.THROTTLE})
                        if policy_wide == "throttle shadowed"
                        else frozenset()
                    )
                ),
            )
            guard = Guard(policy)
            for denied in range(1 << L.N_KINDS):
                expected = _per_bucket_shadow(policy, denied)
                if policy_wide != "off":
                    expected = bool(denied & bucket_kinds(policy))
                assert guard._bucket_shadow(denied) == expected, (policy, denied)
                compared += 1
    assert compared > 1000
