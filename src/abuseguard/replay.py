"""Replay trace records through a guard in virtual time and count what it decided.

The loop is deliberately lean: per record it asks the guard for a decision, counts the
outcome, and reports the origin's answer back with ``guard.complete``. Time is the
records' ``ts`` (the guard's clock is driven by ``RequestInfo.ts``); nothing sleeps.

Completion follows what the middleware would see. A request the app handles (served in
full, degraded, or shadowed) completes with the trace's ``status`` at ``ts + duration``
when the record has a ``duration`` (so concurrency limits and the in-flight load see
overlapping requests), else at once. A request the guard refused completes at once with
the status the guard answered with (429 for throttle, 403 for block and challenge): the
origin never ran it.

The trace's ``cost`` is the actual cost, known after the response. ``cost_mode`` says
what the guard learns of it:

* ``after``: passed to ``complete(cost=...)``, as the middleware does when the app
  reports its real cost (``TokenBucket.cost_header``);
* ``upfront``: put into ``RequestInfo.cost`` before ``check`` (a clairvoyant estimate);
* ``ignore``: never shown; buckets charge what the policy says a request costs;
* ``auto`` (default): ``after`` when the policy's bucket names a ``cost_header``, else
  ``ignore``, so the trace's unit (tokens) is only used where the policy counts in it.

Whatever the mode, a served request's cost reaches a guard whose ``complete`` takes
``usage`` (``abuseguard.Guard``) after its response, as the account's spend: the
``spend`` signal counts the real cost per day whether or not the limits count in it.

Records are taken in batches of ``BATCH`` records. When the guard fingerprints request
bodies (``guard.content``, a ``ContentFingerprinter``), the bodies of a batch are
fingerprinted together first (``ContentFingerprinter.prime``, the batch entry point): the
guard's own ``fingerprint`` call for each of them then answers what was computed, and the
fingerprints are the same, so the decisions are those of a record-by-record replay.

With a ``lane`` (an `abuseguard.lane.BackgroundLane` among the guard's observers), the
lane runs in the records' time as production runs it in real time: it is flushed
whenever a record's ``ts`` reaches the next multiple of its ``interval`` (before that
record is decided), and once at the end; each served request's trace cost is handed to
``lane.completed``. The flush points depend only on the records, so two replays of one
trace give one report. ``lane_seconds`` is the time spent in its flushes.

``decisions_per_second`` counts only the time spent inside the guard (``check``,
``complete`` and the batch fingerprinting), so it measures the guard, not JSON parsing;
``records_per_second`` is the wall rate.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from abuseguard.decision import Action, Decision
from abuseguard.exempt import ExemptPaths
from abuseguard.path_templates import PathTemplates
from abuseguard.policy import Policy
from abuseguard.report import ReportBuilder
from abuseguard.request import RequestInfo
from abuseguard.traces import TraceRecord

UNKNOWN_LABEL = "unknown"
PROGRESS_EVERY = 8192
BATCH = 256
COST_MODES: tuple[str, ...] = ("auto", "after", "upfront", "ignore")

REFUSAL_STATUS: dict[Action, int] = {
    action: action.refusal_status for action in Action if action.refusal_status is not None
}


class GuardLike(Protocol):
    """What replay needs from a guard: ``abuseguard.Guard`` satisfies it."""

    def check(self, info: RequestInfo) -> Decision: ...

    def complete(
        self,
        info: RequestInfo,
        decision: Decision,
        *,
        status: int | None = ...,
        cost: float | None = ...,
    ) -> None: ...


@dataclass(slots=True)
class ReplayTiming:
    """How long the replay took: ``guard_seconds`` inside the guard, ``elapsed`` in all."""

    records: int = 0
    guard_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    cost_mode: str = "ignore"
    lane_seconds: float = 0.0
    lane_flushes: int = 0

    @property
    def decisions_per_second(self) -> float | None:
        """Decisions per second of the guard, its background lane included."""
        busy = self.guard_seconds + self.lane_seconds
        if not self.records or busy <= 0:
            return None
        return self.records / busy

    @property
    def records_per_second(self) -> float | None:
        if not self.records or self.elapsed_seconds <= 0:
            return None
        return self.records / self.elapsed_seconds


def resolve_cost_mode(guard: Any, mode: str) -> str:
    """``auto`` -> ``after`` if the guard's policy reports real costs, else ``ignore``."""
    if mode not in COST_MODES:
        raise ValueError(f"cost mode must be one of {', '.join(COST_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    bucket = getattr(getattr(guard, "policy", None), "bucket", None)
    return "after" if getattr(bucket, "cost_header", None) else "ignore"


def takes_usage(complete: Callable[..., object]) -> bool:
    """Whether ``complete`` takes a ``usage`` keyword (the spend of a served request)."""
    try:
        parameters = inspect.signature(complete).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "usage" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def content_prefetch(guard: Any) -> Callable[[list[TraceRecord]], object] | None:
    """A function fingerprinting the bodies of a batch of records ahead of ``guard``, or
    None when the guard fingerprints no bodies."""
    prime = getattr(getattr(guard, "content", None), "prime", None)
    if prime is None or not getattr(guard, "scoring_on", True):
        return None
    exempt = ExemptPaths(getattr(getattr(guard, "policy", None), "exempt_paths", None) or ())

    def prefetch(batch: list[TraceRecord]) -> object:
        # What the guard fingerprints: a non-empty body of a path it does not exempt.
        return prime(
            [
                (info.body, info.headers.get("content-type"))
                for info in [record.info for record in batch]
                if info.body and not exempt.matches(info.path)
            ]
        )

    return prefetch


def run_replay(
    records: Iterable[TraceRecord],
    guard: GuardLike,
    builder: ReportBuilder,
    *,
    limit: int | None = None,
    cost_mode: str = "auto",
    on_progress: Callable[[int], None] | None = None,
    on_decision: Callable[[TraceRecord, Decision], None] | None = None,
    lane: Any = None,
) -> ReplayTiming:
    """Feed ``records`` (in time order) to ``guard``; counts go into ``builder``.

    ``limit`` stops after that many records. ``on_progress(n)`` is called every few
    thousand records with the number replayed so far; ``on_decision(record, decision)``
    with every decision (e.g. ``DecisionWriter.add``). ``lane``: a background lane
    observing ``guard``, flushed in virtual time (see the module docstring).
    """
    mode = resolve_cost_mode(guard, cost_mode)
    upfront = mode == "upfront"
    report_cost = mode == "after"
    report_usage = not report_cost and takes_usage(guard.complete)
    track_inflight = isinstance(getattr(guard, "inflight", None), int)
    guard_any: Any = guard
    check = guard.check
    complete = guard.complete
    add = builder.add
    clock = time.perf_counter
    push = heapq.heappush
    pop = heapq.heappop
    refusal = REFUSAL_STATUS
    pending: list[
        tuple[float, int, RequestInfo, Decision, int | None, float | None, float | None]
    ] = []
    prefetch = content_prefetch(guard)
    # Route limits and cost maps name templates ("/v1/models/{model}"); a trace has paths.
    policy = getattr(guard, "policy", None)
    templates = PathTemplates.of_policy(policy) if isinstance(policy, Policy) else None
    # Batch entry points (abuseguard.Guard on the memory backend): read a batch, then decide.
    batched = hasattr(guard, "prepare_many") and not getattr(
        getattr(guard, "backend", None), "shared", False
    )
    prepare_many = guard_any.prepare_many if batched else None
    check_prepared: Any = guard_any.check_prepared if batched else None
    guard_seconds = 0.0
    lane_seconds = 0.0
    lane_flushes = 0
    interval = float(lane.interval) if lane is not None else 0.0
    next_flush = -float("inf") if lane is not None else float("inf")
    completed = lane.completed if lane is not None else None
    count = 0
    source = iter(records)
    started = clock()
    while True:
        size = BATCH if limit is None else min(BATCH, limit - count)
        batch = list(itertools.islice(source, size)) if size > 0 else []
        if not batch:
            break
        if upfront:
            for record in batch:
                record.info.cost = record.cost
        if templates is not None:
            for record in batch:
                info = record.info
                if info.route is None:
                    info.route = templates.template(info.path)
        prepared: list[Any] | None = None
        t0 = clock()
        if prefetch is not None:
            prefetch(batch)
        if prepare_many is not None:
            prepared = prepare_many([record.info for record in batch])
        guard_seconds += clock() - t0
        for j, record in enumerate(batch):
            info = record.info
            ts = info.ts
            if ts is None:  # every trace reader sets it; a hand-made record may not
                raise TypeError(f"run_replay needs timed records; line {record.line_no} has no ts")
            while pending and pending[0][0] <= ts:
                _, _, done_info, done_decision, status, cost, usage = pop(pending)
                t0 = clock()
                if usage is None:
                    complete(done_info, done_decision, status=status, cost=cost)
                else:
                    guard_any.complete(
                        done_info, done_decision, status=status, cost=cost, usage=usage
                    )
                guard_seconds += clock() - t0
            if ts >= next_flush:
                if next_flush > -float("inf"):
                    t0 = clock()
                    lane.flush()
                    lane_seconds += clock() - t0
                    lane_flushes += 1
                next_flush = (ts // interval + 1.0) * interval
            if track_inflight:
                guard_any.inflight = len(pending)
            t0 = clock()
            decision = check(info) if prepared is None else check_prepared(info, prepared[j])
            guard_seconds += clock() - t0
            label = record.label or UNKNOWN_LABEL
            add(record.actor or info.key or info.ip, label, record.kind or label, decision, ts)
            if on_decision is not None:
                on_decision(record, decision)
            refused = None if decision.served else refusal.get(decision.action, 403)
            if completed is not None and refused is None:
                completed(decision.identity, record.cost)
            cost = record.cost if report_cost else None
            usage = record.cost if report_usage else None
            duration = record.duration
            if refused is None and duration:
                push(pending, (ts + duration, count, info, decision, record.status, cost, usage))
            else:
                t0 = clock()
                if refused is None and usage is not None:
                    guard_any.complete(info, decision, status=record.status, usage=usage)
                elif refused is None:
                    complete(info, decision, status=record.status, cost=cost)
                else:
                    complete(info, decision, status=refused, cost=None)
                guard_seconds += clock() - t0
            count += 1
            if on_progress is not None and not count % PROGRESS_EVERY:
                on_progress(count)
    t0 = clock()
    while pending:
        _, _, done_info, done_decision, status, cost, usage = pop(pending)
        if usage is None:
            complete(done_info, done_decision, status=status, cost=cost)
        else:
            guard_any.complete(done_info, done_decision, status=status, cost=cost, usage=usage)
    guard_seconds += clock() - t0
    if lane is not None and count:
        t0 = clock()
        lane.flush()
        lane_seconds += clock() - t0
        lane_flushes += 1
    if track_inflight:
        guard_any.inflight = 0
    timing = ReplayTiming(count, guard_seconds, clock() - started, mode, lane_seconds, lane_flushes)
    if on_progress is not None:
        on_progress(count)
    return timing
