"""Held rows: key rows pushed out of the key table while a ban or a refusal was in force.

An attacker can make unlimited fresh identities (random API keys, unique IPv6 /64s), so
eviction alone would let a banned or refused identity come back with a clean row. The
key table (`table.KeyTable`) evicts rows that are neither banned nor refusing first; when
every candidate is one of those, the row is copied here, keyed as the key table keys it
(the identity's ``hash()``, see `hashindex`), and copied back when the identity returns,
so the ban, the refusal and everything else the row knew (bucket, score, ladder level)
are as they were.

Bounded: ``capacity`` rows, preallocated. At the bound the hold that matters least makes
room: one whose ban and refusal both ended, else the refusal that ends soonest, else the
ban that ends soonest (``dropped`` counts the holds given up while still in force).
Cost: nothing on a request whose identity has a row; a dict lookup when a new identity
takes an evicted row; a few heap operations when a row is held.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

import numpy as np

from abuseguard.engine.layout import F_BANNED_UNTIL, F_WAIT_UNTIL

# (ends, sequence number, identity): the sequence number tells a live heap entry from
# one left behind by a hold that was released or replaced since.
_HeapEntry = tuple[float, int, Hashable]


class HeldRows:
    """At most ``capacity`` key rows (``width`` float64 words each), by identity."""

    def __init__(self, capacity: int, width: int) -> None:
        if capacity < 1:
            raise ValueError("HeldRows needs a capacity of at least 1")
        self.capacity = capacity
        self.data = np.zeros((capacity, width), dtype=np.float64)
        self.index: dict[Hashable, tuple[int, int]] = {}  # identity -> (slot, sequence)
        self._free = list(range(capacity - 1, -1, -1))
        # Holds by when they end: refusals and bans apart, so that bans give way last.
        self._refusals: list[_HeapEntry] = []
        self._bans: list[_HeapEntry] = []
        self._sequence = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.index

    def hold(self, key: Hashable, row: np.ndarray, now: float) -> None:
        """Keep a copy of ``row`` (a key row whose ban or refusal is in force at ``now``)."""
        banned_until = float(row[F_BANNED_UNTIL])
        ends = max(banned_until, float(row[F_WAIT_UNTIL]))
        found = self.index.get(key)
        if found is not None:
            slot = found[0]
        else:
            slot = self._free.pop() if self._free else self._make_room(now)
        self.data[slot] = row
        self._sequence += 1
        self.index[key] = (slot, self._sequence)
        heap = self._bans if banned_until > now else self._refusals
        heapq.heappush(heap, (ends, self._sequence, key))
        self._compact()

    def restore(self, key: Hashable, into: np.ndarray) -> bool:
        """Copy the held row of ``key`` into ``into`` and release it; False if none."""
        found = self.index.pop(key, None)
        if found is None:
            return False
        slot = found[0]
        into[:] = self.data[slot]
        self._free.append(slot)
        return True

    def row_of(self, key: Hashable) -> np.ndarray | None:
        """The held row of ``key`` (a view, to update in place), or None."""
        found = self.index.get(key)
        return None if found is None else self.data[found[0]]

    def clear(self) -> None:
        self.index.clear()
        self._free = list(range(self.capacity - 1, -1, -1))
        self._refusals.clear()
        self._bans.clear()

    def _make_room(self, now: float) -> int:
        """Give up one hold (see the module docstring) and return its slot."""
        bans, refusals = self._bans, self._refusals
        self._drop_released(bans)
        self._drop_released(refusals)
        if bans and (bans[0][0] <= now or not refusals):
            ends, _, key = heapq.heappop(bans)
        else:
            ends, _, key = heapq.heappop(refusals)
        if ends > now:
            self.dropped += 1
        slot, _ = self.index.pop(key)
        return slot

    def _drop_released(self, heap: list[_HeapEntry]) -> None:
        index = self.index
        while heap:
            _, sequence, key = heap[0]
            found = index.get(key)
            if found is not None and found[1] == sequence:
                return
            heapq.heappop(heap)

    def _compact(self) -> None:
        """Rebuild the heaps without the entries of released holds when those make up
        most of them (restores leave them behind)."""
        if len(self._refusals) + len(self._bans) <= 4 * self.capacity:
            return
        index = self.index
        for heap in (self._refusals, self._bans):
            heap[:] = [e for e in heap if (found := index.get(e[2])) and found[1] == e[1]]
            heapq.heapify(heap)


__all__ = ["HeldRows"]
