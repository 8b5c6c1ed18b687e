"""SyncedRedisBackend (``redis://host:6379/0?mode=synced``): decisions from local state,
shared through Redis in the background. No Redis call on a request.

Per request (synchronous: ``Guard.check`` works in this mode and the middleware does not
await it; the backend's ``note_decision``): the guard prepares the request and the in-process kernel
scores it and applies the token buckets itself (the identity's and its network buckets),
exactly as with the memory backend; what the kernel charged is noted (`sync`). Every
``sync_interval`` seconds (10 ms by default) a background task sends, in one pipelined
round trip (``lua/sync.lua``, up to 256 identities per script call on one server, one
call per identity in a Cluster), what this worker consumed per identity since its last
sync, and writes the shared state back into the local rows: this worker's share of the
shared tokens (divided by the number of workers that synced the bucket within the share
window, ``share_window``, 5 s by default; a debt is written back whole) and bans set by
other workers. Bans this worker's ladder sets go with the next sync.

Busy and quiet identities. An identity is synced with the next flush when anything
refused it here, the ladder banned it, one of its buckets fell below half its burst
here, ``burst / (2 workers)`` was consumed here since its last sync, or it started cold
(below). Otherwise it is quiet (far from every limit) and waits up to the share window:
a client that uses a small part of its budget costs about one sync per share window.
That is what bounds Redis' work: each synced identity costs the server about 10 µs
of script time, so with a 1 s window 100,000 active clients would keep a Redis core busy,
and with 5 s a fifth of one. A shorter window makes quiet clients' shares and bans
fresher; the overshoot bound below does not depend on it.

Cold start. With ``workers`` > 1, an identity this worker has not synced within the share
window starts with at most ``burst / workers`` here until its first sync, which gives it
``1 / workers`` of the shared tokens; later syncs divide by the workers that really share
it. A burst spread over every worker stays near one burst.

Overshoot bound. For one bucket (rate r, burst b, a request costing at most c) served by
W workers (``workers`` = W: by default the detected worker count; with several hosts set
it to the whole fleet), with τ = ``sync_interval`` + one sync's round trip (plus any
event-loop delay), the fleet admits over any span of t seconds at most b + r·t (the exact
limit) plus E = (W-1)·b + b/2 + W·(r·τ + c): a worker never holds more than one burst
(shares, cold starts and its local refill stop there), refills its copy at the full rate
for at most τ before a sync corrects it, and leaves at most ``b/(2W)`` + c unreported
while the identity is quiet. Every admission is charged in Redis, so an overshoot becomes
debt in the shared bucket, written back to every worker and paid back by refusing: the
long-run rate stays r. E is the worst case and the only bound on every schedule (shares
given at different syncs can add up to more than the shared tokens when a burst outruns
the syncs); a client busy on every worker that synced it already overshoots by about
W·(r·τ + c), a burst after an idle time gets at most b + W·c (a known client starts each
new entry with its share of what the shared bucket refilled since its last sync, see
`sync`; tests/test_redis_security.py), and a burst sent to every worker at once,
before any sync, by at most (W-1)·b/W (tests/test_redis_synced.py). The split can also
refuse early:
a share smaller than one request's cost strands it, and a worker that stopped seeing a
client keeps its share for up to the share window.

Staleness. Busy identities: other workers' consumption and bans arrive within τ. Quiet
ones: within the share window, or as soon as they stop being quiet here.

Not synced: window quotas, concurrency limits and route and plan limits
(`Policy.routes`, `Policy.plans`; refused at construction: use the inline mode), risk
scores and behaviour features (per worker, as with inline). The fan-in and fan-out
sketches count what this worker saw unless ``shared_sketches=True`` (off by default in
this mode): then a worker's new items are added to the shared HyperLogLogs with its next
sync and the shared estimate comes back with the answer (`sketches`); each new item
costs Redis a two-sketch PFCOUNT merge, several times the cost of a bucket sync (on the
benchmark's 10,000 clients, about 24 instead of 6 µs of Redis time per request).

Faults. A request never waits for Redis. A failed sync puts its entries back (at most
``sync_max_pending`` identities wait; beyond that, new identities are not recorded and
are counted in ``dropped``). Each sync's round trip is bounded by ``max(budget, 0.25 s)``.
After ``breaker_threshold`` consecutive failures the worker logs one warning, stops
recording, and enforces 1/``workers`` of every bucket in-process (the kernel's own buckets,
like the inline mode's fail-open fallback); it probes Redis with a PING after
``breaker_cooldown`` seconds, doubling up to ``breaker_max_cooldown``, and on the first
answer logs once more, restores the full buckets and syncs again. Consumption during the
outage is not sent afterwards: the divided buckets accounted for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
from typing import TYPE_CHECKING, Any

import numpy as np

from abuseguard.backends.base import LocalDecider
from abuseguard.backends.redis.backend import RedisBackend, check_count, check_seconds
from abuseguard.backends.redis.pipe import load_script
from abuseguard.backends.redis.sync import MAX_FLUSH, Syncer
from abuseguard.backends.redis.uri import redacted
from abuseguard.decision import Decision
from abuseguard.engine import layout as L
from abuseguard.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from abuseguard.backends.base import Stages
    from abuseguard.guard import Prepared

logger = logging.getLogger("abuseguard.backends")

_BUCKETS = slice(L.P_BUCKET, L.P_BUCKET + 2 * L.N_KINDS)
# No request waits for a sync, so a busy event loop may take longer than a request's
# budget to read its reply without that being an outage.
_SYNC_TIMEOUT = 0.25
DEFAULT_SHARE_WINDOW = 5.0


class SyncedRedisBackend(RedisBackend, LocalDecider):
    """The Redis backend in synced mode: local decisions, background sync.

    Takes the options of `RedisBackend` (``budget`` bounds each sync's round trip, but
    no less than 0.25 s; ``breaker_*`` the outage handling; ``fail_open`` and the policy's
    ``fail_mode`` do not apply: no request depends on Redis) and ``sync_interval``
    (seconds between syncs), ``workers`` (how many workers share the buckets; default:
    ``fallback_workers``, else the detected worker count), ``sync_max_pending``
    (identities waiting for a sync, at most), ``share_window`` (seconds a quiet client may
    wait for its sync, and how long a worker counts as sharing a client after its last
    sync; default ``max(5 s, 20 sync_interval)``, at least ``2 sync_interval``) and
    ``shared_sketches`` (off by default here).
    """

    mode = "synced"
    decides_locally = True
    counts_route_limits = False  # refused at construction (`route_limits.RouteLimiter`)

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        sync_interval: float = 0.01,
        workers: int | None = None,
        sync_max_pending: int = 65536,
        shared_sketches: bool = False,
        share_window: float | None = None,
        **kwargs: Any,
    ) -> None:
        if workers is not None:
            check_count("workers", workers)
        check_count("sync_max_pending", sync_max_pending)
        if workers is not None and kwargs.get("fallback_workers") is None:
            kwargs["fallback_workers"] = workers
        super().__init__(
            url, sync_interval=sync_interval, shared_sketches=shared_sketches, **kwargs
        )
        self.workers = self.fallback_workers
        self.sync_max_pending = sync_max_pending
        self.share_window = (
            # At least two intervals: a busy worker must not drop out of the sharing count.
            check_seconds("share_window", share_window, at_least=2 * self.sync_interval)
            if share_window is not None
            else max(DEFAULT_SHARE_WINDOW, 20.0 * self.sync_interval)
        )
        self.worker_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.scripts = {"sync": load_script("sync"), "decide": load_script("decide")}
        self.syncer: Syncer | None = None
        self.outage = False
        self.outages = 0  # how many times syncing stopped (for tests and metrics)
        self.failed_syncs = 0  # consecutive
        self.syncs = 0  # sync rounds that completed (with or without anything to send)
        self._full: Any = None  # the kernel's bucket parameters, whole
        self._divided: Any = None  # and divided by the workers (outage)
        self._io: Any = None
        self._sketching = False

    # -- construction --------------------------------------------------------------------

    def attach(self, stages: Stages) -> None:
        policy = stages.policy
        if policy.quotas:
            raise ConfigError(
                "Policy.quotas",
                "window quotas are not synced: use the Redis backend's inline mode "
                "(mode=inline, the default) for a policy with quotas",
            )
        if policy.concurrency is not None:
            raise ConfigError(
                "Policy.concurrency",
                "concurrency limits are not synced: use the Redis backend's inline mode "
                "(mode=inline, the default) for a policy with a concurrency limit",
            )
        super().attach(stages)
        self.netsync = None
        full = np.array(self.limits.bucket_vector())
        self._full = full
        self._divided = full.copy()
        self._divided[1::2] /= float(self.workers)  # bursts
        self._divided[0::2] /= float(self.workers)  # rates
        # The kernel's own buckets decide (a LocalDecider: the Guard built the engine with
        # them on and reports them in its decisions); these are the whole buckets.
        stages.rows.set_bucket_parameters(full)
        self.syncer = Syncer(self, stages, max_pending=self.sync_max_pending, workers=self.workers)
        # Fan-out and fan-in sketches are shared as inline (`sketches`).
        self._sketching = self.shared_sketches and policy.network is not None

    # -- lifecycle -----------------------------------------------------------------------

    async def startup(self) -> None:
        """Make the client and start the sync task. Never waits for Redis: the first sync
        connects (and reports a Redis that is down)."""
        self._start()

    def _start(self) -> None:
        if self._bind_loop(max(self.budget, _SYNC_TIMEOUT)) is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._sync_forever()))

    async def shutdown(self) -> None:
        if self._loop is None:
            return
        self._cancel_tasks()
        syncer = self.syncer
        if syncer is not None and not self.outage:
            try:  # what was consumed since the last syncs, MAX_FLUSH identities a flush
                for _ in range(math.ceil(len(syncer.pending) / MAX_FLUSH)):
                    await syncer.flush(everything=True)
            except Exception as exc:
                logger.debug("abuseguard: last sync failed (%s)", exc)
        await super().shutdown()

    async def _sync_forever(self) -> None:
        syncer = self.syncer
        assert syncer is not None, "SyncedRedisBackend.attach() was not called (use it via Guard)"
        delay = self.sync_interval
        initialized = not self.cluster
        while True:
            await asyncio.sleep(delay)
            try:
                if not initialized:
                    async with asyncio.timeout(max(1.0, 10 * self.budget)):
                        await self.client.initialize()
                    initialized = True
                if self.outage:
                    assert self.pipe is not None
                    await self.pipe.call(("PING",))
                else:
                    await syncer.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._failed(exc)
            else:
                delay = self._answered()

    def _failed(self, exc: BaseException) -> float:
        self.failed_syncs += 1
        if self.outage:
            doublings = min(self.failed_syncs - self.breaker.threshold, 30)
            return min(self.breaker.max_cooldown, self.breaker.base_cooldown * 2.0**doublings)
        if self.failed_syncs < self.breaker.threshold:
            logger.debug("abuseguard: Redis sync failed (%s: %s)", type(exc).__name__, exc)
            return self.sync_interval
        self.outage = True
        self.outages += 1
        syncer = self.syncer
        if syncer is not None:
            syncer.paused = True
            syncer.dropped += syncer.clear()
        stages = self.stages
        if stages is not None and self._divided is not None:
            stages.rows.set_bucket_parameters(self._divided)
        logger.warning(
            "abuseguard: Redis at %s is not answering (%s: %s); deciding locally with 1/%d "
            "of every bucket per worker until it answers",
            redacted(self.url),
            type(exc).__name__,
            exc,
            self.workers,
        )
        return self.breaker.base_cooldown

    def _answered(self) -> float:
        self.failed_syncs = 0
        self.syncs += 1
        if self.outage:
            self.outage = False
            syncer = self.syncer
            if syncer is not None:
                syncer.clear()  # consumption during the outage stays with the divided buckets
                syncer.paused = False
            stages = self.stages
            if stages is not None and self._full is not None:
                stages.rows.set_bucket_parameters(self._full)
            logger.warning("abuseguard: Redis at %s answers again; syncing", redacted(self.url))
        return self.sync_interval

    # -- the decision ----------------------------------------------------------------------

    def note_decision(
        self, p: Prepared, decision: Decision, plain: bool, io: Sequence[float]
    ) -> None:
        """The Guard decided ``p`` from local state (``plain``: a plain allow from the
        kernel, every bucket charged): note what to sync; no I/O. The first call on an
        event loop starts the sync task there; outside a running loop the decisions are
        synced once an event loop runs."""
        loop = asyncio._get_running_loop()
        if self._loop is not loop and loop is not None:
            self._start()
        syncer = self.syncer
        assert syncer is not None, "SyncedRedisBackend.attach() was not called (use it via Guard)"
        if not syncer.paused:
            if plain and decision.served:  # allowed, nothing refused: every bucket charged
                # Quiet while the tightest bucket keeps half its burst here.
                low = io[L.O_TIGHT_REMAINING] < syncer.half[int(io[L.O_TIGHTEST_KIND])]
                syncer.record(p, p.cost, io[L.O_FANIN], False, low)
            else:
                level = int(io[L.O_ACTION])
                banned = io[L.O_BANNED]
                syncer.record(
                    p,
                    p.cost if decision.served else 0.0,
                    io[L.O_FANIN],
                    self.ban_ms > 0 and 0 < self.ban_level <= level and not banned,
                    True,
                )
            profile = p.profile
            if self._sketching and p.has_account and profile is not None and not profile.allowed:
                self._plan_sketches(
                    syncer.sketches, p, profile, self.keys.of(p.identity), self._network_keys(p)
                )

    # -- after the response -------------------------------------------------------------------

    def release(self, identity: str) -> None:
        """Nothing is held: concurrency limits are not supported in synced mode."""

    def reconcile(self, identity: str, delta: float) -> None:
        """Charge (delta > 0) or refund (delta < 0) after the fact, here and in Redis."""
        if self.syncer is not None and delta == delta and not math.isinf(delta):
            self.syncer.charge(identity, delta)

    def reconcile_network(self, kind: int, key: object, delta: float) -> None:
        """The same for a network bucket (per IP, prefix or ASN)."""
        if self.syncer is not None and delta == delta and not math.isinf(delta):
            self.syncer.charge(key, delta, kind)

    # -- introspection -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        pipe = self.pipe
        syncer = self.syncer
        return {
            "mode": self.mode,
            "round_trips": pipe.round_trips if pipe else 0,
            "commands": pipe.commands if pipe else 0,
            "script_reloads": pipe.reloads if pipe else 0,
            "syncs": self.syncs,
            "flushes": syncer.flushes if syncer else 0,
            "entries_synced": syncer.entries_sent if syncer else 0,
            "pending": len(syncer.pending) if syncer else 0,
            "sketches_synced": syncer.sketches.sent if syncer else 0,
            "sketches_dropped": syncer.sketches.dropped if syncer else 0,
            "dropped": syncer.dropped if syncer else 0,
            "outage": self.outage,
            "outages": self.outages,
            "failed_syncs": self.failed_syncs,
        }


__all__ = ["SyncedRedisBackend"]
