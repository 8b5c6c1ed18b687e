"""Concurrency leases this worker holds in Redis: release, give back, renew.

A slot is a member of the identity's lease set, scored by its expiry. The worker that
took it renews it every ``ttl / 3`` (for at most ``max_hold``), so a long streamed
response keeps its slot and a worker that dies loses its slots within ``ttl``. Releases
are queued on the pipeliner, never awaited; one lost in an outage expires with its TTL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterable

from abuseguard.backends.redis.pipe import Pipeliner


class Leases:
    def __init__(self, *, ttl: float, max_hold: float) -> None:
        self.ttl = ttl
        self.max_hold = max_hold
        self.held: dict[str, list[tuple[str, str, float]]] = {}
        self._ids = itertools.count()
        self._worker = os.urandom(6).hex()

    def __len__(self) -> int:
        return sum(len(v) for v in self.held.values())

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def new_id(self) -> str:
        return f"{self._worker}:{next(self._ids)}"

    def hold(self, identity: str, key: str, lease: str) -> None:
        self.held.setdefault(identity, []).append((key, lease, time.monotonic()))

    def release(self, identity: str, pipe: Pipeliner | None, *, send: bool) -> None:
        """Give back one slot held for ``identity``: any of them, they are alike."""
        held = self.held.get(identity)
        if not held:
            return
        key, lease, _ = held.pop()
        if not held:
            del self.held[identity]
        if pipe is not None and send:
            pipe.send(("ZREM", key, lease))

    @staticmethod
    def give_back(taken: Iterable[tuple[str, str]], pipe: Pipeliner | None) -> None:
        """Leases a failed or cut-short call may have taken: removed if they exist."""
        if pipe is not None:
            for key, lease in taken:
                pipe.send(("ZREM", key, lease))

    async def renew_forever(
        self, pipe_of: Callable[[], Pipeliner | None], may_send: Callable[[], bool], sha: str
    ) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            pipe = pipe_of()
            if pipe is None or not may_send():
                continue
            now = time.monotonic()
            ttl_ms = self.ttl_ms
            for held in list(self.held.values()):
                for key, lease, taken in held:
                    if now - taken < self.max_hold:
                        pipe.send(("EVALSHA", sha, 1, key, ttl_ms, lease))


__all__ = ["Leases"]
