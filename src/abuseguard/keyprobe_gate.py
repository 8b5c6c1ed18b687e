"""The unverified-key gate: `keyprobe`'s budgets, ahead of the engine.

A request whose API key the app has not accepted yet draws from its address's and its
prefix's budgets of such keys (`keyprobe.UnverifiedKeyLimiter`); when one is empty the
request is refused here and goes no further: nothing counted, the kernel not run, a shared
backend not asked. The budgets live in this process, or in a shared backend's store
(Redis inline mode: `SharedBudgets`, the draw awaited). The gate answers a refusal or
None; the Guard shows a refusal to the observers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from abuseguard.decision import Action, Decision
from abuseguard.keyprobe import UNVERIFIED_KEY_REASON, UnverifiedKeyLimiter, UnverifiedRefusal

if TYPE_CHECKING:
    from abuseguard.exempt import ExemptPaths
    from abuseguard.identity import ClientAddress
    from abuseguard.policy import Policy
    from abuseguard.prepare import Prepared
    from abuseguard.request import RequestInfo

IdentityOf = Callable[["RequestInfo"], "tuple[str, bool, ClientAddress]"]


class UnverifiedKeyGate:
    """Refuses a request with a key not accepted yet once its budgets are spent."""

    def __init__(
        self,
        limiter: UnverifiedKeyLimiter,
        policy: Policy,
        *,
        identity_of: IdentityOf,
        cost_of: Callable[[RequestInfo], float],
        clock: Callable[[], float],
        exempt: ExemptPaths | None,
    ) -> None:
        self.limiter = limiter
        self.identity_of = identity_of
        self.cost_of = cost_of
        self.clock = clock
        self.exempt = exempt
        self.shadow = policy.shadow or Action.THROTTLE in policy.enforcement.shadow_actions

    def refuse(
        self, identity: str, address: ClientAddress, ts: float, cost: float
    ) -> Decision | None:
        """A refusal when the request's key is not accepted and its address's or prefix's
        budget for such keys is empty (see `keyprobe`); None to go on."""
        refusal = self.limiter.admit(identity, address, ts)
        if refusal is None:
            return None
        return self.decision(identity, refusal, cost)

    def first(
        self, info: RequestInfo, read_without_body: Prepared | None = None
    ) -> Decision | None:
        """The gate ahead of a shared backend, which prepares the request itself: a
        refused request never reaches it. ``read_without_body``: what the pre-check
        prepared, whose identity is reused."""
        if self.exempt and self.exempt.matches(info.path):
            return None
        if read_without_body is None:
            identity, has_account, address = self.identity_of(info)
        else:
            p = read_without_body
            identity, has_account, address = p.identity, p.has_account, p.address
        if not has_account:
            return None
        ts = info.ts if info.ts is not None else self.clock()
        return self.refuse(identity, address, ts, self.cost_of(info))

    async def first_shared(self, info: RequestInfo) -> Decision | None:
        """`first` with the budgets in a shared backend's store (Redis inline mode)."""
        if self.exempt and self.exempt.matches(info.path):
            return None
        identity, has_account, address = self.identity_of(info)
        if not has_account:
            return None
        ts = info.ts if info.ts is not None else self.clock()
        store = self.limiter.store
        assert store is not None
        refusal = await store.admit(identity, address, ts)
        if refusal is None:
            return None
        return self.decision(identity, refusal, self.cost_of(info))

    def decision(self, identity: str, refusal: UnverifiedRefusal, cost: float) -> Decision:
        return Decision(
            action=Action.THROTTLE,
            reasons=(UNVERIFIED_KEY_REASON,),
            retry_after=refusal.retry_after,
            remaining=min(state.remaining for state in refusal.policies),
            shadow=self.shadow,
            identity=identity,
            policies=refusal.policies,
            cost=cost,
        )


__all__ = ["UnverifiedKeyGate"]
