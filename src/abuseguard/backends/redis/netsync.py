"""Cluster mode: network-level state (other slots) synchronized in the background.

A request's network identities (its IP, prefix, ASN and header persona) live in other
Cluster slots than its account, so one script cannot touch them. Instead each worker
aggregates, per network identity, the cost it served and the accounts it saw, and every
``sync_interval`` sends one script call per network identity (``force``: the cost was
already served, the bucket may go into debt). The answers come back as local state: a
network bucket in debt refuses its requests in-process until the debt is refilled, and
the shared fan-in estimates are written into the engine's rows for the next scores.
Staleness is bounded by the interval plus one round trip (see `abuseguard.backends.redis`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from abuseguard.backends.redis.call import ScriptCall
from abuseguard.engine import layout as L

if TYPE_CHECKING:
    from abuseguard.backends.base import Stages
    from abuseguard.backends.redis.backend import RedisBackend
    from abuseguard.guard import Prepared

logger = logging.getLogger("abuseguard.backends")

_MAX_ACCOUNTS = 32  # distinct accounts sent per network identity and interval


class _Pending:
    __slots__ = ("accounts", "burst", "cost", "rate")

    def __init__(self) -> None:
        self.cost = 0.0
        self.accounts: set[str] = set()
        self.rate = 0.0
        self.burst = 0.0


class NetSync:
    def __init__(self, backend: RedisBackend, stages: Stages, *, max_pending: int = 65536) -> None:
        self.backend = backend
        self.stages = stages
        self.max_pending = max_pending
        self.pending: dict[tuple[int, Any], _Pending] = {}
        self.denied: dict[tuple[int, Any], float] = {}  # refused until (monotonic seconds)
        self.buckets = {kind: (bucket, shadow) for kind, bucket, shadow in backend.net_buckets}
        self.dropped = 0
        self.flushes = 0

    def add(self, p: Prepared, fan_in: float, load: float, served: bool) -> None:
        backend = self.backend
        profile = p.profile
        nat = backend.limits.nat_multiplier(profile is not None and profile.nat_eligible, fan_in)
        for kind, key in backend._network_keys(p):
            found = self.buckets.get(kind)
            if found is None and not (p.has_account and backend.shared_sketches):
                continue
            entry = self.pending.get((kind, key))
            if entry is None:
                if len(self.pending) >= self.max_pending:
                    self.dropped += 1
                    continue
                entry = self.pending[(kind, key)] = _Pending()
            if p.has_account and len(entry.accounts) < _MAX_ACCOUNTS:
                entry.accounts.add(p.identity)
            if found is not None:
                bucket = found[0]
                scale = nat if kind != L.KIND_ASN else 1.0
                entry.rate = bucket.per_second * load * scale
                entry.burst = bucket.capacity * scale
                if served and 0.0 <= p.cost < math.inf:
                    entry.cost += p.cost

    def blocked(self, p: Prepared) -> tuple[int, float]:
        """(bit mask of refused network kinds, seconds until the last one refills)."""
        profile = p.profile
        if profile is None or profile.allowed:
            return 0, 0.0
        now = time.monotonic()
        mask = 0
        wait = 0.0
        address = p.address
        for kind, key in (
            (L.KIND_IP, address.ip_key),
            (L.KIND_PREFIX, address.prefix_key),
            (L.KIND_ASN, profile.asn_key),
        ):
            until = self.denied.get((kind, key))
            if until is None:
                continue
            if until > now:
                mask |= 1 << kind
                wait = max(wait, until - now)
            else:
                del self.denied[(kind, key)]
        return mask, wait

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.backend.sync_interval)
            try:
                await self.flush()
            except Exception:
                logger.debug("abuseguard: network sync failed", exc_info=True)

    async def flush(self) -> None:
        backend = self.backend
        pipe = backend.pipe
        if not self.pending or pipe is None or not backend.breaker.closed:
            return
        batch, self.pending = self.pending, {}
        self.flushes += 1
        sha = backend.scripts["decide"].sha
        now: float | str = (
            "" if backend.server_time else backend.stages.clock() if backend.stages else ""
        )
        ttl_ms = backend.sketch_ttl_ms
        epoch = int(time.time() // backend.half_horizon)
        calls: list[tuple[int, Any, ScriptCall, float]] = []
        futures = []
        for (kind, key), entry in batch.items():
            call = ScriptCall(now, force=True)
            base = backend.keys.network_base(kind, key)
            if entry.accounts:
                call.sketch(
                    f"{base}:fi:{epoch}",
                    f"{base}:fi:{epoch - 1}",
                    ttl_ms,
                    sorted(entry.accounts),
                    None,
                )
            found = self.buckets.get(kind)
            if found is not None and entry.rate > 0.0:
                call.bucket(
                    base + ":b",
                    entry.rate,
                    entry.burst,
                    entry.cost,
                    found[0].per_second * backend.load_floor,
                    found[1],
                    None,
                )
            if call.empty:
                continue
            calls.append((kind, key, call, entry.rate))
            futures.append(pipe.call(call.command(sha)))
        if not futures:
            return
        try:
            async with asyncio.timeout(max(backend.budget, backend.sync_interval)):
                replies = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError:
            return
        rows = self.stages.rows
        now_mono = time.monotonic()
        for (kind, key, call, rate), raw in zip(calls, replies, strict=True):
            if isinstance(raw, BaseException):
                continue
            reply = call.parse(raw)
            if reply.sketches:
                row = rows.row(kind, key)
                if row is not None:
                    rows.put(kind, row, L.F_SKETCH_EST, reply.sketches[0])
            if reply.tokens and rate > 0.0:
                tokens = reply.tokens[0]
                if tokens < 1.0:
                    self.denied[(kind, key)] = now_mono + (1.0 - tokens) / rate
                else:
                    self.denied.pop((kind, key), None)


__all__ = ["NetSync"]
