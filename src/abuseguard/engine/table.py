"""StateTable: a preallocated float64 table with a key -> row map and eviction of idle rows."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from abuseguard.engine.layout import F_LAST_SEEN

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

    def row(self, key: Hashable) -> int:
        found = self.index.get(key)
        if found is not None:
            return found
        if self.next_free < self.capacity:
            row = self.next_free
            self.next_free += 1
            self.keys.append(key)
        else:
            row = self._victim()
            old = self.keys[row]
            if old is not None:
                del self.index[old]
            self.data[row] = 0.0
            self.evictions += 1
            self.keys[row] = key
        self.index[key] = row
        return row

    def _victim(self) -> int:
        sample = self._rng.integers(0, self.capacity, _EVICTION_SAMPLE)
        return int(sample[int(np.argmin(self.data[sample, F_LAST_SEEN]))])

    def clear(self) -> None:
        self.data[:] = 0.0
        self.index.clear()
        self.keys = []
        self.next_free = 0

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)
