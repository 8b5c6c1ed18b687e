"""The pipeline with a backend that answers the limits in a round trip (Redis in inline
mode): prepare, the engine with the backend's buckets off (the fail mode may turn the
kernel's on), the limits and the route and plan limits from the backend in one call, the
Decision, which the observers see before the backend trims it. With `Policy.plans`, the
key row is told the request's plan before the engine runs (`plan_run.mark_plan`), so the
risk signals measure a plan's client against its plan's allowances, as on the memory
backend; the plan's bucket itself is the backend's (the kernel's plan buckets stay off,
and in the fail mode's fallback buckets a plan's client meets the app-wide bucket)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abuseguard.backends.base import RoundTripDecider
from abuseguard.decide import Decider
from abuseguard.decision import Decision
from abuseguard.engine import layout as L
from abuseguard.observe import Observer, notify_observers
from abuseguard.plan_run import mark_plan
from abuseguard.prepare import Prepared
from abuseguard.request import RequestInfo
from abuseguard.route_gate import RouteGate


class RoundTripRun:
    """``check(info)`` for a non-exempt request of one Guard with a round-trip backend."""

    def __init__(
        self,
        backend: RoundTripDecider,
        *,
        prepare: Callable[[RequestInfo], Prepared],
        run_engine: Callable[[Prepared], Any],
        decider: Decider,
        route_gate: RouteGate | None,
        observers: list[Observer],
    ) -> None:
        self.backend = backend
        self._prepare = prepare
        self._run_engine = run_engine
        self._decide = decider.decide
        self._routes = route_gate
        self._observers = observers  # the Guard's list: observers added later are seen
        plans_told = route_gate is not None and bool(route_gate.limiter.plan_slots)
        self._key_table = decider.engine.tables[L.KIND_KEY] if plans_told else None

    async def check(self, info: RequestInfo) -> Decision:
        backend = self.backend
        reachable = await backend.reach(info)
        p = self._prepare(info)
        if self._key_table is not None:
            assert self._routes is not None
            mark_plan(self._key_table, self._routes.limiter, info, p)
        io = self._run_engine(p).tolist()  # a copy: other requests run the kernel meanwhile
        answer = await backend.answer(info, p, io, reachable)
        if answer.refusal is not None:
            return self._notified(info, answer.refusal)
        routes = self._routes
        if answer.routes is not None and routes is not None:
            refusal = routes.refusal(p, answer.routes)
            if refusal is not None:
                return self._notified(info, refusal)
            decision = self._decide(p, io, answer.limits, answer.buckets_known)
            routes.settle(answer.routes, decision, p)
        else:
            decision = self._decide(p, io, answer.limits, answer.buckets_known)
        self._notified(info, decision)
        if answer.policies_kept >= 0:
            decision.policies = decision.policies[: answer.policies_kept]
        if not answer.holds:
            decision.held = ()
        if answer.after is not None:
            answer.after(decision)
        return decision

    def _notified(self, info: RequestInfo, decision: Decision) -> Decision:
        if self._observers:
            notify_observers(self._observers, info, decision)
        return decision


__all__ = ["RoundTripRun"]
