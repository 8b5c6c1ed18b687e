"""Shared sketches only for clients that came back: what one client can write to Redis.

A fan-out sketch (per account) or fan-in sketch (per network) costs Redis a key of a few
hundred bytes for an hour. A flood of one-shot clients (invented API keys, rotated IPv6
addresses) would leave one such key per client and fill Redis. So a worker creates the
shared sketches of an owner (an account, a network) only once it has seen that owner
twice (its engine row counts two requests): the items of the first sighting are held
here and sent with the second. A one-shot client then writes only its bucket keys,
which expire as the bucket refills.

At most ``max_held`` owners wait (oldest dropped first, so a flood cannot grow this
table): an owner dropped before its second sighting loses the items of its first one,
which undercounts that sketch by at most one item per worker.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from abuseguard.engine import layout as L

if TYPE_CHECKING:
    from abuseguard.backends.redis.call import SketchSink
    from abuseguard.engine.rows import EngineRows

SketchOp = tuple[str, str, int, list[Any], Any]  # the arguments of SketchSink.sketch
MAX_OPS_PER_OWNER = 8  # the four fan-out dimensions, twice; fan-in holds one


class SketchProbation:
    def __init__(self, max_held: int = 4096) -> None:
        self.max_held = max_held
        self.held: dict[tuple[int, object], list[SketchOp]] = {}

    def proven(
        self, rows: EngineRows, table_kind: int, kind: int, key: Hashable, sink: SketchSink
    ) -> bool:
        """Has this worker seen the owner before the request being planned (its row in
        the ``table_kind`` table counts two requests)? If so, what was held for it goes to
        ``sink`` now."""
        row = rows.row(table_kind, key)
        if row is None or rows.get(table_kind, row, L.F_COUNT) < 2.0:
            return False
        ops = self.held.pop((kind, key), None)
        if ops:
            for op in ops:
                sink.sketch(*op)
        return True

    def hold(self, kind: int, key: object, op: SketchOp) -> None:
        """Keep a sketch op of an owner seen once, until its second sighting."""
        held = self.held
        ops = held.get((kind, key))
        if ops is None:
            if len(held) >= self.max_held:
                del held[next(iter(held))]  # the oldest waiting owner
            ops = held[(kind, key)] = []
        if len(ops) < MAX_OPS_PER_OWNER:
            ops.append(op)


__all__ = ["SketchProbation"]
