"""Accounts linked into operations: streaming evidence per account, LSH bands over
several kinds of evidence, a lift test against chance, union-find, a score per cluster.

How two accounts get linked (all of it bounded, all of it deterministic):

1. **Evidence per account.** Per kind (`abuseguard.operations.evidence.KINDS`) an
   account keeps its recent items with weights halving every ``half_life``
   (`DecayedItems`, at most ``items_per_kind``). Its *signature* for a kind is a MinHash
   pair of that item set (`set_signature`): one number, equal for accounts with the same
   items (one persona, one request shape), rarely equal for mere overlap (an ASN mix).
   Only the items weighing at least ``heavy_share`` of the heaviest count: an account
   that mixes a few shapes signs with those it uses most.
2. **Bands over several kinds.** Every combination of ``min_kinds`` kinds is an LSH band:
   the accounts whose signatures agree on all of them share a bucket. One kind alone never
   makes a bucket, so a campus NAT (network only), an SDK's default headers (persona only)
   or "You are a helpful assistant" (system only) cannot link anyone by itself.
3. **A lift test, per kind.** A bucket links its members only when each of its kinds adds
   evidence beyond the others: with ``n`` the accounts agreeing on the other kinds and
   ``p`` the share of all accounts holding this kind's signature (its rarity, IDF-like),
   the ``k`` members must be at least ``min_lift`` times ``n * p`` and improbable by
   chance (Chernoff bound ``n * KL(k/n || p) >= min_surprise``, in nats). Common evidence
   (an SDK persona on half the accounts) cannot pass; rare evidence shared by many can.
   And at least ``distinct_kinds`` of its kinds must be *distinctive* of the bucket: at
   least ``distinct_share`` of all the accounts holding that signature are in it. Honest
   crowds share one distinctive thing (the campus address, the app's cloud) and otherwise
   what thousands of others hold too (the SDK's headers, the popular system prompt); the
   lift alone would let a crowd through whose kinds are correlated by what it is (server
   apps: the SDK, a cloud, a template system prompt).
3b. **Pair links.** With ``pair_links``, the creation batch paired with the persona, the
   system prompt or the request shape links too, through the same lift, surprise and
   distinctiveness tests (both kinds distinctive). An operation whose accounts vary on a
   third kind (streaming or not, which of its batches, the browser each account keeps)
   falls into many small buckets of three kinds and links only once one of them reaches
   ``min_size``; its pairs are as large as the operation from its first hour. A pair
   always holds the batch: persona, system prompt and request shape are what one tool
   fixes for all its users, accounts made together are what an operation has and a tool's
   users do not (step 3d links them without the batch, by how their holders behave).
   Network and activity slot never pair (what a campus or a cloud crowd shares by where
   it is; everyone busy at the same hours). The batch is read on two day grids
   (`abuseguard.operations.evidence`: ``created`` from midnight, ``created_noon`` from
   noon UTC) and each pairs on its own, each grid's pair tested against that grid's
   counts: a burst of sign-ups shorter than half a day lies whole in a day of one grid,
   where the other may cut it into halves each too small to link. No account is counted
   twice in one test; the noon grid only doubles the batch tests (ln 2 nats of
   ``min_surprise``), and never enters a band (two grids of one fact would pass each
   other's lift). A holder of a linking pair is linked only when it agrees with another
   holder on a third of persona, system prompt, request shape and batch (the pair's own
   grid's batch), and does not mostly chat (``min_single_turn`` of its own
   requests): a few honest accounts made on a batch's day with the web app's shape hold
   the pair by chance. Linking pairs of one persona, prompt or shape with different
   batches (on either grid) are one operation. A linking key's evidence and join door go
   by a member it linked, not by its first holder (a pair's holder by chance may be
   first).
3c. **Pooled batches.** With ``pool_batches`` (and pair links), the batches that share
   one persona, system prompt or request shape are pooled when each is too small to link
   alone: an operation that makes a few accounts a day (each grid's batches pooled
   apart). A *fragment* is the pair of one batch and the value, held by at least two
   accounts, a good part of its batch (``distinct_share``) and ``min_lift`` times what
   the value's rarity gives. The pooled count of the best subset of a value's fragments
   (a prefix of them by the share of their batch holding the value: linear-time subset
   scanning) must pass the lift and surprise tests *after* paying ``log C(batches,
   picked)`` nats for having picked that subset among all the batches holding the value,
   and hold ``distinct_share`` of the value's holders. Chance bumps do not add up: an
   app's template prompt on ~200 accounts made over years holds two of three new
   accounts on many days, and its best subset is what that many days would give. A
   fragment's holder is linked when it agrees on a third of persona, system prompt and
   shape beyond chance (``min_lift`` times the third value's share of all accounts) both
   with its batch and with the pool across batches: ten holders of a fragment agree on
   the commonest browser by chance, two harness users made on one day agree on the SDK's
   headers; an operation's accounts agree across batches on what its software fixes. A
   pool links into at most one group that buckets or pairs linked already (two
   operations sharing a browser's persona stay two; each one's score is its own), and is
   no door for joining (step 5); each clustering confirms it anew.
3d. **Behaviour links.** With ``behaviour_links``, a system prompt, a request shape, or a
   pair of persona, system prompt and request shape (`TOOL_KEYS`) links its holders
   without the batch when they behave like harvesting, which a tool's users do not. A
   member *harvests* (`OperationLinker.harvests`) when it has sent at least
   ``harvest_min_requests`` requests: at least ``harvest_single_turn`` of them
   single-turn (coding agents and chat apps send their histories), at least
   ``harvest_new_topics`` of them on a topic it had not asked before (a pipeline repeats
   its prompt), no word of its questions in more than ``max_word_share`` of them (of its
   first `WORD_SAMPLE` with words: one subject, one template, one pasted assignment put
   their words in every question; the words of asking for reasoning do not count), and
   in one of two *ways*: ``reasoning``, at least ``harvest_reasoning`` of its single-turn
   requests asking for the reasoning written out (elicitation strength at least
   `REASONING_ASKED`, or coercion at least `COERCION_ASKED`), or ``turns``, the gaps
   between its requests as even as turns handed out by a pool (at least
   ``harvest_turn_gaps`` gaps, their coefficient of variation at most
   ``harvest_turn_cv``: independent arrivals give about 1, people in sessions more).
   Per value and way, its holders that harvest that way must be at least ``min_size``,
   at least ``harvest_share`` of the value's holders, and improbable by chance (surprise
   against the share of all accounts that harvest that way, ``min_surprise``); a pair
   must pass the tests of a pair (step 3b: lift, surprise, both values distinctive); and
   their topics together must spread (distinct topics over the topics, of each member's
   first `SPREAD_TOPICS`, at least ``min_topic_spread``). They link firm (the value is one
   the operator chose). Like a pool, a behaviour link links into at most one group that
   buckets or pairs linked already: two operations that share a tool's value (a web
   app's shape, an SDK's defaults) stay two, each with its own score; groups behaviour
   links made merge (an operation's accounts on its prompts, on its shapes). Rarer values
   link first, and a link whose holders are in two or more groups of buckets or pairs
   last. A behaviour link is no door for joining (step 5): each clustering judges its
   holders anew. The cluster's evidence counts it as ``behaviour`` and keeps the figures
   of its largest behaviour link (`Cluster.behaviour`).
4. **Clusters.** Every ``recluster_every`` seconds (of the records' time) the members of
   linking buckets are joined by union-find, and so are two linking buckets that agree on
   all but one of their kinds (each passed the test on its own: an operation whose
   accounts differ in their ASN mix falls into several buckets of one persona and one
   request shape); components of at least ``min_size`` accounts whose requests are mostly
   single-turn (``min_single_turn``: harvesting asks one question at a time; a campus on
   its own web app behind its NAT links too, but chats) are operations. Each
   carries its evidence: which kinds linked it and how strongly. A cluster keeps its id
   while most of its members stay. With ``merge_by_card``, linked groups that pay with
   one card (the host app's payment fingerprint, for accounts outside an organisation)
   are one: a card held by at least two accounts of each of two or more groups, those
   holders at least ``join_share`` of the card's accounts. An operator runs several
   tools (each its own persona, shape and batches: each group linked on its own) and
   pays for their accounts with a few shared cards; an honest card pays for one account
   or a family's few, never for two groups each linked on its own.
5. **Joining.** An account in no cluster joins one when its signatures agree with a
   linking bucket of the cluster on all but one kind, each of them held for a good part
   (``join_share``) by members of the cluster: every account at each clustering, and an
   account seen since at the lane's next flush. A new account of a known operation is
   caught in its first requests. A linking pair lets an account join by the pair itself,
   when the account agrees on a third kind with a member (as in step 3b). So does an
   account paying with a card (the host app's payment fingerprint, for accounts outside
   an organisation) that at least two members of one cluster pay with, when they are at
   least ``join_share`` of the card's accounts: bulk-made accounts are paid by a few
   shared cards. No account that mostly chats (``min_single_turn`` of its own requests)
   joins by any of these.
6. **Score.** ``size`` (ramp from ``min_size`` to 2x), ``single-turn share``, ``topic
   spread`` (distinct topics over the members' topics: members of an operation cover
   different ground, a class pasting one assignment does not) and ``tokens`` per member
   hour served (from a member's first request to its latest that cost tokens: refused
   requests cost nothing) when costs are known:
   ``score = size * (0.4 + 0.6 * mean(behaviour))``; each
   member's prior is the score.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from abuseguard.config_check import check_fields
from abuseguard.errors import ConfigError
from abuseguard.operations.evidence import (
    BAND_KINDS,
    CREATED,
    CREATED_NOON,
    KINDS,
    N_KINDS,
    PERSONA,
    SHAPE,
    SYSTEM,
    TIMING,
    Evidence,
)
from abuseguard.operations.sketches import DecayedItems, UnionFind, heavy_items, set_signature

# Keys of the counts and buckets: (tag, signatures...), plain tuples of ints (hashed alike
# in every process, unlike strings).
Key = tuple[int, ...]

# The kinds an operator chooses (the system prompt and request shape its software sends, the
# batch its accounts were made in), as opposed to what an honest account shares with
# thousands by what it is (the SDK's headers, a cloud's ASN, busy hours). Only a link
# through one of them makes a member's verdict firm enough to hold it (`firm`).
CHOSEN_KINDS = frozenset({SYSTEM, SHAPE, CREATED, CREATED_NOON})
# The creation batch on its two grids (`abuseguard.operations.evidence`): days from midnight
# and days from noon, UTC. One fact: never both in one test.
BATCH_KINDS = (CREATED, CREATED_NOON)
# The kinds a pair link may combine (`OperationsConfig.pair_links`): what the operation's
# software and sign-up fix for all its accounts. Not the network (the one thing a
# distributed operation varies on purpose, and what a campus or a cloud crowd shares by
# where it is) nor the activity slot (everyone busy at the same hours shares one).
PAIR_KINDS: tuple[int, ...] = (PERSONA, SYSTEM, SHAPE, CREATED)
_PAIRED = frozenset(PAIR_KINDS)
# Every pair link holds the creation batch: the persona, system prompt and request shape
# are what one *tool* fixes for all its users (a coding agent's headers, prompt and
# parameters; a harness at its defaults), so a pair of them is an honest crowd as often
# as an operation; accounts made in one batch are what an operation has and a tool's
# users do not. (Pairs of any two of the four link `honest_world`'s SDK crowd in
# tests/test_operations.py: its apps share the SDK's headers and one template prompt.)
# Each value pairs with the batch on either grid (a burst of sign-ups around midnight is
# whole on the noon grid), each grid a test of its own.
PAIRS: tuple[tuple[int, int], ...] = tuple(
    (batch, kind) for batch in BATCH_KINDS for kind in (PERSONA, SYSTEM, SHAPE)
)
# The values a behaviour link (step 3d) may stand on without the batch: a system prompt or
# a request shape alone, or a pair of persona, system prompt and request shape. What one
# tool fixes for all its users: only its holders' behaviour tells harvesting apart.
TOOL_KEYS: tuple[tuple[int, ...], ...] = (
    (SYSTEM,),
    (SHAPE,),
    (PERSONA, SYSTEM),
    (PERSONA, SHAPE),
    (SYSTEM, SHAPE),
)
# Behaviour-link keys are (TOOL_TAG - index into TOOL_KEYS, signatures...): apart from
# bands (>= 0) and pairs (-1 - index into PAIRS).
TOOL_TAG = -100
# A request asks for the reasoning written out when its elicitation strength
# (`abuseguard.intel.content.ELICITATION_MARKERS`) is at least this: one medium phrase
# ("step by step", "show your work", their translations) or a weak one with another.
# Coercion (a demand for the model's internal thinking verbatim) counts as asking too.
REASONING_ASKED = 0.3
COERCION_ASKED = 0.5
# The requests with words whose words an account counts (its first ones): enough to tell
# one subject or template from many (`OperationsConfig.max_word_share`).
WORD_SAMPLE = 32
# The topics of each member a behaviour link's topic spread counts (its first ones).
SPREAD_TOPICS = 8
# The ways an account harvests (`OperationLinker.harvests`): each is tested on its own.
REASONING, TURNS = 1, 2


@dataclass(frozen=True)
class OperationsConfig:
    """How the lane links accounts into operations (see `abuseguard.operations.linker`).

    ``half_life``: seconds for an item's weight to halve. ``items_per_kind``: items kept
    per account and kind; a kind's signature is of the items weighing at least
    ``heavy_share`` of its heaviest. ``max_accounts``: accounts tracked (the least recently seen are
    dropped first). ``idle_seconds``: an account unseen this long is dropped.
    ``min_kinds``: kinds of evidence a band combines. ``min_size``: accounts of the
    smallest operation. ``min_lift`` and ``min_surprise`` (nats): the lift test of each
    kind of a linking bucket; ``distinct_kinds`` of its kinds must have at least
    ``distinct_share`` of their signature's holders in the bucket. ``min_single_turn``:
    the share of single-turn requests below which a linked group is not an operation
    (people chatting: a campus behind its NAT on its own web app). ``recluster_every``:
    seconds between clusterings. ``join_share``: the share of a signature's holders that
    must be in a cluster for an account to join it by that signature.
    ``max_topics``: topics kept per account.
    ``tokens_per_hour``: (low, high) of the tokens-per-member-hour ramp of the score.
    ``pair_links``: also link by a *pair* of kinds, the creation batch (on either day
    grid) and one of persona, system prompt or request shape (`PAIRS`), see the module
    (step 3b).
    ``pool_batches``: pool the batches sharing a persona, system prompt or request shape
    that are each too small to link (step 3c; needs ``pair_links``).
    ``hold_score``: a cluster scoring at least this is an operation's verdict: the lane
    holds each member at the first accumulated-evidence step from the moment it is linked,
    when the member's link went through a kind the operator chose (system prompt, request
    shape or creation batch: `OperationLinker.firm`); a member linked only by persona and
    network (an honest app on the same SDK in the same cloud) gets the prior alone. None:
    members get the prior only.
    ``merge_by_card``: linked groups paying with one card are one operation (step 4).
    ``behaviour_links``: also link the holders of a system prompt, a request shape or a
    pair of persona, system prompt and request shape (`TOOL_KEYS`) without the batch, when
    they behave like harvesting (step 3d): a member has sent at least
    ``harvest_min_requests`` requests, at least ``harvest_single_turn`` of them
    single-turn, ``harvest_new_topics`` on a topic it had not asked before, no word of its
    questions in more than ``max_word_share`` of them, and either ``harvest_reasoning``
    of its single-turn requests asking for the reasoning written out or its turn taken in
    a pool (at least ``harvest_turn_gaps`` gaps between its requests, their coefficient
    of variation at most ``harvest_turn_cv``); such members are at least
    ``harvest_share`` of the value's holders, and together their topics spread (at least
    ``min_topic_spread``).
    """

    half_life: float = 6 * 3600.0
    items_per_kind: int = 8
    heavy_share: float = 0.3
    max_accounts: int = 50_000
    idle_seconds: float = 48 * 3600.0
    min_kinds: int = 3
    min_size: int = 8
    min_lift: float = 3.0
    min_surprise: float = 14.0
    distinct_kinds: int = 2
    distinct_share: float = 0.2
    min_single_turn: float = 0.5
    recluster_every: float = 30.0
    join_share: float = 0.25
    max_topics: int = 64
    tokens_per_hour: tuple[float, float] = (5_000.0, 50_000.0)
    pair_links: bool = True
    pool_batches: bool = True
    hold_score: float | None = 0.7
    merge_by_card: bool = True
    behaviour_links: bool = True
    harvest_min_requests: int = 3
    harvest_single_turn: float = 0.7
    harvest_reasoning: float = 0.5
    harvest_new_topics: float = 0.5
    harvest_turn_gaps: int = 8
    harvest_turn_cv: float = 0.3
    harvest_share: float = 0.5
    min_topic_spread: float = 0.5
    max_word_share: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self)
        if not 2 <= self.min_kinds <= len(BAND_KINDS):
            raise ConfigError("OperationsConfig.min_kinds", f"must be 2..{len(BAND_KINDS)}")
        if self.min_size < 2:
            raise ConfigError("OperationsConfig.min_size", "must be >= 2")
        for name in ("half_life", "recluster_every", "idle_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"OperationsConfig.{name}", "must be > 0")
        if self.items_per_kind < 1 or self.max_accounts < 1 or self.max_topics < 1:
            raise ConfigError("OperationsConfig", "sizes must be >= 1")
        if not 1 <= self.distinct_kinds <= self.min_kinds:
            raise ConfigError("OperationsConfig.distinct_kinds", "must be 1..min_kinds")
        if not 0.0 < self.distinct_share <= 1.0:
            raise ConfigError("OperationsConfig.distinct_share", "must be in (0, 1]")
        if not 0.0 <= self.min_single_turn <= 1.0:
            raise ConfigError("OperationsConfig.min_single_turn", "must be in [0, 1]")
        if not 0.0 < self.heavy_share <= 1.0:
            raise ConfigError("OperationsConfig.heavy_share", "must be in (0, 1]")
        if not 0.0 < self.join_share <= 1.0:
            raise ConfigError("OperationsConfig.join_share", "must be in (0, 1]")
        low, high = self.tokens_per_hour
        if not low < high:
            raise ConfigError("OperationsConfig.tokens_per_hour", "low must be < high")
        if self.hold_score is not None and not 0.0 < self.hold_score <= 1.0:
            raise ConfigError("OperationsConfig.hold_score", "must be in (0, 1] or None")
        if self.harvest_min_requests < 1:
            raise ConfigError("OperationsConfig.harvest_min_requests", "must be >= 1")
        if self.harvest_turn_gaps < 2:
            raise ConfigError("OperationsConfig.harvest_turn_gaps", "must be >= 2")
        for name in (
            "harvest_single_turn",
            "harvest_reasoning",
            "harvest_new_topics",
            "harvest_turn_cv",
            "harvest_share",
            "min_topic_spread",
            "max_word_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"OperationsConfig.{name}", "must be in [0, 1]")


class Account:
    """What the linker keeps of one account."""

    __slots__ = (
        "cluster",
        "doors",
        "first_ts",
        "gap_squares",
        "gap_sum",
        "gaps",
        "identity",
        "items",
        "keys",
        "last_ts",
        "payment",
        "reasoned",
        "requests",
        "seq",
        "signatures",
        "single",
        "spent_ts",
        "thirds",
        "tokens",
        "tool_keys",
        "top_word",
        "topics",
        "worded",
        "words",
    )

    def __init__(self, identity: str, ts: float, config: OperationsConfig) -> None:
        self.identity = identity
        self.first_ts = ts
        self.last_ts = ts
        # Its latest request that cost tokens: the end of the time it was served.
        self.spent_ts = ts
        self.items = [DecayedItems(config.items_per_kind, config.half_life) for _ in range(N_KINDS)]
        self.signatures: tuple[int, ...] = (0,) * N_KINDS
        # (signature keys, sub-band keys, band keys, pair keys) this account is counted under.
        self.keys: tuple[list[Key], list[Key], list[Key], list[Key]] = ([], [], [], [])
        # Per pair of kinds: its `OperationLinker._third_kind_buckets` (made once per
        # signatures: emptied whenever the account is unindexed).
        self.thirds: dict[tuple[int, ...], list[Key]] = {}
        # Python hashes of the sub-band and pair keys (the keys an account may join by):
        # a set of ints tells cheaply that none of them is a join key (`join_recent`).
        self.doors: frozenset[int] = frozenset()
        self.requests = 0
        # When it was last observed (a counter): `OperationLinker.accounts` is in this order.
        self.seq = 0
        self.single = 0
        self.tokens = 0.0
        self.topics: dict[int, None] = {}
        # Single-turn requests asking for the reasoning written out; requests with words
        # (its first WORD_SAMPLE), and per word the requests holding it (at most
        # ``max_topics`` words: what it asks about).
        self.reasoned = 0
        # The gaps between its requests (count, sum, sum of squares): how evenly it asks.
        self.gaps = 0
        self.gap_sum = 0.0
        self.gap_squares = 0.0
        self.worded = 0
        self.words: dict[int, int] = {}
        self.top_word = 0  # the most requests one of its words is in
        # The behaviour-link keys (`TOOL_KEYS`) it holds.
        self.tool_keys: list[Key] = []
        self.cluster: str | None = None
        self.payment = ""


@dataclass
class Cluster:
    """One operation: its members and the evidence that linked them."""

    id: str
    members: list[str]
    linked_by: dict[str, int]  # kind -> linking buckets that combined it
    buckets: int
    lift: float  # the strongest per-kind lift among its linking buckets (the weakest kind)
    score: float = 0.0
    single_turn_share: float = 0.0
    topic_spread: float = 0.0
    tokens_per_member_hour: float = 0.0
    joined: int = 0
    first_seen: float = 0.0
    pooled: int = 0  # batch fragments linked by pooling (step 3c)
    # The largest behaviour link in it (step 3d): its value's kinds and its figures.
    behaviour: dict[str, object] | None = None

    def summary(self, sample: int = 8) -> dict[str, object]:
        return {
            "id": self.id,
            "size": len(self.members),
            "score": round(self.score, 3),
            "linked_by": dict(sorted(self.linked_by.items(), key=lambda kv: (-kv[1], kv[0]))),
            "buckets": self.buckets,
            "lift": round(self.lift, 2),
            "single_turn_share": round(self.single_turn_share, 3),
            "topic_spread": round(self.topic_spread, 3),
            "tokens_per_member_hour": round(self.tokens_per_member_hour, 1),
            "joined": self.joined,
            "pooled_batches": self.pooled,
            "behaviour": self.behaviour,
            "members_sample": self.members[:sample],
        }


class _TopicUnion(NamedTuple):
    """A cluster's topics as of its last score: its accounts, how many topics each held,
    the union of their topics and the sum of their counts."""

    accounts: tuple[Account, ...]
    sizes: list[int]
    topics: set[int]
    total: int


def _on_day_grid(pair: tuple[int, ...]) -> tuple[int, ...]:
    """``pair`` with the noon grid's batch replaced by the day grid's."""
    return tuple(CREATED if kind == CREATED_NOON else kind for kind in pair)


def _count(figures: dict[str, object], name: str) -> int:
    count = figures[name]
    assert isinstance(count, int)
    return count


def _ramp(x: float, lo: float, hi: float) -> float:
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def surprise(k: int, n: int, p: float) -> float:
    """``n * KL(k/n || p)`` in nats (0 when k/n <= p): minus the log of the Chernoff bound
    on the chance of at least ``k`` successes in ``n`` trials of probability ``p``."""
    if n <= 0 or p >= 1.0:
        return 0.0
    q = k / n
    if q <= p:
        return 0.0
    p = max(p, 1e-12)
    kl = q * math.log(q / p)
    if q < 1.0:
        kl += (1.0 - q) * math.log((1.0 - q) / (1.0 - p))
    return n * kl


class OperationLinker:
    """Streaming account linking; see the module docstring. Not thread-safe: the lane calls
    it from one thread at a time."""

    def __init__(self, config: OperationsConfig | None = None) -> None:
        self.config = config if config is not None else OperationsConfig()
        m = self.config.min_kinds
        self.combos = list(itertools.combinations(BAND_KINDS, m))
        self.subs = list(itertools.combinations(BAND_KINDS, m - 1))
        self._sub_index = {sub: i for i, sub in enumerate(self.subs)}
        # For each band, the sub-band without each of its kinds, in the band's order.
        self._band_subs = [
            [self._sub_index[tuple(k for k in combo if k != drop)] for drop in combo]
            for combo in self.combos
        ]
        # Per pair of kinds: the bands made of it and one more of `PAIR_KINDS`.
        self._third_bands: dict[tuple[int, ...], dict[int, tuple[int, ...]]] = {}
        # Per cluster id: its topics at its last score (`_score`).
        self._topic_unions: dict[str, _TopicUnion] = {}
        self.accounts: dict[str, Account] = {}
        self.signature_count: dict[Key, int] = {}
        self.sub_count: dict[Key, int] = {}
        self.buckets: dict[Key, dict[str, None]] = {}
        self.large: dict[Key, None] = {}
        # Pair links: keys (-1 - pair index, signatures...), never equal to a sub-band key.
        self.pair_combos = list(PAIRS) if self.config.pair_links else []
        self.pairs: dict[Key, dict[str, None]] = {}
        self.large_pairs: dict[Key, None] = {}
        # Kept as accounts are indexed, for pooling (`_pooled_fragments`): the pair keys held
        # by at least two accounts; each pair key's place in ``pairs`` (a number growing
        # with each new key: ``pairs`` is in this order); per (pair index, value), the pair
        # keys (batches) holding it.
        self.multi_pairs: dict[Key, None] = {}
        self._pair_seq: dict[Key, int] = {}
        self._next_pair_seq = 0
        self._pair_batches: dict[tuple[int, int], int] = {}
        # The bands a noon-grid pair's holders are grouped by (`_third_kind_buckets`): of
        # `PAIR_KINDS` with the batch, read with the noon batch; their members, kept as
        # accounts are indexed (keys as the bands' own, with the noon batch in the place
        # of the day's: apart from ``buckets``).
        self._noon_bands: list[tuple[int, list[int]]] = (
            [
                (index, [CREATED_NOON if k == CREATED else k for k in combo])
                for index, combo in enumerate(self.combos)
                if CREATED in combo and set(combo) <= _PAIRED
            ]
            if any(pair[0] == CREATED_NOON for pair in self.pair_combos)
            else []
        )
        self.noon_buckets: dict[Key, dict[str, None]] = {}
        # Accounts per behaviour-link key (`TOOL_KEYS`), and per key that linked at the
        # last clustering, its holders' behaviour (step 3d).
        self.tool_count: dict[Key, int] = {}
        self.behaviour: dict[Key, dict[str, object]] = {}
        # The accounts that harvest (`harvests`), judged as they are observed: identity ->
        # way; and the accounts per way.
        self.harvesting: dict[str, int] = {}
        self.harvest_ways: Counter[int] = Counter()
        self.clusters: dict[str, Cluster] = {}
        # Sub-band keys of the linking buckets that are held mostly by one cluster.
        self.join_keys: dict[Key, str] = {}
        # The hashes of the join keys (`join_recent`), and the join keys they are of.
        self._doors: frozenset[int] = frozenset()
        self._doors_of: dict[Key, str] | None = None
        # Accounts per hash of the sub-band and pair keys they hold (`Account.doors`), and
        # per payment fingerprint: who may join by a join key or a joining card.
        self._door_holders: dict[int, dict[str, None]] = {}
        self._payers: dict[str, dict[str, None]] = {}
        self._seq = 0
        self.priors: dict[str, float] = {}
        # Members linked through a chosen kind (CHOSEN_KINDS): the lane may hold these.
        self.firm: dict[str, None] = {}
        # Accounts per payment fingerprint, and the fingerprints held mostly by one cluster.
        self.payment_count: dict[str, int] = {}
        self.join_payments: dict[str, str] = {}
        self.now = -math.inf
        self._next_cluster = 0
        self._next_recluster = -math.inf
        self._dirty_priors: dict[str, float] = {}
        # Per key that linked at the last clustering: a member it linked (`recluster`).
        self._anchors: dict[Key, str] = {}

    # -- ingest ----------------------------------------------------------------------

    def observe(
        self, identity: str, seen: Sequence[tuple[float, Evidence]], payment: str | None = None
    ) -> None:
        """Add one account's evidence (its requests since the last call, in time order);
        ``payment``: its payment fingerprint from the host app (None: unknown, or an
        account of an organisation, which pays for its members as a matter of course)."""
        if not seen:
            return
        config = self.config
        account = self.accounts.pop(identity, None)
        if account is None:
            account = Account(identity, seen[0][0], config)
            while len(self.accounts) >= config.max_accounts:
                self._drop(next(iter(self.accounts)))
        self.accounts[identity] = account  # most recently seen last
        account.seq = self._seq
        self._seq += 1
        if payment and payment != account.payment:
            self._count_payment(account.payment, -1, identity)
            account.payment = payment
            self._count_payment(payment, 1, identity)
        kinds = account.items
        topics = account.topics
        words = account.words
        max_topics = config.max_topics
        latest = account.last_ts
        spent = account.spent_ts
        previous = latest if account.requests else math.inf
        for ts, evidence in seen:
            for items, item in zip(kinds, evidence.items, strict=False):
                if item:
                    items.add(item, ts)
            if ts >= previous:
                gap = ts - previous
                account.gaps += 1
                account.gap_sum += gap
                account.gap_squares += gap * gap
            previous = ts
            account.requests += 1
            account.single += evidence.single_turn
            account.reasoned += evidence.single_turn and (
                evidence.reasoning >= REASONING_ASKED or evidence.coercion >= COERCION_ASKED
            )
            if evidence.words and account.worded < WORD_SAMPLE:
                account.worded += 1
                for word in evidence.words:
                    held = words.get(word)
                    if held is not None:
                        words[word] = held = held + 1
                        if held > account.top_word:
                            account.top_word = held
                    elif len(words) < max_topics:
                        words[word] = 1
                        if not account.top_word:
                            account.top_word = 1
            if evidence.tokens:
                account.tokens += evidence.tokens
                if ts > spent:
                    spent = ts
            if evidence.topic and len(topics) < max_topics:
                topics[evidence.topic] = None
            if ts > latest:
                latest = ts
        account.last_ts = latest
        account.spent_ts = spent
        if latest > self.now:
            self.now = latest
        if config.behaviour_links:
            self._judge(account)
        # A kind's signature is of its heavy items: an account whose requests mix a few
        # shapes or prompts signs with the ones it uses most, as its peers do; one that
        # rotates evenly over a pool of exits signs with the whole pool.
        # Weights shift slowly: a set that did not change is signed again every 4th call.
        heavy = config.heavy_share
        again = account.requests % 4 == 0
        signatures = tuple(
            set_signature(heavy_items(items.weights, heavy))
            if items.changed or (again and len(items.weights) > 1)
            else old
            for items, old in zip(account.items, account.signatures, strict=True)
        )
        for items in account.items:
            items.changed = False
        if signatures != account.signatures:
            self._unindex(account)
            account.signatures = signatures
            self._index(account)

    def _index(self, account: Account) -> None:
        sigs = account.signatures
        sig_keys, sub_keys, band_keys, pair_keys = account.keys
        counts = self.signature_count
        for kind, sig in enumerate(sigs):
            if sig:
                key: Key = (kind, sig)
                counts[key] = counts.get(key, 0) + 1
                sig_keys.append(key)
        sub_count = self.sub_count
        for index, sub in enumerate(self.subs):
            if all(sigs[k] for k in sub):
                key = (index, *[sigs[k] for k in sub])
                sub_count[key] = sub_count.get(key, 0) + 1
                sub_keys.append(key)
        min_size = self.config.min_size
        buckets = self.buckets
        for index, combo in enumerate(self.combos):
            if all(sigs[k] for k in combo):
                key = (index, *[sigs[k] for k in combo])
                members = buckets.get(key)
                if members is None:
                    members = buckets[key] = {}
                members[account.identity] = None
                if len(members) >= min_size:
                    self.large[key] = None
                band_keys.append(key)
        pairs = self.pairs
        for index, (a, b) in enumerate(self.pair_combos):
            if sigs[a] and sigs[b]:
                key = (-1 - index, sigs[a], sigs[b])
                members = pairs.get(key)
                if members is None:
                    members = pairs[key] = {}
                    self._pair_seq[key] = self._next_pair_seq
                    self._next_pair_seq += 1
                    group = (-1 - index, sigs[b])
                    self._pair_batches[group] = self._pair_batches.get(group, 0) + 1
                members[account.identity] = None
                if len(members) >= 2:
                    self.multi_pairs[key] = None
                    if len(members) >= min_size:
                        self.large_pairs[key] = None
                pair_keys.append(key)
        for key in self._noon_keys(sigs):
            members = self.noon_buckets.get(key)
            if members is None:
                members = self.noon_buckets[key] = {}
            members[account.identity] = None
        if self.config.behaviour_links:
            tool_count = self.tool_count
            for index, kinds in enumerate(TOOL_KEYS):
                if all(sigs[k] for k in kinds):
                    key = (TOOL_TAG - index, *[sigs[k] for k in kinds])
                    tool_count[key] = tool_count.get(key, 0) + 1
                    account.tool_keys.append(key)
        account.doors = doors = frozenset(map(hash, itertools.chain(sub_keys, pair_keys)))
        door_holders = self._door_holders
        for door in doors:
            holders = door_holders.get(door)
            if holders is None:
                holders = door_holders[door] = {}
            holders[account.identity] = None

    def _unindex(self, account: Account) -> None:
        sig_keys, sub_keys, band_keys, pair_keys = account.keys
        for counts, keys in ((self.signature_count, sig_keys), (self.sub_count, sub_keys)):
            for key in keys:
                left = counts[key] - 1
                if left:
                    counts[key] = left
                else:
                    del counts[key]
        min_size = self.config.min_size
        buckets = self.buckets
        large = self.large
        for key in band_keys:
            members = buckets[key]
            del members[account.identity]
            if not members:
                del buckets[key]
            if len(members) < min_size:
                large.pop(key, None)
        pairs = self.pairs
        for key in pair_keys:
            members = pairs[key]
            del members[account.identity]
            if len(members) < min_size:
                self.large_pairs.pop(key, None)
                if len(members) < 2:
                    self.multi_pairs.pop(key, None)
                    if not members:
                        del pairs[key]
                        del self._pair_seq[key]
                        group = (key[0], key[2])
                        left = self._pair_batches[group] - 1
                        if left:
                            self._pair_batches[group] = left
                        else:
                            del self._pair_batches[group]
        noon_buckets = self.noon_buckets
        for key in self._noon_keys(account.signatures):
            members = noon_buckets[key]
            del members[account.identity]
            if not members:
                del noon_buckets[key]
        tool_count = self.tool_count
        for key in account.tool_keys:
            left = tool_count[key] - 1
            if left:
                tool_count[key] = left
            else:
                del tool_count[key]
        account.tool_keys = []
        account.keys = ([], [], [], [])
        account.thirds = {}
        door_holders = self._door_holders
        for door in account.doors:
            holders = door_holders[door]
            del holders[account.identity]
            if not holders:
                del door_holders[door]
        account.doors = frozenset()

    def _noon_keys(self, sigs: tuple[int, ...]) -> list[Key]:
        """The keys of ``noon_buckets`` an account of signatures ``sigs`` is under."""
        keys: list[Key] = []
        for index, kinds in self._noon_bands:
            values = [sigs[k] for k in kinds]
            if all(values):
                keys.append((index, *values))
        return keys

    def _count_payment(self, payment: str, delta: int, identity: str) -> None:
        if payment:
            left = self.payment_count.get(payment, 0) + delta
            if left > 0:
                self.payment_count[payment] = left
            else:
                self.payment_count.pop(payment, None)
            payers = self._payers.setdefault(payment, {})
            if delta > 0:
                payers[identity] = None
            else:
                payers.pop(identity, None)
                if not payers:
                    del self._payers[payment]

    def _judge(self, account: Account) -> None:
        """Keep ``harvesting`` (and its count per way) up to date with how ``account``
        behaves now (`harvests`)."""
        way = self.harvests(account)
        was = self.harvesting.get(account.identity, 0)
        if way != was:
            if was:
                self.harvest_ways[was] -= 1
                del self.harvesting[account.identity]
            if way:
                self.harvest_ways[way] += 1
                self.harvesting[account.identity] = way

    def _drop(self, identity: str) -> None:
        account = self.accounts.pop(identity)
        way = self.harvesting.pop(identity, 0)
        if way:
            self.harvest_ways[way] -= 1
        self._unindex(account)
        self._count_payment(account.payment, -1, identity)
        if account.cluster is not None:
            cluster = self.clusters.get(account.cluster)
            if cluster is not None and identity in cluster.members:
                cluster.members.remove(identity)
        self.firm.pop(identity, None)
        if self.priors.pop(identity, 0.0):
            self._dirty_priors[identity] = 0.0

    # -- clustering ------------------------------------------------------------------

    def bucket_lift(self, key: Key) -> tuple[float, float, int]:
        """(lift, surprise, distinctive kinds) of a bucket: the weakest lift and surprise
        over its kinds, and how many are distinctive of it (see the module)."""
        index = key[0]
        values = key[1:]
        members = len(self.buckets[key])
        total = len(self.accounts)
        lift = math.inf
        least_surprise = math.inf
        distinctive = 0
        distinct_share = self.config.distinct_share
        for position, kind in enumerate(self.combos[index]):
            sub_key = (
                self._band_subs[index][position],
                *[value for at, value in enumerate(values) if at != position],
            )
            agreeing = self.sub_count.get(sub_key, members)
            holders = self.signature_count.get((kind, values[position]), 1)
            share = holders / total
            lift = min(lift, members / (agreeing * share))
            least_surprise = min(least_surprise, surprise(members, agreeing, share))
            distinctive += members >= distinct_share * holders
        return lift, least_surprise, distinctive

    def pair_lift(self, key: Key) -> tuple[float, float, int]:
        """(lift, surprise, distinctive kinds) of a pair link, as `bucket_lift` does for a
        bucket: each kind against the holders of the other's signature."""
        a, b = self.pair_combos[-1 - key[0]]
        members = len(self.pairs[key])
        total = len(self.accounts)
        holders_a = self.signature_count.get((a, key[1]), 1)
        holders_b = self.signature_count.get((b, key[2]), 1)
        lift = members * total / (holders_a * holders_b)
        least_surprise = min(
            surprise(members, holders_b, holders_a / total),
            surprise(members, holders_a, holders_b / total),
        )
        share = self.config.distinct_share
        distinctive = (members >= share * holders_a) + (members >= share * holders_b)
        return lift, least_surprise, distinctive

    def _third_kind_buckets(self, account: Account, pair: tuple[int, ...]) -> list[Key]:
        """The band keys of ``account`` made of ``pair`` and one more of `PAIR_KINDS`. For
        a pair on the noon grid, which no band holds: the keys its bands would have with
        the noon batch in the place of the day's (``noon_buckets`` holds their members).
        Made once per account and pair while its signatures stay (`Account.thirds`)."""
        keys = account.thirds.get(pair)
        if keys is not None:
            return keys
        if pair[0] != CREATED_NOON:
            bands = self._third_bands_of(pair)
            keys = [key for key in account.keys[2] if key[0] in bands]
        else:
            sigs = account.signatures
            keys = []
            for index in self._third_bands_of(_on_day_grid(pair)):
                values = [sigs[CREATED_NOON if k == CREATED else k] for k in self.combos[index]]
                if all(values):
                    keys.append((index, *values))
        account.thirds[pair] = keys
        return keys

    def _pair_buckets(self, key: Key) -> dict[Key, dict[str, None]]:
        """The buckets `_third_kind_buckets` names for the holders of the pair ``key``: the
        bands' for a pair on the day grid; for one on the noon grid, ``noon_buckets`` (its
        holders grouped alike, a third kind agreeing within the noon batch: every account
        under such a key holds the pair, whose batch and value the key holds)."""
        if self.kinds_of(key)[0] != CREATED_NOON:
            return self.buckets
        return self.noon_buckets

    def _third_bands_of(self, pair: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
        """The bands made of ``pair`` and more of `PAIR_KINDS`: band index -> those kinds."""
        bands = self._third_bands.get(pair)
        if bands is None:
            bands = self._third_bands[pair] = {
                index: tuple(k for k in combo if k not in pair)
                for index, combo in enumerate(self.combos)
                if set(combo) >= set(pair) and set(combo) <= _PAIRED
            }
        return bands

    def _link_behaviour(
        self, union: UnionFind, linked: list[tuple[Key, float]], firm: dict[str, None]
    ) -> set[Key]:
        """Link the behaviour links (`_behaviour_links`); returns the keys that linked. As
        a pool does, a behaviour link joins at most one group that buckets or pairs linked
        already (at least ``min_size`` accounts): a tool's value that two operations share
        (a web app's shape, an SDK's defaults) is weaker evidence than what linked each,
        and one operation's score is not the other's. Groups behaviour links made merge:
        an operation's accounts on its prompts and on its shapes. The links whose holders
        are in two or more such groups go last."""
        min_size = self.config.min_size
        sizes: Counter[str] = Counter(union.find(x) for x in list(union.parent))
        established = {root for root, size in sizes.items() if size >= min_size}
        keys: set[Key] = set()
        # The rarer values first: each operation's own values group it before a value
        # several share is asked which established group it joins.
        links = sorted(self._behaviour_links(), key=lambda link: _count(link[3], "holders"))

        # A link whose holders are in two or more such groups goes last: by then the
        # others have brought each operation's own accounts into its group.
        def spans(link: tuple[Key, list[str], float, dict[str, object]]) -> bool:
            return len({union.find(m) for m in link[1] if m in union.parent} & established) > 1

        later = [link for link in links if spans(link)]
        first_links = [link for link in links if not spans(link)]
        for key, members, lift, figures in first_links + later:
            roots = {m: union.find(m) for m in members if m in union.parent}
            found = Counter(root for root in roots.values() if root in established)
            anchor = found.most_common(1)[0][0] if found else None
            taken = [
                m
                for m in members
                if m not in roots or roots[m] == anchor or roots[m] not in established
            ]
            if not taken:
                continue
            first = anchor if anchor is not None else taken[0]
            for member in taken:
                ours, theirs = union.find(first), union.find(member)
                if ours != theirs:
                    merged = max(sizes.pop(ours, 0), 1) + max(sizes.pop(theirs, 0), 1)
                    root = union.union(ours, theirs)
                    sizes[root] = merged
                    if ours in established or theirs in established:
                        established.discard(ours)
                        established.discard(theirs)
                        established.add(root)
            firm.update(dict.fromkeys(taken))
            linked.append((key, lift))
            self._anchors[key] = taken[0]
            keys.add(key)
            self.behaviour[key] = figures
        return keys

    def _pool(
        self,
        union: UnionFind,
        linked: list[tuple[Key, float]],
        firm: dict[str, None],
        pooled_keys: set[Key],
    ) -> None:
        """Link the pooled fragments (`_pooled_fragments`) into one group per value. A
        group linked already by buckets or pairs (at least ``min_size`` accounts) takes in
        the pool's other holders; two such groups are not merged by a pool: a value that
        two operations share across their batches (a common browser's persona) is weaker
        evidence than what linked each, and one operation's score is not the other's."""
        min_size = self.config.min_size
        # Groups as buckets and pairs linked them (an unlinked account is its own group);
        # a group a pool puts into another is renamed to it.
        group_of = {x: union.find(x) for x in union.parent}
        sizes = Counter(group_of.values())
        renamed: dict[str, str] = {}

        def group(member: str) -> str:
            found = group_of.get(member, member)
            while found in renamed:
                found = renamed[found]
            return found

        for fragments, lift in self._pooled_fragments():
            established = Counter(
                g
                for _, confirmed in fragments
                for m in confirmed
                if sizes[g := group(m)] >= min_size
            )
            anchor = established.most_common(1)[0][0] if established else None
            for key, confirmed in fragments:
                taken = []
                for member in confirmed:
                    found = group(member)
                    if found != anchor and sizes[found] >= min_size:
                        continue  # another operation's: a pool does not merge two
                    taken.append(member)
                    if anchor is None:
                        anchor = found
                    elif found != anchor:
                        renamed[found] = anchor
                        sizes[anchor] += max(sizes.pop(found, 0), 1)
                    union.union(anchor, member)
                if taken:
                    firm.update(dict.fromkeys(taken))
                    pooled_keys.add(key)
                    linked.append((key, lift))
                    self._anchors[key] = taken[0]

    def _pooled_fragments(self) -> list[tuple[list[tuple[Key, dict[str, None]]], float]]:
        """Batches of one operation that share a persona, system prompt or request shape,
        each too small to link alone (step 3c): per value, its *fragments* (the pair of a
        batch and the value) that each look like an operation's batch, pooled when the
        best subset of them passes the lift, surprise and distinctiveness tests after a
        correction for having chosen that subset. Returns (fragments with their confirmed
        holders, the pooled lift) per linking value."""
        config = self.config
        total = len(self.accounts)
        if not total:
            return []
        counts = self.signature_count
        # (pair index, value) -> batches holding the value (`_pair_batches`), and the
        # candidate fragments, of the pair keys held by two or more (in the order of
        # ``pairs``: the values' order is the pools' order).
        batches_of = self._pair_batches
        pairs = self.pairs
        candidates: dict[tuple[int, int], list[tuple[float, int, int, Key]]] = {}
        for key in sorted(self.multi_pairs, key=self._pair_seq.__getitem__):
            index, batch, value = key
            group = (index, value)
            held = len(pairs[key])
            batch_kind, kind = self.pair_combos[-1 - index]
            in_batch = counts.get((batch_kind, batch), held)
            share = counts.get((kind, value), held) / total
            # The fragment itself: the value is a good part of its batch, well above chance.
            if held < config.distinct_share * in_batch or held < config.min_lift * in_batch * share:
                continue
            candidates.setdefault(group, []).append((held / in_batch, held, in_batch, key))
        found: list[tuple[list[tuple[Key, dict[str, None]]], float]] = []
        for group, fragments in candidates.items():
            if len(fragments) < 2:
                continue
            index, value = group
            kind = self.pair_combos[-1 - index][1]
            holders = counts.get((kind, value), 1)
            share = holders / total
            tested = batches_of[group]
            # The subset of batches with the most surprising pooled count is a prefix of
            # the batches by share holding the value (linear-time subset scanning); having
            # picked ``taken`` of ``tested`` batches costs log C(tested, taken) nats.
            fragments.sort(key=lambda f: (-f[0], f[3]))
            best = 0.0
            best_taken = 0
            held = in_batches = 0
            for taken, (_, k, n, _) in enumerate(fragments, start=1):
                held += k
                in_batches += n
                if taken < 2:
                    continue
                corrected = surprise(held, in_batches, share) - _log_choose(tested, taken)
                if corrected > best:
                    best, best_taken = corrected, taken
            if best < config.min_surprise:
                continue
            chosen = fragments[:best_taken]
            held = sum(k for _, k, _, _ in chosen)
            lift = held * total / (sum(n for _, _, n, _ in chosen) * holders)
            if lift < config.min_lift or held < config.distinct_share * holders:
                continue
            # A holder links when it agrees beyond chance both with its batch and with
            # the pool across batches (on a third of persona, system prompt and shape).
            across = self._agreeing(kind, [key for _, _, _, key in chosen])
            linking = []
            for _, _, _, key in chosen:
                both = self._confirmed(key, beyond_chance=True, among=across)
                if len(both) >= 2:
                    linking.append((key, both))
            if (
                len(linking) >= 2
                and sum(len(confirmed) for _, confirmed in linking) >= config.min_size
            ):
                found.append((linking, lift))
        return found

    def _agreeing(self, pooled_kind: int, keys: list[Key]) -> set[str]:
        """The holders of a pool's fragments that share a third of `PAIR_KINDS` (not the
        batch, not the pooled kind) with other holders of the pool, more of them than its
        rarity explains (``min_lift`` times its share of all accounts), and do not mostly
        chat. An operation's accounts agree across its batches on what its software fixes
        (its system prompt, its shape); an honest account that holds a fragment by chance
        (two harness users made on one day, a person made on a batch's day) agrees with
        the pool on the commonest browser or the SDK's headers at most, as any would."""
        config = self.config
        holders = [m for key in keys for m in self.pairs[key]]
        expected = config.min_lift * len(holders) / max(len(self.accounts), 1)
        counts = self.signature_count
        thirds = [k for k in PAIR_KINDS if k not in (CREATED, pooled_kind)]  # not the batch
        agreeing: set[str] = set()
        for third in thirds:
            by_value: dict[int, list[str]] = {}
            for m in holders:
                sig = self.accounts[m].signatures[third]
                if sig:
                    by_value.setdefault(sig, []).append(m)
            for sig, sharing in by_value.items():
                if len(sharing) >= 2 and len(sharing) >= expected * counts.get((third, sig), 1):
                    agreeing.update(sharing)
        chat_below = config.min_single_turn
        return {
            m for m in agreeing if self.accounts[m].single >= chat_below * self.accounts[m].requests
        }

    def _confirmed(
        self, key: Key, beyond_chance: bool = False, among: set[str] | None = None
    ) -> dict[str, None]:
        """The holders of a linking pair that agree with another holder on a third of
        `PAIR_KINDS` too. A pair of kinds, one of them common (a web app's request shape),
        is also held by a few accounts that merely happen to (made the day a batch was):
        they rarely agree with the operation on a third thing its software fixes.
        ``beyond_chance``: the agreement counts only when more of the pair's holders share
        the third thing than its rarity explains (``min_lift`` times): among ten holders
        of a pooled fragment, a few with the commonest browser agree by chance. ``among``:
        only the holders in it are asked (None: all; the others' agreement is not looked
        for, and the chance share is still of all the pair's holders)."""
        pair = self.kinds_of(key)
        holders = self.pairs[key]
        buckets = self._pair_buckets(key)
        confirmed: dict[str, None] = {}
        chat_below = self.config.min_single_turn
        # Holders sharing a third thing of share p must number min_lift * holders * p.
        expected = self.config.min_lift * len(holders) / max(len(self.accounts), 1)
        counts = self.signature_count
        third_bands = self._third_bands_of(_on_day_grid(pair))
        accounts = self.accounts
        for identity in holders:
            if among is not None and identity not in among:
                continue
            account = accounts[identity]
            if account.single < chat_below * account.requests:
                continue
            for band in self._third_kind_buckets(account, pair):
                mates = buckets[band]
                if len(mates) < 2:
                    continue
                if beyond_chance:
                    (third,) = third_bands[band[0]]
                    if len(mates) < expected * counts.get((third, account.signatures[third]), 1):
                        continue
                confirmed[identity] = None
                break
        return confirmed

    def _agrees_with(self, account: Account, key: Key, cluster_id: str) -> bool:
        """Whether ``account``, holding the pair ``key``, agrees on a third of `PAIR_KINDS`
        with a member of the cluster (as `_confirmed` asks of a pair's holders)."""
        accounts = self.accounts
        buckets = self._pair_buckets(key)
        for band in self._third_kind_buckets(account, self.kinds_of(key)):
            for mate in buckets.get(band, ()):
                other = accounts.get(mate)
                if other is not None and other.cluster == cluster_id:
                    return True
        return False

    def kinds_of(self, key: Key) -> tuple[int, ...]:
        """The kinds of a band key (index >= 0), a pair key (index < 0) or a behaviour-link
        key (index <= `TOOL_TAG`)."""
        index = key[0]
        if index >= 0:
            return self.combos[index]
        if index <= TOOL_TAG:
            return TOOL_KEYS[TOOL_TAG - index]
        return self.pair_combos[-1 - index]

    def members_of(self, key: Key) -> dict[str, None]:
        """The accounts under a band key or a pair key."""
        return self.buckets[key] if key[0] >= 0 else self.pairs[key]

    def update(self, now: float | None = None) -> bool:
        """Recluster when due (``now``: the latest record's time by default); True if it did."""
        if now is None:
            now = self.now
        if now < self._next_recluster:
            return False
        self._expire(now)
        self.recluster()
        self._next_recluster = now + self.config.recluster_every
        return True

    def take_changed(self) -> dict[str, float]:
        """The priors that changed since the last call (identity -> prior; 0 for an account
        that left its cluster or was dropped)."""
        changed = self._dirty_priors
        self._dirty_priors = {}
        return changed

    def join_recent(self, identities: Iterable[str]) -> None:
        """Let accounts in no cluster join the cluster whose characteristic items they hold."""
        if not self.clusters:
            return
        chat_below = self.config.min_single_turn
        # Most accounts hold no joining key and no joining card: one test of two sets of
        # ints (the keys' hashes; a collision only costs the exact loop below) passes them.
        doors = self._door_hashes()
        cards = self.join_payments
        accounts = self.accounts
        for identity in identities:
            account = accounts.get(identity)
            if account is None or account.cluster is not None:
                continue
            if doors.isdisjoint(account.doors) and not (
                account.payment and account.payment in cards
            ):
                continue
            keys = account.keys
            if account.single < chat_below * account.requests:
                continue  # it mostly chats: what it shares with an operation is chance
            cluster = None
            firm = False
            for key in itertools.chain(keys[1], keys[3]):
                found = self.join_keys.get(key)
                if found is not None and key[0] < 0 and not self._agrees_with(account, key, found):
                    continue
                if found is not None and (cluster is None or found == cluster.id):
                    cluster = self.clusters[found]
                    kinds = self.subs[key[0]] if key[0] >= 0 else self.kinds_of(key)
                    firm = firm or not CHOSEN_KINDS.isdisjoint(kinds)
                    if firm:
                        break
            if not firm and account.payment:
                # The card that pays for the cluster's accounts: chosen by its operator.
                found = self.join_payments.get(account.payment)
                if found is not None and (cluster is None or found == cluster.id):
                    cluster = self.clusters[found]
                    firm = True
            if cluster is not None:
                account.cluster = cluster.id
                cluster.members.append(identity)
                cluster.joined += 1
                if firm:
                    self.firm[identity] = None
                self._set_prior(identity, cluster.score)

    def _door_hashes(self) -> frozenset[int]:
        """The hashes of the join keys."""
        if self._doors_of is not self.join_keys:
            self._doors_of = self.join_keys
            self._doors = frozenset(map(hash, self.join_keys))
        return self._doors

    def _join_candidates(self) -> list[str]:
        """The accounts that hold a key hashing like a join key or pay with a joining card,
        in the order of ``accounts`` (the only ones `join_recent` may let join)."""
        found: dict[str, None] = {}
        door_holders = self._door_holders
        for door in self._door_hashes():
            holders = door_holders.get(door)
            if holders is not None:
                found.update(holders)
        payers = self._payers
        for payment in self.join_payments:
            holders = payers.get(payment)
            if holders is not None:
                found.update(holders)
        accounts = self.accounts
        if len(found) * 16 < len(accounts):
            return sorted(found, key=lambda identity: accounts[identity].seq)
        return [identity for identity in accounts if identity in found]

    def _expire(self, now: float) -> None:
        idle = self.config.idle_seconds
        while self.accounts:
            identity, account = next(iter(self.accounts.items()))
            if now - account.last_ts < idle:
                break
            self._drop(identity)

    def recluster(self) -> None:
        config = self.config
        union = UnionFind()
        linked: list[tuple[Key, float]] = []
        # Per linking key, a member it linked: a pair's first holder may be one it did not
        # (a holder by chance, unconfirmed), in another group or in none.
        self._anchors = anchors = {}
        sub_owner: dict[Key, str] = {}
        firm: dict[str, None] = {}
        for key in self.large:
            lift, strength, distinctive = self.bucket_lift(key)
            if (
                lift >= config.min_lift
                and strength >= config.min_surprise
                and distinctive >= config.distinct_kinds
            ):
                if not CHOSEN_KINDS.isdisjoint(self.combos[key[0]]):
                    firm.update(self.buckets[key])
                linking = iter(self.buckets[key])
                first = next(linking)
                union.add(first)
                for other in linking:
                    union.union(first, other)
                linked.append((key, lift))
                anchors[key] = first
                for sub_key in self._sub_keys(key):
                    if TIMING in self.subs[sub_key[0]]:
                        continue  # everyone active at the same hours shares a slot set
                    owner = sub_owner.setdefault(sub_key, first)
                    if owner != first:
                        union.union(owner, first)
        pair_owner: dict[tuple[int, int], str] = {}
        for key in self.large_pairs:
            lift, strength, distinctive = self.pair_lift(key)
            if lift >= config.min_lift and strength >= config.min_surprise and distinctive == 2:
                confirmed = self._confirmed(key)
                if len(confirmed) < config.min_size:
                    continue
                if not CHOSEN_KINDS.isdisjoint(self.kinds_of(key)):
                    firm.update(confirmed)
                linking = iter(confirmed)
                first = next(linking)
                union.add(first)
                for other in linking:
                    union.union(first, other)
                linked.append((key, lift))
                anchors[key] = first
                # Pairs of one persona, prompt or shape with different batches (on either
                # grid): one operation (as two linking buckets that agree on all but one kind).
                owner = pair_owner.setdefault((self.kinds_of(key)[1], key[2]), first)
                if owner != first:
                    union.union(owner, first)
        behaviour_keys: set[Key] = set()
        self.behaviour = {}
        if config.behaviour_links:
            behaviour_keys = self._link_behaviour(union, linked, firm)
        pooled_keys: set[Key] = set()
        if config.pool_batches:
            self._pool(union, linked, firm, pooled_keys)
        card_links = self._merge_by_card(union) if config.merge_by_card else []
        components = [
            members
            for members in union.components().values()
            if len(members) >= config.min_size
            and self._single_turn(members) >= config.min_single_turn
        ]
        root_of = {member: i for i, members in enumerate(components) for member in members}
        evidence: list[tuple[Counter[str], int, float]] = [(Counter(), 0, 0.0) for _ in components]
        pooled = [0] * len(components)
        behaved: list[dict[str, object] | None] = [None] * len(components)
        for key, lift in linked:
            at = root_of.get(anchors[key])
            if at is None:
                continue
            kinds, buckets, best = evidence[at]
            kinds.update(KINDS[k] for k in self.kinds_of(key))
            evidence[at] = (kinds, buckets + 1, max(best, lift))
            pooled[at] += key in pooled_keys
            link_behaviour = self.behaviour.get(key)
            if link_behaviour is not None:
                kinds["behaviour"] += 1
                largest = behaved[at]
                if largest is None or _count(link_behaviour, "members") > _count(
                    largest, "members"
                ):
                    behaved[at] = link_behaviour
        for anchor in card_links:
            at = root_of.get(anchor)
            if at is not None:
                kinds, buckets, best = evidence[at]
                kinds["payment"] += 1
        previous = self.clusters
        clusters: dict[str, Cluster] = {}
        for members, (kinds, buckets, best), fragments, behaviour in zip(
            components, evidence, pooled, behaved, strict=True
        ):
            votes = Counter(
                self.accounts[m].cluster for m in members if self.accounts[m].cluster is not None
            )
            cluster_id = None
            for candidate, _ in votes.most_common():
                if candidate is not None and candidate not in clusters:
                    cluster_id = candidate
                    break
            if cluster_id is None:
                cluster_id = f"op{self._next_cluster}"
                self._next_cluster += 1
            old = previous.get(cluster_id)
            first_seen = old.first_seen if old is not None else self.now
            cluster = Cluster(cluster_id, list(members), dict(kinds), buckets, best)
            cluster.first_seen = first_seen
            cluster.pooled = fragments
            cluster.behaviour = behaviour
            clusters[cluster_id] = cluster
        for cluster in previous.values():
            for identity in cluster.members:
                account = self.accounts.get(identity)
                if account is not None:
                    account.cluster = None
        self.clusters = clusters
        for gone in [cid for cid in self._topic_unions if cid not in clusters]:
            del self._topic_unions[gone]
        self.firm = firm
        members_now: dict[str, None] = {}
        for cluster in clusters.values():
            for identity in cluster.members:
                self.accounts[identity].cluster = cluster.id
                members_now[identity] = None
        # Every other account whose signatures agree with a linking bucket joins at once
        # (those that had joined before, those not seen since the cluster formed); as they
        # do, more signatures are held mostly by the cluster: a few rounds.
        # Per cluster: members per (kind, signature), counted once and extended by the
        # members each round lets join (a round only appends to a cluster's members).
        held: dict[str, Counter[tuple[int, int]]] = {cid: Counter() for cid in clusters}
        counted: dict[str, int] = dict.fromkeys(clusters, 0)
        door_links = [kl for kl in linked if kl[0] not in pooled_keys | behaviour_keys]
        for _ in range(3):
            self._count_held(held, counted)
            # A pooled fragment is no door in: its chance holders agree with a member on
            # something common (the browser); each clustering confirms its holders anew.
            # Nor is a behaviour link: its value is a tool's, and only behaviour tells its
            # holders apart (each clustering judges them anew).
            self.join_keys = self._join_keys(door_links, held)
            self.join_payments = self._join_payments()
            before = sum(len(cluster.members) for cluster in clusters.values())
            if self.join_keys or self.join_payments:
                self.join_recent(self._join_candidates())
            if sum(len(cluster.members) for cluster in clusters.values()) == before:
                break
        for cluster in clusters.values():
            self._score(cluster)
            for identity in cluster.members:
                members_now[identity] = None
                self._set_prior(identity, cluster.score)
        for identity in list(self.priors):
            if identity not in members_now:
                del self.priors[identity]
                self._dirty_priors[identity] = 0.0

    def harvests(self, account: Account) -> int:
        """How ``account`` behaves like harvesting (step 3d), if it does: enough requests,
        mostly single-turn, mostly new topics, no word of its questions in most of them
        (not one subject, not one template), and `REASONING` (mostly asking for the
        reasoning written out) or `TURNS` (taking its turn in a pool: `takes_turns`); 0
        when it does not."""
        config = self.config
        requests = account.requests
        if (
            requests < config.harvest_min_requests
            or account.single < config.harvest_single_turn * requests
            or len(account.topics) < config.harvest_new_topics * min(requests, config.max_topics)
            or not account.worded
            or account.top_word > config.max_word_share * account.worded
        ):
            return 0
        if account.reasoned >= config.harvest_reasoning * account.single:
            return REASONING
        return TURNS if self.takes_turns(account) else 0

    def takes_turns(self, account: Account) -> bool:
        """Whether the gaps between the account's requests are as even as turns handed out
        by a pool (least recently used first: each account every n-th request of the
        stream): their coefficient of variation at most ``harvest_turn_cv``. Independent
        arrivals give about 1, people in sessions with idle nights more."""
        config = self.config
        gaps = account.gaps
        if gaps < config.harvest_turn_gaps or account.gap_sum <= 0.0:
            return False
        mean = account.gap_sum / gaps
        variance = max(account.gap_squares / gaps - mean * mean, 0.0)
        return math.sqrt(variance) <= config.harvest_turn_cv * mean

    def _behaviour_links(self) -> list[tuple[Key, list[str], float, dict[str, object]]]:
        """The behaviour links (step 3d): per value or pair of `TOOL_KEYS` and way of
        harvesting (`harvests`), the value's holders that harvest that way, when they are at
        least ``min_size``, at least ``harvest_share`` of the value's holders and more than
        chance gives (the surprise test against the share of all accounts that harvest that
        way), a pair passes the pair tests (lift against chance, both values distinctive),
        and together their topics spread. Returns (key: the value's key and the way,
        members, lift, behaviour figures) per linking key."""
        config = self.config
        accounts = self.accounts
        total = len(accounts)
        by_key: dict[Key, list[Account]] = {}
        for identity, way in self.harvesting.items():
            account = accounts[identity]
            for key in account.tool_keys:
                by_key.setdefault((*key, way), []).append(account)
        harvesting = self.harvest_ways
        counts = self.signature_count
        found: list[tuple[Key, list[str], float, dict[str, object]]] = []
        for key, members in by_key.items():
            k = len(members)
            if k < config.min_size:
                continue
            holders = self.tool_count.get(key[:-1], k)
            if k < config.harvest_share * holders:
                continue
            share = harvesting[key[-1]] / total
            strength = surprise(k, holders, share)
            if strength < config.min_surprise:
                continue
            kinds = self.kinds_of(key)
            lift = k / (holders * share)
            if len(kinds) == 2:
                # The pair's own tests, as for a pair with the batch (`pair_lift`).
                holders_a = counts.get((kinds[0], key[1]), 1)
                holders_b = counts.get((kinds[1], key[2]), 1)
                lift = holders * total / (holders_a * holders_b)
                strength = min(
                    strength,
                    surprise(holders, holders_b, holders_a / total),
                    surprise(holders, holders_a, holders_b / total),
                )
                distinct = config.distinct_share
                if (
                    lift < config.min_lift
                    or strength < config.min_surprise
                    or holders < distinct * holders_a
                    or holders < distinct * holders_b
                ):
                    continue
            # Each member's first topics: bounded work per clustering, and what the members
            # asked first is where a class's pasted assignment or a template shows.
            topics: set[int] = set()
            topic_total = 0
            for account in members:
                first = list(itertools.islice(account.topics, SPREAD_TOPICS))
                topics.update(first)
                topic_total += len(first)
            spread = len(topics) / topic_total if topic_total else 0.0
            if spread < config.min_topic_spread:
                continue
            requests = sum(account.requests for account in members)
            single = sum(account.single for account in members)
            figures: dict[str, object] = {
                "link": "+".join(KINDS[kind] for kind in kinds),
                "way": "reasoning" if key[-1] == REASONING else "turns",
                "members": k,
                "holders": holders,
                "single_turn": round(single / requests, 3),
                "reasoning": round(sum(a.reasoned for a in members) / max(single, 1), 3),
                "turns": round(sum(self.takes_turns(a) for a in members) / k, 3),
                "new_topics": round(
                    sum(len(a.topics) / min(a.requests, config.max_topics) for a in members) / k,
                    3,
                ),
                "word_share": round(sum(a.top_word / a.worded for a in members) / k, 3),
                "topic_spread": round(spread, 3),
                "harvesting_share": round(share, 3),
                "surprise": round(strength, 1),
            }
            found.append((key, [account.identity for account in members], lift, figures))
        return found

    def _merge_by_card(self, union: UnionFind) -> list[str]:
        """Join linked groups that pay with one card: a payment fingerprint held by at least
        two accounts in each of two or more groups (accounts outside an organisation), when
        those holders are at least ``join_share`` of the card's accounts. Bulk-made accounts
        are paid by a few shared cards across the operator's creation batches; an honest
        card pays for an account or a family's few, never for two groups each linked on
        its own. Returns an account of each group a card joined (its evidence)."""
        share = self.config.join_share
        counts = self.payment_count
        parent = union.parent
        merged: list[str] = []
        for payment, payers in self._payers.items():
            if len(payers) < 4:
                continue
            roots: dict[str, int] = {}
            for identity in payers:
                if identity in parent:
                    root = union.find(identity)
                    roots[root] = roots.get(root, 0) + 1
            groups = [root for root, n in roots.items() if n >= 2]
            if len(groups) < 2:
                continue
            if sum(roots[root] for root in groups) < share * counts.get(payment, 1):
                continue
            first = groups[0]
            for other in groups[1:]:
                if union.find(first) != union.find(other):
                    union.union(first, other)
                    merged.append(other)
        return merged

    def _single_turn(self, members: Sequence[str]) -> float:
        accounts = [self.accounts[m] for m in members]
        return sum(a.single for a in accounts) / max(sum(a.requests for a in accounts), 1)

    def _sub_keys(self, key: Key) -> list[Key]:
        """The sub-band keys of a band key: its signatures without each one of its kinds."""
        index = key[0]
        values = key[1:]
        return [
            (sub, *[value for at, value in enumerate(values) if at != position])
            for position, sub in enumerate(self._band_subs[index])
        ]

    def _count_held(
        self, held: dict[str, Counter[tuple[int, int]]], counted: dict[str, int]
    ) -> None:
        """Bring ``held`` (per cluster: members per (kind, signature); absent signatures, 0,
        are never asked) up to the clusters' members, of which ``counted`` (per cluster)
        are counted already."""
        accounts = self.accounts
        for cluster in self.clusters.values():
            done = counted[cluster.id]
            if done < len(cluster.members):
                held[cluster.id].update(
                    itertools.chain.from_iterable(
                        enumerate(accounts[identity].signatures)
                        for identity in itertools.islice(cluster.members, done, None)
                    )
                )
                counted[cluster.id] = len(cluster.members)

    def _join_keys(
        self, linked: list[tuple[Key, float]], held: dict[str, Counter[tuple[int, int]]]
    ) -> dict[Key, str]:
        """Sub-band keys of the linking buckets whose every signature is held mostly by the
        members of the bucket's cluster: an account agreeing on one joins that cluster.
        ``held``: per cluster, its members per (kind, signature) (`_count_held`)."""
        share = self.config.join_share
        keys: dict[Key, str] = {}
        for key, _ in linked:
            cluster_id = self.accounts[self._anchors[key]].cluster
            if cluster_id is None:
                continue
            # A pair link joins by its own pair; a band by its sub-bands.
            candidates = [key] if key[0] < 0 else self._sub_keys(key)
            for sub_key in candidates:
                kinds = self.subs[sub_key[0]] if sub_key[0] >= 0 else self.kinds_of(sub_key)
                if TIMING in kinds:
                    continue
                held_by_cluster = held.get(cluster_id)
                if held_by_cluster is not None and all(
                    held_by_cluster[kind, sig] >= share * self.signature_count.get((kind, sig), 1)
                    for kind, sig in zip(kinds, sub_key[1:], strict=True)
                ):
                    keys.setdefault(sub_key, cluster_id)
        return keys

    def _join_payments(self) -> dict[str, str]:
        """Payment fingerprints held by at least two members of one cluster, making at least
        ``join_share`` of the accounts that pay with them: an account paying with one
        joins that cluster."""
        held: dict[tuple[str, str], int] = {}
        for cluster in self.clusters.values():
            for identity in cluster.members:
                payment = self.accounts[identity].payment
                if payment:
                    at = (cluster.id, payment)
                    held[at] = held.get(at, 0) + 1
        share = self.config.join_share
        counts = self.payment_count
        return {
            payment: cluster_id
            for (cluster_id, payment), n in held.items()
            if n >= 2 and n >= share * counts.get(payment, 1)
        }

    def _score(self, cluster: Cluster) -> None:
        config = self.config
        accounts = [self.accounts[m] for m in cluster.members]
        size = len(accounts)
        requests = sum(a.requests for a in accounts)
        cluster.single_turn_share = sum(a.single for a in accounts) / max(requests, 1)
        # An account's topics only grow, in insertion order: while the cluster keeps its
        # accounts (new ones after them), the union of its topics takes in only what was
        # added since its last score.
        known = self._topic_unions.get(cluster.id)
        if known is not None and tuple(accounts[: len(known.accounts)]) == known.accounts:
            topics, topic_total = known.topics, known.total
            for account, before in zip(known.accounts, known.sizes, strict=True):
                if len(account.topics) != before:
                    topics.update(itertools.islice(account.topics, before, None))
                    topic_total += len(account.topics) - before
            for account in accounts[len(known.accounts) :]:
                topics.update(account.topics)
                topic_total += len(account.topics)
        else:
            topics = set()
            topic_total = 0
            for account in accounts:
                topics.update(account.topics)
                topic_total += len(account.topics)
        self._topic_unions[cluster.id] = _TopicUnion(
            tuple(accounts), [len(account.topics) for account in accounts], topics, topic_total
        )
        cluster.topic_spread = len(topics) / topic_total if topic_total else 0.0
        behaviour = [cluster.single_turn_share, cluster.topic_spread]
        tokens = sum(a.tokens for a in accounts)
        if tokens > 0:
            # Hours served: a member the guard refuses spends nothing while it keeps asking,
            # and holding an operation's members must not dilute its rate below the ramp.
            hours = sum(max(a.spent_ts - a.first_ts, 600.0) for a in accounts) / 3600.0
            cluster.tokens_per_member_hour = tokens / hours
            behaviour.append(_ramp(cluster.tokens_per_member_hour, *config.tokens_per_hour))
        # The linking tests already make min_size accounts improbable by chance: past twice
        # that, size adds little certainty, and an operation split into several small
        # linked groups must not wait for each to grow before its members are held.
        size_factor = 0.5 + 0.5 * _ramp(size, config.min_size, 2 * config.min_size)
        cluster.score = size_factor * (0.4 + 0.6 * sum(behaviour) / len(behaviour))

    def _set_prior(self, identity: str, prior: float) -> None:
        if self.priors.get(identity) != prior:
            self.priors[identity] = prior
            self._dirty_priors[identity] = prior

    # -- reading ---------------------------------------------------------------------

    def prior_of(self, identity: str) -> float:
        return self.priors.get(identity, 0.0)

    def cluster_of(self, identity: str) -> str | None:
        account = self.accounts.get(identity)
        return account.cluster if account is not None else None

    def report(self, sample: int = 8) -> list[dict[str, object]]:
        """Every cluster's summary, largest first."""
        ordered = sorted(self.clusters.values(), key=lambda c: (-len(c.members), c.id))
        return [cluster.summary(sample) for cluster in ordered]
