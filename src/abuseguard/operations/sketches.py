"""Streaming sketches for linking accounts: stable hashes, MinHash, decayed item sets,
union-find.

Everything here is deterministic across processes (no use of Python's salted ``hash``) and
bounded: a `DecayedItems` keeps at most ``capacity`` items, a `UnionFind` only the
elements it was given in one clustering pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from hashlib import blake2b

MASK64 = (1 << 64) - 1
# Two fixed salts: a MinHash *pair* per evidence kind (two independent permutations).
MINHASH_SALTS: tuple[int, int] = (0x243F6A8885A308D3, 0x13198A2E03707344)


def mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that scatters every bit."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def stable_hash(text: str) -> int:
    """Unsigned 64-bit blake2b of ``text`` (UTF-8), the same in every process; never 0."""
    digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def combine(*values: int) -> int:
    """A stable 64-bit hash of a sequence of integers (order matters); never 0."""
    h = 0x84222325CBF29CE4
    for value in values:
        h = mix64(h ^ (value & MASK64))
    return h or 1


def minhash(items: Iterable[int], salt: int) -> int:
    """The minimum of ``mix64(item ^ salt)`` over ``items`` (MASK64 + 1 for none): two sets
    have the same minimum with probability equal to their Jaccard similarity."""
    return min((mix64((item ^ salt) & MASK64) for item in items), default=MASK64 + 1)


def set_signature(items: Iterable[int]) -> int:
    """One stable number for a set: a pair of MinHashes under the two fixed salts, combined.

    Two sets share it with probability about J² (J their Jaccard similarity): equal for
    equal sets, rarely equal for sets that merely overlap. 0 for an empty set."""
    kept = list(items)
    if not kept:
        return 0
    return combine(minhash(kept, MINHASH_SALTS[0]), minhash(kept, MINHASH_SALTS[1]))


class DecayedItems:
    """Items with weights that halve every ``half_life`` seconds, at most ``capacity`` kept.

    ``add(item, ts)`` decays every weight to ``ts`` and adds 1 to the item; when a new item
    does not fit, the lightest item (the oldest on ties) is dropped and returned, so the
    caller can keep counts of who holds what. Items under ``floor`` are dropped on decay.
    """

    __slots__ = ("capacity", "floor", "half_life", "ts", "weights")

    def __init__(self, capacity: int, half_life: float, floor: float = 0.05) -> None:
        self.capacity = capacity
        self.half_life = half_life
        self.floor = floor
        self.weights: dict[int, float] = {}
        self.ts = -math.inf

    def decay_to(self, ts: float) -> list[int]:
        """Decay every weight to ``ts``; return the items that fell under the floor."""
        if ts <= self.ts:
            return []
        dropped: list[int] = []
        if self.weights and self.ts > -math.inf:
            factor = 0.5 ** ((ts - self.ts) / self.half_life)
            weights = self.weights
            for item in list(weights):
                weight = weights[item] * factor
                if weight < self.floor:
                    del weights[item]
                    dropped.append(item)
                else:
                    weights[item] = weight
        self.ts = ts
        return dropped

    def add(self, item: int, ts: float, weight: float = 1.0) -> list[int]:
        """Add ``weight`` to ``item`` at ``ts`` (not before the last update: an earlier ``ts``
        counts as the last one); return the items dropped (decayed away or evicted)."""
        dropped = self.decay_to(ts)
        weights = self.weights
        if item in weights:
            weights[item] += weight
            return dropped
        if len(weights) >= self.capacity:
            lightest = min(weights, key=weights.__getitem__)
            del weights[lightest]
            dropped.append(lightest)
        weights[item] = weight
        return dropped

    def __len__(self) -> int:
        return len(self.weights)

    def __contains__(self, item: object) -> bool:
        return item in self.weights


class UnionFind:
    """Disjoint sets of strings with path halving; a union keeps as root the element first
    seen, so the components and their roots do not depend on hash randomisation."""

    __slots__ = ("order", "parent")

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.order: dict[str, int] = {}

    def add(self, x: str) -> None:
        if x not in self.parent:
            self.parent[x] = x
            self.order[x] = len(self.order)

    def find(self, x: str) -> str:
        self.add(x)
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.order[rb] < self.order[ra]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        return ra

    def components(self) -> dict[str, list[str]]:
        """Root -> members, both in the order the elements were first seen."""
        groups: dict[str, list[str]] = {}
        for x in self.parent:
            groups.setdefault(self.find(x), []).append(x)
        return groups
