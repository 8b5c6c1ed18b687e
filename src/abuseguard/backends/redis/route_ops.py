"""Route and plan limits (`Policy.routes`, `Policy.plans`) in Redis, inline mode.

The limits that apply to a request (`RouteLimiter.applying`) ride in the same call of
``lua/decide.lua`` as the app-wide ones, after them: a token bucket per limit, its window
quotas and its concurrency lease, so the script tests every limit before it counts any and
a refused request costs nothing, in any limit, on every worker. Their keys carry the
identity's hash tag (a quota ``per="ip"`` the address's, in the side call of a Cluster, as
the app-wide ones)::

    ag:{k:ab12..}:r:<limits name>:b           token bucket
    ag:{k:ab12..}:r:<limits name>:q:<quota>   window quota
    ag:{k:ab12..}:r:<limits name>:c           concurrency leases

A route bucket is not scaled by risk or load (as in the memory backend). Refusals are
enforced unless the policy shadows throttling (`Policy.shadow`, or ``throttle`` in
`Enforcement.shadow_actions`) or the refusing bucket or quota is in shadow mode
(``TokenBucket.shadow``, ``Quota.shadow``) and every other limit that refuses is too:
then the script serves and counts the request, and the guard reports the refusal in
shadow. One enforced refusal refuses the request, whichever limit was asked first. As on
the memory backend, which tests the route and plan limits before anything else, their
quotas and concurrency are asked even when a bucket or the local verdict refuses, so the
refusal names every route and plan limit that refused. Not in the deny cache: every
request with route or plan limits asks Redis (the app-wide refusals it remembers are
still answered locally).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from abuseguard.decision import PolicyState
from abuseguard.route_limits import NamedLimits, Verdict

if TYPE_CHECKING:
    from collections.abc import Callable

    from abuseguard.backends.redis.call import Reply, ScriptCall
    from abuseguard.backends.redis.keys import KeySpace
    from abuseguard.backends.redis.leases import Leases


@dataclass(slots=True)
class RouteOp:
    """One route or plan limit put into a script call, and where its answer is."""

    named: NamedLimits
    call: ScriptCall
    kind: str  # "bucket", "quota", "conc"
    index: int  # its position among the call's ops of that kind
    name: str = ""  # the quota's RateLimit name
    amount: float = 0.0
    window: float = 0.0
    rate: float = 0.0  # a bucket's refill rate, as asked
    slot: tuple[str, str, str] | None = None  # ("c:...", key, lease) of a lease
    shadow: bool = False  # its refusal is reported, the request served


@dataclass(slots=True)
class RoutePlan:
    """The route and plan limits of one request, as put into its script calls."""

    applied: tuple[NamedLimits, ...]
    cost: float
    ops: list[RouteOp] = field(default_factory=list)
    replaces_key_bucket: bool = False  # a plan's bucket is asked in the app-wide one's place

    def conc_slots(self) -> list[tuple[str, str]]:
        """(key, lease) of every lease the calls may take (given back on a failure)."""
        return [(op.slot[1], op.slot[2]) for op in self.ops if op.slot is not None]


def plan_routes(
    applied: tuple[NamedLimits, ...],
    identity: str,
    ip_identity: str,
    cost: float,
    shadow: bool,
    keys: KeySpace,
    leases: Leases,
    main: ScriptCall,
    side_for: Callable[[str], ScriptCall],
    *,
    key_scale: float = 1.0,
    key_ttl_scale: float = 1.0,
) -> RoutePlan:
    """Put the ``applied`` limits into ``main`` (and, for a quota of another identity, the
    call ``side_for(identity)`` answers). Their quotas and concurrency are asked whatever
    the local verdict and the buckets say, as the memory backend tests every route and
    plan limit before the rest, and counted only with a served request. A plan's bucket
    that replaces the app-wide one is refilled as that one would be: its rate times
    ``key_scale`` (risk and load), its key kept until it refills at its slowest
    (``key_ttl_scale``)."""
    plan = RoutePlan(applied, cost)
    main.mark_extra()
    hits = max(0, round(cost)) if math.isfinite(cost) else 0
    for named in applied:
        base = keys.route(identity, named.name)
        limits = named.limits
        if limits.bucket is not None:
            rate = max(named.per_second, 1e-9)
            ttl_rate = rate
            if named.replaces_key_bucket:
                plan.replaces_key_bucket = True
                rate = max(named.per_second * key_scale, 1e-9)
                ttl_rate = max(named.per_second * key_ttl_scale, 1e-9)
            bucket_shadow = shadow or limits.bucket.shadow
            plan.ops.append(
                RouteOp(
                    named, main, "bucket", len(main.bucket_tags), rate=rate, shadow=bucket_shadow
                )
            )
            main.bucket(base + ":b", rate, named.capacity, cost, ttl_rate, bucket_shadow, None)
        for quota, name in zip(limits.quotas, named.quota_names, strict=True):
            ident = identity if quota.per == "key" else ip_identity
            call = main if ident == identity else side_for(ident)
            call.mark_extra()
            quota_shadow = shadow or quota.shadow
            plan.ops.append(
                RouteOp(
                    named,
                    call,
                    "quota",
                    len(call.quota_tags),
                    name,
                    quota.amount,
                    quota.window,
                    shadow=quota_shadow,
                )
            )
            call.quota(
                keys.route(ident, named.name) + f":q:{quota.name}",
                quota.strategy,
                quota.amount,
                quota.window,
                hits if quota.by_cost else 1,
                quota_shadow,
                None,
                always_asked=True,
            )
        if limits.concurrency is not None:
            key = base + ":c"
            slot = (f"c:{identity}:{named.name}", key, leases.new_id())
            plan.ops.append(
                RouteOp(
                    named,
                    main,
                    "conc",
                    len(main.conc_tags),
                    amount=limits.concurrency,
                    shadow=shadow,
                )
            )
            plan.ops[-1].slot = slot
            main.conc(
                key, limits.concurrency, slot[2], leases.ttl_ms, slot, shadow, always_asked=True
            )
    return plan


def read_routes(plan: RoutePlan, replies: dict[int, Reply]) -> Verdict:
    """The route and plan limits' verdict from the replies (by ``id`` of their call):
    what refused, and the states of what the script counted with the request."""
    violated: list[PolicyState] = []
    states: list[PolicyState] = []
    reasons: list[str] = []
    held: list[str] = []
    retry_after = 0.0
    enforced = False  # a violated limit not in shadow mode
    for op in plan.ops:
        reply = replies[id(op.call)]
        named = op.named
        if op.kind == "bucket":
            tokens = reply.tokens[op.index]
            rate = op.rate
            need = min(plan.cost, named.capacity)
            refused = bool(reply.denied & (1 << op.index))
            left = tokens if tokens > 0.0 else 0.0
            state = PolicyState(
                named.bucket_name,
                named.capacity,
                named.window,
                left,
                (named.capacity - tokens) / rate,
                refused,
            )
            if refused:
                violated.append(state)
                enforced = enforced or not op.shadow
                reasons.append("rate")
                retry_after = max(retry_after, (need - tokens) / rate)
            else:
                states.append(state)
        elif op.kind == "quota":
            ran, ok, remaining, reset = reply.quotas[op.index]
            if not ran:
                continue
            state = PolicyState(op.name, op.amount, op.window, remaining, reset, not ok)
            if ok:
                states.append(state)
            else:
                violated.append(state)
                enforced = enforced or not op.shadow
                reasons.append("quota")
                retry_after = max(retry_after, reset)
        else:
            _, acquired = reply.conc[op.index]
            assert op.slot is not None
            if acquired:
                held.append(op.slot[0])
            elif reply.conc_full[op.index]:
                name = f"{named.name}-concurrency"
                violated.append(PolicyState(name, op.amount, 1.0, 0.0, 1.0, True))
                enforced = enforced or not op.shadow
                reasons.append("concurrency")
                retry_after = max(retry_after, 1.0)
    return Verdict(
        plan.applied,
        tuple(violated),
        tuple(dict.fromkeys(reasons)),
        retry_after,
        counted=tuple(states),
        held=tuple(held),
        shadowed=bool(violated) and not enforced,
    )


__all__ = ["RouteOp", "RoutePlan", "plan_routes", "read_routes"]
