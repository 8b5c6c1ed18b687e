"""The identity -> row index (`abuseguard.engine.hashindex`) against a dict reference
model, with hypothesis: claims, lookups, removals and evictions in any order keep the
index and the model in step, including in a tiny table where probes wrap around."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.engine import hashindex as H
from abuseguard.engine import kernel_set
from abuseguard.engine import layout as L
from abuseguard.engine.table import StateTable

# Hashes drawn from a small pool collide in their home slots often; extremes and 0 too.
_HASHES = st.one_of(
    st.integers(min_value=-40, max_value=40),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**62, 12345678901234567]),
)
_OPS = st.lists(
    st.tuples(st.sampled_from(["claim", "find", "remove", "evict"]), _HASHES),
    max_size=300,
)


class Model:
    """What the index must answer: a dict, rows handed out in order, then taken back."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rows: dict[int, int] = {}
        self.owner: dict[int, int] = {}  # row -> hash
        self.next_free = 0

    def claim(self, h: int) -> int:
        if h in self.rows:
            return self.rows[h]
        if self.next_free >= self.capacity:
            return H.FULL
        row = self.next_free
        self.next_free += 1
        self.rows[h] = row
        self.owner[row] = h
        return row


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=12), ops=_OPS, salt=st.integers(0, 2**63 - 1))
def test_the_index_answers_as_a_dict(capacity: int, ops: list[tuple[str, int]], salt: int) -> None:
    vec = np.zeros(H.block_size(capacity), dtype=np.int64)
    H.init_block(vec, 0, capacity, salt=salt)
    model = Model(capacity)
    for op, h in ops:
        if op == "claim":
            assert H.claim(vec, 0, h) == model.claim(h)
        elif op == "find":
            assert H.find(vec, 0, h) == model.rows.get(h, H.NOT_FOUND)
        elif op == "remove":
            row = model.rows.pop(h, H.NOT_FOUND)
            if row >= 0:
                del model.owner[row]
            assert H.remove(vec, 0, h) == row
        elif h not in model.rows and model.owner:
            # Eviction: a held row (the smallest here) goes to a new identity.
            row = min(model.owner)
            old = model.owner[row]
            assert H.replace(vec, 0, row, h) == old
            del model.rows[old]
            model.rows[h] = row
            model.owner[row] = h
        slots, count, next_free, _ = H.block_words(vec, 0)
        assert count == len(model.rows) <= capacity < slots
        assert next_free == model.next_free
    for h, row in model.rows.items():
        assert H.find(vec, 0, h) == row
    occupied = vec[H.HEADER : H.HEADER + H.slot_count(capacity)]
    assert int(np.count_nonzero(occupied)) == len(model.rows)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.text(max_size=6), min_size=1, max_size=80),
    capacity=st.integers(min_value=1, max_value=20),
)
def test_a_state_table_keeps_one_row_per_identity_and_evicts_when_full(
    keys: list[str], capacity: int
) -> None:
    """`StateTable.row` over strings: the same identity gets its row back while it holds
    it; a full table hands a new identity a zeroed row that its old owner loses."""
    table = StateTable(capacity, L.NET_WIDTH)
    holder: dict[int, str] = {}
    for t, key in enumerate(keys):
        known = table.find(key)
        row = table.row(key, float(t))
        if known is not None:
            assert row == known
        else:
            if row in holder:  # evicted: the old owner is gone, the row is clean
                assert table.find(holder[row]) is None
                assert not table.owns(row, holder[row])
            assert not table.data[row].any()
        holder[row] = key
        assert table.owns(row, key) and table.index[key] == row and key in table.index
        table.data[row, L.F_LAST_SEEN] = float(t) + 1.0
        assert len(table) == len(holder) <= capacity
    table.clear()
    assert len(table) == 0 and all(table.find(key) is None for key in keys)


def test_a_full_table_of_random_hashes_empties_again() -> None:
    """At scale, with random 64-bit hashes: every one found, then removed to an empty
    index (backward shift leaves no tombstones behind)."""
    capacity = 1 << 18
    vec = H.new_block(capacity)
    hashes = np.random.default_rng(7).integers(-(2**63), 2**63 - 1, capacity)
    assert len(np.unique(hashes)) == capacity
    for h in hashes.tolist():
        assert H.claim(vec, 0, h) >= 0
    assert H.claim(vec, 0, 12345) == H.FULL
    sample = hashes[::997].tolist()
    assert [H.find(vec, 0, h) for h in sample] == [int(i) for i in range(0, len(hashes), 997)]
    for h in hashes.tolist():
        assert H.remove(vec, 0, h) >= 0
    slots = H.slot_count(capacity)
    assert not vec[H.HEADER : H.HEADER + slots].any()


def _tag_sharing_hashes(salt: int) -> tuple[int, int]:
    """Two hashes whose mixed keys share their high 32 bits (a slot's tag) under ``salt``:
    a birthday search, about 2^16 hashes."""
    seen: dict[int, int] = {}
    for h in range(1, 1 << 20):
        tag = (kernel_set._mixed(h, salt) >> 32) & 0xFFFFFFFF
        if tag in seen:
            return seen[tag], h
        seen[tag] = h
    raise AssertionError("no two hashes share a tag")


@pytest.mark.parametrize("implementation", ["compiled", "twin"])
def test_identities_whose_slots_share_a_tag_keep_their_own_rows(implementation: str) -> None:
    """A slot keeps 32 bits of the key: two identities with the same tag (and the same
    home slot) are told apart by their rows' full hashes, through claim, find, eviction
    and removal, in the compiled index and in its Python twin."""
    kernels = kernel_set.compiled() if implementation == "compiled" else kernel_set.python_twin()
    salt = 0x5EED5EED
    a, b = _tag_sharing_hashes(salt)
    vec = np.zeros(H.block_size(4), dtype=np.int64)
    H.init_block(vec, 0, 4, salt=salt)
    assert kernels.find(vec, 0, a) == H.NOT_FOUND
    assert kernels.claim(vec, 0, a) == 0
    assert kernels.find(vec, 0, b) == H.NOT_FOUND
    assert kernels.claim(vec, 0, b) == 1
    assert (kernels.find(vec, 0, a), kernels.find(vec, 0, b)) == (0, 1)
    assert kernels.replace(vec, 0, 0, 7) == a  # a's row goes to 7: b keeps its own
    assert (kernels.find(vec, 0, a), kernels.find(vec, 0, b), kernels.find(vec, 0, 7)) == (
        H.NOT_FOUND,
        1,
        0,
    )
    assert kernels.claim(vec, 0, a) == 2
    assert H.remove(vec, 0, b) == 1
    assert (kernels.find(vec, 0, a), kernels.find(vec, 0, b)) == (2, H.NOT_FOUND)


def test_the_compiled_index_and_its_twin_write_the_same_words() -> None:
    """The same claims, replacements and lookups through the compiled functions and the
    Python twin leave bit-identical blocks (negative hashes and tags with the top bit set
    included)."""
    compiled, twin = kernel_set.compiled(), kernel_set.python_twin()
    hashes = np.random.default_rng(3).integers(-(2**63), 2**63 - 1, 300).tolist()
    blocks = []
    for kernels in (compiled, twin):
        vec = np.zeros(H.block_size(200), dtype=np.int64)
        H.init_block(vec, 0, 200, salt=2**62 + 12345)
        answers = [kernels.claim(vec, 0, h) for h in hashes[:200]]
        answers += [kernels.replace(vec, 0, row, h) for row, h in enumerate(hashes[200:])]
        answers += [kernels.find(vec, 0, h) for h in hashes]
        blocks.append((answers, vec))
    assert blocks[0][0] == blocks[1][0]
    assert np.array_equal(blocks[0][1], blocks[1][1])


def test_a_slot_costs_one_word() -> None:
    """The index of a table costs one int64 word per slot (tag and row together) and one
    per row (its hash): about 18.7 bytes a row at a load of 0.75."""
    capacity = 100_000
    assert H.block_size(capacity) <= H.HEADER + H.slot_count(capacity) + capacity + 7
