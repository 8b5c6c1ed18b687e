"""The Guard's pipeline stages, as a shared backend reaches them (the `Stages` port of
`abuseguard.backends.base`).

A backend never receives the Guard: it gets this object, built once with the Guard's
pipeline (`abuseguard.pipeline`), with the
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

from collections.abc import Callable
from typing import TYPE_CHECKING

from abuseguard.engine.rows import engine_rows

if TYPE_CHECKING:
    from abuseguard.decide import Decider
    from abuseguard.engine.engine import Engine
    from abuseguard.policy import Policy
    from abuseguard.route_limits import RouteLimiter


class GuardStages:
    """The `Stages` port of one Guard, built by `abuseguard.pipeline`."""

    def __init__(
        self,
        policy: Policy,
        engine: Engine,
        decider: Decider,
        *,
        clock: Callable[[], float],
        load_factor: Callable[[], float],
        route_limits: RouteLimiter | None,
    ) -> None:
        self.policy = policy
        self.rows = engine_rows(engine)
        self.ladder = decider.ladder
        self.shadow_kinds = decider.shadow_kinds
        self.clock = clock
        self.local_verdict = decider.risk_action
        self.load_factor = load_factor
        self.buckets_shadowed = decider.bucket_shadow
        self.route_limits = route_limits
        self.app_limits_for = decider.limits_for_plan


__all__ = ["GuardStages"]
