"""Shapes of the engine's state: table kinds, row fields, inputs, parameters, outputs.

Every table is a C-contiguous float64 array with one row per identity. The first
``ROW_FIELDS`` words of a row mean the same in the key and network tables (recency, the
token bucket, the count); the key table adds the behaviour the score reads, the network
tables a fan-in sketch, the account table what only accounts need (prompt rings, fan-out
sketches). A row holds each of its sketches as one *cell* word: while the sketch's registers
hold at most one non-zero register index (a client with one address, one prefix, one
country; a home IP one account uses), the cell is that index and its rank in each half;
once a second index is set, the cell names a block of a preallocated pool (one pool for
the fan-in sketches, one for the fan-out ones) holding the 6-bit registers packed four to
three bytes (viewed as uint8 in the kernel). Indices are plain ints so that Numba treats
them as compile-time constants.

No offset is worked out by hand: each row, vector and parameter list is declared as a
list of fields, and `allocate` hands out consecutive offsets (a field of several words
names its size) and records them, so that tests/test_layout.py checks that no two fields
overlap, that each constant is the offset of the field of its name, and that every
region fits its table or vector. Numba freezes these ints into the compiled kernels, and
its on-disk cache is keyed by kernels.py alone: a change here must come with a touch of
kernels.py (any edit) or a cleared ``__pycache__``.
"""

from __future__ import annotations

from abuseguard.engine.signals import RAMPS, SIGNALS, signal_index

# What `allocate` handed out: region -> [(constant name, offset, size)], in order.
DECLARED: dict[str, list[tuple[str, int, int]]] = {}


def allocate(
    region: str, prefix: str, *spec: str | tuple[str, int], start: int = 0
) -> tuple[int, ...]:
    """Consecutive offsets for the fields of ``region`` from ``start``, then the end.

    A field is a name (one word) or ``(name, size)``; its constant is
    ``<prefix>_<NAME>``. ``F_A, F_B, END = allocate("row", "F", "a", ("b", 4))`` gives
    ``F_A = 0, F_B = 1, END = 5``."""
    fields = DECLARED.setdefault(region, [])
    offsets = []
    offset = start
    for item in spec:
        name, size = (item, 1) if isinstance(item, str) else item
        fields.append((f"{prefix}_{name.upper()}", offset, size))
        offsets.append(offset)
        offset += size
    return (*offsets, offset)


# Identity kinds, one table each.
KIND_KEY = 0  # the main identity: account / API key hash, or the client IP
KIND_IP = 1
KIND_PREFIX = 2
KIND_ASN = 3
KIND_PERSONA = 4
N_KINDS = 5
KIND_NAMES = ("key", "ip", "prefix", "asn", "persona")
KIND_ACCOUNT = N_KINDS  # names the account table where a table is chosen by kind

# Fields every row has (key and network tables). F_LAST_SEEN: ts of the last request;
# 0.0 marks an empty row.
F_LAST_SEEN, F_TOKENS, F_BUCKET_TS, F_COUNT, F_FIRST_SEEN, ROW_FIELDS = allocate(
    "row", "F", "last_seen", "tokens", "bucket_ts", "count", "first_seen"
)

# Key table: the behaviour of one identity, which the score reads. An anonymous client
# (an IP flood) costs this one narrow row and nothing else.
(
    F_RATE_SHORT,  # EWMA of request rate (1/s), short horizon
    F_RATE_LONG,  # EWMA of request rate (1/s), long horizon: the identity's own baseline
    F_LIA_MEAN,  # EWMA of log inter-arrival time
    F_LIA_VAR,  # EWMA of its squared deviation
    F_ERR,  # EWMA share of 4xx/5xx outcomes
    F_SCORE,  # smoothed risk score, decays toward 0 while idle
    F_LEVEL,  # enforcement ladder level (index into the ladder), with hysteresis
    F_BANNED_UNTIL,
    F_WAIT_UNTIL,  # the client was told to come back at this time (Retry-After)
    F_IMPATIENCE,  # EWMA share of requests sent before WAIT_UNTIL
    F_PRIOR,  # risk prior written by the background lane (0..1)
    F_IA_COUNT,  # inter-arrival samples behind F_LIA_MEAN / F_LIA_VAR
    F_STRONG_UNTIL,  # a strong signal was seen: denials and risk coupling allowed until then
    F_COUPLING_SCORE,  # the smoothed score while F_STRONG_UNTIL holds, else 0 (bucket refill)
    F_LEVEL_CAP,  # highest ladder level + 1 for a trusted account (Policy.accounts); 0: none
    F_EVIDENCE,  # accumulated evidence (CUSUM of per-request log-likelihood ratios), >= 0
    F_EVIDENCE_TS,  # when F_EVIDENCE was last updated (it decays from there)
    F_EVIDENCE_HELD,  # last time the evidence stood at or above the first step's threshold
    F_STICKY,  # ladder level held by the evidence steps (0 = none): kept until forgiven
    F_SPEND,  # decayed sum of the real cost (tokens) reported after responses
    F_SPEND_TS,  # when F_SPEND was last decayed
    F_SPEND_SAMPLED,  # when this account's spend last fed the cohort's quantile
    F_PLAN,  # 1 + the client's plan slot in P_PLAN_BUCKET, P_PLAN_ALLOWANCE; 0: the policy's
    KEY_FIELDS,
) = allocate(
    "key",
    "F",
    "rate_short",
    "rate_long",
    "lia_mean",
    "lia_var",
    "err",
    "score",
    "level",
    "banned_until",
    "wait_until",
    "impatience",
    "prior",
    "ia_count",
    "strong_until",
    "coupling_score",
    "level_cap",
    "evidence",
    "evidence_ts",
    "evidence_held",
    "sticky",
    "spend",
    "spend_ts",
    "spend_sampled",
    "plan",
    start=ROW_FIELDS,
)

# Network tables (IP, prefix, ASN, persona): a count of distinct accounts (fan-in).
# F_SKETCH_EST caches the distinct-account estimate of the row's sketch, F_SKETCH_CELL is
# the sketch itself (a cell: see below).
F_SKETCH_EPOCH, F_SKETCH_EST, F_SKETCH_CELL, NET_FIELDS = allocate(
    "net", "F", "sketch_epoch", "sketch_est", "sketch_cell", start=ROW_FIELDS
)

# Sketches. The key table counts distinct IPs, prefixes, ASNs and countries (fan-out);
# every other table counts distinct accounts (fan-in). Each sketch is two rotating halves
# of m registers; the estimate is over their union (a sliding horizon). A register holds
# a rank of at most 65 - log2(m) <= 60 (a 64-bit hash), so 6 bits hold every value it can
# take: four registers to three bytes, m a multiple of 16 so a sketch ends on a word.
#
# A sketch is kept in one float64 *cell* word of its row. A cell >= 0 is the whole register
# state of a sketch with at most one non-zero register index: CELL_INDEX * index +
# CELL_RANK0 * (that register in half 0) + CELL_RANK1 * (in half 1); 0 when empty. Its
# estimate is the register sketch's: 0 when empty, else m * log(m / (m - 1)) (linear
# counting of one non-zero register). A cell < 0 is -(b + 1): the registers are in block b
# of the pool (rows 1.. of the pool region; row 0 is the pool's header), taken when a
# second register index is set (the cell's registers are written there first, so the
# block holds what a register sketch fed the same items would), returned when a rotation
# leaves at most one index set (the cell takes it back) or the row is evicted. A block's
# first word names its owner (POOL_OWNER below) or, while free, the next free block.
SK_IPS, SK_PREFIXES, SK_ASNS, SK_COUNTRIES, KEY_SKETCHES = allocate(
    "fan_out_sketches", "SK", "ips", "prefixes", "asns", "countries"
)
KEY_SKETCH_M = 32  # standard error 1.04/sqrt(32) = 18%
NET_SKETCHES = 1
NET_SKETCH_M = 64  # standard error 1.04/sqrt(64) = 13%
RING_SIZE = 8

# The account table holds what only accounts need: the repeat rate of prompt templates,
# a ring of recent SimHashes and their template ids, and the fan-out sketches with their
# cached estimates.
(
    A_EPOCH,  # sketch epoch of the fan-out sketches
    A_TEMPLATE,  # EWMA share of prompts that repeat a recent template
    A_RING_POS,
    A_EST,  # A_EST + SK_*: cached fan-out estimates (ips, prefixes, asns, countries)
    A_CELL,  # A_CELL + SK_*: the fan-out sketches (cells)
    A_RING,  # recent SimHashes (int64 bit patterns)
    A_TRING,  # the template ids of the same requests
    ACC_FIELDS,
) = allocate(
    "acc",
    "A",
    "epoch",
    "template",
    "ring_pos",
    ("est", KEY_SKETCHES),
    ("cell", KEY_SKETCHES),
    ("ring", RING_SIZE),
    ("tring", RING_SIZE),
)


REGISTER_BITS = 6


def sketch_words(n_sketches: int, m: int) -> int:
    return n_sketches * 2 * m * REGISTER_BITS // 64


KEY_WIDTH = KEY_FIELDS
ACC_WIDTH = ACC_FIELDS
NET_WIDTH = NET_FIELDS

CELL_INDEX = 1
CELL_RANK0 = 64
CELL_RANK1 = 4096

# A pool block: its owner, then one sketch's two halves of registers. The owner of a
# block in use is (table * 2**34 + row * 4 + sketch): the table's number among those the
# pool serves (the network kinds for the fan-in pool, 0 for the account table), the row,
# the sketch of that row (SK_* in the account table, 0 in a network table); a free block's
# is -(next free block + 1).
(POOL_OWNER, POOL_REGS, NET_BLOCK_WIDTH) = allocate(
    "net_block", "POOL", "owner", ("regs", sketch_words(1, NET_SKETCH_M))
)
ACC_BLOCK_WIDTH = 1 + sketch_words(1, KEY_SKETCH_M)
# The pool's header (row 0): the first free block (0: none), the next block never handed
# out (0: block 1), the clock hand of the search for a block to reuse when neither is left,
# and how many blocks were taken from a sketch still in use (then reset to empty).
PH_FREE, PH_NEXT, PH_HAND, PH_STOLEN, N_POOL_HEADER = allocate(
    "pool_header", "PH", "free", "next", "hand", "stolen"
)
# When the pool has no free block, this many blocks from the clock hand on are looked at:
# the first whose owner's sketch is two epochs old (its next rotation clears it: nothing is
# lost) or no longer points at it (an evicted row's) is reused, else the one whose owner
# rotated least recently (that sketch restarts empty: it undercounts until it fills again).
SCAN_BLOCKS = 64


def pool_blocks(rows: int, share: int) -> int:
    """Blocks of a pool (header row included) for tables of ``rows`` rows in all: one a
    ``share`` rows, at least 16. The pool's pages are touched only as blocks are handed
    out, so an unused part costs address space, not memory."""
    return 1 + max(16, rows // share)


NET_POOL_SHARE = 4  # one fan-in block for every 4 network rows
ACC_POOL_SHARE = 1  # one fan-out block for every account row (a quarter of its 4 sketches)

# Integer inputs (int64 vector): rows in each table (-1 when absent), then values to count.
(
    I_ROW,  # I_ROW + kind
    I_COUNTRY,  # two ASCII letters packed, 0 when unknown
    I_SIMHASH,
    I_TEMPLATE_ID,
    I_UA_CLASS,
    I_HAS_ACCOUNT,
    I_ACC_ROW,  # row in the account table, -1 for anonymous clients
    N_INT_INPUTS,
) = allocate(
    "int_inputs",
    "I",
    ("row", N_KINDS),
    "country",
    "simhash",
    "template_id",
    "ua_class",
    "has_account",
    "acc_row",
)

# Signals, in contribution order (declared in `signals`); each has a weight in the
# parameters, a slot in the io vector and a reason bit.
N_SIGNALS = len(SIGNALS)
SIGNAL_NAMES = tuple(s.name for s in SIGNALS)
S_VOLUME = signal_index("volume")
S_BURST = signal_index("burst")
S_CADENCE = signal_index("cadence")
S_CLIENT = signal_index("client")
S_PERSONA = signal_index("persona")
S_ANON = signal_index("anonymizer")
S_GEO = signal_index("geo")
S_FAN_IN = signal_index("fan_in")
S_FAN_OUT = signal_index("fan_out")
S_ERRORS = signal_index("errors")
S_IMPATIENCE = signal_index("impatience")
S_TEMPLATE = signal_index("template")
S_SHARED_TEMPLATE = signal_index("shared_template")
S_ELICIT = signal_index("elicitation")
S_PRIOR = signal_index("prior")
S_SPEND = signal_index("spend")
# Reason bits: the signals first (bit = signal index, room for MAX_SIGNALS), then
# limit/other reasons.
MAX_SIGNALS = 20
R_RATE, R_BANNED, R_EVIDENCE, N_REASON_BITS = allocate(
    "reason_bits", "R", "rate", "banned", "evidence", start=MAX_SIGNALS
)
# The reason names of the bits the guard names from the kernel's reasons bitmask: the
# signals, then the evidence steps' sticky state (rate and banned are named by the guard).
REASON_BIT_NAMES: tuple[tuple[int, str], ...] = (
    *enumerate(SIGNAL_NAMES),
    (R_EVIDENCE, "evidence"),
)

# Float inputs/outputs (one float64 vector, inputs first).
(
    X_TS,
    X_COST,
    X_LOAD,  # refill factor from server load, 0..1
    X_ANON,  # anonymizer signal 0..1 (graded, policy-weighted)
    X_GEO,  # country signal 0..1
    X_PERSONA,  # persona mismatch 0..1
    X_ELICIT,  # reasoning-elicitation strength 0..1
    X_HAS_CONTENT,
    X_NET_DISTRUST,  # 1 on hosting/anonymized networks, lower on eyeball networks
    X_NAT_ELIGIBLE,  # 1 when an IP/prefix may grow its ceiling with its account count
    N_FLOAT_INPUTS,
) = allocate(
    "io",
    "X",
    "ts",
    "cost",
    "load",
    "anon",
    "geo",
    "persona",
    "elicit",
    "has_content",
    "net_distrust",
    "nat_eligible",
)
(
    O_ACTION,  # ladder level chosen (index into the ladder); -1 for a limit denial
    O_SCORE,
    O_REASONS,  # bitmask of reason bits (signals, R_*)
    O_RETRY_AFTER,
    O_REMAINING,  # tokens left in the key bucket
    O_RESET,  # seconds until the key bucket is full again
    O_DENIED_KINDS,  # bitmask of kinds whose bucket could not afford the request
    O_TIGHTEST_KIND,  # kind of the bucket with the least room (for headers)
    O_TIGHT_REMAINING,
    O_TIGHT_RESET,
    O_FANIN,  # largest distinct-account estimate across network kinds
    O_FANOUT_IPS,
    O_FANOUT_ASNS,
    O_FANOUT_COUNTRIES,
    O_BANNED,
    O_CONTRIB,  # one slot per signal: its value while scoring, then its contribution
    IO_SIZE,
) = allocate(
    "io",
    "O",
    "action",
    "score",
    "reasons",
    "retry_after",
    "remaining",
    "reset",
    "denied_kinds",
    "tightest_kind",
    "tight_remaining",
    "tight_reset",
    "fanin",
    "fanout_ips",
    "fanout_asns",
    "fanout_countries",
    "banned",
    ("contrib", N_SIGNALS),
    start=N_FLOAT_INPUTS,
)

N_CLIENT_CLASSES = 8
MAX_LADDER = 8
MAX_PLAN_BUCKETS = 16  # plans (`Policy.plans`) with their own bucket or quotas (a slot each)
# A plan slot's allowances in P_PLAN_ALLOWANCE: its key bucket's rate and burst (the app-wide
# bucket's when the plan has none) and its spend allowance (cost units per day, 0 = none).
PA_RATE, PA_BURST, PA_SPEND, PLAN_ALLOWANCE_WIDTH = allocate(
    "plan_allowance", "PA", "rate", "burst", "spend"
)

# Parameters (float64 vector).
(
    P_BUCKET,  # P_BUCKET + 2*kind: rate (tokens/s), P_BUCKET + 2*kind + 1: burst (0 = none)
    P_COUPLING,  # how far risk scales refill down: factor = 1 - coupling * score
    P_MIN_FACTOR,  # floor of the refill factor
    P_TAU_SHORT,
    P_TAU_LONG,
    P_ALPHA_IA,  # EWMA weight for inter-arrival stats
    P_MIN_EVENTS,  # events before cadence/volume/errors signals count
    P_SCORE_ALPHA,  # weight of the newest score in the smoothed score
    P_SCORE_HALF_LIFE,  # idle decay of the smoothed score (forgiveness), seconds
    P_HYSTERESIS,
    P_BIAS,
    P_WEIGHTS,  # P_WEIGHTS + signal
    P_CLIENT_RISK,  # P_CLIENT_RISK + ua class
    P_LADDER_N,
    P_LADDER,  # thresholds of ladder levels 1..N (level 0 = allow)
    P_BAN_LEVEL,  # ladder level at which a ban starts (0 = never)
    P_BAN_SECONDS,
    P_HORIZON,  # sketch horizon in seconds (two halves)
    P_NAT_PER_ACCOUNT,  # extra ceiling share per distinct account on eligible networks
    P_NAT_MAX,  # cap of the NAT multiplier
    P_REASON_MIN,  # contribution a signal needs to be named as a reason
    P_CMS_HALF_LIFE,
    P_HAMMING,  # SimHash distance under which two prompts share a template
    P_SCORING,  # 1 when risk scoring is on
    P_ERR_ALPHA,
    P_LADDER_SERVES,  # per ladder level 0..MAX_LADDER: 1 when that level's action serves
    P_RISK_FLOOR,  # smoothed scores below this leave the refill alone
    P_BASELINE_AGE,  # seconds of history before the burst signal trusts the baseline
    P_FANIN_SCALE,  # P_FANIN_SCALE + kind: a network kind's fan-in is divided by this
    P_ALLOWANCE_RATE,  # the key bucket's configured rate (1 without a bucket), for volume
    P_ALLOWANCE_BURST,  # ... and its burst (0 without a bucket), for burst
    P_WEAK_MASK,  # bitmask of the weak signals (alone they never refuse); 0 = none is weak
    P_SERVING_LEVELS,  # the highest ladder level whose action still serves the request
    P_SHADOW_KINDS,  # bitmask of kinds whose bucket refusals are shadowed (served anyway)
    P_EV_STEPS_N,  # evidence steps (0 = no accumulated evidence)
    P_EV_THRESHOLD,  # P_EV_THRESHOLD + i: the evidence at which step i holds the account
    P_EV_LEVEL,  # P_EV_LEVEL + i: the ladder level step i holds
    P_EV_DRIFT,  # evidence a request must carry to add any (the CUSUM's drift)
    P_EV_WEAK_CAP,  # the most the weak signals of one request add together
    P_EV_SIGNAL_CAP,  # the most one signal of one request adds
    P_EV_MAX_STEP,  # the most one request adds in all
    P_EV_HALF_LIFE,  # seconds for the evidence to halve
    P_EV_QUIET,  # seconds below the first threshold before the sticky state lets go
    P_SPEND_TAU,  # time constant (s) of the decayed spend sum
    P_SPEND_MIN_AGE,  # the spend rate is read over at least this many seconds
    P_SPEND_ALLOWANCE,  # the account's allowance in cost units per day (0 = not configured)
    P_SPEND_QUANTILE,  # the cohort quantile the spend is compared to (e.g. 0.9)
    P_SPEND_STEP,  # step of the cohort quantile's estimator, in log units
    P_SPEND_SAMPLE,  # an account feeds the cohort's quantile at most once in this many s
    P_PLAN_BUCKET,  # P_PLAN_BUCKET + 2*(plan - 1): rate, + 1: burst of a plan's key bucket
    # P_PLAN_ALLOWANCE + PLAN_ALLOWANCE_WIDTH*(plan - 1) + PA_*: what the risk signals measure
    # a plan's client against, in place of P_ALLOWANCE_RATE, _BURST and P_SPEND_ALLOWANCE
    P_PLAN_ALLOWANCE,
    P_RAMPS,  # the signals' ramps follow, (low, high) each, in the order `signals.RAMPS`
) = allocate(
    "params",
    "P",
    ("bucket", 2 * N_KINDS),
    "coupling",
    "min_factor",
    "tau_short",
    "tau_long",
    "alpha_ia",
    "min_events",
    "score_alpha",
    "score_half_life",
    "hysteresis",
    "bias",
    ("weights", N_SIGNALS),
    ("client_risk", N_CLIENT_CLASSES),
    "ladder_n",
    ("ladder", MAX_LADDER),
    "ban_level",
    "ban_seconds",
    "horizon",
    "nat_per_account",
    "nat_max",
    "reason_min",
    "cms_half_life",
    "hamming",
    "scoring",
    "err_alpha",
    ("ladder_serves", MAX_LADDER + 1),
    "risk_floor",
    "baseline_age",
    ("fanin_scale", N_KINDS),
    "allowance_rate",
    "allowance_burst",
    "weak_mask",
    "serving_levels",
    "shadow_kinds",
    "ev_steps_n",
    ("ev_threshold", MAX_LADDER),
    ("ev_level", MAX_LADDER),
    "ev_drift",
    "ev_weak_cap",
    "ev_signal_cap",
    "ev_max_step",
    "ev_half_life",
    "ev_quiet",
    "spend_tau",
    "spend_min_age",
    "spend_allowance",
    "spend_quantile",
    "spend_step",
    "spend_sample",
    ("plan_bucket", 2 * MAX_PLAN_BUCKETS),
    ("plan_allowance", PLAN_ALLOWANCE_WIDTH * MAX_PLAN_BUCKETS),
)
# The ramp parameters: P_<RAMP>_LO, P_<RAMP>_HI per ramp declared in `signals`.
*_ramp_offsets, N_PARAMS = allocate(
    "params", "P", *(f"{r.param}_{end}" for r in RAMPS for end in ("lo", "hi")), start=P_RAMPS
)
RAMP_PARAMS: dict[str, tuple[int, int]] = {
    r.param: (_ramp_offsets[2 * i], _ramp_offsets[2 * i + 1]) for i, r in enumerate(RAMPS)
}
P_VOLUME_LO, P_VOLUME_HI = RAMP_PARAMS["volume"]
P_BURST_LO, P_BURST_HI = RAMP_PARAMS["burst"]
P_CADENCE_LO, P_CADENCE_HI = RAMP_PARAMS["cadence"]  # spread at which the signal is full / 0
P_FANIN_LO, P_FANIN_HI = RAMP_PARAMS["fanin"]
P_FANOUT_ASN_LO, P_FANOUT_ASN_HI = RAMP_PARAMS["fanout_asn"]
P_FANOUT_CC_LO, P_FANOUT_CC_HI = RAMP_PARAMS["fanout_cc"]
P_FANOUT_PFX_LO, P_FANOUT_PFX_HI = RAMP_PARAMS["fanout_pfx"]
P_ERR_LO, P_ERR_HI = RAMP_PARAMS["err"]
P_IMPATIENCE_LO, P_IMPATIENCE_HI = RAMP_PARAMS["impatience"]
P_TEMPLATE_LO, P_TEMPLATE_HI = RAMP_PARAMS["template"]
P_SHARED_LO, P_SHARED_HI = RAMP_PARAMS["shared"]
P_SPEND_SHARE_LO, P_SPEND_SHARE_HI = RAMP_PARAMS["spend_share"]
P_SPEND_COHORT_LO, P_SPEND_COHORT_HI = RAMP_PARAMS["spend_cohort"]

# The engine keeps every table and vector in one float64 state vector, so that the kernel
# takes one array argument (Numba converts each array argument at ~45 ns a call). The vector
# starts with a header: for each region, its offset and its number of rows.
(
    REGION_TABLES,  # REGION_TABLES + kind: the five identity tables
    REGION_ACC,
    REGION_CMS,
    REGION_IV,  # the int64 inputs (N_INT_INPUTS words, viewed as int64)
    REGION_IO,
    REGION_PRM,
    REGION_NET_POOL,  # the fan-in sketches' register blocks (NET_BLOCK_WIDTH words each)
    REGION_ACC_POOL,  # the fan-out sketches' register blocks (ACC_BLOCK_WIDTH words each)
    N_REGIONS,
) = allocate(
    "regions",
    "REGION",
    ("tables", N_KINDS),
    "acc",
    "cms",
    "iv",
    "io",
    "prm",
    "net_pool",
    "acc_pool",
)
HEADER_SIZE = 2 * N_REGIONS

CMS_DEPTH = 4
CMS_WIDTH = 4096
# Below the Count-Min rows (and its bookkeeping row): a bit filter of the (account,
# template) pairs already counted, two rotating halves of CMS_PAIR_ROWS // 2 rows each, so
# that an account adds itself to a template's count once per sketch horizon.
CMS_PAIR_ROWS = 16
CMS_ROWS = CMS_DEPTH + 1 + CMS_PAIR_ROWS
# The bookkeeping row (row CMS_DEPTH) holds, after the Count-Min's decay time (word 0) and
# the pair filter's epoch (word 1), the state that is shared by every account: the
# cohort's spend quantile (log of cost units per day) and how many spends it has seen.
CB_SPEND_Q, CB_SPEND_N, CMS_BOOK_FIELDS = allocate("cms_book", "CB", "spend_q", "spend_n", start=2)

# The per-request inputs of `kernels.decide_with`, in the order of its arguments after the
# state vector: (argument name, the vector it is written to, offset there). "iv" is the
# int64 input vector, "io" the float vector; ``scored`` is a flag the kernel does not keep.
# `kernels.warm_up` and `Engine.last_kernel_inputs` are derived from this list, and
# tests/test_layout.py checks it against the arguments of `decide_with`.
KERNEL_INPUTS: tuple[tuple[str, str, int], ...] = (
    ("r_key", "iv", I_ROW + KIND_KEY),
    ("r_ip", "iv", I_ROW + KIND_IP),
    ("r_pfx", "iv", I_ROW + KIND_PREFIX),
    ("r_asn", "iv", I_ROW + KIND_ASN),
    ("r_per", "iv", I_ROW + KIND_PERSONA),
    ("country", "iv", I_COUNTRY),
    ("simhash", "iv", I_SIMHASH),
    ("template_id", "iv", I_TEMPLATE_ID),
    ("ua_class", "iv", I_UA_CLASS),
    ("r_acc", "iv", I_ACC_ROW),
    ("ts", "io", X_TS),
    ("cost", "io", X_COST),
    ("load", "io", X_LOAD),
    ("anon", "io", X_ANON),
    ("geo", "io", X_GEO),
    ("persona", "io", X_PERSONA),
    ("elicit", "io", X_ELICIT),
    ("has_content", "io", X_HAS_CONTENT),
    ("distrust", "io", X_NET_DISTRUST),
    ("nat", "io", X_NAT_ELIGIBLE),
    ("scored", "flag", -1),
)

# The bookkeeping row's last 2 * COMMON_SLOTS words: the templates the background lane found
# common among established accounts (`abuseguard.operations.popularity`), a table indexed
# by template id modulo COMMON_SLOTS, each slot the template id (int64 bits) and the share
# of the ``shared_template`` signal it keeps (1 - the discount).
COMMON_SLOTS = 256
CB_COMMON, CMS_COMMON_END = allocate(
    "cms_common", "CB", ("common", 2 * COMMON_SLOTS), start=CMS_WIDTH - 2 * COMMON_SLOTS
)
