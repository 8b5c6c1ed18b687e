"""Synced mode's sketches (``shared_sketches=True``): the fan-out and fan-in HyperLogLog
items a worker saw, added to the shared sketches with its next sync, and the shared
estimates written back.

The items are chosen as in the inline mode (`RedisBackend._plan_sketches`: what this
worker sent within ``sketch_refresh`` is not sent again), queued here instead of riding
in a request's script call, and sent with the next flush in the same pipeline as the
buckets: up to 99 sketches per ``decide.lua`` call (its sketch ops alone) on one server,
one call per sketch in a Cluster (the two halves of a sketch share a slot). The estimates
score the requests after that sync; a worker hears of other workers' items only with the
answer to an item of its own (as inline, where the answer rides on a request). At most
``max_pending`` sketches wait; a failed sync drops its sketches (they are sent again after
``sketch_refresh``), counted in ``dropped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abuseguard.backends.redis.call import ScriptCall

if TYPE_CHECKING:
    from abuseguard.backends.base import Stages

PER_CALL = 99  # decide.lua counts its sketch ops in two digits


class SketchQueue:
    """Collects sketch ops (the `ScriptCall.sketch` signature) until the next flush."""

    def __init__(self, stages: Stages, *, max_pending: int) -> None:
        self.stages = stages
        self.max_pending = max_pending
        self.ops: list[tuple[str, str, int, list[Any], Any]] = []
        self.dropped = 0
        self.sent = 0

    def sketch(self, current: str, previous: str, ttl_ms: int, items: list[Any], tag: Any) -> None:
        if len(self.ops) >= self.max_pending:
            self.dropped += 1
            return
        self.ops.append((current, previous, ttl_ms, items, tag))

    def clear(self) -> None:
        self.ops = []

    def calls(self, now: float | str, *, cluster: bool) -> list[ScriptCall]:
        """What is queued, as script calls (the queue is emptied)."""
        ops, self.ops = self.ops, []
        step = 1 if cluster else PER_CALL
        calls = []
        for i in range(0, len(ops), step):
            call = ScriptCall(now, force=True)
            for current, previous, ttl_ms, items, tag in ops[i : i + step]:
                call.sketch(current, previous, ttl_ms, items, tag)
            calls.append(call)
        return calls

    def write_back(self, calls: list[ScriptCall], replies: list[Any]) -> None:
        """The shared estimates into the engine's rows; failed calls are dropped."""
        rows = self.stages.rows
        for call, raw in zip(calls, replies, strict=True):
            if isinstance(raw, BaseException):
                self.dropped += len(call.sketch_tags)
                continue
            reply = call.parse(raw)
            self.sent += len(call.sketch_tags)
            for (kind, key, field), estimate in zip(call.sketch_tags, reply.sketches, strict=True):
                row = rows.row(kind, key)
                if row is not None:
                    rows.put(kind, row, field, estimate)


__all__ = ["PER_CALL", "SketchQueue"]
