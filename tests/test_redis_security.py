"""Issue 13, the Redis parts, against real redis-server processes: what one client can
write to Redis, a flood under ``maxmemory`` with ``noeviction``, the fail-open fallback
over a whole outage (one share, one warning), fail-closed recovery once Redis answers, and
the synced mode's bound under its worst schedule (burst, idle, burst across the workers).

No timing assertions: counts and bounds; recovery is polled with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from abuseguard import Action, Decision, Guard, Policy, TokenBucket
from abuseguard.backends.redis import UNAVAILABLE, RedisBackend
from abuseguard.policy import FailMode
from tests.conftest import RedisServer
from tests.test_redis import backend, req, run, simple_policy

pytestmark = pytest.mark.redis


# -- an outage ------------------------------------------------------------------------------


def test_an_outage_gives_the_victim_one_fallback_share_and_one_warning(
    tmp_path: Any, caplog: Any
) -> None:
    """Two workers, burst 50 at 1/minute: the victim spends its burst in Redis, then Redis
    stops while the breaker keeps re-opening (short cooldowns). The fallback gives each
    worker 1/2 of the bucket once for the whole outage, whatever the re-opens."""
    server = RedisServer(tmp_path)
    server.start()
    policy = simple_policy(bucket=TokenBucket("1/minute", burst=50))
    threshold = 1

    async def main() -> tuple[int, int, int]:
        name = f"outage{time.monotonic_ns()}"
        guards = [
            Guard(
                policy,
                backend=backend(
                    server.url,
                    prefix=name,
                    budget=0.2,
                    fallback_workers=2,
                    breaker_threshold=threshold,
                    breaker_cooldown=0.02,
                    breaker_max_cooldown=0.05,
                    deny_cache_seconds=0,  # every victim request reaches the breaker
                ),
            )
            for _ in range(2)
        ]
        for guard in guards:
            await guard.startup()
        spent = [await guards[i % 2].acheck(req(key="victim")) for i in range(50)]
        assert all(d.action is Action.ALLOW for d in spent)
        assert (await guards[0].acheck(req(key="victim"))).action is Action.THROTTLE
        server.stop()
        admitted = 0
        end = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < end:
            decision = await guards[i % 2].acheck(req(key="victim"))
            admitted += decision.action is Action.ALLOW
            i += 1
            if i % 8 == 0:
                await asyncio.sleep(0.005)  # let the breaker's cooldowns pass
        reopened = min(g.backend.stats()["breaker_opened"] for g in guards)
        for guard in guards:
            await guard.shutdown()
        return admitted, reopened, i

    with caplog.at_level(logging.WARNING, logger="abuseguard"):
        admitted, reopened, sent = run(main())
    assert reopened >= 3, "the breaker should have re-opened several times"
    # One share per outage: 25 per worker (rate 1/minute adds nothing in 1.5 s), plus the
    # requests that failed before the circuit opened (breaker_threshold per worker).
    assert sent > 200
    assert admitted <= 50 + 2 * threshold
    warnings = [r for r in caplog.records if "limiting in-process" in r.message]
    assert len(warnings) == 2  # one per worker
    opened = [r for r in caplog.records if "circuit open" in r.message]
    assert len(opened) == 2


def test_fail_closed_recovers_within_seconds_of_redis_answering(tmp_path: Any) -> None:
    """Redis down for 8 s while requests keep coming (the breaker's cooldown grows), then
    back: the guard serves again within a few seconds, not after a 30 s cooldown."""
    server = RedisServer(tmp_path)
    server.start()
    policy = simple_policy(fail_mode=FailMode(open=False))

    async def main() -> tuple[float, Decision]:
        b = backend(server.url, budget=0.2, breaker_threshold=1, breaker_cooldown=0.25)
        guard = Guard(policy, backend=b)
        await guard.startup()
        assert (await guard.acheck(req())).action is Action.ALLOW
        server.stop()
        end = time.monotonic() + 8.0
        while time.monotonic() < end:
            assert (await guard.acheck(req())).reasons == (UNAVAILABLE,)
            await asyncio.sleep(0.05)
        server.start()
        back = time.monotonic()
        decision = await guard.acheck(req())
        while decision.reasons == (UNAVAILABLE,) and time.monotonic() < back + 20.0:
            await asyncio.sleep(0.05)
            decision = await guard.acheck(req())
        waited = time.monotonic() - back
        await guard.shutdown()
        return waited, decision

    try:
        waited, decision = run(main())
    finally:
        server.stop()
    assert decision.action is Action.ALLOW and decision.policies
    assert waited < 4.0
