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


# Odd multipliers of the two permutations. Items are already uniform 64-bit hashes, so a
# multiply-xor permutation (one multiplication) is as good as a full mix here, and cheaper.
_MULTIPLIERS: tuple[int, int] = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)


def permute(item: int, salt: int, multiplier: int) -> int:
    """A salted bijection of 64-bit integers, the permutation a MinHash minimises over."""
    return (((item ^ salt) & MASK64) * multiplier) & MASK64


def minhash(items: Iterable[int], salt: int, multiplier: int = _MULTIPLIERS[0]) -> int:
    """The minimum of ``permute(item, salt, multiplier)`` over ``items`` (MASK64 + 1 for
    none): two sets have the same minimum with probability about their Jaccard
    similarity (exactly, for a random permutation)."""
    return min(
        ((((item ^ salt) & MASK64) * multiplier) & MASK64 for item in items),
        default=MASK64 + 1,
    )


def heavy_items(weights: dict[int, float], share: float) -> list[int]:
    """The items whose weight is at least ``share`` of the heaviest one's."""
    if len(weights) <= 1:
        return list(weights)
    floor = share * max(weights.values())
    return [item for item, weight in weights.items() if weight >= floor]


def set_signature(items: Iterable[int]) -> int:
    """One stable number for a set: a pair of MinHashes under the two fixed permutations.

    Two sets share it with probability about J² (J their Jaccard similarity): equal for
    equal sets, rarely equal for sets that merely overlap. 0 for an empty set."""
    kept = list(items)
    if not kept:
        return 0
    if len(kept) == 1:
        return kept[0] or 1
    # Accounts of one persona, shape or ASN mix hold the same sets: most are signed before.
    key = frozenset(kept)
    found = _signatures.get(key)
    if found is None:
        found = combine(
            minhash(kept, MINHASH_SALTS[0], _MULTIPLIERS[0]),
            minhash(kept, MINHASH_SALTS[1], _MULTIPLIERS[1]),
        )
        if len(_signatures) >= _MAX_SIGNATURES:
            _signatures.clear()
        _signatures[key] = found
    return found


_MAX_SIGNATURES = 65_536
_signatures: dict[frozenset[int], int] = {}


class DecayedItems:
    """Items with weights that halve every ``half_life`` seconds, at most ``capacity`` kept.

    ``add(item, ts)`` adds 1 to the item as of ``ts``; when a new item does not fit, the
    lightest item (the first added on ties) is dropped and returned, so the caller can keep
    counts of who holds what. Weights are kept in the frame of a reference time (an add at
    a later time adds ``2 ** (age / half_life)``), so an add costs O(1); the frame moves
    forward (and items under ``floor`` are dropped) once that factor passes ``rebase_at``,
    or on ``decay_to``. ``weight(item, ts)`` is the decayed weight at ``ts``.
    """

    __slots__ = ("capacity", "changed", "floor", "half_life", "rebase_at", "ref", "ts", "weights")

    def __init__(
        self, capacity: int, half_life: float, floor: float = 0.05, rebase_at: float = 256.0
    ) -> None:
        self.capacity = capacity
        self.half_life = half_life
        self.floor = floor
        self.rebase_at = rebase_at
        self.weights: dict[int, float] = {}
        self.ref = -math.inf  # the time the stored weights are expressed at
        self.ts = -math.inf  # the latest time seen
        # True once the set of items changed (not merely a weight); the owner resets it.
        self.changed = False

    def decay_to(self, ts: float) -> list[int]:
        """Express the weights at ``ts`` (not before the latest time seen) and drop those
        under the floor; return the dropped items."""
        ts = max(ts, self.ts)
        self.ts = ts
        dropped: list[int] = []
        if self.ref > -math.inf and ts > self.ref:
            factor = 0.5 ** ((ts - self.ref) / self.half_life)
            weights = self.weights
            for item in list(weights):
                weight = weights[item] * factor
                if weight < self.floor:
                    del weights[item]
                    dropped.append(item)
                    self.changed = True
                else:
                    weights[item] = weight
        self.ref = ts
        return dropped

    def add(self, item: int, ts: float, weight: float = 1.0) -> list[int]:
        """Add ``weight`` to ``item`` at ``ts`` (an earlier ``ts`` than the latest seen counts
        as the latest); return the items dropped (decayed away or evicted)."""
        dropped: list[int] = []
        if ts > self.ts:
            self.ts = ts
        if self.ref == -math.inf:
            self.ref = self.ts
        scale = 2.0 ** ((self.ts - self.ref) / self.half_life)
        if scale > self.rebase_at:
            dropped = self.decay_to(self.ts)
            scale = 1.0
        weights = self.weights
        if item in weights:
            weights[item] += weight * scale
            return dropped
        if len(weights) >= self.capacity:
            lightest = min(weights, key=weights.__getitem__)
            del weights[lightest]
            dropped.append(lightest)
        weights[item] = weight * scale
        self.changed = True
        return dropped

    def weight(self, item: int, ts: float) -> float:
        """The weight of ``item`` decayed to ``ts`` (0 when not held)."""
        stored = self.weights.get(item, 0.0)
        return stored * 0.5 ** ((ts - self.ref) / self.half_life) if stored else 0.0

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
