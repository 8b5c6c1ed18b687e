"""Operations found in pieces: linked groups that pay with one card are one operation, and
a modest operation firmly linked is held without waiting to grow."""

from __future__ import annotations

import json
import random

from abuseguard.operations import EvidenceReader, Observed, OperationLinker, OperationsConfig
from tests.test_operations import (
    DAY,
    NOW,
    RESIDENTIAL,
    SDK_UA,
    TOPICS,
    Account,
    created_of_world,
    honest_world,
    sdk_headers,
)

BATCH_A = NOW - 12.5 * DAY
BATCH_B = NOW - 40.5 * DAY


def fragment(
    name: str, members: int, batch: float, max_tokens: int
) -> tuple[list[Account], dict[str, float]]:
    """One of an operator's tools: its own router persona and request shape, its accounts
    made in one batch; nothing but the operator's cards ties it to the operator's others."""
    headers = sdk_headers(extra=(f"x-{name}-trace",))
    shape: dict[str, object] = {"model": "atlas-1-reasoning", "max_tokens": max_tokens}
    accounts: list[Account] = [
        (f"k:{name}{i}", SDK_UA, headers, RESIDENTIAL, None, shape, "operation")
        for i in range(members)
    ]
    rng = random.Random(name)
    return accounts, {a[0]: batch + rng.uniform(-2, 2) * 3600.0 for a in accounts}


def run_world(
    payments: dict[str, str], members: int = 10, hours: float = 1.5, **config: object
) -> OperationLinker:
    rng = random.Random(31)
    honest = honest_world(rng, accounts=1200)
    created = created_of_world(rng, honest)
    world = list(honest)
    for name, batch, max_tokens in (("fleeta", BATCH_A, 6000), ("fleetb", BATCH_B, 7000)):
        accounts, made = fragment(name, members, batch, max_tokens)
        world += accounts
        created.update(made)
    requests: list[tuple[float, str, Observed]] = []
    for identity, ua, headers, asns, system, shape, _ in world:
        ts = NOW + rng.uniform(0, 3600.0)
        while ts < NOW + hours * 3600.0:
            messages = [{"role": "user", "content": rng.choice(TOPICS)}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            body = json.dumps({**shape, "messages": messages})
            seen = Observed(ts, "", ua, headers, body, rng.choice(asns), 900.0, created[identity])
            requests.append((ts, identity, seen))
            ts += rng.expovariate(1 / 240.0)
    requests.sort(key=lambda r: r[0])
    linker = OperationLinker(OperationsConfig(recluster_every=60.0, **config))  # type: ignore[arg-type]
    reader = EvidenceReader()
    batch: dict[str, list[tuple[float, object]]] = {}
    boundary = 10.0
    for ts, identity, seen in requests:
        if ts >= boundary:
            flush(linker, batch, payments)
            batch = {}
            boundary = (ts // 10.0 + 1) * 10.0
        batch.setdefault(identity, []).append((ts, reader.read(seen)))
    flush(linker, batch, payments)
    linker.update(linker.now + linker.config.recluster_every)
    return linker


def flush(
    linker: OperationLinker,
    batch: dict[str, list[tuple[float, object]]],
    payments: dict[str, str],
) -> None:
    for identity, seen in batch.items():
        linker.observe(identity, seen, payments.get(identity))  # type: ignore[arg-type]
    linker.update()
    linker.join_recent(batch)


def clusters_of(linker: OperationLinker, prefix: str) -> set[str | None]:
    return {linker.cluster_of(f"k:{prefix}{i}") for i in range(10)}


def test_two_groups_paying_with_the_operators_cards_are_one_operation() -> None:
    """Each fleet links on its own (batch and persona); three accounts of each pay with one
    card and two of each with another: one operation, the card in its evidence."""
    cards = {f"k:fleeta{i}": "card-1" for i in range(3)} | {
        f"k:fleetb{i}": "card-1" for i in range(3)
    }
    cards |= {f"k:fleeta{i}": "card-2" for i in (5, 6)} | {f"k:fleetb{i}": "card-2" for i in (7, 8)}
    linker = run_world(cards)
    (a,) = clusters_of(linker, "fleeta")
    (b,) = clusters_of(linker, "fleetb")
    assert a is not None and a == b
    assert linker.clusters[a].linked_by.get("payment", 0) >= 1
    assert len(linker.clusters[a].members) == 20
    # Without card merging: two operations.
    apart = run_world(cards, merge_by_card=False)
    (a,) = clusters_of(apart, "fleeta")
    (b,) = clusters_of(apart, "fleetb")
    assert a is not None and b is not None and a != b


def test_a_card_with_one_holder_in_each_group_joins_nothing() -> None:
    """One account of each fleet on one card (a coincidence, or a card the operator used
    once), and a card two of one fleet share with an honest account: still two
    operations."""
    cards = {"k:fleeta0": "card-1", "k:fleetb0": "card-1"}
    cards |= {"k:fleeta3": "card-2", "k:fleeta4": "card-2", "k:honest100": "card-2"}
    linker = run_world(cards)
    (a,) = clusters_of(linker, "fleeta")
    (b,) = clusters_of(linker, "fleetb")
    assert a is not None and b is not None and a != b
    assert "payment" not in linker.clusters[a].linked_by


def test_a_firmly_linked_operation_of_sixteen_accounts_is_held() -> None:
    """Sixteen accounts of one batch and persona, one question at a time: their score
    reaches the hold threshold (the size factor is full from twice ``min_size``)."""
    linker = run_world({}, members=16)
    (a,) = {linker.cluster_of(f"k:fleeta{i}") for i in range(16)}
    assert a is not None
    cluster = linker.clusters[a]
    assert len(cluster.members) == 16
    hold = linker.config.hold_score
    assert hold is not None and cluster.score >= hold
    assert all(member in linker.firm for member in cluster.members)
