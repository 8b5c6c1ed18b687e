"""The pre-check: is a request refused whatever its body says?

With content scoring on, the middleware reads the start of a POST/PUT/PATCH body before
the guard decides. A client already over a limit must not hold that decision open by
trickling its body, so the middleware first asks `Guard.precheck`, which looks only at
what needs no body: a ban, a network deny rule, the identity's token bucket, the window
quotas and the concurrency slots. When they refuse the request, the middleware refuses it
at once with the decision the full check would give, without reading the body; otherwise
it reads the body and the request is decided once, in full.

The pre-check changes no state: no token is charged, no quota hit, no slot taken, no
signal updated, and a request it does not refuse is not shown to the observers (the full
decision is). It refuses only what the full check would surely refuse:

- the identity's bucket is refilled at its base rate times the load factor, the fastest
  the kernel may refill it (risk only slows it down), and refuses only when even that
  cannot pay the request's cost. A cost callable may price the body, which is not there
  yet: it is not called and the request counts as free (only a bucket in debt refuses).
- quotas are tested with `limits`' ``test`` (no hit); concurrency slots are counted.
- a shared backend that decides in Redis (inline mode) has only what this worker
  remembers: its bans and its deny cache (buckets and quotas Redis refused lately).
- route and plan limits (`Policy.routes`, `Policy.plans`) are tested as the full check
  tests them (nothing counted).
- the risk ladder and the network buckets are left to the full check: the content and
  the fan-in the request brings may move them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from abuseguard.backends.base import UNKNOWN_LIMITS, LimitSource, RoundTripDecider
from abuseguard.backends.memory import APP_WIDE, MemoryBackend, quota_counter
from abuseguard.decision import Decision
from abuseguard.engine import layout as L
from abuseguard.engine.bucket_rules import key_bucket_shape

if TYPE_CHECKING:
    from abuseguard.guard import Guard
    from abuseguard.prepare import Prepared
    from abuseguard.request import RequestInfo


class PeekedLimits:
    """The memory backend's quotas and concurrency slots, answered without taking any."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def hit_quota(
        self, limit: str, strategy: str, identity: str, cost: int
    ) -> tuple[bool, float, float]:
        return self.backend.peek_quota(limit, strategy, identity, cost)

    def acquire(self, identity: str, limit: int) -> bool:
        return self.backend.slot_free(identity, limit)


# Limits the pre-check cannot look up are admitted: the full check asks them.
_ADMIT = UNKNOWN_LIMITS


def precheck(guard: Guard, info: RequestInfo) -> Decision | None:
    """The refusal of ``info`` decided without its body, or None when it could be served."""
    return precheck_reading(guard, info)[0]


def precheck_reading(guard: Guard, info: RequestInfo) -> tuple[Decision | None, Prepared | None]:
    """`precheck`, with what it prepared from ``info`` (None when it prepared nothing)."""
    exempt = guard.exempt_paths
    if exempt and exempt.matches(info.path):
        return None, None
    bucket = guard.policy.bucket
    if (
        info.cost is None
        and bucket is not None
        and callable(bucket.cost)
        and not isinstance(bucket.cost, Mapping)
    ):
        info = dataclasses.replace(info, cost=0.0)
    p = guard.prepare(info)
    route_limits = guard.route_limits
    if route_limits is not None:
        verdict = route_limits.test(info, p.identity, p.address.ip_key, p.cost, p.ts)
        refusal = guard.route_refusal(info, p, verdict)
        if refusal is not None:
            return refusal, p
    # The memory backend's quotas run on the guard's clock: this request's time, meanwhile.
    request_time = guard.request_time
    previous_now = request_time.now
    request_time.now = p.ts
    try:
        return _answer(guard, info, p), p
    finally:
        request_time.now = previous_now


def _answer(guard: Guard, info: RequestInfo, p: Prepared) -> Decision | None:
    io = [0.0] * L.IO_SIZE
    key_table = guard.engine.key_table
    rows = key_table.data_view  # Python floats without numpy's scalars
    row = key_table.index.get(p.identity)
    if row is not None and rows[row, L.F_COUNT] == 0.0:
        row = None  # a row handed out but never written: a new identity
    if row is not None:
        io[L.O_SCORE] = rows[row, L.F_SCORE]
        banned_until = rows[row, L.F_BANNED_UNTIL]
        if banned_until > p.ts:  # as the kernel's ban answer
            tokens = rows[row, L.F_TOKENS]
            io[L.O_BANNED] = 1.0
            io[L.O_ACTION] = float(guard.engine.params[L.P_BAN_LEVEL])
            io[L.O_REASONS] = float(1 << L.R_BANNED)
            io[L.O_RETRY_AFTER] = banned_until - p.ts
            io[L.O_REMAINING] = tokens if tokens > 0.0 else 0.0
            io[L.O_TIGHTEST_KIND] = -1.0
            return _refusal(guard, info, p, io, _ADMIT, guard.local_buckets)
    limits: LimitSource = _ADMIT
    buckets_known = guard.local_buckets
    if buckets_known:  # memory backend, Redis synced mode: the kernel's buckets decide
        _key_bucket(guard, p, row, io)
        if isinstance(guard.backend, MemoryBackend):
            limits = PeekedLimits(guard.backend)
    else:
        if isinstance(guard.backend, RoundTripDecider):
            limits, buckets_known = guard.backend.precheck_limits(p, io)
    profile = p.profile
    if (
        not io[L.O_DENIED_KINDS]
        and (profile is None or profile.rule_action is None)
        and not _limits_may_refuse(guard, p, limits)
    ):
        return None  # the common answer, without building a decision
    return _refusal(guard, info, p, io, limits, buckets_known)


def _limits_may_refuse(guard: Guard, p: Prepared, limits: LimitSource) -> bool:
    """Could a quota or the concurrency limit refuse the request? A quick look before the
    full answer: only the memory backend's limits are tested here (nothing counted)."""
    quotas, conc = guard.decider.limits_for_plan(p.plan)  # a plan may replace them
    if limits is _ADMIT or not (quotas or conc):
        return False
    if not isinstance(limits, PeekedLimits):
        return True  # remembered answers (Redis): `_refusal` reads them
    backend = limits.backend
    for quota in quotas:
        ident = p.identity if quota.per == "key" else "i:" + p.address.ip_key
        ident = quota_counter(APP_WIDE, quota, ident)
        cost = max(0, round(p.cost)) if quota.by_cost else 1
        if cost > 0 and not backend.quota_would_admit(quota.limit, quota.strategy, ident, cost):
            return True
    if conc is not None:
        ident = p.identity if conc.per == "key" else "i:" + p.address.ip_key
        return not backend.slot_free(f"c:{ident}", conc.limit)
    return False


def _key_bucket(guard: Guard, p: Prepared, row: int | None, io: list[float]) -> None:
    """The identity's bucket as the kernel would find it, at the fastest refill it may
    have: written into ``io`` as the kernel writes a refusal (or the room left)."""
    params = guard.engine.params
    rows = guard.engine.key_table.data_view
    base_rate, burst = float(params[L.P_BUCKET]), float(params[L.P_BUCKET + 1])
    plan = int(rows[row, L.F_PLAN]) if row is not None else 0
    if plan > 0:  # the plan's own bucket, as the kernel reads it (`Policy.plans`)
        slot = L.P_PLAN_BUCKET + 2 * (plan - 1)
        base_rate, burst = key_bucket_shape(
            float(params[slot]), float(params[slot + 1]), base_rate, burst
        )
    if burst <= 0.0:
        return
    if row is None:  # a new identity starts with a full bucket
        io[L.O_REMAINING] = burst
        return
    engine_run = guard.engine_run
    load = 1.0 if engine_run.inflight <= engine_run.load_target else engine_run.load_factor()
    rate = max(base_rate * load, 1e-9)
    tokens: float = rows[row, L.F_TOKENS]
    elapsed = p.ts - rows[row, L.F_BUCKET_TS]
    if elapsed > 0.0:
        tokens = min(burst, tokens + elapsed * rate)
    io[L.O_REMAINING] = tokens if tokens > 0.0 else 0.0
    io[L.O_RESET] = (burst - tokens) / rate
    need = p.cost if p.cost < burst else burst
    if tokens < need:
        io[L.O_DENIED_KINDS] = float(1 << L.KIND_KEY)
        io[L.O_RETRY_AFTER] = (need - tokens) / rate
        io[L.O_REASONS] = float(1 << L.R_RATE)


def _refusal(
    guard: Guard,
    info: RequestInfo,
    p: Prepared,
    io: list[float],
    limits: LimitSource,
    buckets_known: bool,
) -> Decision | None:
    """The full check's decision from these outputs when it refuses; None otherwise.
    Observers see a refusal only: a request that may be served is decided later."""
    decision = guard.decider.decide(p, io, limits, buckets_known)
    if decision.served:
        return None
    if guard.route_limits is not None:  # a plan's own bucket is named after the plan
        decision.policies = guard.route_limits.with_plan_bucket(
            info, decision.policies, guard.policy.bucket, io[L.O_REMAINING], io[L.O_RESET],
            bool(int(io[L.O_DENIED_KINDS]) & 1 << L.KIND_KEY),
        )  # fmt: skip
    decision.held = ()  # never taken: a refusal asks no slot (the peek took none anyway)
    if guard.observers:
        guard.notify(info, decision)
    return decision


__all__ = ["PeekedLimits", "precheck", "precheck_reading"]
