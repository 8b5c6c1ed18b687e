"""Shapes of the engine's state: table kinds, row fields, inputs, parameters, outputs.

Every table is a C-contiguous float64 array with one row per identity. The first
``ROW_FIELDS`` words of a row mean the same in the key and network tables (recency, the
token bucket, the count); the key table adds the behaviour the score reads, the network
tables a fan-in sketch, the account table what only accounts need (prompt rings, fan-out
sketches). Sketches are stored as bytes at the end of a row (viewed as uint8 in the
kernel). Indices are plain ints so that Numba treats them as compile-time constants.
"""

from __future__ import annotations

# Identity kinds, one table each.
KIND_KEY = 0  # the main identity: account / API key hash, or the client IP
KIND_IP = 1
KIND_PREFIX = 2
KIND_ASN = 3
KIND_PERSONA = 4
N_KINDS = 5
KIND_NAMES = ("key", "ip", "prefix", "asn", "persona")
KIND_ACCOUNT = N_KINDS  # names the account table where a table is chosen by kind

# Fields every row has (key and network tables).
F_LAST_SEEN = 0  # ts of the last request; 0.0 marks an empty row
F_TOKENS = 1
F_BUCKET_TS = 2
F_COUNT = 3
F_FIRST_SEEN = 4
ROW_FIELDS = 5

# Key table: the behaviour of one identity, which the score reads. An anonymous client
# (an IP flood) costs this one narrow row and nothing else.
F_RATE_SHORT = 5  # EWMA of request rate (1/s), short horizon
F_RATE_LONG = 6  # EWMA of request rate (1/s), long horizon: the identity's own baseline
F_LIA_MEAN = 7  # EWMA of log inter-arrival time
F_LIA_VAR = 8  # EWMA of its squared deviation
F_ERR = 9  # EWMA share of 4xx/5xx outcomes
F_SCORE = 10  # smoothed risk score, decays toward 0 while idle
F_LEVEL = 11  # enforcement ladder level (index into the ladder), with hysteresis
F_BANNED_UNTIL = 12
F_WAIT_UNTIL = 13  # the client was told to come back at this time (Retry-After)
F_IMPATIENCE = 14  # EWMA share of requests sent before WAIT_UNTIL
F_PRIOR = 15  # risk prior written by the background lane (0..1)
F_IA_COUNT = 16  # inter-arrival samples behind F_LIA_MEAN / F_LIA_VAR
F_STRONG_UNTIL = 17  # a strong signal was seen: denials and risk coupling allowed until then
F_COUPLING_SCORE = 18  # the smoothed score while F_STRONG_UNTIL holds, else 0 (bucket refill)
KEY_FIELDS = 19

# Network tables (IP, prefix, ASN, persona): a count of distinct accounts (fan-in).
F_SKETCH_EPOCH = 5
F_SKETCH_EST = 6  # cached distinct-account estimate of the row's sketch
NET_FIELDS = 7

# The account table holds what only accounts need: the repeat rate of prompt templates,
# a ring of recent SimHashes and their template ids, and the fan-out sketches with their
# cached estimates.
A_EPOCH = 0  # sketch epoch of the fan-out sketches
A_TEMPLATE = 1  # EWMA share of prompts that repeat a recent template
A_RING_POS = 2
A_EST = 3  # A_EST + SK_*: cached fan-out estimates (ips, prefixes, asns, countries)
A_RING = 7  # recent SimHashes (int64 bit patterns)
RING_SIZE = 8
A_TRING = A_RING + RING_SIZE  # the template ids of the same requests
ACC_FIELDS = A_TRING + RING_SIZE

# Sketches. The key table counts distinct IPs, prefixes, ASNs and countries (fan-out);
# every other table counts distinct accounts (fan-in). Each sketch is two rotating halves
# of m one-byte registers; the estimate is over their union (a sliding horizon).
SK_IPS = 0
SK_PREFIXES = 1
SK_ASNS = 2
SK_COUNTRIES = 3
KEY_SKETCHES = 4
KEY_SKETCH_M = 32  # standard error 1.04/sqrt(32) = 18%
NET_SKETCHES = 1
NET_SKETCH_M = 64  # standard error 1.04/sqrt(64) = 13%


def sketch_words(n_sketches: int, m: int) -> int:
    return n_sketches * 2 * m // 8


KEY_WIDTH = KEY_FIELDS
ACC_WIDTH = ACC_FIELDS + sketch_words(KEY_SKETCHES, KEY_SKETCH_M)
NET_WIDTH = NET_FIELDS + sketch_words(NET_SKETCHES, NET_SKETCH_M)

# Integer inputs (int64 vector): rows in each table (-1 when absent), then values to count.
I_ROW = 0  # I_ROW + kind
I_COUNTRY = 5  # two ASCII letters packed, 0 when unknown
I_SIMHASH = 6
I_TEMPLATE_ID = 7
I_UA_CLASS = 8
I_HAS_ACCOUNT = 9
I_ACC_ROW = 10  # row in the account table, -1 for anonymous clients
N_INT_INPUTS = 11

# Float inputs/outputs (one float64 vector, inputs first).
X_TS = 0
X_COST = 1
X_LOAD = 2  # refill factor from server load, 0..1
X_ANON = 3  # anonymizer signal 0..1 (graded, policy-weighted)
X_GEO = 4  # country signal 0..1
X_PERSONA = 5  # persona mismatch 0..1
X_ELICIT = 6  # reasoning-elicitation strength 0..1
X_HAS_CONTENT = 7
X_NET_DISTRUST = 8  # 1 on hosting/anonymized networks, lower on eyeball networks
X_NAT_ELIGIBLE = 9  # 1 when an IP/prefix may grow its ceiling with its account count
N_FLOAT_INPUTS = 10

O_ACTION = 10  # ladder level chosen (index into the ladder); -1 for a limit denial
O_SCORE = 11
O_REASONS = 12  # bitmask of REASON_BITS
O_RETRY_AFTER = 13
O_REMAINING = 14  # tokens left in the key bucket
O_RESET = 15  # seconds until the key bucket is full again
O_DENIED_KINDS = 16  # bitmask of kinds whose bucket could not afford the request
O_TIGHTEST_KIND = 17  # kind of the bucket with the least room (for headers)
O_TIGHT_REMAINING = 18
O_TIGHT_RESET = 19
O_FANIN = 20  # largest distinct-account estimate across network kinds
O_FANOUT_IPS = 21
O_FANOUT_ASNS = 22
O_FANOUT_COUNTRIES = 23
O_BANNED = 24
O_CONTRIB = 25  # one slot per signal
IO_SIZE = O_CONTRIB + 16

# Signals, in contribution order; each has a weight in the parameters.
S_VOLUME = 0
S_BURST = 1
S_CADENCE = 2
S_CLIENT = 3
S_PERSONA = 4
S_ANON = 5
S_GEO = 6
S_FAN_IN = 7
S_FAN_OUT = 8
S_ERRORS = 9
S_IMPATIENCE = 10
S_TEMPLATE = 11
S_SHARED_TEMPLATE = 12
S_ELICIT = 13
S_PRIOR = 14
N_SIGNALS = 15
SIGNAL_NAMES = (
    "volume",
    "burst",
    "cadence",
    "client",
    "persona",
    "anonymizer",
    "geo",
    "fan_in",
    "fan_out",
    "errors",
    "impatience",
    "template",
    "shared_template",
    "elicitation",
    "prior",
)
# Reason bits: the signals first (bit = signal index), then limit/other reasons.
R_RATE = 20
R_BANNED = 21

# Parameters (float64 vector).
P_BUCKET = 0  # P_BUCKET + 2*kind: rate (tokens/s), P_BUCKET + 2*kind + 1: burst (0 = none)
P_COUPLING = 10  # how far risk scales refill down: factor = 1 - coupling * score
P_MIN_FACTOR = 11  # floor of the refill factor
P_TAU_SHORT = 12
P_TAU_LONG = 13
P_ALPHA_IA = 14  # EWMA weight for inter-arrival stats
P_MIN_EVENTS = 15  # events before cadence/volume/errors signals count
P_VOLUME_LO = 16
P_VOLUME_HI = 17
P_BURST_LO = 18
P_BURST_HI = 19
P_CADENCE_LO = 20  # std of log inter-arrival at which the cadence signal is full
P_CADENCE_HI = 21  # ... and at which it is zero
P_FANIN_LO = 22
P_FANIN_HI = 23
P_FANOUT_ASN_LO = 24
P_FANOUT_ASN_HI = 25
P_FANOUT_CC_LO = 26
P_FANOUT_CC_HI = 27
P_FANOUT_PFX_LO = 28
P_FANOUT_PFX_HI = 29
P_ERR_LO = 30
P_ERR_HI = 31
P_IMPATIENCE_LO = 32
P_IMPATIENCE_HI = 33
P_TEMPLATE_LO = 34
P_TEMPLATE_HI = 35
P_SHARED_LO = 36
P_SHARED_HI = 37
P_SCORE_ALPHA = 38  # weight of the newest score in the smoothed score
P_SCORE_HALF_LIFE = 39  # idle decay of the smoothed score (forgiveness), seconds
P_HYSTERESIS = 40
P_BIAS = 41
P_WEIGHTS = 42  # P_WEIGHTS + signal
P_CLIENT_RISK = 57  # P_CLIENT_RISK + ua class (8 classes)
P_LADDER_N = 65
P_LADDER = 66  # thresholds of ladder levels 1..N (level 0 = allow), up to 8
P_BAN_LEVEL = 74  # ladder level at which a ban starts (0 = never)
P_BAN_SECONDS = 75
P_HORIZON = 76  # sketch horizon in seconds (two halves)
P_NAT_PER_ACCOUNT = 77  # extra ceiling share per distinct account on eligible networks
P_NAT_MAX = 78  # cap of the NAT multiplier
P_REASON_MIN = 79  # contribution a signal needs to be named as a reason
P_CMS_HALF_LIFE = 80
P_HAMMING = 81  # SimHash distance under which two prompts share a template
P_SCORING = 82  # 1 when risk scoring is on
P_ERR_ALPHA = 83
P_LADDER_SERVES = 84  # per ladder level 0..8: 1 when that level's action serves the request
P_RISK_FLOOR = 93  # smoothed scores below this leave the refill alone
P_BASELINE_AGE = 94  # seconds of history before the burst signal trusts the baseline
P_FANIN_SCALE = 95  # P_FANIN_SCALE + kind: a network kind's fan-in is divided by this
P_ALLOWANCE_RATE = 100  # the key bucket's configured rate (1 without a bucket), for volume
P_ALLOWANCE_BURST = 101  # ... and its burst (0 without a bucket), for burst
P_WEAK_MASK = 102  # bitmask of the weak signals (alone they never refuse); 0 = none is weak
P_SERVING_LEVELS = 103  # the highest ladder level whose action still serves the request
P_SHADOW_KINDS = 104  # bitmask of kinds whose bucket refusals are shadowed (served anyway)
N_PARAMS = 105

# The engine keeps every table and vector in one float64 state vector, so that the kernel
# takes one array argument (Numba converts each array argument at ~45 ns a call). The vector
# starts with a header: for each region, its offset and its number of rows.
REGION_TABLES = 0  # REGION_TABLES + kind: the five identity tables
REGION_ACC = 5
REGION_CMS = 6
REGION_IV = 7  # the int64 inputs (N_INT_INPUTS words, viewed as int64)
REGION_IO = 8
REGION_PRM = 9
N_REGIONS = 10
HEADER_SIZE = 2 * N_REGIONS

N_CLIENT_CLASSES = 8
MAX_LADDER = 8
CMS_DEPTH = 4
CMS_WIDTH = 4096
# Below the Count-Min rows (and its bookkeeping row): a bit filter of the (account,
# template) pairs already counted, two rotating halves of CMS_PAIR_ROWS // 2 rows each, so
# that an account adds itself to a template's count once per sketch horizon.
CMS_PAIR_ROWS = 16
CMS_ROWS = CMS_DEPTH + 1 + CMS_PAIR_ROWS
