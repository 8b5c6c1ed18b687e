"""What a request gets while Redis cannot answer: the route's fail mode, with the kernel's
own buckets as an in-process fallback limiter while the circuit is open.

Fail closed: 429 with the reason ``backend_unavailable`` and a Retry-After until the next
probe (unless the local risk verdict refuses the request anyway). Fail open: the local
verdict alone; while the circuit is open the kernel's buckets come back on, each worker
holding ``1/fallback_workers`` of every bucket's rate and burst, every client starting a
new outage with a full share: once per outage (`CircuitBreaker.outages`), not at each
re-open after a failed probe, and the warning is logged once per outage too. The probe
that decides whether Redis is back is a PING (`RedisBackend.check`), so every request
of the outage goes through the fallback. Quotas and concurrency are not enforced while
failing open.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from abuseguard.backends.base import UNKNOWN_LIMITS, LimitAnswer
from abuseguard.backends.breaker import CircuitBreaker
from abuseguard.decision import DENIAL_ACTIONS, Action, Decision
from abuseguard.engine import layout as L

if TYPE_CHECKING:
    from abuseguard.backends.base import Stages
    from abuseguard.guard import Prepared
    from abuseguard.policy import FailMode
    from abuseguard.request import RequestInfo

logger = logging.getLogger("abuseguard.backends")

UNAVAILABLE = "backend_unavailable"
DENIALS = DENIAL_ACTIONS


UNKNOWN = UNKNOWN_LIMITS


class Failover:
    def __init__(
        self,
        breaker: CircuitBreaker,
        fail_mode: FailMode,
        fallback_params: Any,
        fallback_workers: int,
        stages: Stages,
        *,
        has_bucket: bool,
    ) -> None:
        self.stages = stages
        self.breaker = breaker
        self.fail_mode = fail_mode
        self.fallback_params = fallback_params  # the kernel's bucket parameters, shared
        self.fallback_workers = fallback_workers
        self.fallback = fail_mode.fallback and has_bucket
        self.active = False  # the kernel's buckets are on
        self.episode = -1
        self.failures = 0  # requests answered in a fail mode

    def fails_open(self, info: RequestInfo) -> bool:
        mode = self.fail_mode
        return mode.fails_open(info.method, info.path) if mode.routes else mode.open

    def before_engine(self, info: RequestInfo) -> None:
        """The circuit is open: the kernel's own buckets limit this request when its route
        fails open with the fallback limiter, and nothing else."""
        if self.fallback and self.fails_open(info):
            self.local_buckets(on=True)
        elif self.active:
            self.local_buckets(on=False)

    def while_open(self, info: RequestInfo, p: Prepared, io: list[float]) -> LimitAnswer:
        """The circuit is open: no Redis call at all (`before_engine` ran)."""
        self.failures += 1
        if self.fallback and self.fails_open(info):
            return LimitAnswer(UNKNOWN, True, policies_kept=1, holds=False)  # the bucket's
        return self.failed(info, p, io, counted=True)

    def failed(
        self,
        info: RequestInfo,
        p: Prepared,
        io: list[float],
        *,
        counted: bool = False,
    ) -> LimitAnswer:
        """Redis could not answer: the local verdict, then the route's fail mode."""
        if not counted:
            self.failures += 1
        stages = self.stages
        level = int(io[L.O_ACTION])
        if io[L.O_BANNED]:
            ladder = stages.ladder
            action = ladder[level] if level < len(ladder) else Action.BLOCK
            shadow = stages.policy.enforcement.shadow
        else:
            action, shadow = stages.local_verdict(level, p.profile)
        if self.fails_open(info) or (action in DENIALS and not shadow):
            return LimitAnswer(UNKNOWN, False, policies_kept=0, holds=False)
        refusal = Decision(
            Action.THROTTLE,
            (UNAVAILABLE,),
            io[L.O_SCORE],
            max(1.0, self.breaker.retry_after()),
            None,
            stages.policy.shadow,
            p.identity,
            (),
            (),
            p.cost,
        )
        return LimitAnswer(UNKNOWN, False, refusal=refusal)

    def local_buckets(self, *, on: bool) -> None:
        """Turn the kernel's own buckets on (fallback limiter) or off (Redis answers)."""
        rows = self.stages.rows
        if on:
            rows.set_bucket_parameters(self.fallback_params)
            if self.episode != self.breaker.outages:
                # A new outage: every client starts with a full (per-worker) bucket.
                self.episode = self.breaker.outages
                for kind in range(L.N_KINDS):
                    burst = float(self.fallback_params[2 * kind + 1])
                    if burst > 0.0:
                        rows.fill_tokens(kind, burst)
                logger.warning(
                    "abuseguard: Redis unavailable; limiting in-process (1/%d of each "
                    "bucket per worker) until it answers",
                    self.fallback_workers,
                )
        else:
            rows.set_bucket_parameters([0.0] * (2 * L.N_KINDS))
        self.active = on


__all__ = ["DENIALS", "UNAVAILABLE", "UNKNOWN", "Failover"]
