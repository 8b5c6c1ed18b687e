"""Run a mix: build every scenario's sources, merge them in time order, write JSONL."""

from __future__ import annotations

import gzip
import heapq
import io
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from abuseguard.sim.core import SimContext, Source
from abuseguard.sim.scenarios import FACTS_MIXES, MIXES, SCENARIOS
from abuseguard.sim.world import World

# 2026-03-10 14:00 UTC, a Tuesday afternoon in Europe and morning in the Americas.
DEFAULT_START = 1773151200.0


@dataclass
class SimSummary:
    """What was written: lines per scenario, timing, and the world for mmdb export."""

    lines: int = 0
    per_scenario: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    world: World | None = None


def build_sources(
    ctx: SimContext,
    mix: Mapping[str, Mapping[str, Any]],
    only: tuple[str, ...] = (),
) -> list[tuple[str, Source]]:
    sources: list[tuple[str, Source]] = []
    for name, overrides in mix.items():
        if only and name not in only:
            continue
        scenario = SCENARIOS[name]
        params = scenario.make_params(overrides)
        sources.extend((name, source) for source in scenario.build(ctx, params))
    return sources


def _tagged(name: str, source: Source, counts: Counter[str]) -> Iterator[tuple[float, str]]:
    n = 0
    try:
        for item in source:
            n += 1
            yield item
    finally:
        counts[name] += n


def simulate(
    out: IO[str],
    *,
    mix: str | Mapping[str, Mapping[str, Any]] = "default",
    seed: int = 0,
    hours: float = 6.0,
    scale: float = 1.0,
    start: float = DEFAULT_START,
    enrich: bool = True,
    only: tuple[str, ...] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    account_facts: bool | None = None,
) -> SimSummary:
    """Write the trace of ``mix`` to ``out``; same arguments give byte-identical output.
    ``account_facts`` adds what the host app knows about each account (the ``account``
    field); None: the mix's own choice (on for ``capable``)."""
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    chosen = dict(MIXES[mix] if isinstance(mix, str) else mix)
    for name, params in (overrides or {}).items():
        chosen[name] = {**chosen.get(name, {}), **params}
    unknown = [name for name in (*chosen, *only) if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)}")
    absent = [name for name in only if name not in chosen]
    if absent:
        raise ValueError(f"not in the mix (add it with --set): {', '.join(absent)}")
    started = time.perf_counter()
    world = World(seed=seed, start=start, enrich=enrich)
    if account_facts is None:
        account_facts = isinstance(mix, str) and mix in FACTS_MIXES
    ctx = SimContext(
        world=world, seed=seed, start=start, hours=hours, scale=scale, account_facts=account_facts
    )
    summary = SimSummary(world=world)
    counts: Counter[str] = Counter()
    streams = [_tagged(name, source, counts) for name, source in build_sources(ctx, chosen, only)]
    write = out.write
    lines = 0
    batch: list[str] = []
    for _, line in heapq.merge(*streams):
        batch.append(line)
        if len(batch) >= 4096:
            batch.append("")
            write("\n".join(batch))
            lines += len(batch) - 1
            batch = []
    if batch:
        batch.append("")
        write("\n".join(batch))
        lines += len(batch) - 1
    summary.lines = lines
    summary.per_scenario = counts
    summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def open_output(path: str) -> Iterator[IO[str]]:
    """A text stream for ``path``: ``-`` is stdout; ``.gz`` is gzip (no timestamp, so
    the same trace gives the same bytes)."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if target.suffix == ".gz":
        with (
            open(target, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed,
            io.TextIOWrapper(packed, encoding="utf-8", newline="\n") as text,
        ):
            yield text
        return
    with open(target, "w", encoding="utf-8", newline="\n") as text:
        yield text
