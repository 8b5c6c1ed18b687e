"""Identity -> row indexes outside the Python heap: 64-bit hashes in open-addressing arrays.

A state table (`table.StateTable`) finds the row of an identity through an *index block*:
int64 words in one array, worked on by the Numba functions below, so a tracked identity
costs bytes in arrays (an 8-byte slot and its row's 8-byte hash), not a dict entry and a
string, and the garbage collector never walks them.

Keys are Python's ``hash()`` of the identity (a str's hash is SipHash, keyed per process;
an int's is the int itself for the persona and ASN keys), mixed with a per-process random
salt (splitmix64's finalizer, a bijection: distinct hashes never meet) before they pick a
slot. Two identities whose ``hash()`` agree share a row: for strings that is a 64-bit
collision of a keyed hash, about n^2 / 2^65 for n identities (3e-8 at a million), and an
attacker cannot aim at one without the process's key.

Block layout (``base`` is its first word in the array)::

    base ..             : slots S, count, salt, next free row, row capacity, row-hash offset
    base + HEADER ..    : S slots, one word each: the high 32 bits of the mixed key (its
                          tag) over row + 1 in the low 32 bits; 0 is an empty slot
    row-hash offset ..  : per row, the raw hash of the identity that holds it

A slot whose tag matches is the identity's only when its row's hash is the identity's
``hash()``: the full 64 bits decide, as they did when a slot kept the whole mixed key
(16 bytes a slot then, 8 now; at a load of 0.75 that is 10.7 bytes less per row). The
home slot is taken from the tag alone, so backward shift needs no row hash.

Linear probing over S = ceil(capacity * 4 / 3) slots (a load of at most 0.75), the home
slot by multiply-shift, deletion by backward shift (no tombstones: eviction churn never
degrades the probes). Rows are numbered in 32 bits: a table holds fewer than 2^32 - 1.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from numba import njit

# Words of a block's header.
_SLOTS = 0
_COUNT = 1
_SALT = 2
_NEXT_FREE = 3
_CAPACITY = 4
_ROW_HASH = 5
HEADER = 8

NOT_FOUND = -1
FULL = -2  # `claim`: absent and no free row left (the caller evicts)
MAX_CAPACITY = (1 << 32) - 2  # row + 1 fits the low 32 bits of a slot
_LOW32 = 0xFFFFFFFF

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)


def slot_count(capacity: int) -> int:
    """Slots of the index of a table of ``capacity`` rows: a load of at most 0.75."""
    return max(8, -(-capacity * 4 // 3))


def block_size(capacity: int) -> int:
    """int64 words of the index block of a table of ``capacity`` rows."""
    size = HEADER + slot_count(capacity) + capacity
    return size + (-size % 8)  # the next block starts on a 64-byte line


def init_block(vec: np.ndarray, base: int, capacity: int, salt: int | None = None) -> None:
    """Write the header of an empty block at ``base`` (the words after it must be zero)."""
    if not 0 < capacity <= MAX_CAPACITY:
        raise ValueError(f"a table holds 1 to {MAX_CAPACITY} rows, not {capacity}")
    slots = slot_count(capacity)
    vec[base + _SLOTS] = slots
    vec[base + _COUNT] = 0
    vec[base + _SALT] = secrets.randbits(63) if salt is None else salt
    vec[base + _NEXT_FREE] = 0
    vec[base + _CAPACITY] = capacity
    vec[base + _ROW_HASH] = base + HEADER + slots


def new_block(capacity: int) -> np.ndarray:
    """An array holding one empty block at 0."""
    vec = np.zeros(block_size(capacity), dtype=np.int64)
    init_block(vec, 0, capacity)
    return vec


@njit(inline="always")
def _mixed(h: int, salt: int) -> int:
    x = np.uint64(h) ^ np.uint64(salt)
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    x ^= x >> _S31
    k = int(np.int64(x))
    return k if k != 0 else 1  # 0 marks an empty slot


@njit(inline="always")
def _home(k: int, slots: int) -> int:
    return int(np.int64(((np.uint64(k) >> _S32) * np.uint64(slots)) >> _S32))


@njit(inline="always")
def _tag(word: int) -> int:
    """The high 32 bits of a mixed key or of a slot word, as a non-negative int."""
    return (word >> 32) & _LOW32


@njit(inline="always")
def _slot_word(k: int, row: int) -> int:
    """The slot of ``row`` under the mixed key ``k``: its tag over row + 1 (never 0).
    The tag is made signed before the shift so that the word fits an int64 in Python
    (the twin) as it does in Numba."""
    tag = _tag(k)
    signed = tag - (1 << 32) if tag >= (1 << 31) else tag
    return (signed << 32) | (row + 1)


@njit(inline="always")
def _slot_row(word: int) -> int:
    return (word & _LOW32) - 1


@njit(inline="always")
def _position(vec: np.ndarray, base: int, h: int, k: int) -> int:
    """The slot holding ``h`` (mixed: ``k``), or -1."""
    slots = vec[base + _SLOTS]
    first = base + HEADER
    row_hash = vec[base + _ROW_HASH]
    tag = _tag(k)
    i = _home(k, slots)
    while True:
        s = vec[first + i]
        if s == 0:
            return -1
        if _tag(s) == tag and vec[row_hash + _slot_row(s)] == h:
            return i
        i += 1
        if i == slots:
            i = 0


@njit(inline="always")
def _find(vec: np.ndarray, base: int, h: int) -> int:
    i = _position(vec, base, h, _mixed(h, vec[base + _SALT]))
    return NOT_FOUND if i < 0 else _slot_row(vec[base + HEADER + i])


@njit(inline="always")
def _insert(vec: np.ndarray, base: int, h: int, row: int) -> None:
    """Index ``row`` under ``h`` (absent) and note ``h`` as the row's owner."""
    slots = vec[base + _SLOTS]
    first = base + HEADER
    k = _mixed(h, vec[base + _SALT])
    i = _home(k, slots)
    while vec[first + i] != 0:
        i += 1
        if i == slots:
            i = 0
    vec[first + i] = _slot_word(k, row)
    vec[base + _COUNT] += 1
    vec[vec[base + _ROW_HASH] + row] = h


@njit(inline="always")
def _remove(vec: np.ndarray, base: int, h: int) -> int:
    """Drop ``h`` from the index (backward shift); its row, or -1 if absent."""
    i = _position(vec, base, h, _mixed(h, vec[base + _SALT]))
    if i < 0:
        return NOT_FOUND
    slots = vec[base + _SLOTS]
    first = base + HEADER
    row = _slot_row(vec[first + i])
    j = i
    while True:
        j += 1
        if j == slots:
            j = 0
        s = vec[first + j]
        if s == 0:
            break
        home = _home(s, slots)  # a slot's tag is its key's high bits: the same home
        # The entry at j stays when its home lies cyclically in (i, j]; else it fills i.
        stays = (i < home <= j) if i <= j else (home > i or home <= j)
        if not stays:
            vec[first + i] = s
            i = j
    vec[first + i] = 0
    vec[base + _COUNT] -= 1
    return row


@njit(inline="always")
def _claim(vec: np.ndarray, base: int, h: int) -> int:
    """The row of ``h``; an absent one takes the next free row (zeroed already), or
    FULL when there is none."""
    row = _find(vec, base, h)
    if row >= 0:
        return row
    free = int(vec[base + _NEXT_FREE])
    if free >= vec[base + _CAPACITY]:
        return FULL
    vec[base + _NEXT_FREE] = free + 1
    _insert(vec, base, h, free)
    return free


@njit(cache=True)
def find(vec: np.ndarray, base: int, h: int) -> int:
    """The row indexed under ``h``, or NOT_FOUND."""
    return _find(vec, base, h)


@njit(cache=True)
def claim(vec: np.ndarray, base: int, h: int) -> int:
    """`_claim`: the row of ``h``, a free row for a new one, or FULL."""
    return _claim(vec, base, h)


@njit(cache=True)
def replace(vec: np.ndarray, base: int, row: int, h: int) -> int:
    """Give ``row`` (held by someone) to ``h`` (absent): the old owner's hash, unindexed."""
    old = int(vec[vec[base + _ROW_HASH] + row])
    _remove(vec, base, old)
    _insert(vec, base, h, row)
    return old


@njit(cache=True)
def remove(vec: np.ndarray, base: int, h: int) -> int:
    """Unindex ``h``; its row, or NOT_FOUND. The row is not handed out again."""
    return _remove(vec, base, h)


@njit(cache=True)
def claim_rows(
    vec: np.ndarray,
    want: int,
    h_key: int,
    h_ip: int,
    h_prefix: int,
    h_asn: int,
    h_persona: int,
) -> tuple[int, int, int, int, int, int, bool]:
    """The rows of one request in one call, over an engine's index vector (its first
    words: the base of each table's block, in kind order, then the account table's):
    (key, ip, prefix, asn, persona, account, full). The key table always; bit ``kind`` of
    ``want`` asks for another table (bit 5 for the account table, under ``h_key``). -1 for
    a table not asked; FULL for one where the identity is new and no free row is left,
    and then ``full`` is True (the caller evicts, in Python)."""
    r_key = _claim(vec, vec[0], h_key)
    r_ip = _claim(vec, vec[1], h_ip) if want & 2 else -1
    r_prefix = _claim(vec, vec[2], h_prefix) if want & 4 else -1
    r_asn = _claim(vec, vec[3], h_asn) if want & 8 else -1
    r_persona = _claim(vec, vec[4], h_persona) if want & 16 else -1
    r_account = _claim(vec, vec[5], h_key) if want & 32 else -1
    full = min(r_key, r_ip, r_prefix, r_asn, r_persona, r_account) == FULL
    return r_key, r_ip, r_prefix, r_asn, r_persona, r_account, full


_warm = False


def warm_up() -> None:
    """Compile (or load from the on-disk cache) the functions above, once."""
    global _warm
    if _warm:
        return
    vec = new_block(4)
    claim(vec, 0, 1)
    replace(vec, 0, 0, 2)
    find(vec, 0, 2)
    remove(vec, 0, 2)
    engine_vec = new_index_vector((4,) * 6)
    claim_rows(engine_vec, 63, 1, 2, 3, 4, 5)
    _warm = True


def compiled_entry(dispatcher: Any) -> Any:
    """The compiled function behind a Numba dispatcher that was compiled once.

    Calling it skips the dispatcher's per-call type resolution (about 0.3 us for the
    kernel's arguments); its wrapper still converts each argument, so a Python int or
    float is all it takes. Any other state of the dispatcher (no or several compiled
    signatures) falls back to calling the dispatcher itself.
    """
    signatures = getattr(dispatcher, "signatures", [])
    overloads = getattr(dispatcher, "overloads", {})
    if len(signatures) == 1 and signatures[0] in overloads:
        entry = getattr(overloads[signatures[0]], "entry_point", None)
        if callable(entry):
            return entry
    return dispatcher


def new_index_vector(capacities: tuple[int, ...]) -> np.ndarray:
    """The index vector of an engine: the six blocks' bases, then the blocks."""
    bases = []
    offset = HEADER
    for capacity in capacities:
        bases.append(offset)
        offset += block_size(capacity)
    vec = np.zeros(offset, dtype=np.int64)
    for i, (base, capacity) in enumerate(zip(bases, capacities, strict=True)):
        vec[i] = base
        init_block(vec, base, capacity)
    return vec


def block_words(vec: np.ndarray, base: int) -> tuple[int, int, int, int]:
    """(slots, count, next free row, row-hash offset) of a block, as Python ints."""
    return (
        int(vec[base + _SLOTS]),
        int(vec[base + _COUNT]),
        int(vec[base + _NEXT_FREE]),
        int(vec[base + _ROW_HASH]),
    )


def reset_block(vec: np.ndarray, base: int) -> None:
    """Empty a block (keeps its salt)."""
    row_hash = block_words(vec, base)[3]
    capacity = int(vec[base + _CAPACITY])
    vec[base + HEADER : row_hash + capacity] = 0
    vec[base + _COUNT] = 0
    vec[base + _NEXT_FREE] = 0


__all__ = [
    "FULL",
    "NOT_FOUND",
    "block_size",
    "claim",
    "claim_rows",
    "find",
    "new_block",
    "new_index_vector",
    "remove",
    "replace",
    "slot_count",
]
