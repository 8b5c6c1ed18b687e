"""The sketches' registers, 6 bits each, packed four to three bytes (`kernels.register`,
`kernels.set_register`): every register keeps its own value whatever its neighbours
do, compiled and in the Python twin alike, and an estimate reads what a sketch of
one-byte registers held."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.engine import kernels
from abuseguard.engine import layout as L

_RANKS = st.integers(min_value=0, max_value=63)


@settings(max_examples=200, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 2 * 64 - 1), _RANKS), max_size=200))
def test_each_register_keeps_its_value(writes: list[tuple[int, int]]) -> None:
    """Writes in any order to 128 registers (a network sketch's two halves): each reads
    back the last value written to it, compiled and in Python, in the same bytes."""
    n = 2 * L.NET_SKETCH_M
    words = L.sketch_words(L.NET_SKETCHES, L.NET_SKETCH_M)
    compiled = np.zeros(words, dtype=np.float64).view(np.uint8)
    python = np.zeros(words, dtype=np.float64).view(np.uint8)
    expected = [0] * n
    for r, value in writes:
        kernels.set_register(compiled, r, value)
        kernels.set_register.py_func(python, r, value)
        expected[r] = value
    assert [kernels.register(compiled, r) for r in range(n)] == expected
    assert [kernels.register.py_func(python, r) for r in range(n)] == expected
    assert np.array_equal(compiled, python)


def _reference_estimate(registers: list[int], m: int) -> float:
    """HyperLogLog's estimate over the union of two halves of one-byte registers."""
    union = [max(a, b) for a, b in zip(registers[:m], registers[m:], strict=True)]
    total = sum(2.0**-r for r in union)
    zeros = union.count(0)
    estimate = (0.697 if m == 32 else 0.709) * m * m / total
    if estimate <= 2.5 * m and zeros > 0:
        estimate = m * math.log(m / zeros)
    return estimate


@settings(max_examples=50, deadline=None)
@given(
    hashes=st.lists(st.integers(0, 2**64 - 1), max_size=400),
    m=st.sampled_from([L.KEY_SKETCH_M, L.NET_SKETCH_M]),
)
def test_a_packed_sketch_estimates_what_byte_registers_would(hashes: list[int], m: int) -> None:
    """Items added to both halves of a packed sketch: its estimate is that of the same
    ranks in one-byte registers (the largest rank, 65 - log2(m), fits 6 bits)."""
    regs = np.zeros(L.sketch_words(1, m), dtype=np.float64).view(np.uint8)
    p = int(math.log2(m))
    reference = [0] * (2 * m)
    for i, h in enumerate(hashes):
        half = i & 1
        kernels.hll_add(regs, half * m, m, np.uint64(h))
        index = h >> (64 - p)
        rank = 1
        w = ((h << p) | (1 << (p - 1))) & (2**64 - 1)
        while not w >> 63:
            w = (w << 1) & (2**64 - 1)
            rank += 1
        reference[half * m + index] = max(reference[half * m + index], rank)
    assert [kernels.register(regs, r) for r in range(2 * m)] == reference
    assert kernels.hll_estimate(regs, 0, m) == _reference_estimate(reference, m)


def test_a_sketch_costs_six_bits_a_register() -> None:
    """A fan-in sketch's block (2 x 64 registers) holds 96 bytes of registers, a fan-out
    sketch's (2 x 32) 48: 12 and 6 words, not 16 and 8 (plus the block's owner word)."""
    assert (L.NET_BLOCK_WIDTH - L.POOL_REGS) * 8 == 2 * L.NET_SKETCH_M * 6 // 8 == 96
    assert (L.ACC_BLOCK_WIDTH - L.POOL_REGS) * 8 == 2 * L.KEY_SKETCH_M * 6 // 8 == 48
