"""Compact sketches (issue #17): a sketch with at most one register index set is one cell
word of its row; a second index moves it to a block of a preallocated pool, which goes
back when a rotation or an eviction empties it. The estimates are those of the plain
register sketch fed the same items at the same epochs, whatever the order, the rotations
and the reuse of blocks; an exhausted pool reuses a block instead of failing."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard import Guard, Policy, RequestInfo
from abuseguard.engine import kernels
from abuseguard.engine import layout as L

_CELL = 1  # the cell's field in the test rows
_EPOCH = 0  # the epoch's field


class Reference:
    """The register sketch as it was before cells: two halves of one-byte registers per
    row, the same rotation (`kernels.rotate_sketches` of old) and the same estimate."""

    def __init__(self, rows: int, m: int) -> None:
        self.m = m
        self.regs = [[0] * (2 * m) for _ in range(rows)]
        self.epochs = [0] * rows

    def rotate(self, row: int, epoch: int) -> bool:
        old = self.epochs[row]
        if epoch <= old:
            return False
        m = self.m
        if epoch == old + 1:
            half = epoch & 1
            self.regs[row][half * m : (half + 1) * m] = [0] * m
        else:
            self.regs[row] = [0] * (2 * m)
        self.epochs[row] = epoch
        return True

    def add(self, row: int, half: int, h: int) -> bool:
        p = int(math.log2(self.m))
        index = h >> (64 - p)
        rank = 1
        w = ((h << p) | (1 << (p - 1))) & (2**64 - 1)
        while not w >> 63:
            w = (w << 1) & (2**64 - 1)
            rank += 1
        slot = half * self.m + index
        if self.regs[row][slot] < rank:
            self.regs[row][slot] = rank
            return True
        return False

    def estimate(self, row: int) -> float:
        m = self.m
        regs = self.regs[row]
        union = [max(a, b) for a, b in zip(regs[:m], regs[m:], strict=True)]
        total = sum(2.0**-r for r in union)
        zeros = union.count(0)
        estimate = (0.697 if m == 32 else 0.709) * m * m / total
        if estimate <= 2.5 * m and zeros > 0:
            estimate = m * math.log(m / zeros)
        return estimate


def _pool(blocks: int, m: int) -> np.ndarray:
    return np.zeros((blocks + 1, 1 + L.sketch_words(1, m)), dtype=np.float64)


class Compact:
    """Rows of (epoch, cell) over a pool, worked on by the kernels."""

    def __init__(self, rows: int, m: int, blocks: int) -> None:
        self.m = m
        self.table = np.zeros((rows, 2), dtype=np.float64)
        self.pool = _pool(blocks, m)

    def rotate(self, row: int, epoch: int) -> bool:
        return bool(
            kernels.rotate_sketches(self.table[row], self.pool, 1, self.m, epoch, _EPOCH, _CELL)
        )

    def add(self, row: int, half: int, h: int, epoch: int) -> bool:
        return bool(
            kernels.sketch_add(
                self.table[row],
                _CELL,
                self.pool,
                (self.table,),
                _EPOCH,
                _CELL,
                row << 2,
                self.m,
                half,
                np.uint64(h),
                epoch,
            )
        )

    def estimate(self, row: int) -> float:
        return float(kernels.sketch_estimate(self.table[row], _CELL, self.pool, self.m))

    def blocks_in_use(self) -> int:
        return int((self.table[:, _CELL] < 0).sum())

    def free_blocks(self) -> int:
        n = 0
        b = int(self.pool[0, L.PH_FREE])
        while b:
            n += 1
            b = int(-1.0 - self.pool[b, L.POOL_OWNER])
        return n


# A few values per row, so that rows often keep one value and often see a second; hashes
# drawn from a small set so that values repeat (the same item again is no new index).
_HASHES = st.sampled_from(
    [0, 1, 2**63, 2**58 + 5, 2**59 + 1, 2**62 + 2**40, 2**64 - 1, 0x0123456789ABCDEF]
    + [(0x9E3779B97F4A7C15 * i) % 2**64 for i in range(1, 9)]
)
_EVENTS = st.lists(
    st.tuples(st.integers(0, 5), _HASHES, st.sampled_from([0, 0, 0, 1, 1, 2, 3, -1])),
    max_size=120,
)


def _run(events: list[tuple[int, int, int]], m: int, blocks: int) -> Compact:
    """Feed both sketches as `kernels.network_stage` does (rotate, add in the epoch's half,
    estimate when something changed) and compare every estimate after every event."""
    reference = Reference(6, m)
    compact = Compact(6, m, blocks)
    cached_ref = [0.0] * 6
    cached = [0.0] * 6
    epoch = 1000
    for row, h, step in events:
        epoch += step  # -1: a late event from the previous epoch
        half = epoch & 1
        dirty_ref = reference.rotate(row, epoch)
        dirty = compact.rotate(row, epoch)
        assert dirty == dirty_ref
        grew_ref = reference.add(row, half, h)
        grew = compact.add(row, half, h, epoch)
        assert grew == grew_ref
        if grew_ref or dirty_ref:
            cached_ref[row] = reference.estimate(row)
        if grew or dirty:
            cached[row] = compact.estimate(row)
        assert cached == cached_ref
        assert compact.estimate(row) == reference.estimate(row)
    assert compact.pool[0, L.PH_STOLEN] == 0.0
    return compact


@settings(max_examples=150, deadline=None)
@given(events=_EVENTS, m=st.sampled_from([L.KEY_SKETCH_M, L.NET_SKETCH_M]))
def test_compact_sketch_estimates_what_the_register_sketch_does(
    events: list[tuple[int, int, int]], m: int
) -> None:
    """Random items, rows and rotations (late events too): the cell-and-block sketch
    grows, rotates and estimates exactly as the register sketch, and a block is held only
    by a sketch with two register indices or more (blocks in use + free = handed out)."""
    compact = _run(events, m, blocks=6)
    handed_out = max(0, int(compact.pool[0, L.PH_NEXT]) - 1)
    assert compact.blocks_in_use() + compact.free_blocks() == handed_out


def test_one_value_costs_no_block() -> None:
    """A sketch that saw one value, again and again across rotations, stays in its cell;
    its estimate is the register sketch's for one register: m * log(m / (m - 1))."""
    compact = Compact(1, L.NET_SKETCH_M, blocks=1)
    for epoch in range(10, 20):
        compact.rotate(0, epoch)
        compact.add(0, epoch & 1, 0xDEADBEEF12345678, epoch)
        assert compact.estimate(0) == 64 * math.log(64 / 63)
    assert compact.pool[0, L.PH_NEXT] == 0.0  # no block ever handed out
    compact.rotate(0, 30)
    assert compact.table[0, _CELL] == 0.0 and compact.estimate(0) == 0.0


def test_a_second_value_takes_a_block_and_a_rotation_returns_it() -> None:
    """A second register index replays the cell into a block; once a rotation leaves one
    index, the block goes back to the pool and the cell holds that register again."""
    compact = Compact(1, L.KEY_SKETCH_M, blocks=1)
    compact.rotate(0, 10)
    compact.add(0, 0, 1 << 60, 10)  # index 0
    compact.rotate(0, 11)
    compact.add(0, 1, 1 << 63, 11)  # index 16, the other half
    assert compact.table[0, _CELL] < 0 and compact.blocks_in_use() == 1
    compact.rotate(0, 12)  # clears half 0: index 16 is left
    assert compact.table[0, _CELL] >= 0 and compact.free_blocks() == 1
    reference = Reference(1, L.KEY_SKETCH_M)
    reference.rotate(0, 10)
    reference.add(0, 0, 1 << 60)
    reference.rotate(0, 11)
    reference.add(0, 1, 1 << 63)
    reference.rotate(0, 12)
    assert compact.estimate(0) == reference.estimate(0) > 0.0


@settings(max_examples=60, deadline=None)
@given(events=_EVENTS, m=st.sampled_from([L.KEY_SKETCH_M, L.NET_SKETCH_M]))
def test_a_one_block_pool_reuses_blocks_of_sketches_gone_stale(
    events: list[tuple[int, int, int]], m: int
) -> None:
    """Rows used one at a time, each two epochs after the last (the older sketches are due
    to be cleared): one block serves them all, with the register sketch's estimates and
    nothing lost."""
    spaced = [
        (row, h, 2 if i and row != events[i - 1][0] else 0) for i, (row, h, _) in enumerate(events)
    ]
    _run(spaced, m, blocks=1)


def test_an_exhausted_pool_reuses_a_live_block_and_never_fails() -> None:
    """More sketches with two values at once than blocks: each promotion still succeeds,
    taking the block of the sketch that rotated least recently (counted in PH_STOLEN);
    that sketch restarts from empty."""
    compact = Compact(4, L.NET_SKETCH_M, blocks=2)
    for row in range(4):
        epoch = 10 + (1 if row >= 2 else 0)
        compact.rotate(row, epoch)
        compact.add(row, epoch & 1, 1 << 62, epoch)  # index 16
        compact.add(row, epoch & 1, 3 << 62, epoch)  # index 48: a block
    assert compact.pool[0, L.PH_STOLEN] == 2.0
    assert compact.blocks_in_use() == 2
    # The two taken from the rows of epoch 10; rows 2 and 3 keep theirs.
    assert list(compact.table[:, _CELL] < 0) == [False, False, True, True]
    assert compact.table[0, _CELL] == 0.0 and compact.estimate(0) == 0.0
    assert compact.estimate(2) > 1.5


def _clients(guard: Guard, first: int, count: int, addresses: int, ts: float) -> float:
    for i in range(first, first + count):
        for address in (f"10.{i % 200}.{i // 200}.1", f"172.16.{i % 200}.{i // 200}")[:addresses]:
            ts += 0.01
            info = RequestInfo(ip=address, key=f"key-{i}", ts=ts)
            guard.complete(info, guard.check(info), status=200)
    return ts


def _chain(pool: np.ndarray) -> list[int]:
    free = []
    b = int(pool[0, L.PH_FREE])
    while b:
        free.append(b)
        b = int(-1.0 - pool[b, L.POOL_OWNER])
    return free


def test_evicted_rows_give_their_blocks_back() -> None:
    """Accounts with two addresses each (their fan-out sketches of addresses and prefixes
    take blocks), then enough one-address accounts to evict them all: every block the
    evicted rows held is free again, and none was taken from a sketch in use."""
    guard = Guard(Policy(max_identities=16))
    engine = guard.engine
    pool = engine.acc_pool
    ts = _clients(guard, 0, 8, 2, 1_700_000_000.0)
    cells = engine.accounts.data[:, L.A_CELL : L.A_CELL + L.KEY_SKETCHES]
    held = sorted(int(-c) - 1 for c in cells.ravel() if c < 0)
    assert len(held) >= 8 and len(set(held)) == len(held)
    assert _chain(pool) == []
    _clients(guard, 8, 40, 1, ts)
    assert engine.accounts.evictions >= 8
    assert (cells < 0).sum() == 0
    assert sorted(_chain(pool)) == held
    assert pool[0, L.PH_STOLEN] == 0.0 and engine.net_pool[0, L.PH_STOLEN] == 0.0


def test_rows_are_narrower_by_the_sketches() -> None:
    """A network row keeps its fan-in sketch in one word, an account row its four
    fan-out sketches in four: 96 and 192 bytes of registers less a row."""
    assert L.NET_WIDTH == L.F_SKETCH_CELL + 1
    assert L.ACC_WIDTH == L.ACC_FIELDS
    assert L.NET_BLOCK_WIDTH * 8 == 8 + 2 * L.NET_SKETCH_M * 6 // 8
    assert L.ACC_BLOCK_WIDTH * 8 == 8 + 2 * L.KEY_SKETCH_M * 6 // 8
