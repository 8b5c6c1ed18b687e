"""Which app-wide quotas and concurrency limit a request meets, given its plan.

`Policy.plans[name]` replaces the app-wide limits for that plan's clients, field by field:
a plan whose `Limits` sets ``quotas`` (a non-empty tuple) is counted in its own quotas
instead of `Policy.quotas`; one that sets ``concurrency`` holds its own slots instead of
`Policy.concurrency`. A field the plan leaves at its default (``quotas=()``,
``concurrency=None``) inherits the app-wide limit. No plan, or a plan not in
`Policy.plans`, gets the app-wide limits. (The plan's bucket replaces the app-wide bucket
the same way, in the kernel: `route_limits`.)

The plan's own quotas and concurrency are kept by `route_limits.RouteLimiter` under the
plan's names ("plan-pro-tokens", "plan-pro-concurrency"); what this module answers is
only which of the app-wide ones still apply, for every stage that asks them (decide, the
pre-check, the real-cost reconcile, the Redis planner).
"""

from __future__ import annotations

from typing import NamedTuple

from abuseguard.policy import Concurrency, Policy, Quota


class AppWideLimits(NamedTuple):
    """The app-wide quotas and concurrency limit one request meets."""

    quotas: tuple[Quota, ...]
    concurrency: Concurrency | None


class PlanOverrides:
    """The app-wide quotas and concurrency of a policy, per plan."""

    __slots__ = ("by_plan", "default")

    def __init__(self, policy: Policy) -> None:
        concurrency = policy.concurrency
        self.default = AppWideLimits(
            policy.quotas, concurrency if isinstance(concurrency, Concurrency) else None
        )
        # only the plans that replace something: the others get ``default``
        self.by_plan: dict[str, AppWideLimits] = {
            plan: AppWideLimits(
                () if limits.quotas else self.default.quotas,
                None if limits.concurrency is not None else self.default.concurrency,
            )
            for plan, limits in policy.plans.items()
            if limits.quotas or limits.concurrency is not None
        }

    def for_plan(self, plan: str | None) -> AppWideLimits:
        """The app-wide limits a client of ``plan`` (None: no plan) meets."""
        if plan is None or not self.by_plan:
            return self.default
        return self.by_plan.get(plan, self.default)


__all__ = ["AppWideLimits", "PlanOverrides"]
