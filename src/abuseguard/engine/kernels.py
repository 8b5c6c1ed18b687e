"""Numba kernels: one call per request updates every row the request touches and scores it.

``decide`` is the hot path. It refills and charges the token buckets of every identity the
request belongs to, updates the behaviour features of the key row (rates, cadence,
impatience, prompt templates), adds the request to the fan-in and fan-out sketches,
computes the risk score and its per-signal contributions, moves the enforcement ladder with
hysteresis, and writes everything the caller needs into the ``io`` vector. All state lives
in preallocated arrays; nothing is allocated per call.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, types
from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher
from numba.extending import intrinsic
from numba.np.numpy_support import carray

from abuseguard.engine import bucket_rules, hashindex, signals
from abuseguard.engine import layout as L

_U1 = np.uint64(1)
_TOP_BIT = np.uint64(0x8000000000000000)
_MIN_INTERVAL = 0.05  # inter-arrival times below this are one burst (parallel requests)
_INV_POW2 = np.array([2.0**-i for i in range(66)])


@njit(cache=True, inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64 finalizer: a well-spread 64-bit hash of an integer."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def popcount64(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, inline="always")
def ramp(x: float, lo: float, hi: float) -> float:
    """0 at lo, 1 at hi, linear between; works for hi < lo (a falling ramp) too."""
    if hi == lo:
        return 1.0 if x >= hi else 0.0
    v = (x - lo) / (hi - lo)
    if v < 0.0:
        return 0.0
    if v > 1.0:
        return 1.0
    return v


@njit(cache=True, inline="always")
def register(regs: np.ndarray, r: int) -> int:
    """Register ``r`` of packed 6-bit registers (bytes, little-endian bit order). A
    register at bit 4 or 6 of its byte runs into the next; the last of every four ends
    at bit 2 of a byte, so no read runs past a sketch."""
    bit = 6 * r
    i = bit >> 3
    shift = bit & 7
    v = int(regs[i])
    if shift > 2:
        v |= int(regs[i + 1]) << 8
    return (v >> shift) & 63


@njit(cache=True, inline="always")
def set_register(regs: np.ndarray, r: int, value: int) -> None:
    bit = 6 * r
    i = bit >> 3
    shift = bit & 7
    v = int(regs[i])
    if shift > 2:
        v |= int(regs[i + 1]) << 8
    v = (v & ~(63 << shift)) | (value << shift)
    regs[i] = v & 255
    if shift > 2:
        regs[i + 1] = v >> 8


@njit(cache=True, inline="always")
def hll_slot(h: np.uint64, m: int) -> tuple[int, int]:
    """The register index of a hashed item and its rank (leading zeros + 1 of the rest)."""
    p = 5 if m == 32 else 6
    idx = np.int64(h >> np.uint64(64 - p))
    w = (h << np.uint64(p)) | (_U1 << np.uint64(p - 1))
    rank = 1
    while (w & _TOP_BIT) == 0:
        w = w << _U1
        rank += 1
    return int(idx), rank


@njit(cache=True)
def hll_add(regs: np.ndarray, base: int, m: int, h: np.uint64) -> bool:
    """Add a hashed item; True when a register grew (the estimate may have changed)."""
    idx, rank = hll_slot(h, m)
    if register(regs, base + idx) < rank:
        set_register(regs, base + idx, rank)
        return True
    return False


@njit(cache=True)
def hll_estimate(regs: np.ndarray, base: int, m: int) -> float:
    """Distinct count over the union of the two halves stored at base and base + m."""
    total = 0.0
    zeros = 0
    for j in range(m):
        a = register(regs, base + j)
        b = register(regs, base + m + j)
        r = a if a > b else b
        total += _INV_POW2[r]
        if r == 0:
            zeros += 1
    alpha = 0.697 if m == 32 else 0.709
    estimate = alpha * m * m / total
    if estimate <= 2.5 * m and zeros > 0:
        estimate = m * math.log(m / zeros)
    return estimate


# -- Sketches in cells and pool blocks (see `layout`): a row's sketch is one cell word while
# at most one register index is set, else a block of a pool. Every function here leaves
# the registers a sketch stands for exactly those of the plain register sketch fed the
# same items at the same epochs, so the estimates are the same numbers.


@njit(cache=True, inline="always")
def block_registers(pool: np.ndarray, b: int) -> np.ndarray:
    return pool[b, L.POOL_REGS :].view(np.uint8)


@njit(cache=True, inline="always")
def free_block(pool: np.ndarray, b: int) -> None:
    pool[b, L.POOL_OWNER] = -1.0 - pool[0, L.PH_FREE]
    pool[0, L.PH_FREE] = b


def release_sketches(pool: np.ndarray, row: np.ndarray, cell: int, n: int) -> None:
    """Return the blocks of the ``n`` sketch cells of ``row`` from ``cell`` on to ``pool``
    and empty the cells (a row about to be evicted). Plain Python: the tables evict in
    Python, rarely, and compiling it for their types would cost more than it saves."""
    free = free_block.py_func
    for s in range(n):
        c = row[cell + s]
        if c < 0.0:
            free(pool, int(-c) - 1)
        row[cell + s] = 0.0


@njit(cache=True)
def take_block(
    pool: np.ndarray, owners: tuple[np.ndarray, ...], epoch_field: int, cell: int, epoch: int
) -> int:
    """A block with zeroed registers: a free one, a never used one, or, when the pool has
    none, one of the next `L.SCAN_BLOCKS` from the clock hand: one no longer pointed at by
    its owner's cell, or whose owner's sketches are two epochs old (cleared at their next
    rotation), else the one whose owner rotated least recently (its sketch restarts empty,
    counted in PH_STOLEN). ``owners``: the tables the pool serves, their epoch field and
    first cell; the caller writes the new owner. Never fails."""
    b = int(pool[0, L.PH_FREE])
    n = pool.shape[0]
    if b > 0:
        pool[0, L.PH_FREE] = -1.0 - pool[b, L.POOL_OWNER]
    else:
        nxt = int(pool[0, L.PH_NEXT])
        if nxt == 0:
            nxt = 1
        if nxt < n:
            pool[0, L.PH_NEXT] = nxt + 1
            return nxt  # never used: its registers are still zero
        hand = int(pool[0, L.PH_HAND])
        best = -1
        best_epoch = 0.0
        b = -1
        for _ in range(L.SCAN_BLOCKS if n - 1 > L.SCAN_BLOCKS else n - 1):
            hand += 1
            if hand >= n:
                hand = 1
            owner = int(pool[hand, L.POOL_OWNER])
            if owner < 0:
                b = hand  # free (cannot be: the free list was empty)
                break
            table = owners[owner >> 34]
            r = (owner >> 2) & 0xFFFFFFFF
            s = owner & 3
            if table[r, cell + s] != -1.0 - hand:
                b = hand  # its owner's row was evicted (or cleared) since
                break
            owner_epoch = table[r, epoch_field]
            if owner_epoch <= epoch - 2:
                table[r, cell + s] = 0.0  # cleared by its next rotation anyway
                b = hand
                break
            if best < 0 or owner_epoch < best_epoch:
                best = hand
                best_epoch = owner_epoch
        if b < 0:
            b = best
            owner = int(pool[b, L.POOL_OWNER])
            owners[owner >> 34][(owner >> 2) & 0xFFFFFFFF, cell + (owner & 3)] = 0.0
            pool[0, L.PH_STOLEN] += 1.0
        pool[0, L.PH_HAND] = hand
    regs = block_registers(pool, b)
    for j in range(regs.shape[0]):
        regs[j] = 0
    return b


@njit(cache=True, inline="always")
def cell_ranks(c: int) -> tuple[int, int, int]:
    return c & 63, (c >> 6) & 63, (c >> 12) & 63


@njit(cache=True)
def promote(
    row: np.ndarray,
    cell: int,
    pool: np.ndarray,
    owners: tuple[np.ndarray, ...],
    epoch_field: int,
    first_cell: int,
    owner: int,
    m: int,
    epoch: int,
) -> None:
    """Move the sketch in the cell ``row[cell]`` to a block of ``pool`` (owner code
    ``owner``; ``owners``, ``epoch_field``, ``first_cell`` as for `take_block`): its
    register is written into the block's halves, as a register sketch holds it."""
    ci, r0, r1 = cell_ranks(int(row[cell]))
    b = take_block(pool, owners, epoch_field, first_cell, epoch)
    regs = block_registers(pool, b)
    if r0 > 0:
        set_register(regs, ci, r0)
    if r1 > 0:
        set_register(regs, m + ci, r1)
    pool[b, L.POOL_OWNER] = owner
    row[cell] = -1.0 - b


@njit(cache=True, inline="always")
def sketch_add(
    row: np.ndarray,
    cell: int,
    pool: np.ndarray,
    owners: tuple[np.ndarray, ...],
    epoch_field: int,
    first_cell: int,
    owner: int,
    m: int,
    half: int,
    h: np.uint64,
    epoch: int,
) -> bool:
    """Add a hashed item to the sketch in ``row[cell]`` (half ``half``); True when a
    register grew, as `hll_add`. A second register index moves the sketch to a block
    (`promote`, with the other arguments), the rare path, kept out of line."""
    c = row[cell]
    idx, rank = hll_slot(h, m)
    if c >= 0.0:
        ci, r0, r1 = cell_ranks(int(c))
        if r0 == 0 and r1 == 0:
            ci = idx
        if ci == idx:
            if half == 0:
                if r0 >= rank:
                    return False
                r0 = rank
            else:
                if r1 >= rank:
                    return False
                r1 = rank
            row[cell] = ci * L.CELL_INDEX + r0 * L.CELL_RANK0 + r1 * L.CELL_RANK1
            return True
        promote(row, cell, pool, owners, epoch_field, first_cell, owner, m, epoch)
        c = row[cell]
    regs = block_registers(pool, int(-c) - 1)
    if register(regs, half * m + idx) < rank:
        set_register(regs, half * m + idx, rank)
        return True
    return False


@njit(cache=True)
def sketch_estimate(row: np.ndarray, cell: int, pool: np.ndarray, m: int) -> float:
    """`hll_estimate` of the sketch in ``row[cell]``."""
    c = row[cell]
    if c < 0.0:
        return hll_estimate(block_registers(pool, int(-c) - 1), 0, m)
    if c < L.CELL_RANK0:
        return 0.0  # empty: m * log(m / m)
    zeros = m - 1
    return m * math.log(m / zeros)


@njit(cache=True)
def rotate_sketches(
    row: np.ndarray, pool: np.ndarray, n_sketches: int, m: int, epoch: int, field: int, cell: int
) -> bool:
    """Advance the sliding horizon of the ``n_sketches`` sketches in ``row[cell:]``: the
    half for `epoch` is cleared when it held old data. ``row[field]`` holds the epoch of
    the sketches. A block left with at most one register index set goes back to the pool
    (the cell takes that register). True when registers were cleared."""
    old = int(row[field])
    if old == epoch:
        return False
    if epoch < old:
        return False  # a late event from an older epoch: keep the newer state
    half = epoch & 1
    for s in range(n_sketches):
        c = row[cell + s]
        if c >= 0.0:
            ci, r0, r1 = cell_ranks(int(c))
            if epoch == old + 1:
                if half == 0:
                    r0 = 0
                else:
                    r1 = 0
            else:
                r0 = 0
                r1 = 0
            row[cell + s] = (
                0.0
                if r0 == 0 and r1 == 0
                else ci * L.CELL_INDEX + r0 * L.CELL_RANK0 + r1 * L.CELL_RANK1
            )
            continue
        b = int(-c) - 1
        kept = 0
        ci = 0
        cr = 0
        keep = 1 - half
        if epoch == old + 1:
            regs = block_registers(pool, b)
            for j in range(m):
                set_register(regs, half * m + j, 0)
            for j in range(m):
                r = register(regs, keep * m + j)
                if r > 0:
                    kept += 1
                    ci = j
                    cr = r
                    if kept > 1:
                        break
        if kept > 1:
            continue
        free_block(pool, b)
        if kept == 0:
            row[cell + s] = 0.0
        else:
            row[cell + s] = ci * L.CELL_INDEX + cr * (L.CELL_RANK0 if keep == 0 else L.CELL_RANK1)
    row[field] = epoch
    return True


@njit(cache=True)
def init_row(row: np.ndarray, ts: float, burst: float) -> None:
    row[L.F_TOKENS] = burst
    row[L.F_BUCKET_TS] = ts
    row[L.F_FIRST_SEEN] = ts
    row[L.F_LAST_SEEN] = ts


@njit(cache=True)
def observe_arrival(row: np.ndarray, ts: float, prm: np.ndarray) -> None:
    """Rates (two EWMAs) and the statistics of log inter-arrival times."""
    count = row[L.F_COUNT]
    if count > 0:
        dt = ts - row[L.F_LAST_SEEN]
        if dt < 0.0:
            dt = 0.0
        decay_short = math.exp(-dt / prm[L.P_TAU_SHORT])
        decay_long = math.exp(-dt / prm[L.P_TAU_LONG])
        row[L.F_RATE_SHORT] = row[L.F_RATE_SHORT] * decay_short + 1.0 / prm[L.P_TAU_SHORT]
        row[L.F_RATE_LONG] = row[L.F_RATE_LONG] * decay_long + 1.0 / prm[L.P_TAU_LONG]
        if dt >= _MIN_INTERVAL:
            lia = math.log(dt)
            row[L.F_IA_COUNT] += 1.0
            if row[L.F_IA_COUNT] < 2.0:
                row[L.F_LIA_MEAN] = lia
                row[L.F_LIA_VAR] = 0.0
            else:
                alpha = prm[L.P_ALPHA_IA]
                diff = lia - row[L.F_LIA_MEAN]
                row[L.F_LIA_MEAN] += alpha * diff
                row[L.F_LIA_VAR] = (1.0 - alpha) * (row[L.F_LIA_VAR] + alpha * diff * diff)
    else:
        row[L.F_RATE_SHORT] = 1.0 / prm[L.P_TAU_SHORT]
        row[L.F_RATE_LONG] = 1.0 / prm[L.P_TAU_LONG]
    row[L.F_COUNT] = count + 1.0
    if ts > row[L.F_LAST_SEEN]:
        row[L.F_LAST_SEEN] = ts


@njit(cache=True)
def refill(row: np.ndarray, ts: float, rate: float, burst: float) -> None:
    elapsed = ts - row[L.F_BUCKET_TS]
    if elapsed > 0.0:
        tokens = row[L.F_TOKENS] + elapsed * rate
        row[L.F_TOKENS] = burst if tokens > burst else tokens
        row[L.F_BUCKET_TS] = ts


@njit(cache=True)
def pair_first_use(cms: np.ndarray, account_hash: np.uint64, template_id: int, epoch: int) -> bool:
    """Whether this account has not used this template within the sketch horizon; marks it.

    One bit per (account, template) pair in two rotating halves (like the HyperLogLog
    sketches): a pair seen in either half is known, and it is marked in the current half, so
    an account that keeps using a template is never counted twice. A collision makes a new
    pair look known: the count errs low, never high."""
    rows_per_half = L.CMS_PAIR_ROWS // 2
    first_row = L.CMS_DEPTH + 1
    old = int(cms[L.CMS_DEPTH, 1])
    if epoch == old + 1:
        start = first_row + (epoch & 1) * rows_per_half
        for r in range(start, start + rows_per_half):
            for j in range(L.CMS_WIDTH):
                cms[r, j] = 0.0
        cms[L.CMS_DEPTH, 1] = epoch
    elif epoch > old:
        for r in range(first_row, first_row + L.CMS_PAIR_ROWS):
            for j in range(L.CMS_WIDTH):
                cms[r, j] = 0.0
        cms[L.CMS_DEPTH, 1] = epoch
    bits_per_half = rows_per_half * L.CMS_WIDTH * 64
    h = mix64(account_hash ^ mix64(np.uint64(template_id) ^ np.uint64(0x7E3A)))
    bit = int(h % np.uint64(bits_per_half))
    word = bit >> 6
    mask = _U1 << np.uint64(bit & 63)
    row = word // L.CMS_WIDTH
    col = word % L.CMS_WIDTH
    current = first_row + (epoch & 1) * rows_per_half + row
    other = first_row + ((epoch + 1) & 1) * rows_per_half + row
    mine = cms[current].view(np.uint64)
    known = (mine[col] & mask) != 0 or (cms[other].view(np.uint64)[col] & mask) != 0
    mine[col] |= mask
    return not known


@njit(cache=True)
def template_step(
    key_row: np.ndarray,
    acc_row: np.ndarray,
    cms: np.ndarray,
    simhash: int,
    template_id: int,
    account_hash: np.uint64,
    ts: float,
    epoch: int,
    prm: np.ndarray,
) -> float:
    """Per-account template repeat rate and the accounts-per-template Count-Min estimate."""
    ring = acc_row[L.A_RING : L.A_RING + L.RING_SIZE].view(np.int64)
    tring = acc_row[L.A_TRING : L.A_TRING + L.RING_SIZE].view(np.int64)
    filled = int(key_row[L.F_COUNT]) - 1  # requests before this one
    if filled > L.RING_SIZE:
        filled = L.RING_SIZE
    near = False
    known = False
    sh = np.uint64(simhash)
    for j in range(filled):
        if tring[j] == template_id:
            known = True
        if popcount64(np.uint64(ring[j]) ^ sh) <= prm[L.P_HAMMING]:
            near = True
    pos = int(acc_row[L.A_RING_POS])
    ring[pos] = simhash
    tring[pos] = template_id
    acc_row[L.A_RING_POS] = (pos + 1) % L.RING_SIZE
    repeated = near or known
    acc_row[L.A_TEMPLATE] += 0.15 * ((1.0 if repeated else 0.0) - acc_row[L.A_TEMPLATE])

    # Count-Min over template ids, counting each account once per template: the pair
    # filter remembers the (account, template) pairs counted within the sketch horizon.
    first_use = pair_first_use(cms, account_hash, template_id, epoch)
    last_decay = cms[L.CMS_DEPTH, 0]
    half_life = prm[L.P_CMS_HALF_LIFE]
    if last_decay == 0.0:
        cms[L.CMS_DEPTH, 0] = ts
    elif ts - last_decay >= half_life * 0.25:
        factor = 0.5 ** ((ts - last_decay) / half_life)
        for d in range(L.CMS_DEPTH):
            for j in range(L.CMS_WIDTH):
                cms[d, j] *= factor
        cms[L.CMS_DEPTH, 0] = ts
    estimate = 1e300
    tid = np.uint64(template_id)
    for d in range(L.CMS_DEPTH):
        j = int(mix64(tid + np.uint64(d) * np.uint64(0x632BE59BD9B4E019)) % np.uint64(L.CMS_WIDTH))
        if first_use:
            cms[d, j] += 1.0
        if cms[d, j] < estimate:
            estimate = cms[d, j]
    return estimate


@njit(cache=True, inline="always")
def common_keep(cms: np.ndarray, template_id: int) -> float:
    """The share of the shared-template signal a template keeps: what the background lane
    wrote for it when established accounts commonly use it (``L.CB_COMMON``), else 1."""
    at = L.CB_COMMON + 2 * int(np.uint64(template_id) % np.uint64(L.COMMON_SLOTS))
    if cms[L.CMS_DEPTH].view(np.int64)[at] == template_id:
        return float(cms[L.CMS_DEPTH, at + 1])
    return 1.0


# -- Stages of `decide`, in order. Each is inlined into `decide` (``inline="always"``, at
# Numba's IR level), so splitting costs no call; each reads and writes only what it names.

_risk_refill_factor = njit(cache=True, inline="always")(bucket_rules.risk_refill_factor)
_nat_multiplier = njit(cache=True, inline="always")(bucket_rules.nat_multiplier)
_key_bucket_shape = njit(cache=True, inline="always")(bucket_rules.key_bucket_shape)


@njit(cache=True, inline="always")
def key_bucket(key_row: np.ndarray, prm: np.ndarray) -> tuple[float, float]:
    """The key bucket's (rate, burst) for this row: its plan's (F_PLAN) or the policy's."""
    rate = prm[L.P_BUCKET]
    burst = prm[L.P_BUCKET + 1]
    plan = int(key_row[L.F_PLAN])
    if plan > 0:
        slot = L.P_PLAN_BUCKET + 2 * (plan - 1)
        rate, burst = _key_bucket_shape(prm[slot], prm[slot + 1], rate, burst)
    return rate, burst


@njit(cache=True, inline="always")
def risk_allowances(key_row: np.ndarray, prm: np.ndarray) -> tuple[float, float, float]:
    """What volume, burst and spend measure this row against: the key bucket's configured
    rate and burst and the spend allowance per day, its plan's (F_PLAN) or the policy's."""
    plan = int(key_row[L.F_PLAN])
    if plan > 0:
        slot = L.P_PLAN_ALLOWANCE + L.PLAN_ALLOWANCE_WIDTH * (plan - 1)
        return prm[slot + L.PA_RATE], prm[slot + L.PA_BURST], prm[slot + L.PA_SPEND]
    return prm[L.P_ALLOWANCE_RATE], prm[L.P_ALLOWANCE_BURST], prm[L.P_SPEND_ALLOWANCE]


@njit(cache=True, inline="always")
def banned_stage(key_row: np.ndarray, ts: float, io: np.ndarray, prm: np.ndarray) -> bool:
    """A banned identity: count the arrival, answer with the ban; True when banned."""
    if key_row[L.F_BANNED_UNTIL] <= ts:
        return False
    observe_arrival(key_row, ts, prm)
    io[L.O_BANNED] = 1.0
    io[L.O_ACTION] = prm[L.P_BAN_LEVEL]
    io[L.O_SCORE] = key_row[L.F_SCORE]
    io[L.O_REASONS] = float(1 << L.R_BANNED)
    io[L.O_RETRY_AFTER] = key_row[L.F_BANNED_UNTIL] - ts
    io[L.O_REMAINING] = key_row[L.F_TOKENS] if key_row[L.F_TOKENS] > 0.0 else 0.0
    io[L.O_TIGHTEST_KIND] = -1.0
    return True


@njit(cache=True, inline="always")
def arrival_stage(key_row: np.ndarray, ts: float, new_key: bool, prm: np.ndarray) -> float:
    """Impatience (a request sent while the client was told to wait), then the arrival
    statistics of the key row. Returns when the identity was seen before this request."""
    impatient = 1.0 if ts < key_row[L.F_WAIT_UNTIL] - 0.05 else 0.0
    if not new_key:
        key_row[L.F_IMPATIENCE] += 0.2 * (impatient - key_row[L.F_IMPATIENCE])
    previous_seen: float = key_row[L.F_LAST_SEEN]
    observe_arrival(key_row, ts, prm)
    return previous_seen


@njit(cache=True, inline="always")
def fan_out_add(
    acc_row: np.ndarray,
    acc_row_i: int,
    accounts: tuple[np.ndarray, ...],
    acc_pool: np.ndarray,
    sk: int,
    half: int,
    item: np.uint64,
    epoch: int,
) -> bool:
    """`sketch_add` of ``item`` to the account's fan-out sketch ``sk``."""
    return sketch_add(
        acc_row,
        L.A_CELL + sk,
        acc_pool,
        accounts,
        L.A_EPOCH,
        L.A_CELL,
        (acc_row_i << 2) | sk,
        L.KEY_SKETCH_M,
        half,
        item,
        epoch,
    )


@njit(cache=True, inline="always")
def network_stage(
    tables: tuple[np.ndarray, ...],
    acc_t: np.ndarray,
    acc_row_i: int,
    net_pool: np.ndarray,
    acc_pool: np.ndarray,
    iv: np.ndarray,
    io: np.ndarray,
    prm: np.ndarray,
    ts: float,
    epoch: int,
    has_account: bool,
    account_hash: np.uint64,
) -> float:
    """Network rows: arrival counts, fan-in sketches, and the fan-out items of the account.
    Estimates are cached in the rows and recomputed only when a register grows or a half is
    cleared. The sketches are cells and pool blocks (``net_pool`` for the fan-in sketches,
    ``acc_pool`` for the account's fan-out ones, row ``acc_row_i`` of ``acc_t``). Writes
    O_FANIN and O_FANOUT_*; returns the fan-in."""
    fan_in = 0.0
    half = epoch & 1
    acc_row = acc_t[acc_row_i if has_account else 0]
    # The fan-out pool's owners, as a tuple of the network tables' type (the owner's table
    # number is 0), so that `take_block` and `promote` compile once for both pools.
    accounts = (acc_t, acc_t, acc_t, acc_t, acc_t)
    key_dirty = has_account and rotate_sketches(
        acc_row, acc_pool, L.KEY_SKETCHES, L.KEY_SKETCH_M, epoch, L.A_EPOCH, L.A_CELL
    )
    for kind in range(1, L.N_KINDS):
        r = iv[L.I_ROW + kind]
        if r < 0:
            continue
        row = tables[kind][r]
        if row[L.F_COUNT] == 0.0:
            init_row(row, ts, prm[L.P_BUCKET + 2 * kind + 1])
            row[L.F_SKETCH_EPOCH] = epoch
        # Network rows keep a count and the last arrival (for eviction); rates and cadence
        # are only scored per key, so they are not computed here.
        row[L.F_COUNT] += 1.0
        if ts > row[L.F_LAST_SEEN]:
            row[L.F_LAST_SEEN] = ts
        if not has_account:
            continue
        dirty = rotate_sketches(
            row, net_pool, 1, L.NET_SKETCH_M, epoch, L.F_SKETCH_EPOCH, L.F_SKETCH_CELL
        )
        if (
            sketch_add(
                row,
                L.F_SKETCH_CELL,
                net_pool,
                tables,
                L.F_SKETCH_EPOCH,
                L.F_SKETCH_CELL,
                (kind << 34) | (r << 2),
                L.NET_SKETCH_M,
                half,
                account_hash,
                epoch,
            )
            or dirty
        ):
            row[L.F_SKETCH_EST] = sketch_estimate(row, L.F_SKETCH_CELL, net_pool, L.NET_SKETCH_M)
        est = row[L.F_SKETCH_EST] / prm[L.P_FANIN_SCALE + kind]
        if est > fan_in:
            fan_in = est
        if kind != L.KIND_PERSONA:
            sk = (
                L.SK_IPS
                if kind == L.KIND_IP
                else (L.SK_PREFIXES if kind == L.KIND_PREFIX else L.SK_ASNS)
            )
            item = mix64(np.uint64(r) ^ (np.uint64(kind) << np.uint64(56)))
            if fan_out_add(acc_row, acc_row_i, accounts, acc_pool, sk, half, item, epoch):
                acc_row[L.A_EST + sk] = sketch_estimate(
                    acc_row, L.A_CELL + sk, acc_pool, L.KEY_SKETCH_M
                )
    if has_account and iv[L.I_COUNTRY] != 0:
        item = mix64(np.uint64(iv[L.I_COUNTRY]) ^ np.uint64(0xC0FFEE))
        if fan_out_add(acc_row, acc_row_i, accounts, acc_pool, L.SK_COUNTRIES, half, item, epoch):
            acc_row[L.A_EST + L.SK_COUNTRIES] = sketch_estimate(
                acc_row, L.A_CELL + L.SK_COUNTRIES, acc_pool, L.KEY_SKETCH_M
            )
    if key_dirty:
        for sk in range(L.KEY_SKETCHES):
            acc_row[L.A_EST + sk] = sketch_estimate(
                acc_row, L.A_CELL + sk, acc_pool, L.KEY_SKETCH_M
            )
    io[L.O_FANIN] = fan_in
    if has_account:
        io[L.O_FANOUT_IPS] = acc_row[L.A_EST + L.SK_IPS]
        io[L.O_FANOUT_ASNS] = acc_row[L.A_EST + L.SK_ASNS]
        io[L.O_FANOUT_COUNTRIES] = acc_row[L.A_EST + L.SK_COUNTRIES]
    return fan_in


# -- Signals (see `signals.SIGNALS`). A signal that is more than a ramp of one number has
# its own stage here: a function of plain numbers (an array argument would cost a reference
# count pair per call, even inlined), called from `score_stage`.


@njit(cache=True, inline="always")
def burst_signal(
    age: float,
    rate_short: float,
    rate_long: float,
    allowance_rate: float,
    allowance_burst: float,
    prm: np.ndarray,
) -> float:
    """The rise of the short-run rate above the identity's baseline, against what the
    bucket lets through in a short window; 0 until the baseline has history."""
    if age < prm[L.P_BASELINE_AGE]:
        return 0.0
    short_allowance = allowance_rate + allowance_burst / prm[L.P_TAU_SHORT]
    return ramp((rate_short - rate_long) / short_allowance, prm[L.P_BURST_LO], prm[L.P_BURST_HI])


@njit(cache=True, inline="always")
def cadence_signal(ia_count: float, lia_var: float, prm: np.ndarray) -> float:
    """A machine's regular cadence: a small spread of log inter-arrival times (a falling
    ramp), once there are ``min_events`` inter-arrival samples."""
    if ia_count < prm[L.P_MIN_EVENTS]:
        return 0.0
    spread = math.sqrt(lia_var) if lia_var > 0.0 else 0.0
    return ramp(spread, prm[L.P_CADENCE_HI], prm[L.P_CADENCE_LO])


@njit(cache=True, inline="always")
def fan_out_signal(asns: float, countries: float, prefixes: float, prm: np.ndarray) -> float:
    """One account across many ASNs, countries or prefixes (the strongest of the three)."""
    fan_out = ramp(asns, prm[L.P_FANOUT_ASN_LO], prm[L.P_FANOUT_ASN_HI])
    v = ramp(countries, prm[L.P_FANOUT_CC_LO], prm[L.P_FANOUT_CC_HI])
    if v > fan_out:
        fan_out = v
    v = ramp(prefixes, prm[L.P_FANOUT_PFX_LO], prm[L.P_FANOUT_PFX_HI])
    if v > fan_out:
        fan_out = v
    return fan_out


@njit(cache=True, inline="always")
def spend_per_day(
    spend: float, spend_ts: float, first_seen: float, ts: float, prm: np.ndarray
) -> float:
    """The real cost an account spends per day: its decayed sum of reported costs over
    what a steady rate would have summed since it was first seen (at least
    ``P_SPEND_MIN_AGE``), so a young account is neither under- nor over-counted."""
    if spend <= 0.0:
        return 0.0
    tau = prm[L.P_SPEND_TAU]
    if ts > spend_ts:
        spend *= math.exp(-(ts - spend_ts) / tau)
    age = ts - first_seen
    if age < prm[L.P_SPEND_MIN_AGE]:
        age = prm[L.P_SPEND_MIN_AGE]
    per_day: float = spend / (tau * (1.0 - math.exp(-age / tau))) * 86400.0
    return per_day


@njit(cache=True, inline="always")
def spend_signal(
    per_day: float, allowance: float, cohort_q: float, cohort_n: float, prm: np.ndarray
) -> float:
    """Spend against the account's allowance (cost units per day) when one is configured,
    else against the cohort's quantile (once it has seen 50 accounts' spends)."""
    if per_day <= 0.0:
        return 0.0
    if allowance > 0.0:
        return ramp(per_day / allowance, prm[L.P_SPEND_SHARE_LO], prm[L.P_SPEND_SHARE_HI])
    if cohort_n < 50.0:
        return 0.0
    return ramp(per_day / math.exp(cohort_q), prm[L.P_SPEND_COHORT_LO], prm[L.P_SPEND_COHORT_HI])


@njit(cache=True, inline="always")
def evidence_step(sig: np.ndarray, prm: np.ndarray) -> float:
    """What one request adds to the accumulated evidence: each signal's contribution (its
    log-likelihood ratio, capped at ``signal_cap``), the weak ones together capped at
    ``weak_cap``, less the drift; at most ``max_step``."""
    weak_mask = int(prm[L.P_WEAK_MASK])
    cap = prm[L.P_EV_SIGNAL_CAP]
    weak = 0.0
    strong = 0.0
    for s in range(L.N_SIGNALS):
        c = sig[s]
        if c <= 0.0:
            continue
        if c > cap:
            c = cap
        if weak_mask & (1 << s):
            weak += c
        else:
            strong += c
    if weak > prm[L.P_EV_WEAK_CAP]:
        weak = prm[L.P_EV_WEAK_CAP]
    step: float = strong + weak - prm[L.P_EV_DRIFT]
    max_step: float = prm[L.P_EV_MAX_STEP]
    return step if step < max_step else max_step


@njit(cache=True, inline="always")
def evidence_stage(
    key_row: np.ndarray, io: np.ndarray, ts: float, reasons: int, prm: np.ndarray
) -> int:
    """The account's accumulated evidence (a CUSUM over the signals' contributions, which
    halves every ``half_life``) and the ladder level its steps hold the account at. The
    hold outlasts the score: it ends once the evidence has stayed below the first
    threshold for ``quiet_period`` seconds. Returns the reasons, with R_EVIDENCE while the
    account is held."""
    n_steps = int(prm[L.P_EV_STEPS_N])
    if n_steps == 0:
        return reasons
    sig = io[L.O_CONTRIB : L.O_CONTRIB + L.N_SIGNALS]
    evidence = key_row[L.F_EVIDENCE]
    last = key_row[L.F_EVIDENCE_TS]
    if ts > last:
        if evidence > 0.0:
            evidence *= 0.5 ** ((ts - last) / prm[L.P_EV_HALF_LIFE])
        key_row[L.F_EVIDENCE_TS] = ts
    evidence += evidence_step(sig, prm)
    if evidence < 0.0:
        evidence = 0.0
    key_row[L.F_EVIDENCE] = evidence
    sticky = key_row[L.F_STICKY]
    if evidence >= prm[L.P_EV_THRESHOLD]:
        key_row[L.F_EVIDENCE_HELD] = ts
    elif sticky > 0.0 and ts - key_row[L.F_EVIDENCE_HELD] >= prm[L.P_EV_QUIET]:
        sticky = 0.0
    for i in range(n_steps):
        if evidence >= prm[L.P_EV_THRESHOLD + i] and prm[L.P_EV_LEVEL + i] > sticky:
            sticky = prm[L.P_EV_LEVEL + i]
    key_row[L.F_STICKY] = sticky
    if sticky > 0.0:
        reasons |= 1 << L.R_EVIDENCE
    return reasons


@njit(cache=True, inline="always")
def combine_signals(
    sig: np.ndarray, key_row: np.ndarray, ts: float, prm: np.ndarray
) -> tuple[float, int]:
    """The logistic score of the weighted signals and the reasons bitmask; each slot of
    ``sig`` becomes its contribution. A strong signal named as a reason lets the score
    refuse and slow the refill for a half-life."""
    z = prm[L.P_BIAS]
    weak = int(prm[L.P_WEAK_MASK])
    strong = False
    reasons = 0
    for s in range(L.N_SIGNALS):
        c = prm[L.P_WEIGHTS + s] * sig[s]
        sig[s] = c
        z += c
        if c >= prm[L.P_REASON_MIN]:
            reasons |= 1 << s
            if not weak & (1 << s):
                strong = True
    if strong:
        key_row[L.F_STRONG_UNTIL] = ts + prm[L.P_SCORE_HALF_LIFE]
    return 1.0 / (1.0 + math.exp(-z)), reasons


@njit(cache=True, inline="always")
def score_stage(
    key_row: np.ndarray,
    acc_row: np.ndarray,
    cms: np.ndarray,
    iv: np.ndarray,
    io: np.ndarray,
    prm: np.ndarray,
    fan_in: float,
    has_account: bool,
    account_hash: np.uint64,
    ts: float,
    epoch: int,
) -> tuple[float, int]:
    """Every signal's value (0..1) in its slot of ``sig`` (the O_CONTRIB slots of the io
    vector, zeroed before), then their score and reasons. Behaviour signals (volume, burst,
    cadence, errors) wait until the identity has ``min_events`` requests."""
    sig = io[L.O_CONTRIB : L.O_CONTRIB + L.N_SIGNALS]
    allowance_rate, allowance_burst, allowance_spend = risk_allowances(key_row, prm)
    if key_row[L.F_COUNT] >= prm[L.P_MIN_EVENTS]:
        # Volume: the long-run rate as a share of the bucket's configured rate.
        sig[L.S_VOLUME] = ramp(
            key_row[L.F_RATE_LONG] / allowance_rate, prm[L.P_VOLUME_LO], prm[L.P_VOLUME_HI]
        )
        sig[L.S_BURST] = burst_signal(
            ts - key_row[L.F_FIRST_SEEN],
            key_row[L.F_RATE_SHORT],
            key_row[L.F_RATE_LONG],
            allowance_rate,
            allowance_burst,
            prm,
        )
        sig[L.S_CADENCE] = cadence_signal(key_row[L.F_IA_COUNT], key_row[L.F_LIA_VAR], prm)
        sig[L.S_ERRORS] = ramp(key_row[L.F_ERR], prm[L.P_ERR_LO], prm[L.P_ERR_HI])
    sig[L.S_IMPATIENCE] = ramp(
        key_row[L.F_IMPATIENCE], prm[L.P_IMPATIENCE_LO], prm[L.P_IMPATIENCE_HI]
    )
    ua_class = iv[L.I_UA_CLASS]
    if 0 <= ua_class < L.N_CLIENT_CLASSES:
        sig[L.S_CLIENT] = prm[L.P_CLIENT_RISK + ua_class]
    # Persona, anonymizer and geo come computed from the guard (the enrich stage).
    sig[L.S_PERSONA] = io[L.X_PERSONA]
    sig[L.S_ANON] = io[L.X_ANON]
    sig[L.S_GEO] = io[L.X_GEO]
    # Fan-in: many accounts behind one network, weighed by how little it is trusted.
    sig[L.S_FAN_IN] = ramp(fan_in, prm[L.P_FANIN_LO], prm[L.P_FANIN_HI]) * io[L.X_NET_DISTRUST]
    if has_account:
        sig[L.S_FAN_OUT] = fan_out_signal(
            acc_row[L.A_EST + L.SK_ASNS],
            acc_row[L.A_EST + L.SK_COUNTRIES],
            acc_row[L.A_EST + L.SK_PREFIXES],
            prm,
        )
    else:
        sig[L.S_FAN_OUT] = fan_out_signal(0.0, 0.0, 0.0, prm)
    if io[L.X_HAS_CONTENT] != 0.0:
        # Template (the account repeats its own prompt shape) and shared template (many
        # accounts send one shape) are counted per account; template id 0 means too short
        # to have one ("hi").
        if has_account and iv[L.I_TEMPLATE_ID] != 0:
            shared = template_step(
                key_row,
                acc_row,
                cms,
                iv[L.I_SIMHASH],
                iv[L.I_TEMPLATE_ID],
                account_hash,
                ts,
                epoch,
                prm,
            )
            sig[L.S_SHARED_TEMPLATE] = ramp(
                shared, prm[L.P_SHARED_LO], prm[L.P_SHARED_HI]
            ) * common_keep(cms, iv[L.I_TEMPLATE_ID])
            if key_row[L.F_COUNT] >= 4.0:
                sig[L.S_TEMPLATE] = ramp(
                    acc_row[L.A_TEMPLATE], prm[L.P_TEMPLATE_LO], prm[L.P_TEMPLATE_HI]
                )
        sig[L.S_ELICIT] = io[L.X_ELICIT]
    sig[L.S_PRIOR] = key_row[L.F_PRIOR]
    if key_row[L.F_SPEND] > 0.0:
        sig[L.S_SPEND] = spend_signal(
            spend_per_day(
                key_row[L.F_SPEND], key_row[L.F_SPEND_TS], key_row[L.F_FIRST_SEEN], ts, prm
            ),
            allowance_spend,
            cms[L.CMS_DEPTH, L.CB_SPEND_Q],
            cms[L.CMS_DEPTH, L.CB_SPEND_N],
            prm,
        )
    return combine_signals(sig, key_row, ts, prm)


@njit(cache=True, inline="always")
def smooth_stage(
    key_row: np.ndarray,
    score: float,
    ts: float,
    previous_seen: float,
    new_key: bool,
    prm: np.ndarray,
) -> float:
    """The smoothed score: rises at once, falls with the EWMA and decays while idle
    (forgiveness)."""
    smoothed: float = key_row[L.F_SCORE]
    if smoothed > 0.0 and not new_key:
        idle = ts - previous_seen if ts > previous_seen else 0.0
        smoothed *= 0.5 ** (idle / prm[L.P_SCORE_HALF_LIFE])
    if score >= smoothed:
        smoothed = score
    else:
        smoothed += prm[L.P_SCORE_ALPHA] * (score - smoothed)
    key_row[L.F_SCORE] = smoothed
    return smoothed


@njit(cache=True, inline="always")
def ladder_stage(
    key_row: np.ndarray, smoothed: float, ts: float, scored: bool, prm: np.ndarray
) -> float:
    """The enforcement ladder with hysteresis, and a ban at its ban level. Weak signals
    alone (no strong one within the score's half-life) stop at the last step that serves
    and leave the refill alone; a scored request of an account held by its accumulated
    evidence is at least at the held level. Returns the score that scales the key
    bucket's refill."""
    corroborated = prm[L.P_WEAK_MASK] == 0.0 or key_row[L.F_STRONG_UNTIL] >= ts
    level = int(key_row[L.F_LEVEL])
    n_levels = int(prm[L.P_LADDER_N])
    while level < n_levels and smoothed >= prm[L.P_LADDER + level]:
        level += 1
    while level > 0 and smoothed < prm[L.P_LADDER + level - 1] - prm[L.P_HYSTERESIS]:
        level -= 1
    if not corroborated and level > prm[L.P_SERVING_LEVELS]:
        level = int(prm[L.P_SERVING_LEVELS])
    if scored and level < key_row[L.F_STICKY]:
        # Held by accumulated evidence (`evidence_stage`): the score may fall, the hold
        # stays until forgiven.
        level = int(key_row[L.F_STICKY])
    cap = key_row[L.F_LEVEL_CAP]
    if cap > 0.0 and level > cap - 1.0:
        level = int(cap - 1.0)  # a trusted account (Policy.accounts): served, still scored
    coupling_score = smoothed if corroborated else 0.0
    key_row[L.F_COUPLING_SCORE] = coupling_score
    key_row[L.F_LEVEL] = level
    if prm[L.P_BAN_LEVEL] > 0 and level >= prm[L.P_BAN_LEVEL]:
        key_row[L.F_BANNED_UNTIL] = ts + prm[L.P_BAN_SECONDS]
    return coupling_score


@njit(cache=True, inline="always")
def bucket_stage(
    tables: tuple[np.ndarray, ...],
    key_row: np.ndarray,
    iv: np.ndarray,
    io: np.ndarray,
    prm: np.ndarray,
    ts: float,
    cost: float,
    level: int,
    coupling_score: float,
    fan_in: float,
    reasons: int,
) -> None:
    """Token buckets: refill adapted to risk (key), NAT fairness (IP, prefix) and load
    (all), then charge every bucket if all afford the request and its level serves it.
    Writes the limit outputs and the reasons."""
    load = io[L.X_LOAD]
    risk_factor = _risk_refill_factor(
        coupling_score, prm[L.P_RISK_FLOOR], prm[L.P_COUPLING], prm[L.P_MIN_FACTOR]
    )
    nat_multiplier = 1.0
    if io[L.X_NAT_ELIGIBLE] != 0.0:
        nat_multiplier = _nat_multiplier(fan_in, prm[L.P_NAT_PER_ACCOUNT], prm[L.P_NAT_MAX])
    denied = 0
    retry = 0.0
    tight_kind = -1
    tight_ratio = 2.0
    tight_remaining = 0.0
    tight_reset = 0.0
    key_rate = 0.0
    key_burst = 0.0
    tight_base_rate = 0.0
    active = 0  # the kinds whose bucket this request meets
    for kind in range(L.N_KINDS):
        r = iv[L.I_ROW + kind]
        if kind == L.KIND_KEY:
            rate, burst = key_bucket(key_row, prm)
        else:
            rate = prm[L.P_BUCKET + 2 * kind]
            burst = prm[L.P_BUCKET + 2 * kind + 1]
        if r < 0 or burst <= 0.0:
            continue
        active |= 1 << kind
        base_rate = rate
        factor = load
        if kind == L.KIND_KEY:
            factor *= risk_factor
        elif kind in (L.KIND_IP, L.KIND_PREFIX):
            rate *= nat_multiplier
            burst *= nat_multiplier
        rate *= factor
        if rate < 1e-9:
            rate = 1e-9
        row = tables[kind][r]
        refill(row, ts, rate, burst)
        need = cost if cost < burst else burst
        tokens = row[L.F_TOKENS]
        if tokens < need:
            denied |= 1 << kind
            wait = (need - tokens) / rate
            if wait > retry:
                retry = wait
        if kind == L.KIND_KEY:
            key_rate = rate
            key_burst = burst
        ratio = tokens / burst
        if ratio < tight_ratio:
            tight_ratio = ratio
            tight_kind = kind
            tight_remaining = tokens
            tight_reset = (burst - tokens) / rate
            tight_base_rate = base_rate
    serves = prm[L.P_LADDER_SERVES + level] != 0.0
    # A refusal of a shadowed bucket is served: charged as an allow, nobody told to wait.
    enforced = denied & ~int(prm[L.P_SHADOW_KINDS])
    if enforced == 0 and serves:
        for kind in range(L.N_KINDS):
            if active & (1 << kind):
                tables[kind][iv[L.I_ROW + kind]][L.F_TOKENS] -= cost
        tight_remaining -= cost
        if tight_kind >= 0:
            tight_reset += cost / (tight_base_rate * load + 1e-12)
    if denied != 0:
        reasons |= 1 << L.R_RATE
    if enforced != 0:
        wait_until = ts + retry
        if wait_until > key_row[L.F_WAIT_UNTIL]:
            key_row[L.F_WAIT_UNTIL] = wait_until

    io[L.O_ACTION] = level
    io[L.O_REASONS] = float(reasons)
    io[L.O_RETRY_AFTER] = retry
    io[L.O_DENIED_KINDS] = float(denied)
    if key_burst > 0.0:
        remaining = key_row[L.F_TOKENS]
        io[L.O_REMAINING] = remaining if remaining > 0.0 else 0.0
        io[L.O_RESET] = (key_burst - remaining) / key_rate
    io[L.O_TIGHTEST_KIND] = tight_kind
    io[L.O_TIGHT_REMAINING] = tight_remaining if tight_remaining > 0.0 else 0.0
    io[L.O_TIGHT_RESET] = tight_reset if tight_reset > 0.0 else 0.0


@njit(cache=True)
def decide(
    key_t: np.ndarray,
    ip_t: np.ndarray,
    pfx_t: np.ndarray,
    asn_t: np.ndarray,
    per_t: np.ndarray,
    acc_t: np.ndarray,
    cms: np.ndarray,
    iv: np.ndarray,
    io: np.ndarray,
    prm: np.ndarray,
    net_pool: np.ndarray,
    acc_pool: np.ndarray,
) -> None:
    """One request, stage by stage: ban, arrival, network rows and sketches, score,
    accumulated evidence, smoothed score, ladder, buckets. Inputs in ``iv`` and the X_
    slots of ``io``; outputs in its O_ slots."""
    ts = io[L.X_TS]
    cost = io[L.X_COST]
    epoch = math.floor(ts / (prm[L.P_HORIZON] * 0.5))
    key_row_i = iv[L.I_ROW + L.KIND_KEY]
    key_row = key_t[key_row_i]
    for k in range(L.O_ACTION, io.shape[0]):
        io[k] = 0.0

    new_key = key_row[L.F_COUNT] == 0.0
    if new_key:
        init_row(key_row, ts, key_bucket(key_row, prm)[1])
        key_row[L.F_LIA_MEAN] = 0.0
        key_row[L.F_LIA_VAR] = 0.0
    elif banned_stage(key_row, ts, io, prm):
        return
    previous_seen = arrival_stage(key_row, ts, new_key, prm)

    acc_row_i = iv[L.I_ACC_ROW]
    has_account = iv[L.I_HAS_ACCOUNT] != 0 and acc_row_i >= 0
    account_hash = mix64(np.uint64(key_row_i) + np.uint64(0x51ED27))
    # Anonymous clients never touch the account table (row 0 only gives the names a type).
    acc_row = acc_t[acc_row_i if has_account else 0]
    tables = (key_t, ip_t, pfx_t, asn_t, per_t)
    fan_in = network_stage(
        tables,
        acc_t,
        acc_row_i,
        net_pool,
        acc_pool,
        iv,
        io,
        prm,
        ts,
        epoch,
        has_account,
        account_hash,
    )

    score = 0.0
    reasons = 0
    if prm[L.P_SCORING] != 0.0:
        score, reasons = score_stage(
            key_row,
            acc_row,
            cms,
            iv,
            io,
            prm,
            fan_in,
            has_account,
            account_hash,
            ts,
            epoch,
        )
        reasons = evidence_stage(key_row, io, ts, reasons, prm)
    io[L.O_SCORE] = score
    smoothed = smooth_stage(key_row, score, ts, previous_seen, new_key, prm)
    coupling_score = ladder_stage(key_row, smoothed, ts, prm[L.P_SCORING] != 0.0, prm)
    level = int(key_row[L.F_LEVEL])
    if level < key_row[L.F_STICKY]:
        reasons &= ~(1 << L.R_EVIDENCE)  # a trusted account's cap: not held
    bucket_stage(tables, key_row, iv, io, prm, ts, cost, level, coupling_score, fan_in, reasons)


@njit(cache=True)
def record_outcome(key_t: np.ndarray, row: int, is_error: float, alpha: float) -> None:
    key_t[row, L.F_ERR] += alpha * (is_error - key_t[row, L.F_ERR])


@njit(cache=True)
def charge(table: np.ndarray, row: int, delta: float, burst: float) -> None:
    """Reconcile a bucket with the real cost: delta > 0 charges more, < 0 refunds."""
    tokens = table[row, L.F_TOKENS] - delta
    table[row, L.F_TOKENS] = burst if tokens > burst else tokens


@njit(cache=True)
def add_spend(
    key_t: np.ndarray, cms: np.ndarray, row: int, amount: float, ts: float, prm: np.ndarray
) -> None:
    """The real cost of a served request, reported after its response: added to the
    account's decayed spend, and, at most once every ``P_SPEND_SAMPLE`` seconds per
    account, its spend per day fed to the cohort's quantile (a stochastic-approximation
    estimator in log units: up by ``step * q`` above it, down by ``step * (1 - q)``
    below)."""
    r = key_t[row]
    tau = prm[L.P_SPEND_TAU]
    last = r[L.F_SPEND_TS]
    if ts > last:
        if r[L.F_SPEND] > 0.0:
            r[L.F_SPEND] *= math.exp(-(ts - last) / tau)
        r[L.F_SPEND_TS] = ts
    r[L.F_SPEND] += amount
    sampled = r[L.F_SPEND_SAMPLED]
    if sampled != 0.0 and ts - sampled < prm[L.P_SPEND_SAMPLE]:
        return
    r[L.F_SPEND_SAMPLED] = ts
    per_day = spend_per_day(r[L.F_SPEND], r[L.F_SPEND_TS], r[L.F_FIRST_SEEN], ts, prm)
    if per_day <= 0.0:
        return
    x = math.log(per_day)
    book = cms[L.CMS_DEPTH]
    if book[L.CB_SPEND_N] == 0.0:
        book[L.CB_SPEND_Q] = x
    elif x > book[L.CB_SPEND_Q]:
        book[L.CB_SPEND_Q] += prm[L.P_SPEND_STEP] * prm[L.P_SPEND_QUANTILE]
    else:
        book[L.CB_SPEND_Q] -= prm[L.P_SPEND_STEP] * (1.0 - prm[L.P_SPEND_QUANTILE])
    book[L.CB_SPEND_N] += 1.0


@njit(cache=True, inline="always")
def region(state: np.ndarray, index: int, width: int) -> np.ndarray:
    """Region ``index`` of the engine's state vector as a (rows, width) table (a view).
    ``as_strided`` builds the view in place; ``reshape`` calls Numba's C helper, which
    cost about 20 ns per table, seven tables a request."""
    offset = int(state[2 * index])
    rows = int(state[2 * index + 1])
    return np.lib.stride_tricks.as_strided(
        state[offset : offset + rows * width], shape=(rows, width), strides=(width * 8, 8)
    )


@njit(cache=True, inline="always")
def vector(state: np.ndarray, index: int, size: int) -> np.ndarray:
    offset = int(state[2 * index])
    return state[offset : offset + size]


# Numba's type constructors are unannotated.
_FLOAT64_POINTER: Any = types.CPointer(types.float64)  # type: ignore[no-untyped-call]  # numba
_INT64_POINTER: Any = types.CPointer(types.int64)  # type: ignore[no-untyped-call]  # numba


@intrinsic
def _float64_pointer_at(typingctx: Any, address: Any) -> Any:
    """The float64 pointer at an integer address (for `borrowed`)."""
    signature = _FLOAT64_POINTER(types.uintp)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return signature, codegen


@intrinsic
def _int64_pointer_at(typingctx: Any, address: Any) -> Any:
    """The int64 pointer at an integer address (for `borrowed_ints`)."""
    signature = _INT64_POINTER(types.uintp)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return signature, codegen


# (Called through these names: the intrinsics' own signatures take the typing context.)
_float64_pointer: Any = _float64_pointer_at
_int64_pointer: Any = _int64_pointer_at


@njit(cache=True, inline="always")
def _address(state: np.ndarray, offset: int) -> np.uint64:
    """The address of word ``offset`` of the state vector (unsigned arithmetic: a uint64
    plus an int64 would be a float64 in Numba)."""
    return state.ctypes.data + np.uint64(8) * np.uint64(offset)


@njit(cache=True, inline="always")
def borrowed(state: np.ndarray, index: int, width: int) -> np.ndarray:
    """Region ``index`` of the state vector as a (rows, width) table that borrows the
    memory: it has no reference count, so passing it to a stage costs no atomic
    increment and decrement (about 15 ns a pair, dozens a request once `decide` is split
    into stages). Only for the duration of one kernel call, which holds ``state``."""
    offset = int(state[2 * index])
    rows = int(state[2 * index + 1])
    return carray(_float64_pointer(_address(state, offset)), (rows, width))


@njit(cache=True, inline="always")
def borrowed_vector(state: np.ndarray, index: int, size: int) -> np.ndarray:
    return carray(_float64_pointer(_address(state, int(state[2 * index]))), size)


@njit(cache=True, inline="always")
def borrowed_ints(state: np.ndarray, index: int, size: int) -> np.ndarray:
    return carray(_int64_pointer(_address(state, int(state[2 * index]))), size)


@njit(cache=True)
def decide_with(
    state: np.ndarray,
    r_key: int,
    r_ip: int,
    r_pfx: int,
    r_asn: int,
    r_per: int,
    country: int,
    simhash: int,
    template_id: int,
    ua_class: int,
    r_acc: int,
    ts: float,
    cost: float,
    load: float,
    anon: float,
    geo: float,
    persona: float,
    elicit: float,
    has_content: float,
    distrust: float,
    nat: float,
    scored: bool,
) -> bool:
    """`decide` on the engine's one state vector, with the inputs as scalars: filling the
    vectors from Python costs more than passing arguments to one call. ``r_acc`` is the
    account-table row, -1 for an anonymous client; ``scored`` False skips the risk score
    for this request (allow-listed networks). Returns True for the common answer, a plain
    allow: ladder level 0, no bucket refused, not banned (the io vector holds the rest)."""
    iv = borrowed_ints(state, L.REGION_IV, L.N_INT_INPUTS)
    io = borrowed_vector(state, L.REGION_IO, L.IO_SIZE)
    prm = borrowed_vector(state, L.REGION_PRM, L.N_PARAMS)
    iv[L.I_ROW + L.KIND_KEY] = r_key
    iv[L.I_ROW + L.KIND_IP] = r_ip
    iv[L.I_ROW + L.KIND_PREFIX] = r_pfx
    iv[L.I_ROW + L.KIND_ASN] = r_asn
    iv[L.I_ROW + L.KIND_PERSONA] = r_per
    iv[L.I_COUNTRY] = country
    iv[L.I_SIMHASH] = simhash
    iv[L.I_TEMPLATE_ID] = template_id
    iv[L.I_UA_CLASS] = ua_class
    iv[L.I_HAS_ACCOUNT] = 1 if r_acc >= 0 else 0
    iv[L.I_ACC_ROW] = r_acc
    io[L.X_TS] = ts
    io[L.X_COST] = cost
    io[L.X_LOAD] = load
    io[L.X_ANON] = anon
    io[L.X_GEO] = geo
    io[L.X_PERSONA] = persona
    io[L.X_ELICIT] = elicit
    io[L.X_HAS_CONTENT] = has_content
    io[L.X_NET_DISTRUST] = distrust
    io[L.X_NAT_ELIGIBLE] = nat
    scoring = prm[L.P_SCORING]
    if not scored:
        prm[L.P_SCORING] = 0.0
    decide(
        borrowed(state, L.REGION_TABLES + L.KIND_KEY, L.KEY_WIDTH),
        borrowed(state, L.REGION_TABLES + L.KIND_IP, L.NET_WIDTH),
        borrowed(state, L.REGION_TABLES + L.KIND_PREFIX, L.NET_WIDTH),
        borrowed(state, L.REGION_TABLES + L.KIND_ASN, L.NET_WIDTH),
        borrowed(state, L.REGION_TABLES + L.KIND_PERSONA, L.NET_WIDTH),
        borrowed(state, L.REGION_ACC, L.ACC_WIDTH),
        borrowed(state, L.REGION_CMS, L.CMS_WIDTH),
        iv,
        io,
        prm,
        borrowed(state, L.REGION_NET_POOL, L.NET_BLOCK_WIDTH),
        borrowed(state, L.REGION_ACC_POOL, L.ACC_BLOCK_WIDTH),
    )
    prm[L.P_SCORING] = scoring
    plain: bool = io[L.O_ACTION] == 0.0 and io[L.O_DENIED_KINDS] == 0.0 and io[L.O_BANNED] == 0.0
    return plain


@njit(cache=True)
def claim_and_decide(
    state: np.ndarray,
    index: np.ndarray,
    want: int,
    h_key: int,
    h_ip: int,
    h_prefix: int,
    h_asn: int,
    h_persona: int,
    country: int,
    simhash: int,
    template_id: int,
    ua_class: int,
    ts: float,
    cost: float,
    load: float,
    anon: float,
    geo: float,
    persona: float,
    elicit: float,
    has_content: float,
    distrust: float,
    nat: float,
    scored: bool,
) -> int:
    """`hashindex.claim_rows` then `decide_with` in one call (entering a compiled function
    from Python costs more than either's work on a known identity). ``index`` is the
    engine's index vector, ``want`` and the hashes as for ``claim_rows``, the rest as for
    ``decide_with``. Returns 1 for a plain allow, 0 for any other decision, or, when a
    table is full and the identity new there, minus the bits of those tables (bit
    ``kind``, bit 5 the account table) without deciding: the caller evicts a row in each
    (which indexes the identity there) and calls again, which finds every row.
    Numba's on-disk cache of this function is keyed by this file alone: a change to
    `hashindex`'s inlined functions must come with an edit here."""
    r_key = hashindex._claim(index, index[0], h_key)
    r_ip = hashindex._claim(index, index[1], h_ip) if want & 2 else -1
    r_pfx = hashindex._claim(index, index[2], h_prefix) if want & 4 else -1
    r_asn = hashindex._claim(index, index[3], h_asn) if want & 8 else -1
    r_per = hashindex._claim(index, index[4], h_persona) if want & 16 else -1
    r_acc = hashindex._claim(index, index[5], h_key) if want & 32 else -1
    full = (
        (1 if r_key == hashindex.FULL else 0)
        | (2 if r_ip == hashindex.FULL else 0)
        | (4 if r_pfx == hashindex.FULL else 0)
        | (8 if r_asn == hashindex.FULL else 0)
        | (16 if r_per == hashindex.FULL else 0)
        | (32 if r_acc == hashindex.FULL else 0)
    )
    if full:
        return -full
    plain = decide_with(
        state,
        r_key,
        r_ip,
        r_pfx,
        r_asn,
        r_per,
        country,
        simhash,
        template_id,
        ua_class,
        r_acc,
        ts,
        cost,
        load,
        anon,
        geo,
        persona,
        elicit,
        has_content,
        distrust,
        nat,
        scored,
    )
    return 1 if plain else 0


# Numba ships py.typed but leaves FunctionCache unannotated: subclassing it as is makes
# mypy flag its untyped __init__ and _index_key, so it is subclassed as Any.
_FunctionCache: Any = FunctionCache


class _EngineCache(_FunctionCache):  # type: ignore[misc]  # numba: unannotated class
    """Numba's on-disk cache, keyed also by the engine modules the kernels read at compile
    time: Numba keys a cached kernel by its own file and bytecode only, so an edited layout
    offset, signal declaration or bucket rule would otherwise load a stale kernel."""

    def _index_key(self, sig: Any, codegen: Any) -> Any:
        key: tuple[Any, ...] = _FunctionCache._index_key(self, sig, codegen)
        return (*key, ENGINE_SOURCES_HASH)


ENGINE_SOURCES_HASH = hashlib.sha256(
    b"".join(Path(m.__file__ or "").read_bytes() for m in (L, signals, bucket_rules, hashindex))
).hexdigest()
for _kernel in [v for v in globals().values() if isinstance(v, Dispatcher)]:
    if type(getattr(_kernel, "_cache", None)) is FunctionCache:
        kernel: Any = _kernel
        kernel._cache = _EngineCache(kernel.py_func)


def claim_and_decide_probe(decide_inputs: list[Any]) -> list[Any]:
    """Arguments of `claim_and_decide` after ``index`` (``want`` 63, hashes 1..5) from
    those of `decide_with` after ``state``: the ones that compile its one signature."""
    rows = {"r_key", "r_ip", "r_pfx", "r_asn", "r_per", "r_acc"}
    named = zip(L.KERNEL_INPUTS, decide_inputs, strict=True)
    rest = [value for (name, _, _), value in named if name not in rows]
    return [63, 1, 2, 3, 4, 5, *rest]


def state_layout(rows: tuple[int, ...]) -> tuple[list[tuple[int, int]], int]:
    """(offset, rows) of every region of a state vector whose tables have ``rows`` rows
    (the five identity tables, then the account table), and the vector's total size. The
    sketch pools (last) get `layout.pool_blocks` blocks for those tables."""
    widths = (L.KEY_WIDTH, *(L.NET_WIDTH,) * (L.N_KINDS - 1), L.ACC_WIDTH)
    shapes = [(n, w) for n, w in zip(rows, widths, strict=True)]
    shapes += [(L.CMS_ROWS, L.CMS_WIDTH), (1, L.N_INT_INPUTS), (1, L.IO_SIZE)]
    shapes += [(1, L.N_PARAMS)]
    net_rows = sum(rows[L.KIND_IP : L.N_KINDS])
    shapes += [(L.pool_blocks(net_rows, L.NET_POOL_SHARE), L.NET_BLOCK_WIDTH)]
    shapes += [(L.pool_blocks(rows[L.N_KINDS], L.ACC_POOL_SHARE), L.ACC_BLOCK_WIDTH)]
    regions = []
    offset = L.HEADER_SIZE
    for n, width in shapes:
        offset += -offset % 8  # each region starts on a 64-byte line
        regions.append((offset, n))
        offset += n * width
    return regions, offset


def new_state(rows: tuple[int, ...]) -> np.ndarray:
    """A zeroed state vector with its header filled (pages are touched only when used)."""
    regions, size = state_layout(rows)
    state = np.zeros(size, dtype=np.float64)
    for i, (offset, n) in enumerate(regions):
        state[2 * i] = offset
        state[2 * i + 1] = n
    return state


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel, so no request ever compiles."""
    state = new_state((2, 2, 2, 2, 2, 2))
    key_t = region(state, L.REGION_TABLES, L.KEY_WIDTH)
    prm = vector(state, L.REGION_PRM, L.N_PARAMS)
    prm[:] = 1.0
    prm[L.P_LADDER_N] = 0.0
    # Any valid values of the declared types compile the one signature: ints for the int64
    # vector (rows 1 exist in these two-row tables), floats for the float vector.
    inputs: list[Any] = [1 if vec == "iv" else 1.0 for _, vec, _ in L.KERNEL_INPUTS]
    for scored in (True, False):
        inputs[-1] = scored
        decide_with(state, *inputs)
    # Hashes 1..5 in tables of two rows each: every row is free, nothing to evict.
    index = hashindex.new_index_vector((2, 2, 2, 2, 2, 2))
    claim_and_decide(state, index, *claim_and_decide_probe(inputs))
    record_outcome(key_t, 0, 1.0, 0.1)
    charge(key_t, 0, 1.0, 1.0)
    add_spend(key_t, region(state, L.REGION_CMS, L.CMS_WIDTH), 0, 1.0, 1.0, prm)
