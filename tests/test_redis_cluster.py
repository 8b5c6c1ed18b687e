"""RedisBackend on a real 3-node Redis Cluster (started by the session fixture).

One identity's keys share a slot; limits stay exact across workers; per-IP quotas of an
account go to the IP's slot; network buckets and fan-in sync in the background; scripts
flushed on every node are loaded again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
import redis

from abuseguard import (
    Action,
    Decision,
    Guard,
    NetworkPolicy,
    Policy,
    Quota,
    RequestInfo,
    TokenBucket,
)
from abuseguard.backends.redis import RedisBackend
from abuseguard.engine.layout import F_SKETCH_EST
from tests.conftest import RedisClusterServers

pytestmark = pytest.mark.redis

T = TypeVar("T")
_names = itertools.count()


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def cluster_backend(cluster: RedisClusterServers, name: str, **kw: Any) -> RedisBackend:
    kw.setdefault("budget", 0.5)
    backend = RedisBackend.from_uri(cluster.url + f"?prefix={name}")
    for key, value in kw.items():
        setattr(backend, key, value)
    return backend


def new_name() -> str:
    return f"c{os.getpid()}x{next(_names)}"


def policy(**kw: Any) -> Policy:
    kw.setdefault("bucket", TokenBucket("1/hour", burst=6))
    kw.setdefault("scoring", None)
    kw.setdefault("network", None)
    kw.setdefault("max_identities", 256)
    # These limits are per key: keys are never answered here, so none is ever accepted.
    kw.setdefault("unverified_keys", None)
    return Policy(**kw)


def nodes(cluster: RedisClusterServers) -> list[redis.Redis]:
    return [redis.Redis(port=p) for p in cluster.ports]


def test_limits_are_exact_across_workers_and_slots(redis_cluster: RedisClusterServers) -> None:
    name = new_name()

    async def main() -> dict[str, list[Decision]]:
        guards = [Guard(policy(), backend=cluster_backend(redis_cluster, name)) for _ in range(3)]
        for g in guards:
            await g.startup()
        keys = [f"acct-{i}" for i in range(8)]  # spread over the three nodes
        calls = [
            guards[j % 3].acheck(RequestInfo(ip="198.51.100.1", key=k))
            for k in keys
            for j in range(10)
        ]
        decisions = await asyncio.gather(*calls)
        for g in guards:
            await g.shutdown()
        out: dict[str, list[Decision]] = {}
        for d in decisions:
            out.setdefault(d.identity, []).append(d)
        return out

    by_identity = run(main())
    assert len(by_identity) == 8
    for decisions in by_identity.values():
        assert sum(d.action == Action.ALLOW for d in decisions) == 6
    slots: dict[bytes, set[int]] = {}
    for node in nodes(redis_cluster):
        for key in node.scan_iter(f"{name}:*"):
            assert node.pttl(key) > 0
            tag = key.split(b"}")[0]
            slots.setdefault(tag, set()).add(int(node.cluster("keyslot", key)))
    assert len(slots) >= 8 and all(len(s) == 1 for s in slots.values())
    used_nodes = sum(1 for node in nodes(redis_cluster) if any(node.scan_iter(f"{name}:*")))
    assert used_nodes >= 2


def test_per_ip_quota_of_an_account_uses_the_ip_slot(redis_cluster: RedisClusterServers) -> None:
    name = new_name()
    quota_policy = policy(bucket=None, quotas=(Quota("3/minute", per="ip"), Quota("100/day")))

    async def main() -> list[Decision]:
        guard = Guard(quota_policy, backend=cluster_backend(redis_cluster, name))
        await guard.startup()
        out = [
            await guard.acheck(RequestInfo(ip="203.0.113.77", key=f"acct-{i}")) for i in range(5)
        ]
        await guard.shutdown()
        return out

    decisions = run(main())
    assert [d.action for d in decisions] == [Action.ALLOW] * 3 + [Action.THROTTLE] * 2
    assert decisions[3].reasons == ("quota",)
    assert decisions[0].policies[1].remaining == 99


def test_network_bucket_and_fan_in_sync_in_the_background(
    redis_cluster: RedisClusterServers,
) -> None:
    name = new_name()
    net_policy = Policy(
        bucket=TokenBucket("100/second", burst=100),
        network=NetworkPolicy(per_ip=TokenBucket("1/hour", burst=5), nat_fairness=False),
        max_identities=256,
        unverified_keys=None,  # keys never answered: about the network sync, not the keys
    )

    async def main() -> tuple[list[Decision], list[Decision], float]:
        guards = [
            Guard(net_policy, backend=cluster_backend(redis_cluster, name, sync_interval=0.02))
            for _ in range(2)
        ]
        for g in guards:
            await g.startup()
        first = [
            await guards[i % 2].acheck(RequestInfo(ip="192.0.2.99", key=f"a{i}", asn=16509))
            for i in range(8)
        ]
        await asyncio.sleep(0.3)  # a few sync intervals
        # A worker learns the debt other workers ran up when its own next batch returns:
        # one more request each (the documented staleness: one interval per worker).
        for g in guards:
            await g.acheck(RequestInfo(ip="192.0.2.99", key="touch", asn=16509))
        await asyncio.sleep(0.3)
        later = [
            await guards[i % 2].acheck(RequestInfo(ip="192.0.2.99", key=f"b{i}", asn=16509))
            for i in range(4)
        ]
        table = guards[0].engine.tables[1]
        fan_in = float(table.data[table.index["192.0.2.99"], F_SKETCH_EST])
        for g in guards:
            await g.shutdown()
        return first, later, fan_in

    first, later, fan_in = run(main())
    # Before a sync the network ceiling can be overshot (documented staleness) ...
    assert all(d.action == Action.ALLOW for d in first)
    # ... after it, the IP's debt refuses it in-process on every worker.
    assert all(d.action == Action.THROTTLE and d.reasons == ("rate",) for d in later)
    assert fan_in >= 6  # each worker saw 4 accounts; Redis counted the 8


def test_scripts_flushed_on_every_node_are_loaded_again(
    redis_cluster: RedisClusterServers,
) -> None:
    name = new_name()

    async def main() -> tuple[list[Decision], int]:
        guard = Guard(policy(), backend=cluster_backend(redis_cluster, name))
        await guard.startup()
        out = [await guard.acheck(RequestInfo(ip="192.0.2.1", key=f"k{i}")) for i in range(6)]
        for node in nodes(redis_cluster):
            node.script_flush()
        out += [await guard.acheck(RequestInfo(ip="192.0.2.1", key=f"k{i}")) for i in range(6)]
        reloads = guard.backend.stats()["script_reloads"]  # type: ignore[attr-defined]
        await guard.shutdown()
        return out, reloads

    decisions, reloads = run(main())
    assert all(d.action == Action.ALLOW and d.policies for d in decisions)
    assert all(d.remaining == pytest.approx(4.0, abs=1e-3) for d in decisions[6:])
    assert reloads >= 1
