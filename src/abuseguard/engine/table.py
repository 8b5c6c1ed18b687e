"""StateTable: a preallocated float64 table, a hash index from identities to rows, and
eviction of idle rows."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np

from abuseguard.engine import hashindex, kernels
from abuseguard.engine.held import HeldRows
from abuseguard.engine.kernel_set import KernelSet, compiled
from abuseguard.engine.layout import (
    F_BANNED_UNTIL,
    F_BUCKET_TS,
    F_COUNT,
    F_FIRST_SEEN,
    F_LAST_SEEN,
    F_TOKENS,
    F_WAIT_UNTIL,
)
from abuseguard.engine.views import float_view, int_view

_EVICTION_SAMPLE = 16


def _kernels_or_compiled(kernels: KernelSet | None) -> KernelSet:
    return kernels if kernels is not None else compiled()


class RowIndex:
    """The identity -> row index of a table, read as a mapping (``get``, ``[]``, ``in``,
    ``len``). Identities are not kept: a key is found by its ``hash()``, so iterating
    gives nothing back (see `hashindex`)."""

    __slots__ = ("_base", "_find", "_vec")

    def __init__(self, vec: np.ndarray, base: int, kernels: KernelSet | None = None) -> None:
        self._vec = vec
        self._base = base
        self._find = _kernels_or_compiled(kernels).find

    def get(self, key: Hashable, default: Any = None) -> Any:
        row: int = self._find(self._vec, self._base, hash(key))
        return default if row < 0 else row

    def __getitem__(self, key: Hashable) -> int:
        row: int = self._find(self._vec, self._base, hash(key))
        if row < 0:
            raise KeyError(key)
        return row

    def __contains__(self, key: object) -> bool:
        return bool(self._find(self._vec, self._base, hash(key)) >= 0)

    def __len__(self) -> int:
        return hashindex.block_words(self._vec, self._base)[1]

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[Hashable]:
        raise TypeError("a RowIndex keeps hashes, not identities: it cannot be iterated")


class StateTable:
    """Fixed capacity rows of ``width`` float64 words, one per identity.

    Identities are indexed by their ``hash()`` in an open-addressing block of int64 words
    (`hashindex`), in ``index_vector`` at ``index_base`` (an engine's index vector) or in
    an array of its own: no Python object per identity. When full, a new identity takes
    the row of the least recently seen of a random sample of rows (approximate LRU, as
    Redis does): cost is constant and memory never grows, so a flood of unique identities
    (IPv6 rotation) only churns the idle part of the table.
    """

    def __init__(
        self,
        capacity: int,
        width: int,
        *,
        seed: int = 0x5EED,
        data: np.ndarray | None = None,
        index_vector: np.ndarray | None = None,
        index_base: int = 0,
        kernels: KernelSet | None = None,
        sketch_pool: np.ndarray | None = None,
        sketch_cells: tuple[int, int] = (0, 0),
    ) -> None:
        """``data``: a zeroed (capacity, width) float64 array to hold the rows (a view into
        the engine's state vector); a new one when omitted. ``index_vector``: an int64
        array with an empty index block for ``capacity`` rows at ``index_base``.
        ``kernels``: the index functions to use (`kernel_set`; the compiled ones when
        omitted), switched later with `use_kernels`. ``sketch_pool``: the pool of register
        blocks the rows' sketch cells (``sketch_cells``: the first cell's field, how many)
        take blocks from (see `layout`): an evicted row gives its blocks back."""
        self.capacity = capacity
        self.width = width
        if data is None:
            data = np.zeros((capacity, width), dtype=np.float64)
        elif data.shape != (capacity, width) or data.dtype != np.float64:
            raise ValueError(f"table data must be float64 of shape {(capacity, width)}")
        self.data = data
        # Python floats from the table without numpy's scalar objects.
        self.data_view = float_view(data)
        if index_vector is None:
            index_vector, index_base = hashindex.new_block(capacity), 0
        self.index_vector = index_vector
        self.index_base = index_base
        self._kernels = _kernels_or_compiled(kernels)
        self.index = RowIndex(index_vector, index_base, self._kernels)
        row_hash = hashindex.block_words(index_vector, index_base)[3]
        # The hash of the identity that holds each row (rows are handed out in order).
        self.row_hashes = index_vector[row_hash : row_hash + capacity]
        self._row_hashes = int_view(self.row_hashes)
        self.evictions = 0
        self._rng = np.random.default_rng(seed)
        self.sketch_pool = sketch_pool
        self.sketch_cells = sketch_cells

    def use_kernels(self, kernels: KernelSet) -> None:
        """Switch to another implementation of the same kernels (same arrays, same
        results): the compiled ones once they are ready."""
        self._kernels = kernels
        self.index._find = kernels.find

    def __len__(self) -> int:
        return len(self.index)

    @property
    def next_free(self) -> int:
        return hashindex.block_words(self.index_vector, self.index_base)[2]

    def find(self, key: Hashable) -> int | None:
        row: int | None = self.index.get(key)
        return row

    def owns(self, row: int, key: Hashable) -> bool:
        """Does ``row`` belong to ``key`` (rows are reused after an eviction)?"""
        return 0 <= row < self.next_free and bool(self._row_hashes[row] == hash(key))

    def row(self, key: Hashable, now: float = 0.0) -> int:
        """The row of ``key``; a new identity takes a free or evicted row (zeroed).
        ``now``: the request's time, which `KeyTable` needs to tell the rows it holds."""
        h = hash(key)
        row = int(self._kernels.claim(self.index_vector, self.index_base, h))
        return row if row >= 0 else self.evict_for(h, now)

    def evict_for(self, h: int, now: float) -> int:
        """Give the identity of hash ``h`` (absent, table full) the row of a victim."""
        row = self._victim(now)
        self._evicting(self._row_hashes[row], row, now)
        self._kernels.replace(self.index_vector, self.index_base, row, h)
        if self.sketch_pool is not None:
            kernels.release_sketches(self.sketch_pool, self.data[row], *self.sketch_cells)
        self.data[row] = 0.0
        self.evictions += 1
        self._taking(h, row)
        return row

    def _victim(self, now: float) -> int:
        sample = self._rng.integers(0, self.capacity, _EVICTION_SAMPLE)
        return int(sample[int(np.argmin(self.data[sample, F_LAST_SEEN]))])

    def _evicting(self, h: int, row: int, now: float) -> None:
        """The identity of hash ``h`` is about to lose ``row`` (still intact here)."""

    def _taking(self, h: int, row: int) -> None:
        """The identity of hash ``h`` took ``row``, evicted and zeroed."""

    def clear(self) -> None:
        """Empty the table. Blocks its rows held in a sketch pool are not handed back one
        by one: no cell points at them any more, so the pool reuses them when it runs out
        (`kernels.take_block`)."""
        self.data[:] = 0.0
        hashindex.reset_block(self.index_vector, self.index_base)

    @property
    def nbytes(self) -> int:
        """The rows and their index."""
        return int(self.data.nbytes) + 8 * hashindex.block_size(self.capacity)


class KeyTable(StateTable):
    """The key table: eviction never gives a banned or refused identity a clean row.

    A new identity takes the least recently seen row of a random sample, as in
    `StateTable`, but a row whose ban or refusal (``F_BANNED_UNTIL``, ``F_WAIT_UNTIL``) is
    still in force is taken only when the whole sample is such rows; that row is then
    held (`held.HeldRows`, ``held_capacity`` rows) and copied back when its identity
    returns, before the kernel looks at it. Held rows are keyed by the identity's
    ``hash()``, as the index is.
    """

    def __init__(
        self,
        capacity: int,
        width: int,
        *,
        held_capacity: int,
        seed: int = 0x5EED,
        data: np.ndarray | None = None,
        index_vector: np.ndarray | None = None,
        index_base: int = 0,
        kernels: KernelSet | None = None,
    ) -> None:
        super().__init__(
            capacity,
            width,
            seed=seed,
            data=data,
            index_vector=index_vector,
            index_base=index_base,
            kernels=kernels,
        )
        self.held = HeldRows(held_capacity, width)
        self._rng_state = np.array([seed | 1], dtype=np.uint64)

    def _victim(self, now: float) -> int:
        return int(self._kernels.pick_victim(self.data, self._rng_state, now))

    def _evicting(self, h: int, row: int, now: float) -> None:
        data = self.data
        if data[row, F_BANNED_UNTIL] > now or data[row, F_WAIT_UNTIL] > now:
            self.held.hold(h, data[row], now)

    def _taking(self, h: int, row: int) -> None:
        held = self.held
        if held.index:
            held.restore(h, self.data[row])

    def hold_ban(self, key: Hashable, until: float, now: float, tokens: float) -> None:
        """A ban of ``key`` until ``until`` learned elsewhere (another worker through
        Redis): written into its row, its held row, or, when it has neither, a new held
        row (a known client with ``tokens`` in its bucket, banned)."""
        h = hash(key)
        row = int(self._kernels.find(self.index_vector, self.index_base, h))
        target = self.data[row] if row >= 0 else self.held.row_of(h)
        if target is not None:
            if until > target[F_BANNED_UNTIL]:
                target[F_BANNED_UNTIL] = until
            return
        fresh = np.zeros(self.width, dtype=np.float64)
        fresh[F_LAST_SEEN] = fresh[F_FIRST_SEEN] = fresh[F_BUCKET_TS] = now
        fresh[F_COUNT] = 1.0  # a known client: the kernel checks its ban
        fresh[F_TOKENS] = tokens
        fresh[F_BANNED_UNTIL] = until
        self.held.hold(h, fresh, now)

    def clear(self) -> None:
        super().clear()
        self.held.clear()
