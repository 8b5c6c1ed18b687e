"""The Guard's pipeline stages, as a shared backend reaches them (the `Stages` port of
`abuseguard.backends.base`).

A backend never receives the Guard: it gets this object, built once by the Guard, which
names each stage a backend may run for one request (prepare, the engine, the decision from
the engine's outputs and the limits' answers, the local verdict, observers) and the few
facts it may read (policy, ladder, shadowed bucket kinds, clock, load factor). The stages
are the Guard's bound methods, so going through the port costs no extra call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from abuseguard.decision import Decision
    from abuseguard.guard import Guard
    from abuseguard.request import RequestInfo


class GuardStages:
    """The `Stages` port of one Guard."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self.policy = guard.policy
        self.engine = guard.engine
        self.ladder = guard.ladder
        self.shadow_kinds = guard._shadow_kinds
        self.clock = guard.clock
        self.prepare = guard.prepare
        self.run_engine = guard.run_engine
        self.decide = guard._decide
        self.local_verdict = guard.risk_action
        self.load_factor = guard._load_factor
        self.buckets_shadowed = guard._bucket_shadow

    def is_exempt(self, path: str) -> bool:
        exempt = self._guard._exempt
        return exempt is not None and exempt.matches(path)

    @property
    def observed(self) -> bool:
        return bool(self._guard.observers)

    def notify(self, info: RequestInfo, decision: Decision) -> None:
        self._guard._notify(info, decision)

    def use_local_buckets(self) -> None:
        """The kernel's own buckets decide (synced mode): decisions report them."""
        self._guard.local_buckets = True


__all__ = ["GuardStages"]
