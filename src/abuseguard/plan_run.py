"""The engine and decide stages for a request that `Policy.routes` or `Policy.plans` let
through: when plans carry their own bucket or quotas, the key row is told the request's
plan first (its F_PLAN, which makes the kernel measure the risk signals against the plan's
allowances and, with the memory backend, use the plan's bucket instead of the app-wide
one), and the decision then names the plan's bucket among its limits. `mark_plan` is the
first step alone, for a round-trip backend (`round_trip`), whose store asks the plan's
bucket itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abuseguard.decision import Decision
from abuseguard.engine import layout as L
from abuseguard.engine.engine import Engine
from abuseguard.engine.table import StateTable
from abuseguard.policy import TokenBucket
from abuseguard.prepare import Prepared
from abuseguard.request import RequestInfo
from abuseguard.route_limits import RouteLimiter


def mark_plan(
    key_table: StateTable, route_limits: RouteLimiter, info: RequestInfo, p: Prepared
) -> None:
    """Write the request's plan slot into its key row (``F_PLAN``) before the kernel runs."""
    key_table.data[key_table.row(p.identity, p.ts), L.F_PLAN] = route_limits.plan_slot(info)


class PlanRun:
    """``conclude(info, p)``: the kernel run (``run``) and its Decision (``conclude``), on
    the bucket of the request's plan."""

    def __init__(
        self,
        route_limits: RouteLimiter,
        engine: Engine,
        *,
        run: Callable[[Prepared], bool],
        conclude: Callable[[Prepared, bool], Decision],
        io: Any,
        bucket: TokenBucket | None,
    ) -> None:
        self.route_limits = route_limits
        self._key_table = engine.tables[L.KIND_KEY]
        self._run = run
        self._conclude = conclude
        self._io = io  # the kernel's io vector, read as Python floats
        self._bucket = bucket

    def conclude(self, info: RequestInfo, p: Prepared) -> Decision:
        route_limits = self.route_limits
        if not route_limits.plan_slots:
            return self._conclude(p, self._run(p))
        mark_plan(self._key_table, route_limits, info, p)
        decision = self._conclude(p, self._run(p))
        io = self._io
        decision.policies = route_limits.with_plan_bucket(
            info, decision.policies, self._bucket, io[L.O_REMAINING], io[L.O_RESET],
            bool(int(io[L.O_DENIED_KINDS]) & 1 << L.KIND_KEY),
        )  # fmt: skip
        return decision


__all__ = ["PlanRun", "mark_plan"]
