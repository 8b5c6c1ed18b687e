"""Limits per route and per plan (`Policy.routes`, `Policy.plans`), beside the app-wide ones.

The app-wide bucket stays in the kernel. A plan's own bucket replaces it for the plan's
clients (`Policy.plans`: the kernel reads the plan's bucket through the key row's
``F_PLAN``, or a round-trip backend asks the plan's bucket in place of the app-wide one),
with the app-wide bucket's risk and load scaling; it is named after the plan in the
RateLimit headers ("plan-pro-default"). A plan's quotas and concurrency are kept here
like any plan limit; when the plan sets them, the app-wide ones no longer apply to its
clients (`plan_overrides`). Route and plan limits are kept per identity and limit name,
where the backend keeps its limits:

- memory backend: here, in Python: token buckets in a bounded dict, quotas and concurrency
  slots through the memory backend. A request is first tested against every limit that
  applies, without counting (`RouteLimiter.test`); it is counted only once the guard serves
  it (`RouteLimiter.count`), so a refused request costs nothing.
- a shared backend that answers a request's limits in one round trip
  (``counts_route_limits``: Redis in inline mode): in its store, tested and counted
  atomically in the same call as the app-wide limits (`backends.redis.route_ops`); its
  answer comes back as a `Verdict` already counted.

Other backends (Redis in synced mode) refuse route and plan limits at construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from abuseguard.backends.base import Backend
from abuseguard.backends.memory import MemoryBackend, quota_counter
from abuseguard.decision import PolicyState
from abuseguard.engine.layout import MAX_PLAN_BUCKETS
from abuseguard.engine.params import plan_slots
from abuseguard.errors import ConfigError
from abuseguard.model_limits import ModelLimits
from abuseguard.policy import Concurrency, Limits, Policy, Quota, TokenBucket
from abuseguard.request import RequestInfo


def limit_name(prefix: str, key: str) -> str:
    """A RateLimit-header-safe name for a route pattern or plan: "route-POST-v1-chat"."""
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-" for c in key)
    return "-".join(part for part in (prefix, *cleaned.split("-")) if part)


class NamedLimits:
    """A route's or plan's `Limits` under its name, with what each request reads of them
    worked out once (names, bucket shape)."""

    __slots__ = (
        "bucket_name",
        "capacity",
        "limits",
        "name",
        "per_second",
        "quota_names",
        "replaces_key_bucket",
        "window",
    )

    def __init__(self, name: str, limits: Limits, *, replaces_key_bucket: bool = False) -> None:
        self.name = name
        self.limits = limits
        # A plan's bucket takes the app-wide bucket's place (not kept beside it).
        self.replaces_key_bucket = replaces_key_bucket and limits.bucket is not None
        bucket = limits.bucket
        self.bucket_name = f"{name}-{bucket.name}" if bucket is not None else ""
        self.capacity = bucket.capacity if bucket is not None else 0.0
        self.per_second = bucket.per_second if bucket is not None else 0.0
        self.window = bucket.window if bucket is not None else 0.0
        self.quota_names = tuple(f"{name}-{quota.name}" for quota in limits.quotas)


@dataclass(slots=True)
class Verdict:
    """What the route and plan limits say about one request: before anything is counted
    (``counted`` None, the memory backend), or as a round-trip backend answered it, with
    the states of the limits it counted (``counted``) and the slots it took (``held``).
    ``shadowed``: every limit in ``violated`` is in shadow mode (``Quota.shadow``), so
    the refusal is reported and the request served."""

    applied: tuple[NamedLimits, ...]
    violated: tuple[PolicyState, ...]
    reasons: tuple[str, ...]
    retry_after: float
    counted: tuple[PolicyState, ...] | None = None
    held: tuple[str, ...] = ()
    shadowed: bool = False


class RouteLimiter:
    """Route and plan limits of a policy, kept per identity: in this process with the
    memory backend, in the store of a backend that ``counts_route_limits``."""

    def __init__(self, policy: Policy, backend: Backend, max_buckets: int) -> None:
        part = "Policy.routes" if policy.routes else "Policy.plans"
        self._memory: MemoryBackend | None = None
        self._remote: Backend | None = None
        if isinstance(backend, MemoryBackend):
            self._memory = backend
        elif backend.counts_route_limits:
            self._remote = backend
        elif backend.decides_locally:
            raise ConfigError(
                part,
                f"{part} is not supported by the {type(backend).__name__} (Redis synced "
                "mode): route and plan limits are tested and counted in the store with each "
                "request, which synced mode never waits for; use mode=inline (the default)",
            )
        else:
            raise ConfigError(part, f"{part} is not supported by the {type(backend).__name__}")
        self.routes: dict[str, NamedLimits] = {
            pattern: NamedLimits(limit_name("route", pattern), limits)
            for pattern, limits in policy.routes.items()
        }
        self.plans: dict[str, NamedLimits] = {
            plan: NamedLimits(limit_name("plan", plan), limits, replaces_key_bucket=True)
            for plan, limits in policy.plans.items()
        }
        # plan -> its slot in the kernel's plan parameters, written in the client's key row
        # (`plan_run`) on every backend: the risk signals measure the client against its
        # plan's allowances (``P_PLAN_ALLOWANCE``). With the memory backend the kernel's key
        # bucket also takes the plan's shape (``P_PLAN_BUCKET``); a round-trip backend asks
        # the plan's bucket itself (its kernel buckets are off). Slots past
        # ``MAX_PLAN_BUCKETS`` have no parameters (possible only on a round-trip backend,
        # which keeps any number of plan buckets): such a plan's clients are measured
        # against the app-wide allowances.
        self.plan_slots = {
            plan: slot for plan, slot in plan_slots(policy).items() if slot <= MAX_PLAN_BUCKETS
        }
        with_bucket = sum(1 for limits in policy.plans.values() if limits.bucket is not None)
        if self._memory is not None and with_bucket > MAX_PLAN_BUCKETS:
            raise ConfigError(
                "Policy.plans",
                f"at most {MAX_PLAN_BUCKETS} plans may carry their own bucket, got {with_bucket}",
            )
        # a plan's own limits for some routes, in place of `Policy.routes` for its clients
        self.plan_routes: dict[str, dict[str, NamedLimits]] = {
            plan: {
                pattern: NamedLimits(limit_name(f"plan-{plan}-route", pattern), route_limits)
                for pattern, route_limits in limits.routes.items()
            }
            for plan, limits in policy.plans.items()
            if limits.routes
        }
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        parents = (
            *self.routes.values(),
            *self.plans.values(),
            *(n for routes in self.plan_routes.values() for n in routes.values()),
        )
        self.models = ModelLimits.build(parents, NamedLimits, limit_name)
        windows = [
            named.limits.bucket.window
            for named in (*parents, *(self.models.all() if self.models else ()))
            if named.limits.bucket is not None
        ]
        self._full_after = max(windows, default=0.0)
        self._max_buckets = max_buckets

    @classmethod
    def build(cls, policy: Policy, backend: Backend) -> RouteLimiter | None:
        if not policy.routes and not policy.plans:
            return None
        return cls(policy, backend, policy.max_identities)

    def applying(self, info: RequestInfo) -> tuple[NamedLimits, ...]:
        """The route's and the plan's limits for ``info`` (HEAD follows GET); a plan's own
        limits for the route replace the route's."""
        found: list[NamedLimits] = []
        plan = info.plan
        own_routes = self.plan_routes.get(plan) if plan is not None else None
        route = (_match(own_routes, info) if own_routes else None) or _match(self.routes, info)
        if route is not None:
            found.append(route)
        if plan is not None:
            plan_limits = self.plans.get(plan)
            if plan_limits is not None:
                found.append(plan_limits)
        if self.models is not None:
            self.models.extend(found, info)
        return tuple(found)

    # -- token buckets ------------------------------------------------------------------

    def _tokens(self, key: tuple[str, str], named: NamedLimits, now: float) -> float:
        state = self._buckets.get(key)
        if state is None:
            return named.capacity
        tokens, last = state
        refilled = tokens + (now - last) * named.per_second if now > last else tokens
        return refilled if refilled < named.capacity else named.capacity

    @staticmethod
    def _bucket_state(named: NamedLimits, tokens: float, violated: bool) -> PolicyState:
        reset = (named.capacity - tokens) / named.per_second
        return PolicyState(named.bucket_name, named.capacity, named.window, tokens, reset, violated)

    # -- decide and count -----------------------------------------------------------------

    def test(
        self, info: RequestInfo, identity: str, ip_key: str, cost: float, now: float
    ) -> Verdict:
        """Would every route and plan limit admit this request? Nothing is counted. With
        a round-trip backend nothing is known before its call: every limit admits."""
        return self.test_limits(self.applying(info), identity, ip_key, cost, now)

    def test_limits(
        self,
        applied: tuple[NamedLimits, ...],
        identity: str,
        ip_key: str,
        cost: float,
        now: float,
    ) -> Verdict:
        """`test` for the limits ``applied`` (route-local limits bring their own)."""
        if self._memory is None:
            return Verdict(applied, (), (), 0.0)
        memory = self._memory
        violated: list[PolicyState] = []
        reasons: list[str] = []
        retry_after = 0.0
        enforced = False  # a violated limit not in shadow mode
        for named in applied:
            limits = named.limits
            bucket = limits.bucket
            if bucket is not None and not named.replaces_key_bucket:
                tokens = self._tokens((identity, named.bucket_name), named, now)
                if tokens < cost:
                    violated.append(self._bucket_state(named, tokens, True))
                    enforced = enforced or not bucket.shadow
                    reasons.append("rate")
                    retry_after = max(retry_after, (cost - tokens) / named.per_second)
            for quota, name in zip(limits.quotas, named.quota_names, strict=True):
                ident = identity if quota.per == "key" else "i:" + ip_key
                hits = max(0, round(cost)) if quota.by_cost else 1
                key = _quota_key(named, quota, ident)
                if not memory.quota_fits(quota.limit, quota.strategy, key, hits):
                    remaining, reset = memory.quota_state(quota.limit, quota.strategy, key)
                    violated.append(
                        PolicyState(name, quota.amount, quota.window, remaining, reset, True)
                    )
                    enforced = enforced or not quota.shadow
                    reasons.append("quota")
                    retry_after = max(retry_after, reset)
            if limits.concurrency is not None:
                slot = f"c:{identity}:{named.name}"
                if not memory.slot_free(slot, limits.concurrency):
                    name = f"{named.name}-concurrency"
                    violated.append(PolicyState(name, limits.concurrency, 1.0, 0.0, 1.0, True))
                    enforced = True
                    reasons.append("concurrency")
                    retry_after = max(retry_after, 1.0)
        return Verdict(
            applied,
            tuple(violated),
            tuple(dict.fromkeys(reasons)),
            retry_after,
            shadowed=bool(violated) and not enforced,
        )

    def count(
        self, verdict: Verdict, identity: str, ip_key: str, cost: float, now: float
    ) -> tuple[tuple[PolicyState, ...], tuple[str, ...]]:
        """Count a served request in every limit ``verdict`` found; their states and the
        concurrency slots taken (to release with the decision). A verdict a round-trip
        backend answered was counted there: its states and slots."""
        if verdict.counted is not None:
            return verdict.counted, verdict.held
        memory = self._memory
        assert memory is not None
        states: list[PolicyState] = []
        held: list[str] = []
        for named in verdict.applied:
            limits = named.limits
            bucket = limits.bucket
            if bucket is not None and not named.replaces_key_bucket:
                key = (identity, named.bucket_name)
                tokens = self._tokens(key, named, now) - cost
                if key not in self._buckets and len(self._buckets) >= self._max_buckets:
                    self._evict_full(now)
                self._buckets[key] = (tokens, now)
                states.append(self._bucket_state(named, tokens if tokens > 0.0 else 0.0, False))
            for quota, name in zip(limits.quotas, named.quota_names, strict=True):
                ident = identity if quota.per == "key" else "i:" + ip_key
                hits = max(0, round(cost)) if quota.by_cost else 1
                key_q = _quota_key(named, quota, ident)
                ok, remaining, reset = memory.hit_quota(quota.limit, quota.strategy, key_q, hits)
                states.append(
                    PolicyState(name, quota.amount, quota.window, remaining, reset, not ok)
                )
            if limits.concurrency is not None:
                slot = f"c:{identity}:{named.name}"
                if memory.acquire(slot, limits.concurrency):
                    held.append(slot)
        return tuple(states), tuple(held)

    def plan_slot(self, info: RequestInfo) -> float:
        """The key row's ``F_PLAN`` for this request: its plan's slot (`plan_slots`), 0
        (the policy's bucket and allowances) without one."""
        plan = info.plan
        return float(self.plan_slots.get(plan, 0)) if plan is not None else 0.0

    def with_plan_bucket(
        self,
        info: RequestInfo,
        policies: tuple[PolicyState, ...],
        app_bucket: TokenBucket | None,
        remaining: float,
        reset: float,
        violated: bool,
    ) -> tuple[PolicyState, ...]:
        """The decision's policy states with the key bucket's state named after the plan
        whose bucket replaced the app-wide one (memory backend); unchanged otherwise.
        ``remaining``, ``reset``, ``violated``: the kernel's key bucket outputs."""
        plan = info.plan
        if plan is None or self._memory is None or plan not in self.plan_slots:
            return policies  # a round-trip backend names the plan's bucket itself
        named = self.plans.get(plan)
        if named is None or not named.replaces_key_bucket:
            return policies
        own = PolicyState(
            named.bucket_name, named.capacity, named.window, remaining, reset, violated
        )
        if app_bucket is None:
            return (own, *policies)
        out = list(policies)
        for i, state in enumerate(out):
            if state.name == app_bucket.name and state.quota == app_bucket.capacity:
                own.remaining, own.reset, own.violated = (
                    state.remaining,
                    state.reset,
                    state.violated,
                )
                out[i] = own
                break
        return tuple(out)

    def reconcile(self, info: RequestInfo, identity: str, ip_key: str, hits: int) -> None:
        """Count ``hits`` more (< 0: fewer) in every by-cost quota of the route and plan
        limits that applied to ``info``, served and counted at its estimated cost: the
        real cost reported after the response minus the estimate, in whole units."""
        if not hits:
            return
        for named in self.applying(info):
            for quota in named.limits.quotas:
                if not quota.by_cost:
                    continue
                ident = identity if quota.per == "key" else "i:" + ip_key
                if self._memory is not None:
                    key = _quota_key(named, quota, ident)
                    self._memory.reconcile_quota(quota.limit, quota.strategy, key, hits)
                elif self._remote is not None:
                    self._remote.reconcile_route_quota(named.name, quota, ident, hits)

    def _evict_full(self, now: float) -> None:
        """Forget the buckets idle long enough to be full again (a new one reads full);
        when none is, forget them all rather than grow without bound."""
        full_after = self._full_after
        full = [key for key, (_, last) in self._buckets.items() if now - last >= full_after]
        for key in full:
            del self._buckets[key]
        if not full:
            self._buckets.clear()


def _quota_key(named: NamedLimits, quota: Quota, ident: str) -> str:
    """The memory backend's key of one route or plan quota for one identity."""
    return quota_counter(named.name, quota, ident)


def _match(routes: Mapping[str, NamedLimits], info: RequestInfo) -> NamedLimits | None:
    if not routes:
        return None
    route = info.route or info.path
    hit = routes.get(f"{info.method} {route}")
    if hit is None and info.method == "HEAD":
        hit = routes.get(f"GET {route}")
    return hit if hit is not None else routes.get(route)


def describe(
    routes: Mapping[str, NamedLimits], plans: Mapping[str, NamedLimits], policy: Policy
) -> str:
    """The route and plan limits as logfmt fields for the startup line. A plan shows its
    effective limits: its own, and ``app:`` before each app-wide one it leaves in force
    (`plan_overrides`)."""

    def one(named: NamedLimits, inherits: bool = False) -> str:
        limits = named.limits
        parts = []
        if limits.bucket is not None:
            b = limits.bucket
            parts.append(f"bucket:{b.per_second:g}/s:burst={b.capacity:g}")
        elif inherits and policy.bucket is not None:
            b = policy.bucket
            parts.append(f"app:bucket:{b.per_second:g}/s:burst={b.capacity:g}")
        parts.extend(f"{q.name}:{q.amount}/{q.window:g}s" for q in limits.quotas)
        if inherits and not limits.quotas:
            parts.extend(f"app:{q.name}:{q.amount}/{q.window:g}s" for q in policy.quotas)
        if limits.concurrency is not None:
            parts.append(f"concurrency:{limits.concurrency}")
        elif inherits and isinstance(policy.concurrency, Concurrency):
            c = policy.concurrency
            parts.append(f"app:{c.name}:{c.limit}/{c.per}")
        models = "".join(
            f";{one(NamedLimits(limit_name(f'{named.name}-model', model), model_limits))}"
            for model, model_limits in limits.models.items()
        )
        return f"{named.name}[{','.join(parts)}]{models}"

    def plan(name: str, named: NamedLimits) -> str:
        overrides = "".join(
            f";{one(NamedLimits(limit_name(f'plan-{name}-route', pattern), limits))}"
            for pattern, limits in named.limits.routes.items()
        )
        return one(named, inherits=True) + overrides

    fields = []
    if routes:
        fields.append("routes=" + ";".join(one(n) for n in routes.values()))
    if plans:
        fields.append("plans=" + ";".join(plan(name, n) for name, n in plans.items()))
    return " ".join(fields)
