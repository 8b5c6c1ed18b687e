"""The linker's structures kept as accounts are indexed and unindexed (for reclustering
cheaply; the noon grid's groups of pair holders too) equal what a recount from scratch
gives, after any sequence of observations, drops, expiries and reclusterings
(`abuseguard.operations.linker`)."""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.operations import OperationLinker, OperationsConfig
from abuseguard.operations.evidence import CREATED_NOON, N_KINDS, Evidence
from abuseguard.operations.linker import PAIRS, Key

# One step: (account, a kind it varies on and that kind's item, single-turn, seconds since
# the previous step). Accounts 0..19 are two operations' (one item on every kind but the
# varied one), the others draw every item from a small alphabet (keys collide); an item
# of None drops the account.
_step = st.tuples(
    st.integers(0, 40),
    st.integers(0, N_KINDS - 1),
    st.one_of(st.none(), st.integers(0, 9)),
    st.booleans(),
    st.sampled_from([0.0, 1.0, 40.0, 5000.0]),
)


def _items(who: int, varied: int, item: int) -> tuple[int, ...]:
    if who < 20:
        items = [1 + who % 2] * N_KINDS
        items[varied] = item
        return tuple(items)
    return tuple((who * 7 + kind * item) % 10 for kind in range(N_KINDS))


def _check(linker: OperationLinker) -> None:
    pairs = linker.pairs
    # Pair keys held by two or more, each key's place, the batches per value.
    assert set(linker.multi_pairs) == {k for k, v in pairs.items() if len(v) >= 2}
    assert set(linker._pair_seq) == set(pairs)
    assert sorted(pairs, key=linker._pair_seq.__getitem__) == list(pairs)
    assert linker._pair_batches == dict(Counter((k[0], k[2]) for k in pairs))
    # The noon grid's third-kind groups: every account under its noon-batch band keys.
    noon: dict[Key, set[str]] = defaultdict(set)
    for identity, account in linker.accounts.items():
        for pair in PAIRS:
            if pair[0] == CREATED_NOON:
                for band in linker._third_kind_buckets(account, pair):
                    noon[band].add(identity)
    assert {k: set(v) for k, v in linker.noon_buckets.items()} == dict(noon)
    # An account's third-kind band keys per pair, as made from its keys now.
    for account in linker.accounts.values():
        cached = dict(account.thirds)
        account.thirds = {}
        for pair, keys in cached.items():
            assert linker._third_kind_buckets(account, pair) == keys
        account.thirds = cached
        for pair in PAIRS:
            fresh = linker._third_kind_buckets(account, pair)
            account.thirds = {}
            assert linker._third_kind_buckets(account, pair) == fresh
            account.thirds = cached


def _pooled_by_a_full_scan(linker: OperationLinker) -> list[tuple[object, ...]]:
    """`_pooled_fragments` as it was before the incremental structures (every pair key
    scanned), for comparison."""
    saved = linker.multi_pairs, linker._pair_batches
    batches: dict[tuple[int, int], int] = defaultdict(int)
    for index, _, value in linker.pairs:
        batches[index, value] += 1
    linker.multi_pairs = {k: None for k, v in linker.pairs.items() if len(v) >= 2}
    linker._pair_batches = dict(batches)
    try:
        return [(tuple((k, dict(c)) for k, c in f), lift) for f, lift in linker._pooled_fragments()]
    finally:
        linker.multi_pairs, linker._pair_batches = saved


@settings(max_examples=60, deadline=None)
@given(st.lists(_step, min_size=1, max_size=120))
def test_incremental_structures_match_a_recount(
    steps: list[tuple[int, int, int | None, bool, float]],
) -> None:
    _run(steps)


def test_the_recount_sees_clusters_joins_and_pools() -> None:
    """The steps above link and pool (so what is checked is exercised)."""
    clusters = joined = pooled = 0
    for seed in range(30):
        rng = random.Random(seed)
        steps = [
            (
                rng.randint(0, 40),
                rng.randrange(N_KINDS),
                None if rng.random() < 0.1 else rng.randint(0, 9),
                rng.random() < 0.8,
                rng.choice([0.0, 1.0, 40.0, 5000.0]),
            )
            for _ in range(120)
        ]
        c, j, p = _run(steps)
        clusters += c
        joined += j
        pooled += p
    assert clusters and joined and pooled


def _run(steps: list[tuple[int, int, int | None, bool, float]]) -> tuple[int, int, int]:
    """Run ``steps``, checking after each; (clusters, joined, pooled fragments) seen."""
    linker = OperationLinker(
        OperationsConfig(
            min_size=3,
            max_accounts=30,
            idle_seconds=6000.0,
            recluster_every=30.0,
            min_surprise=1.0,
            min_lift=1.5,
        )
    )
    join_keys = linker._join_keys

    def checked_join_keys(
        linked: list[tuple[Key, float]], held: dict[str, Counter[tuple[int, int]]]
    ) -> dict[Key, str]:
        # The per-cluster counts, kept across the rounds of a reclustering, are a recount.
        for cluster in linker.clusters.values():
            recount = Counter(
                itertools.chain.from_iterable(
                    enumerate(linker.accounts[m].signatures) for m in cluster.members
                )
            )
            assert held[cluster.id] == recount
        return join_keys(linked, held)

    linker._join_keys = checked_join_keys  # type: ignore[method-assign]
    ts = 0.0
    clusters = joined = pooled = 0
    for who, varied, item, single, gap in steps:
        ts += gap
        identity = f"a{who}"
        if item is None:
            if identity in linker.accounts:
                linker._drop(identity)
        else:
            evidence = Evidence(_items(who, varied, item), single or who < 20, who % 5, 10.0)
            linker.observe(identity, [(ts, evidence)], payment=f"card{who % 3}")
        linker.update(ts)
        _check(linker)
        clusters += len(linker.clusters)
        joined += sum(cluster.joined for cluster in linker.clusters.values())
        pooled += sum(cluster.pooled for cluster in linker.clusters.values())
    assert [
        (tuple((k, dict(c)) for k, c in f), lift) for f, lift in linker._pooled_fragments()
    ] == (_pooled_by_a_full_scan(linker))
    for identity in list(linker.accounts):
        linker._drop(identity)
    assert linker.pairs == {} and linker.multi_pairs == {}
    assert linker._pair_seq == {} and linker._pair_batches == {}
    assert linker.noon_buckets == {}
    return clusters, joined, pooled
