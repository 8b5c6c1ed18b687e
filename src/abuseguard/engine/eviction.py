"""The key table's eviction sampler, compiled by Numba (`table.KeyTable` calls it through
its `kernel_set.KernelSet`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from abuseguard.engine.layout import F_BANNED_UNTIL, F_LAST_SEEN, F_WAIT_UNTIL

_EVICTION_SAMPLE = 16

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
