"""Creation batches on two day grids, and the linking persona without patch versions
(issue #16): a burst of sign-ups across midnight links whole on the noon grid; one tool's
accounts on several patch releases of its runtime share one linking persona."""

from __future__ import annotations

import json
import random

import pytest

from abuseguard.intel.agents import AgentClassifier
from abuseguard.intel.persona import persona_hash
from abuseguard.operations import EvidenceReader, Observed, OperationLinker, OperationsConfig
from abuseguard.operations.evidence import KINDS, linking_headers
from tests.test_operations import (
    BROWSER_HEADERS,
    CHROME,
    DAY,
    NOW,
    RESIDENTIAL,
    SDK_UA,
    TOPICS,
    Account,
    created_of_world,
    honest_world,
    requests_with_created,
    run_linker,
    sdk_headers,
    spread_operation,
)

CREATED = KINDS.index("created")
NOON = KINDS.index("created_noon")
PERSONA = KINDS.index("persona")


def _items(created: float) -> tuple[int, ...]:
    return EvidenceReader().read(Observed(NOW, created=created)).items


def test_the_noon_grid_keeps_a_burst_across_midnight_whole() -> None:
    midnight = NOW - 9 * DAY
    late, early = _items(midnight - 3600.0), _items(midnight + 3600.0)
    assert late[CREATED] != early[CREATED], "the day grid cuts at midnight"
    assert late[NOON] == early[NOON] != 0
    morning, afternoon = _items(midnight + 11 * 3600.0), _items(midnight + 13 * 3600.0)
    assert morning[CREATED] == afternoon[CREATED]
    assert morning[NOON] != afternoon[NOON], "the noon grid cuts at noon"
    assert EvidenceReader().read(Observed(NOW)).items[NOON] == 0


def _persona(runtime: str, version: str = "1.59.7", **extra: str) -> int:
    headers = sdk_headers(version)
    headers["x-stainless-runtime-version"] = runtime
    headers.update(extra)
    items = EvidenceReader().read(Observed(NOW, ua=f"OpenAI/Python {version}", headers=headers))
    return items.items[PERSONA]


def test_the_linking_persona_drops_patch_versions_only() -> None:
    assert _persona("3.12.8") == _persona("3.12.9") == _persona("3.12.10rc1")
    assert _persona("3.12.8", "1.59.7") == _persona("3.12.8", "1.59.2")
    assert _persona("3.11.11") != _persona("3.12.8"), "the minor version stays"
    assert _persona("3.12.8", "1.59.7") != _persona("3.12.8", "1.61.1")
    assert _persona("3.12.8") != _persona("3.12.8", **{"x-router-trace": "1"})
    cut = linking_headers({"x-goog-api-client": "gl-python/3.11.4 grpc/1.60.0", "b": "1.2.3"})
    assert cut == {"x-goog-api-client": "gl-python/3.11 grpc/1.60", "b": "1.2.3"}
    dated = {"anthropic-version": "2023-06-01", "x-stainless-runtime-version": "v20.18.1"}
    assert linking_headers(dated) == {"anthropic-version": "2023-06-01",
                                      "x-stainless-runtime-version": "v20.18"}  # fmt: skip
    # The hot path's persona keeps the patch release.
    agent = AgentClassifier().classify(SDK_UA)
    a, b = sdk_headers(), sdk_headers()
    b["x-stainless-runtime-version"] = "3.12.8"
    assert persona_hash(tuple(a), a, agent) != persona_hash(tuple(b), b, agent)


MIDNIGHT = NOW - 9 * DAY
BURST = 14


def midnight_burst() -> list[Account]:
    """An operation made in one burst of 14 accounts from 22:42 to 01:18 UTC, seven on each
    side of midnight (fewer than ``min_size`` on each day): one router persona, each
    account streaming or not and setting ``top_p`` or not (four request shapes)."""
    return spread_operation(random.Random(0), members=BURST)


def same_night_crowd() -> list[Account]:
    """Honest accounts made the same night behind the router persona, each with a request
    shape of its own, and a few with the operation's shape that chat."""
    headers = sdk_headers(extra=("x-router-trace",))
    crowd: list[Account] = []
    for i in range(4):
        shape = {"model": "atlas-2", "max_tokens": 300 + 7 * i, "temperature": 0.1 * i}
        crowd.append((f"k:night{i}", SDK_UA, headers, RESIDENTIAL, None, shape, "night"))
    for i in range(3):
        shape = {"model": "atlas-1-reasoning", "max_tokens": 8192, "stream": True}
        crowd.append((f"k:chatty{i}", SDK_UA, headers, RESIDENTIAL, None, shape, "chatty"))
    return crowd


def _burst_world(
    config: OperationsConfig, centre: float = MIDNIGHT
) -> tuple[OperationLinker, list[str], list[str]]:
    rng = random.Random(29)
    crowd = same_night_crowd()
    world = honest_world(rng) + crowd + midnight_burst()
    created = created_of_world(rng, world)
    for i in range(BURST):
        created[f"k:spread{i}"] = centre + (i - (BURST - 1) / 2) * 720.0
    for identity, *_ in crowd:
        created[identity] = centre + rng.uniform(-1.5, 1.5) * 3600.0
    chats = frozenset(identity for identity, *_ in crowd if identity.startswith("k:chatty"))
    linker = OperationLinker(config)
    run_linker(linker, requests_with_created(rng, world, created, 1.25, 1 / 240.0, chats))
    members = [f"k:spread{i}" for i in range(BURST)]
    return linker, members, [m for m, *_ in world if not m.startswith("k:spread")]


def test_a_burst_across_midnight_links_by_its_pair_on_the_noon_grid() -> None:
    """Seven accounts a day on the day grid: no pair reaches ``min_size``; all fourteen on
    one day of the noon grid link by (noon batch, persona) in the first hour, firmly; the
    honest accounts made that night behind the same persona are not linked."""
    config = OperationsConfig(recluster_every=60.0, pool_batches=False)
    linker, members, honest = _burst_world(config)
    clustered = {m: c.id for c in linker.clusters.values() for m in c.members}
    assert all(m in clustered for m in members)
    assert len({clustered[m] for m in members}) == 1
    assert not [m for m in honest if m in clustered], "an honest account was linked"
    (cluster,) = linker.clusters.values()
    assert {"created_noon", "persona"} <= set(cluster.linked_by)
    assert "created" not in cluster.linked_by
    assert all(m in linker.firm for m in members)


def test_a_burst_across_midnight_links_with_pooling_on_and_honest_stay_out() -> None:
    linker, members, honest = _burst_world(OperationsConfig(recluster_every=60.0))
    clustered = {m: c.id for c in linker.clusters.values() for m in c.members}
    assert all(m in clustered for m in members)
    assert not [m for m in honest if m in clustered], "an honest account was linked"
    night = [m for m in honest if m.startswith(("k:night", "k:chatty"))]
    assert len(night) == 7 and all(linker.accounts[m].signatures[NOON] for m in night)


@pytest.mark.parametrize("centre", [MIDNIGHT, MIDNIGHT + DAY / 2])
def test_a_late_joiner_of_the_burst_joins_by_its_pair(centre: float) -> None:
    """An account of the burst first seen after the cluster formed joins it by the pair
    (batch, persona) when it agrees with a member on its request shape: across midnight
    by the noon grid's pair, around noon by the day grid's. The pair's first holder is an
    honest account made that night that chats (not linked): the pair is a door all the
    same, and the cluster's evidence names it."""
    config = OperationsConfig(recluster_every=60.0, pool_batches=False)
    linker, members, _ = _burst_world(config, centre)
    doors = [key for key in linker.join_keys if key[0] < 0]
    assert doors, "the linking pair is no door"
    assert next(iter(linker.pairs[doors[0]])).startswith("k:chatty")
    (cluster,) = linker.clusters.values()
    assert {"created_noon" if centre == MIDNIGHT else "created", "persona"} <= set(
        cluster.linked_by
    )
    assert all(linker.cluster_of(m) is not None for m in members)
    reader = EvidenceReader()
    headers = sdk_headers(extra=("x-router-trace",))
    shape = {"model": "atlas-1-reasoning", "max_tokens": 8192, "stream": True}
    ts = linker.now + 1.0
    seen = []
    for n in range(3):
        body = json.dumps({**shape, "messages": [{"role": "user", "content": TOPICS[n]}]})
        observed = Observed(ts + n, "", SDK_UA, headers, body, RESIDENTIAL[n], 900.0, centre + 60)
        seen.append((ts + n, reader.read(observed)))
    linker.observe("k:late", seen)
    linker.join_recent(["k:late"])
    cluster = linker.cluster_of("k:late")
    assert cluster is not None and cluster == linker.cluster_of(members[0])
    assert "k:late" in linker.firm
    # A browser account made that night agrees on nothing: it stays out.
    browser = Observed(ts, "", CHROME, dict(BROWSER_HEADERS), "{}", RESIDENTIAL[0], 0.0, centre)
    linker.observe("k:browser", [(ts, reader.read(browser))])
    linker.join_recent(["k:browser"])
    assert linker.cluster_of("k:browser") is None
