"""StateTable: a preallocated float64 table with a key -> row map and eviction of idle rows."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
from numba import njit

from abuseguard.engine.held import HeldRows
from abuseguard.engine.layout import (
    F_BANNED_UNTIL,
    F_BUCKET_TS,
    F_COUNT,
    F_FIRST_SEEN,
    F_LAST_SEEN,
    F_TOKENS,
    F_WAIT_UNTIL,
)

_EVICTION_SAMPLE = 16


class StateTable:
    """Fixed capacity rows of ``width`` float64 words, one per identity.

    When full, a new identity takes the row of the least recently seen of a random sample
    of rows (approximate LRU, as Redis does): cost is constant and memory never grows, so a
    flood of unique identities (IPv6 rotation) only churns the idle part of the table.
    """

    def __init__(
        self,
        capacity: int,
        width: int,
        *,
        seed: int = 0x5EED,
        data: np.ndarray | None = None,
    ) -> None:
        """``data``: a zeroed (capacity, width) float64 array to hold the rows (a view into
        the engine's state vector); a new one when omitted."""
        self.capacity = capacity
        self.width = width
        if data is None:
            data = np.zeros((capacity, width), dtype=np.float64)
        elif data.shape != (capacity, width) or data.dtype != np.float64:
            raise ValueError(f"table data must be float64 of shape {(capacity, width)}")
        self.data = data
        self.index: dict[Hashable, int] = {}
        # Grows with the rows in use (rows are handed out in order until the table is full).
        self.keys: list[Hashable | None] = []
        self.next_free = 0
        self.evictions = 0
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.index)

    def find(self, key: Hashable) -> int | None:
        return self.index.get(key)

    def row(self, key: Hashable, now: float = 0.0) -> int:
        """The row of ``key``; a new identity takes a free or evicted row (zeroed).
        ``now``: the request's time, which `KeyTable` needs to tell the rows it holds."""
        found = self.index.get(key)
        if found is not None:
            return found
        if self.next_free < self.capacity:
            row = self.next_free
            self.next_free += 1
            self.keys.append(key)
        else:
            row = self._victim(now)
            old = self.keys[row]
            if old is not None:
                del self.index[old]
                self._evicting(old, row, now)
            self.data[row] = 0.0
            self.evictions += 1
            self.keys[row] = key
            self._taking(key, row)
        self.index[key] = row
        return row

    def _victim(self, now: float) -> int:
        sample = self._rng.integers(0, self.capacity, _EVICTION_SAMPLE)
        return int(sample[int(np.argmin(self.data[sample, F_LAST_SEEN]))])

    def _evicting(self, key: Hashable, row: int, now: float) -> None:
        """``key`` is about to lose ``row`` (still intact here)."""

    def _taking(self, key: Hashable, row: int) -> None:
        """``key`` took ``row``, evicted and zeroed."""

    def clear(self) -> None:
        self.data[:] = 0.0
        self.index.clear()
        self.keys = []
        self.next_free = 0

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


class KeyTable(StateTable):
    """The key table: eviction never gives a banned or refused identity a clean row.

    A new identity takes the least recently seen row of a random sample, as in
    `StateTable`, but a row whose ban or refusal (``F_BANNED_UNTIL``, ``F_WAIT_UNTIL``) is
    still in force is taken only when the whole sample is such rows; that row is then
    held (`held.HeldRows`, ``held_capacity`` rows) and copied back when its identity
    returns, before the kernel looks at it.
    """

    def __init__(
        self,
        capacity: int,
        width: int,
        *,
        held_capacity: int,
        seed: int = 0x5EED,
        data: np.ndarray | None = None,
    ) -> None:
        super().__init__(capacity, width, seed=seed, data=data)
        self.held = HeldRows(held_capacity, width)
        self._rng_state = np.array([seed | 1], dtype=np.uint64)
        pick_victim(self.data, self._rng_state, 0.0)  # compiled (or loaded) now, not on a request

    def _victim(self, now: float) -> int:
        return int(pick_victim(self.data, self._rng_state, now))

    def _evicting(self, key: Hashable, row: int, now: float) -> None:
        data = self.data
        if data[row, F_BANNED_UNTIL] > now or data[row, F_WAIT_UNTIL] > now:
            self.held.hold(key, data[row], now)

    def _taking(self, key: Hashable, row: int) -> None:
        held = self.held
        if held.index:
            held.restore(key, self.data[row])

    def hold_ban(self, key: Hashable, until: float, now: float, tokens: float) -> None:
        """A ban of ``key`` until ``until`` learned elsewhere (another worker through
        Redis): written into its row, its held row, or, when it has neither, a new held
        row (a known client with ``tokens`` in its bucket, banned)."""
        row = self.index.get(key)
        target = self.data[row] if row is not None else self.held.row_of(key)
        if target is not None:
            if until > target[F_BANNED_UNTIL]:
                target[F_BANNED_UNTIL] = until
            return
        fresh = np.zeros(self.width, dtype=np.float64)
        fresh[F_LAST_SEEN] = fresh[F_FIRST_SEEN] = fresh[F_BUCKET_TS] = now
        fresh[F_COUNT] = 1.0  # a known client: the kernel checks its ban
        fresh[F_TOKENS] = tokens
        fresh[F_BANNED_UNTIL] = until
        self.held.hold(key, fresh, now)

    def clear(self) -> None:
        super().clear()
        self.held.clear()


_HELD_PENALTY = 1e18  # added to a held row's recency: taken only when the sample is all held


@njit(cache=True)
def pick_victim(data: np.ndarray, rng_state: np.ndarray, now: float) -> int:
    """The least recently seen of ``_EVICTION_SAMPLE`` random rows, preferring rows whose
    ban or refusal is over (xorshift64* over ``rng_state[0]``)."""
    rows = data.shape[0]
    x = rng_state[0]
    best = 0
    best_key = np.inf
    for _ in range(_EVICTION_SAMPLE):
        x ^= x >> np.uint64(12)
        x ^= x << np.uint64(25)
        x ^= x >> np.uint64(27)
        r = int((x * np.uint64(0x2545F4914F6CDD1D)) % np.uint64(rows))
        key = data[r, F_LAST_SEEN]
        if data[r, F_BANNED_UNTIL] > now or data[r, F_WAIT_UNTIL] > now:
            key += _HELD_PENALTY
        if key < best_key:
            best_key = key
            best = r
    rng_state[0] = x
    return best
