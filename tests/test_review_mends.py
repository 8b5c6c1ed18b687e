"""The review's mends on the request path: one computation where there were two."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    Action,
    Decision,
    Enforcement,
    Guard,
    NetworkPolicy,
    Policy,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.backends.memory import MemoryBackend
from abuseguard.engine import layout as L
from abuseguard.engine.params import bucket_kinds
from abuseguard.guard import Prepared
from abuseguard.testing import ManualClock, serve
from tests.conftest import RedisServer


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
    """The definition `Guard._bucket_shadow` (now `Decider.bucket_shadow`) had before it
    read the shadow-kinds mask: every refusing bucket shadowed by its own flag (or, for a
    network one, the network's)."""
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
                assert guard.decider.bucket_shadow(denied) == expected, (policy, denied)
                compared += 1
    assert compared > 1000


_CHAT = json.dumps(
    {"messages": [{"role": "user", "content": "Summarise the attached report, please. " * 6}]}
).encode()


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


def _count_reads(guard: Guard) -> Counter[str]:
    """Count the guard's reads of a request: identity, client class, body fingerprint."""
    reads: Counter[str] = Counter()
    reader = guard.reader  # the identify and enrich stage reads identities and clients
    identity_of, client_of, prepare = reader.identity_of, reader.client_of, guard.prepare

    def counted_identity_of(info: RequestInfo) -> Any:
        reads["identity"] += 1
        return identity_of(info)

    def counted_client_of(ua: str, headers: Any) -> Any:
        reads["client"] += 1
        return client_of(ua, headers)

    def counted_prepare(info: RequestInfo) -> Prepared:
        prepared = prepare(info)
        reads["prepared with content"] += prepared.has_content
        return prepared

    reader.identity_of = counted_identity_of  # type: ignore[method-assign]
    reader.client_of = counted_client_of
    guard.prepare = counted_prepare  # type: ignore[method-assign]
    return reads


def test_a_post_with_content_scoring_is_read_once_over_http() -> None:
    """The pre-check prepares the request without its body; the full decision reuses that
    and reads only the body's fingerprint, which it still scores."""
    decided: list[Decision] = []
    app = Starlette(routes=[Route("/chat", _echo, methods=["POST"])])
    middleware = AbuseGuard(
        app,
        policy=Policy(bucket=TokenBucket("100/second", burst=100), scoring=Scoring()),
        observers=[lambda info, decision: decided.append(decision)],
    )
    reads = _count_reads(middleware.guard)
    with serve(middleware, timeout=90.0) as base:
        for n in range(3):
            response = httpx.post(
                f"{base}/chat",
                content=_CHAT,
                headers={"Content-Type": "application/json", "X-API-Key": f"key-{n}"},
                timeout=30.0,
            )
            assert response.status_code == 200
            assert response.json() == {"size": len(_CHAT)}
    assert len(decided) == 3 and all(d.action == Action.ALLOW for d in decided)
    assert reads["identity"] == 3
    assert reads["client"] == 3


def test_the_full_check_after_a_precheck_scores_the_body_and_prices_it_at_decision_time() -> None:
    """`check` with what `precheck_reading` prepared: the body's fingerprint, the cost a
    cost callable gives with the body, and the decision's time, as `prepare` gives them."""
    clock = ManualClock(1000.0)
    policy = Policy(
        bucket=TokenBucket("100/second", burst=100, cost=lambda info: 1 + len(info.body) / 100),
        scoring=Scoring(),
    )
    guard = Guard(policy, clock=clock)
    info = RequestInfo(
        ip="198.51.100.7",
        method="POST",
        path="/chat",
        headers={"content-type": "application/json", "x-api-key": "key-a"},
    )
    refusal, read_without_body = guard.precheck_reading(info)
    assert refusal is None and read_without_body is not None
    assert not read_without_body.has_content and read_without_body.cost == 0.0
    clock.advance(2.5)  # the body arrives
    info.body = _CHAT
    expected = guard.prepare(info)
    assert expected.has_content and expected.ts == 1002.5
    assert guard._with_body(info, read_without_body) == expected
    decision = guard.check(info, read_without_body)
    assert decision.action == Action.ALLOW
    assert decision.cost == expected.cost


def test_synced_redis_reuses_what_the_precheck_prepared(redis_server: RedisServer) -> None:
    from abuseguard.backends.redis.synced import SyncedRedisBackend

    backend = SyncedRedisBackend(redis_server.url, prefix="review-mends-synced", workers=1)
    guard = Guard(
        Policy(bucket=TokenBucket("100/second", burst=100), scoring=Scoring()), backend=backend
    )

    async def run() -> tuple[Decision, Counter[str]]:
        await guard.startup()
        try:
            reads = _count_reads(guard)
            info = RequestInfo(
                ip="198.51.100.8",
                method="POST",
                path="/chat",
                headers={"content-type": "application/json", "x-api-key": "key-b"},
            )
            refusal, read_without_body = guard.precheck_reading(info)
            assert refusal is None
            info.body = _CHAT
            return await guard.acheck(info, read_without_body), reads
        finally:
            await guard.shutdown()

    decision, reads = asyncio.run(run())
    assert decision.action == Action.ALLOW
    assert reads["identity"] == 1 and reads["client"] == 1
