"""The Guard's pipeline stages, as a shared backend reaches them (the `Stages` port of
`abuseguard.backends.base`).

A backend never receives the Guard: it gets this object, built once by the Guard, with the
few facts it may read (policy, ladder, shadowed bucket kinds, clock, load factor, the local
verdict of the ladder and network rules, which bucket refusals are shadowed, the app-wide
quotas and concurrency a plan leaves in force) and the engine's rows by identity and
bucket parameters (`EngineRows`), never its arrays. The
Guard runs the pipeline itself (`Guard.acheck`): the backend answers limits. The callables
are the stages' bound methods, so going through the port costs no extra call. It holds no
reference to the Guard, so a backend cannot change it: what the Guard needs to know of a
backend (whether the kernel's buckets decide) is a capability the backend declares
(`backends.base.kernel_buckets`), read at construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from abuseguard.engine.rows import engine_rows

if TYPE_CHECKING:
    from abuseguard.guard import Guard


class GuardStages:
    """The `Stages` port of one Guard."""

    def __init__(self, guard: Guard) -> None:
        self.policy = guard.policy
        self.rows = engine_rows(guard.engine)
        self.ladder = guard.ladder
        self.shadow_kinds = guard.decider.shadow_kinds
        self.clock = guard.clock
        self.local_verdict = guard.decider.risk_action
        self.load_factor = guard._load_factor
        self.buckets_shadowed = guard.decider.bucket_shadow
        self.route_limits = guard.route_limits
        self.app_limits_for = guard.decider.limits_for_plan


__all__ = ["GuardStages"]
