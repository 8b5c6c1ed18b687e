"""Numba kernels: one call per request updates every row the request touches and scores it.

``decide`` is the hot path. It refills and charges the token buckets of every identity the
request belongs to, updates the behaviour features of the key row (rates, cadence,
impatience, prompt templates), adds the request to the fan-in and fan-out sketches,
computes the risk score and its per-signal contributions, moves the enforcement ladder with
hysteresis, and writes everything the caller needs into the ``io`` vector. All state lives
in preallocated arrays; nothing is allocated per call.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from abuseguard.engine.layout import (
    A_EPOCH,
    A_RING,
    A_TRING,
    ACC_FIELDS,
    CMS_DEPTH,
    CMS_WIDTH,
    COMMON_FIELDS,
    F_BANNED_UNTIL,
    F_BUCKET_TS,
    F_COUNT,
    F_ERR,
    F_EST,
    F_FIRST_SEEN,
    F_IA_COUNT,
    F_IMPATIENCE,
    F_LAST_SEEN,
    F_LEVEL,
    F_LIA_MEAN,
    F_LIA_VAR,
    F_PRIOR,
    F_RATE_LONG,
    F_RATE_SHORT,
    F_RING_POS,
    F_SCORE,
    F_SKETCH_EPOCH,
    F_SKETCH_EST,
    F_TEMPLATE,
    F_TOKENS,
    F_WAIT_UNTIL,
    I_ACC_ROW,
    I_COUNTRY,
    I_HAS_ACCOUNT,
    I_ROW,
    I_SIMHASH,
    I_TEMPLATE_ID,
    I_UA_CLASS,
    KEY_SKETCH_M,
    KEY_SKETCHES,
    KIND_ASN,
    KIND_IP,
    KIND_KEY,
    KIND_PERSONA,
    KIND_PREFIX,
    N_KINDS,
    N_SIGNALS,
    NET_SKETCH_M,
    O_ACTION,
    O_BANNED,
    O_CONTRIB,
    O_DENIED_KINDS,
    O_FANIN,
    O_FANOUT_ASNS,
    O_FANOUT_COUNTRIES,
    O_FANOUT_IPS,
    O_REASONS,
    O_REMAINING,
    O_RESET,
    O_RETRY_AFTER,
    O_SCORE,
    O_TIGHT_REMAINING,
    O_TIGHT_RESET,
    O_TIGHTEST_KIND,
    P_ALPHA_IA,
    P_BAN_LEVEL,
    P_BAN_SECONDS,
    P_BASELINE_AGE,
    P_BIAS,
    P_BUCKET,
    P_BURST_HI,
    P_BURST_LO,
    P_CADENCE_HI,
    P_CADENCE_LO,
    P_CLIENT_RISK,
    P_CMS_HALF_LIFE,
    P_COUPLING,
    P_ERR_HI,
    P_ERR_LO,
    P_FANIN_HI,
    P_FANIN_LO,
    P_FANIN_SCALE,
    P_FANOUT_ASN_HI,
    P_FANOUT_ASN_LO,
    P_FANOUT_CC_HI,
    P_FANOUT_CC_LO,
    P_FANOUT_PFX_HI,
    P_FANOUT_PFX_LO,
    P_HAMMING,
    P_HORIZON,
    P_HYSTERESIS,
    P_IMPATIENCE_HI,
    P_IMPATIENCE_LO,
    P_LADDER,
    P_LADDER_N,
    P_LADDER_SERVES,
    P_MIN_EVENTS,
    P_MIN_FACTOR,
    P_NAT_MAX,
    P_NAT_PER_ACCOUNT,
    P_REASON_MIN,
    P_RISK_FLOOR,
    P_SCORE_ALPHA,
    P_SCORE_HALF_LIFE,
    P_SCORING,
    P_SHARED_HI,
    P_SHARED_LO,
    P_TAU_LONG,
    P_TAU_SHORT,
    P_TEMPLATE_HI,
    P_TEMPLATE_LO,
    P_VOLUME_HI,
    P_VOLUME_LO,
    P_WEIGHTS,
    R_BANNED,
    R_RATE,
    RING_SIZE,
    S_ANON,
    S_BURST,
    S_CADENCE,
    S_CLIENT,
    S_ELICIT,
    S_ERRORS,
    S_FAN_IN,
    S_FAN_OUT,
    S_GEO,
    S_IMPATIENCE,
    S_PERSONA,
    S_PRIOR,
    S_SHARED_TEMPLATE,
    S_TEMPLATE,
    S_VOLUME,
    SK_ASNS,
    SK_COUNTRIES,
    SK_IPS,
    SK_PREFIXES,
    X_ANON,
    X_COST,
    X_ELICIT,
    X_GEO,
    X_HAS_CONTENT,
    X_LOAD,
    X_NAT_ELIGIBLE,
    X_NET_DISTRUST,
    X_PERSONA,
    X_TS,
)

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


@njit(cache=True)
def hll_add(regs: np.ndarray, base: int, m: int, h: np.uint64) -> bool:
    """Add a hashed item; True when a register grew (the estimate may have changed)."""
    p = 5 if m == 32 else 6
    idx = int(h >> np.uint64(64 - p))
    w = (h << np.uint64(p)) | (_U1 << np.uint64(p - 1))
    rank = 1
    while (w & _TOP_BIT) == 0:
        w = w << _U1
        rank += 1
    if regs[base + idx] < rank:
        regs[base + idx] = rank
        return True
    return False


@njit(cache=True)
def hll_estimate(regs: np.ndarray, base: int, m: int) -> float:
    """Distinct count over the union of the two halves stored at base and base + m."""
    total = 0.0
    zeros = 0
    for j in range(m):
        a = regs[base + j]
        b = regs[base + m + j]
        r = a if a > b else b
        total += _INV_POW2[r]
        if r == 0:
            zeros += 1
    alpha = 0.697 if m == 32 else 0.709
    estimate = alpha * m * m / total
    if estimate <= 2.5 * m and zeros > 0:
        estimate = m * math.log(m / zeros)
    return estimate


@njit(cache=True)
def rotate_sketches(
    row: np.ndarray, regs: np.ndarray, n_sketches: int, m: int, epoch: int, field: int
) -> bool:
    """Advance the sliding horizon: the half for `epoch` is cleared when it held old data.
    ``row[field]`` holds the epoch of the sketches. True when registers were cleared."""
    old = int(row[field])
    if old == epoch:
        return False
    if epoch == old + 1:
        half = epoch & 1
        for s in range(n_sketches):
            base = s * 2 * m + half * m
            for j in range(m):
                regs[base + j] = 0
    elif epoch > old:
        for j in range(n_sketches * 2 * m):
            regs[j] = 0
    else:
        return False  # a late event from an older epoch: keep the newer state
    row[field] = epoch
    return True


@njit(cache=True)
def init_row(row: np.ndarray, ts: float, burst: float, epoch: int) -> None:
    row[F_TOKENS] = burst
    row[F_BUCKET_TS] = ts
    row[F_FIRST_SEEN] = ts
    row[F_LAST_SEEN] = ts
    row[F_SKETCH_EPOCH] = epoch
    row[F_LIA_MEAN] = 0.0
    row[F_LIA_VAR] = 0.0


@njit(cache=True)
def observe_arrival(row: np.ndarray, ts: float, prm: np.ndarray) -> None:
    """Rates (two EWMAs) and the statistics of log inter-arrival times."""
    count = row[F_COUNT]
    if count > 0:
        dt = ts - row[F_LAST_SEEN]
        if dt < 0.0:
            dt = 0.0
        decay_short = math.exp(-dt / prm[P_TAU_SHORT])
        decay_long = math.exp(-dt / prm[P_TAU_LONG])
        row[F_RATE_SHORT] = row[F_RATE_SHORT] * decay_short + 1.0 / prm[P_TAU_SHORT]
        row[F_RATE_LONG] = row[F_RATE_LONG] * decay_long + 1.0 / prm[P_TAU_LONG]
        if dt >= _MIN_INTERVAL:
            lia = math.log(dt)
            row[F_IA_COUNT] += 1.0
            if row[F_IA_COUNT] < 2.0:
                row[F_LIA_MEAN] = lia
                row[F_LIA_VAR] = 0.0
            else:
                alpha = prm[P_ALPHA_IA]
                diff = lia - row[F_LIA_MEAN]
                row[F_LIA_MEAN] += alpha * diff
                row[F_LIA_VAR] = (1.0 - alpha) * (row[F_LIA_VAR] + alpha * diff * diff)
    else:
        row[F_RATE_SHORT] = 1.0 / prm[P_TAU_SHORT]
        row[F_RATE_LONG] = 1.0 / prm[P_TAU_LONG]
    row[F_COUNT] = count + 1.0
    if ts > row[F_LAST_SEEN]:
        row[F_LAST_SEEN] = ts


@njit(cache=True)
def refill(row: np.ndarray, ts: float, rate: float, burst: float) -> None:
    elapsed = ts - row[F_BUCKET_TS]
    if elapsed > 0.0:
        tokens = row[F_TOKENS] + elapsed * rate
        row[F_TOKENS] = burst if tokens > burst else tokens
        row[F_BUCKET_TS] = ts


@njit(cache=True)
def template_step(
    key_row: np.ndarray,
    acc_row: np.ndarray,
    cms: np.ndarray,
    simhash: int,
    template_id: int,
    ts: float,
    prm: np.ndarray,
) -> float:
    """Per-account template repeat rate and the accounts-per-template Count-Min estimate."""
    ring = acc_row[A_RING : A_RING + RING_SIZE].view(np.int64)
    tring = acc_row[A_TRING : A_TRING + RING_SIZE].view(np.int64)
    filled = int(key_row[F_COUNT]) - 1  # requests before this one
    if filled > RING_SIZE:
        filled = RING_SIZE
    near = False
    known = False
    sh = np.uint64(simhash)
    for j in range(filled):
        if tring[j] == template_id:
            known = True
        if popcount64(np.uint64(ring[j]) ^ sh) <= prm[P_HAMMING]:
            near = True
    pos = int(key_row[F_RING_POS])
    ring[pos] = simhash
    tring[pos] = template_id
    key_row[F_RING_POS] = (pos + 1) % RING_SIZE
    repeated = near or known
    key_row[F_TEMPLATE] += 0.15 * ((1.0 if repeated else 0.0) - key_row[F_TEMPLATE])

    # Count-Min over template ids, counting each account once per template it (re)starts.
    last_decay = cms[CMS_DEPTH, 0]
    half_life = prm[P_CMS_HALF_LIFE]
    if last_decay == 0.0:
        cms[CMS_DEPTH, 0] = ts
    elif ts - last_decay >= half_life * 0.25:
        factor = 0.5 ** ((ts - last_decay) / half_life)
        for d in range(CMS_DEPTH):
            for j in range(CMS_WIDTH):
                cms[d, j] *= factor
        cms[CMS_DEPTH, 0] = ts
    estimate = 1e300
    tid = np.uint64(template_id)
    for d in range(CMS_DEPTH):
        j = int(mix64(tid + np.uint64(d) * np.uint64(0x632BE59BD9B4E019)) % np.uint64(CMS_WIDTH))
        if not known:  # each account counts once per template it (re)starts
            cms[d, j] += 1.0
        if cms[d, j] < estimate:
            estimate = cms[d, j]
    return estimate


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
) -> None:
    ts = io[X_TS]
    cost = io[X_COST]
    epoch = math.floor(ts / (prm[P_HORIZON] * 0.5))
    key_row_i = iv[I_ROW + KIND_KEY]
    key_row = key_t[key_row_i]
    for k in range(O_ACTION, io.shape[0]):
        io[k] = 0.0

    new_key = key_row[F_COUNT] == 0.0
    if new_key:
        init_row(key_row, ts, prm[P_BUCKET + 1], epoch)
    elif key_row[F_BANNED_UNTIL] > ts:
        observe_arrival(key_row, ts, prm)
        io[O_BANNED] = 1.0
        io[O_ACTION] = prm[P_BAN_LEVEL]
        io[O_SCORE] = key_row[F_SCORE]
        io[O_REASONS] = float(1 << R_BANNED)
        io[O_RETRY_AFTER] = key_row[F_BANNED_UNTIL] - ts
        io[O_REMAINING] = key_row[F_TOKENS] if key_row[F_TOKENS] > 0.0 else 0.0
        io[O_TIGHTEST_KIND] = -1.0
        return

    # Impatience: a request sent while the client was told to wait.
    impatient = 1.0 if ts < key_row[F_WAIT_UNTIL] - 0.05 else 0.0
    if not new_key:
        key_row[F_IMPATIENCE] += 0.2 * (impatient - key_row[F_IMPATIENCE])
    previous_seen = key_row[F_LAST_SEEN]
    observe_arrival(key_row, ts, prm)

    acc_row_i = iv[I_ACC_ROW]
    has_account = iv[I_HAS_ACCOUNT] != 0 and acc_row_i >= 0
    account_hash = mix64(np.uint64(key_row_i) + np.uint64(0x51ED27))
    # Anonymous clients never touch the account table (row 0 only gives the names a type).
    acc_row = acc_t[acc_row_i if has_account else 0]
    key_regs = acc_row[ACC_FIELDS:].view(np.uint8)

    # Network rows: arrival stats, fan-in sketches, fan-out items for the key. Estimates are
    # cached in the rows and recomputed only when a register grows or a half is cleared.
    fan_in = 0.0
    tables = (key_t, ip_t, pfx_t, asn_t, per_t)
    half = epoch & 1
    key_dirty = has_account and rotate_sketches(
        acc_row, key_regs, KEY_SKETCHES, KEY_SKETCH_M, epoch, A_EPOCH
    )
    for kind in range(1, N_KINDS):
        r = iv[I_ROW + kind]
        if r < 0:
            continue
        row = tables[kind][r]
        if row[F_COUNT] == 0.0:
            init_row(row, ts, prm[P_BUCKET + 2 * kind + 1], epoch)
        observe_arrival(row, ts, prm)
        if not has_account:
            continue
        regs = row[COMMON_FIELDS:].view(np.uint8)
        dirty = rotate_sketches(row, regs, 1, NET_SKETCH_M, epoch, F_SKETCH_EPOCH)
        if hll_add(regs, half * NET_SKETCH_M, NET_SKETCH_M, account_hash) or dirty:
            row[F_SKETCH_EST] = hll_estimate(regs, 0, NET_SKETCH_M)
        est = row[F_SKETCH_EST] / prm[P_FANIN_SCALE + kind]
        if est > fan_in:
            fan_in = est
        if kind != KIND_PERSONA:
            sk = SK_IPS if kind == KIND_IP else (SK_PREFIXES if kind == KIND_PREFIX else SK_ASNS)
            item = mix64(np.uint64(r) ^ (np.uint64(kind) << np.uint64(56)))
            if hll_add(key_regs, sk * 2 * KEY_SKETCH_M + half * KEY_SKETCH_M, KEY_SKETCH_M, item):
                key_row[F_EST + sk] = hll_estimate(key_regs, sk * 2 * KEY_SKETCH_M, KEY_SKETCH_M)
    if has_account and iv[I_COUNTRY] != 0:
        item = mix64(np.uint64(iv[I_COUNTRY]) ^ np.uint64(0xC0FFEE))
        if hll_add(
            key_regs, SK_COUNTRIES * 2 * KEY_SKETCH_M + half * KEY_SKETCH_M, KEY_SKETCH_M, item
        ):
            key_row[F_EST + SK_COUNTRIES] = hll_estimate(
                key_regs, SK_COUNTRIES * 2 * KEY_SKETCH_M, KEY_SKETCH_M
            )
    if key_dirty:
        for sk in range(KEY_SKETCHES):
            key_row[F_EST + sk] = hll_estimate(key_regs, sk * 2 * KEY_SKETCH_M, KEY_SKETCH_M)
    io[O_FANIN] = fan_in
    if has_account:
        fan_out_ips = key_row[F_EST + SK_IPS]
        fan_out_pfx = key_row[F_EST + SK_PREFIXES]
        fan_out_asns = key_row[F_EST + SK_ASNS]
        fan_out_cc = key_row[F_EST + SK_COUNTRIES]
    else:
        fan_out_ips = fan_out_pfx = fan_out_asns = fan_out_cc = 0.0
    io[O_FANOUT_IPS] = fan_out_ips
    io[O_FANOUT_ASNS] = fan_out_asns
    io[O_FANOUT_COUNTRIES] = fan_out_cc

    # Risk score.
    score = 0.0
    reasons = 0
    if prm[P_SCORING] != 0.0:
        count = key_row[F_COUNT]
        warm = count >= prm[P_MIN_EVENTS]
        sig = io[O_CONTRIB : O_CONTRIB + N_SIGNALS]  # signal values, then contributions
        if warm:
            sig[S_VOLUME] = ramp(key_row[F_RATE_LONG], prm[P_VOLUME_LO], prm[P_VOLUME_HI])
            if ts - key_row[F_FIRST_SEEN] >= prm[P_BASELINE_AGE]:
                base = key_row[F_RATE_LONG] if key_row[F_RATE_LONG] > 1e-3 else 1e-3
                sig[S_BURST] = ramp(key_row[F_RATE_SHORT] / base, prm[P_BURST_LO], prm[P_BURST_HI])
            if key_row[F_IA_COUNT] >= prm[P_MIN_EVENTS]:
                spread = math.sqrt(key_row[F_LIA_VAR]) if key_row[F_LIA_VAR] > 0.0 else 0.0
                sig[S_CADENCE] = ramp(spread, prm[P_CADENCE_HI], prm[P_CADENCE_LO])
            sig[S_ERRORS] = ramp(key_row[F_ERR], prm[P_ERR_LO], prm[P_ERR_HI])
        sig[S_IMPATIENCE] = ramp(key_row[F_IMPATIENCE], prm[P_IMPATIENCE_LO], prm[P_IMPATIENCE_HI])
        ua_class = iv[I_UA_CLASS]
        if 0 <= ua_class < 8:
            sig[S_CLIENT] = prm[P_CLIENT_RISK + ua_class]
        sig[S_PERSONA] = io[X_PERSONA]
        sig[S_ANON] = io[X_ANON]
        sig[S_GEO] = io[X_GEO]
        sig[S_FAN_IN] = ramp(fan_in, prm[P_FANIN_LO], prm[P_FANIN_HI]) * io[X_NET_DISTRUST]
        fan_out = ramp(fan_out_asns, prm[P_FANOUT_ASN_LO], prm[P_FANOUT_ASN_HI])
        v = ramp(fan_out_cc, prm[P_FANOUT_CC_LO], prm[P_FANOUT_CC_HI])
        if v > fan_out:
            fan_out = v
        v = ramp(fan_out_pfx, prm[P_FANOUT_PFX_LO], prm[P_FANOUT_PFX_HI])
        if v > fan_out:
            fan_out = v
        sig[S_FAN_OUT] = fan_out
        if io[X_HAS_CONTENT] != 0.0:
            # Templates are counted per account; 0 means too short to have one ("hi").
            if has_account and iv[I_TEMPLATE_ID] != 0:
                shared = template_step(
                    key_row, acc_row, cms, iv[I_SIMHASH], iv[I_TEMPLATE_ID], ts, prm
                )
                sig[S_SHARED_TEMPLATE] = ramp(shared, prm[P_SHARED_LO], prm[P_SHARED_HI])
                if count >= 4.0:
                    sig[S_TEMPLATE] = ramp(
                        key_row[F_TEMPLATE], prm[P_TEMPLATE_LO], prm[P_TEMPLATE_HI]
                    )
            sig[S_ELICIT] = io[X_ELICIT]
        sig[S_PRIOR] = key_row[F_PRIOR]
        z = prm[P_BIAS]
        for s in range(N_SIGNALS):
            c = prm[P_WEIGHTS + s] * sig[s]
            io[O_CONTRIB + s] = c
            z += c
            if c >= prm[P_REASON_MIN]:
                reasons |= 1 << s
        score = 1.0 / (1.0 + math.exp(-z))

    # Smoothed score: rises at once, falls with the EWMA and decays while idle (forgiveness).
    smoothed = key_row[F_SCORE]
    if smoothed > 0.0 and not new_key:
        idle = ts - previous_seen if ts > previous_seen else 0.0
        smoothed *= 0.5 ** (idle / prm[P_SCORE_HALF_LIFE])
    if score >= smoothed:
        smoothed = score
    else:
        smoothed += prm[P_SCORE_ALPHA] * (score - smoothed)
    key_row[F_SCORE] = smoothed

    # Enforcement ladder with hysteresis.
    level = int(key_row[F_LEVEL])
    n_levels = int(prm[P_LADDER_N])
    while level < n_levels and smoothed >= prm[P_LADDER + level]:
        level += 1
    while level > 0 and smoothed < prm[P_LADDER + level - 1] - prm[P_HYSTERESIS]:
        level -= 1
    key_row[F_LEVEL] = level
    if prm[P_BAN_LEVEL] > 0 and level >= prm[P_BAN_LEVEL]:
        key_row[F_BANNED_UNTIL] = ts + prm[P_BAN_SECONDS]

    # Token buckets: refill adapted to risk (key) and load (all), then charge if affordable.
    load = io[X_LOAD]
    risk = smoothed - prm[P_RISK_FLOOR]
    risk_factor = 1.0
    if risk > 0.0:
        risk_factor = 1.0 - prm[P_COUPLING] * risk / (1.0 - prm[P_RISK_FLOOR])
    if risk_factor < prm[P_MIN_FACTOR]:
        risk_factor = prm[P_MIN_FACTOR]
    nat_multiplier = 1.0
    if io[X_NAT_ELIGIBLE] != 0.0 and fan_in > 1.0:
        nat_multiplier = 1.0 + prm[P_NAT_PER_ACCOUNT] * (fan_in - 1.0)
        if nat_multiplier > prm[P_NAT_MAX]:
            nat_multiplier = prm[P_NAT_MAX]
    denied = 0
    retry = 0.0
    tight_kind = -1
    tight_ratio = 2.0
    tight_remaining = 0.0
    tight_reset = 0.0
    key_rate = 0.0
    key_burst = 0.0
    for kind in range(N_KINDS):
        r = iv[I_ROW + kind]
        rate = prm[P_BUCKET + 2 * kind]
        burst = prm[P_BUCKET + 2 * kind + 1]
        if r < 0 or burst <= 0.0:
            continue
        factor = load
        if kind == KIND_KEY:
            factor *= risk_factor
        elif kind in (KIND_IP, KIND_PREFIX):
            rate *= nat_multiplier
            burst *= nat_multiplier
        rate *= factor
        if rate < 1e-9:
            rate = 1e-9
        row = tables[kind][r]
        refill(row, ts, rate, burst)
        need = cost if cost < burst else burst
        tokens = row[F_TOKENS]
        if tokens < need:
            denied |= 1 << kind
            wait = (need - tokens) / rate
            if wait > retry:
                retry = wait
        if kind == KIND_KEY:
            key_rate = rate
            key_burst = burst
        ratio = tokens / burst
        if ratio < tight_ratio:
            tight_ratio = ratio
            tight_kind = kind
            tight_remaining = tokens
            tight_reset = (burst - tokens) / rate
    serves = prm[P_LADDER_SERVES + level] != 0.0
    if denied == 0 and serves:
        for kind in range(N_KINDS):
            r = iv[I_ROW + kind]
            if r < 0 or prm[P_BUCKET + 2 * kind + 1] <= 0.0:
                continue
            tables[kind][r][F_TOKENS] -= cost
        tight_remaining -= cost
        if tight_kind >= 0:
            tight_reset += cost / (prm[P_BUCKET + 2 * tight_kind] * load + 1e-12)
    if denied != 0:
        reasons |= 1 << R_RATE
        wait_until = ts + retry
        if wait_until > key_row[F_WAIT_UNTIL]:
            key_row[F_WAIT_UNTIL] = wait_until

    io[O_ACTION] = level
    io[O_SCORE] = score
    io[O_REASONS] = float(reasons)
    io[O_RETRY_AFTER] = retry
    io[O_DENIED_KINDS] = float(denied)
    if key_burst > 0.0:
        remaining = key_row[F_TOKENS]
        io[O_REMAINING] = remaining if remaining > 0.0 else 0.0
        io[O_RESET] = (key_burst - remaining) / key_rate
    io[O_TIGHTEST_KIND] = tight_kind
    io[O_TIGHT_REMAINING] = tight_remaining if tight_remaining > 0.0 else 0.0
    io[O_TIGHT_RESET] = tight_reset if tight_reset > 0.0 else 0.0


@njit(cache=True)
def record_outcome(key_t: np.ndarray, row: int, is_error: float, alpha: float) -> None:
    key_t[row, F_ERR] += alpha * (is_error - key_t[row, F_ERR])


@njit(cache=True)
def charge(table: np.ndarray, row: int, delta: float, burst: float) -> None:
    """Reconcile a bucket with the real cost: delta > 0 charges more, < 0 refunds."""
    tokens = table[row, F_TOKENS] - delta
    table[row, F_TOKENS] = burst if tokens > burst else tokens


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel, so no request ever compiles."""
    from abuseguard.engine.layout import (
        ACC_WIDTH,
        IO_SIZE,
        KEY_WIDTH,
        N_INT_INPUTS,
        N_PARAMS,
        NET_WIDTH,
    )

    key_t = np.zeros((2, KEY_WIDTH))
    acc_t = np.zeros((2, ACC_WIDTH))
    net = [np.zeros((2, NET_WIDTH)) for _ in range(4)]
    cms = np.zeros((CMS_DEPTH + 1, CMS_WIDTH))
    iv = np.zeros(N_INT_INPUTS, dtype=np.int64)
    io = np.zeros(IO_SIZE)
    prm = np.ones(N_PARAMS)
    prm[P_LADDER_N] = 0.0
    io[X_COST] = 1.0
    io[X_LOAD] = 1.0
    io[X_HAS_CONTENT] = 1.0
    iv[I_HAS_ACCOUNT] = 1
    decide(key_t, net[0], net[1], net[2], net[3], acc_t, cms, iv, io, prm)
    decide_with(
        key_t,
        net[0],
        net[1],
        net[2],
        net[3],
        acc_t,
        cms,
        iv,
        io,
        prm,
        0,
        1,
        1,
        1,
        1,
        0,
        0,
        0,
        0,
        1,
        1.0,
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        1.0,
        0.0,
    )
    record_outcome(key_t, 0, 1.0, 0.1)
    charge(key_t, 0, 1.0, 1.0)


@njit(cache=True)
def decide_with(
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
) -> None:
    """`decide` with its inputs as scalars: filling the vectors from Python costs more
    than passing arguments to one call. ``r_acc`` is the account-table row, -1 for an
    anonymous client."""
    iv[I_ROW + KIND_KEY] = r_key
    iv[I_ROW + KIND_IP] = r_ip
    iv[I_ROW + KIND_PREFIX] = r_pfx
    iv[I_ROW + KIND_ASN] = r_asn
    iv[I_ROW + KIND_PERSONA] = r_per
    iv[I_COUNTRY] = country
    iv[I_SIMHASH] = simhash
    iv[I_TEMPLATE_ID] = template_id
    iv[I_UA_CLASS] = ua_class
    iv[I_HAS_ACCOUNT] = 1 if r_acc >= 0 else 0
    iv[I_ACC_ROW] = r_acc
    io[X_TS] = ts
    io[X_COST] = cost
    io[X_LOAD] = load
    io[X_ANON] = anon
    io[X_GEO] = geo
    io[X_PERSONA] = persona
    io[X_ELICIT] = elicit
    io[X_HAS_CONTENT] = has_content
    io[X_NET_DISTRUST] = distrust
    io[X_NAT_ELIGIBLE] = nat
    decide(key_t, ip_t, pfx_t, asn_t, per_t, acc_t, cms, iv, io, prm)
