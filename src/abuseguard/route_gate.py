"""The route gate: route and plan limits (`route_limits.RouteLimiter`) around the decision.

Before the engine, a request one of its route or plan limits refuses is refused here
(`RouteGate.refusal`) unless that refusal is shadowed: nothing counted, the kernel not run.
After the decision (`RouteGate.settle`), a shadowed refusal turns an allow into a shadowed
throttle, and a served request is counted in each limit that applies, with their states
added to the decision. The Guard shows the decision to the observers once it holds these
answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from abuseguard.decision import Action, Decision

if TYPE_CHECKING:
    from abuseguard.policy import Policy
    from abuseguard.prepare import Prepared
    from abuseguard.route_limits import RouteLimiter, Verdict


class RouteGate:
    """The route and plan limits of one Guard, ahead of and after its decision."""

    def __init__(self, limiter: RouteLimiter, policy: Policy) -> None:
        self.limiter = limiter
        self.test = limiter.test
        self.shadowed = policy.shadow or Action.THROTTLE in policy.enforcement.shadow_actions

    def refusal(self, p: Prepared, verdict: Verdict) -> Decision | None:
        """The refusal when a route or plan limit refuses the request and it is enforced
        (not shadowed); None otherwise."""
        if not verdict.violated or self.shadowed or verdict.shadowed:
            return None
        return Decision(
            action=Action.THROTTLE,
            reasons=verdict.reasons,
            retry_after=verdict.retry_after,
            remaining=min(state.remaining for state in verdict.violated),
            identity=p.identity,
            policies=verdict.violated,
            cost=p.cost,
        )

    def settle(self, verdict: Verdict, decision: Decision, p: Prepared) -> None:
        """The route and plan limits' part of ``decision``, decided without them: a
        served request counted in every limit that applies, as an allow when one of them
        refused it in shadow mode (then the refusal is reported, its limits last)."""
        if not decision.served or not verdict.applied:
            return
        states, held = self.limiter.count(verdict, p.identity, p.address.ip_key, p.cost, p.ts)
        decision.held = decision.held + held
        if verdict.violated and decision.action == Action.ALLOW:  # shadowed refusal
            decision.action = Action.THROTTLE
            decision.shadow = True
            decision.reasons = verdict.reasons
            decision.retry_after = verdict.retry_after
            refused = {state.name for state in verdict.violated}
            states = tuple(state for state in states if state.name not in refused)
            decision.policies = decision.policies + states + verdict.violated
        else:
            decision.policies = decision.policies + states


__all__ = ["RouteGate"]
