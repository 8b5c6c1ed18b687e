"""The decide stage: the kernel's outputs and the limits' answers -> a `Decision`.

`Decider.conclude` answers a request the kernel just ran for (memory backend, Redis synced
mode): a plain allow is built without converting the io vector; anything else goes to
`Decider.decide`, which also takes the outputs a shared backend answered (Redis inline
mode) or the pre-check estimated. It asks the quotas and concurrency slots that apply, in
policy order, and keeps the kernel's buckets charged exactly when the request is served.
It shows nothing to the observers: the Guard does, once the decision is final.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from abuseguard.backends.base import UNKNOWN_LIMITS, LimitSource, LocalLimits
from abuseguard.backends.memory import APP_WIDE, quota_counter
from abuseguard.decision import (
    DENIAL_ACTIONS,
    Action,
    Decision,
    PlainAllow,
    PolicyState,
    plain_allow_decision,
)
from abuseguard.engine import layout as L
from abuseguard.engine.params import bucket_kinds, shadow_kinds
from abuseguard.engine.params import serves as action_serves
from abuseguard.plan_overrides import AppWideLimits, PlanOverrides

if TYPE_CHECKING:
    from abuseguard.engine.engine import Engine
    from abuseguard.intel.network import NetworkProfile
    from abuseguard.policy import Policy, Quota
    from abuseguard.prepare import Prepared


class Decider:
    """The decide stage of one Guard (its policy, engine and backend limits)."""

    def __init__(
        self,
        policy: Policy,
        engine: Engine,
        backend: object,
        *,
        local_buckets: bool,
        explain: bool,
    ) -> None:
        self.policy = policy
        self.engine = engine
        self.local_buckets = local_buckets
        self.explain = explain
        # Python floats from the io vector without numpy's scalar objects (~25 ns a read).
        self.io = engine.io_view
        # Python floats from the key table without numpy's scalar objects.
        self.key_rows = engine.tables[L.KIND_KEY].data_view
        self.ladder: tuple[Action, ...] = (
            Action.ALLOW,
            *(Action(a) for _, a in policy.enforcement.ladder),
        )
        bucket = policy.bucket
        self.bucket = bucket
        self.bucket_shape = (
            (bucket.name, bucket.capacity, bucket.window) if bucket is not None else ("", 0, 0)
        )
        self.plain_bucket = self.bucket_shape if bucket is not None else None
        # Who answers the quotas and concurrency of a decision no store answered (an
        # identity test in `decide`: an ABC's isinstance costs ~150 ns).
        self.local_limits = backend if isinstance(backend, LocalLimits) else None
        self.own_limits: LimitSource = (
            self.local_limits if self.local_limits is not None else UNKNOWN_LIMITS
        )
        # The app-wide quotas and concurrency a request meets: a plan may replace them.
        self.plan_overrides = PlanOverrides(policy)
        self.app_limits: AppWideLimits = self.plan_overrides.default
        self.limits_for_plan = self.plan_overrides.for_plan
        # A plain allow from the kernel is final unless a quota or a concurrency limit
        # still has to be asked.
        self.plain_allow_final = not policy.quotas and policy.concurrency is None
        # What the kernel charged: it charges every bucket when no bucket it enforces
        # refused and the ladder level serves (see `settle_buckets`).
        self.shadow_kinds = shadow_kinds(policy)
        self.bucket_kinds = bucket_kinds(policy)
        params = engine.params
        self.level_serves = tuple(bool(params[L.P_LADDER_SERVES + i]) for i in range(9))

    def conclude(self, p: Prepared, plain: bool) -> Decision:
        """The Decision from the kernel's outputs (memory backend). ``plain``: the kernel
        answered a plain allow, which is final unless a quota, a concurrency limit or a
        network rule still has a say; that common answer is built without converting the
        whole io vector (`conclude_lazily`, then `plain_allow_decision`)."""
        concluded = self.conclude_lazily(p, plain)
        return concluded if isinstance(concluded, Decision) else plain_allow_decision(concluded)

    def conclude_lazily(self, p: Prepared, plain: bool) -> Decision | PlainAllow:
        """`conclude`, with a plain allow answered as a `PlainAllow` (its Decision is
        `plain_allow_decision` of it, built only when something asks)."""
        if (
            plain
            and self.plain_allow_final
            and (p.profile is None or p.profile.rule_action is None)
        ):
            io = self.io
            return (
                p.identity, io[_O_SCORE], io[_O_REMAINING], io[_O_RESET], p.cost,
                self.plain_bucket,
            )  # fmt: skip
        return self.decide(p, self.io)

    def decide(
        self,
        p: Prepared,
        io_vector: Any,
        limits: LimitSource | None = None,
        buckets_known: bool | None = None,
    ) -> Decision:
        """Turn the kernel's outputs and the limits' answers into a Decision.

        ``io_vector`` is the kernel's io vector (a memoryview of it, or a list copy with the
        bucket outputs a shared backend answered written in). ``limits`` answers quota hits and
        concurrency slots (default: the memory backend); it is asked only for the limits
        that apply, in policy order. ``buckets_known``: the bucket outputs are real (the
        kernel ran the buckets, or the shared backend answered); default: local buckets.
        """
        # Python floats to read: a list or a memoryview as given, else one conversion
        # (numpy's own scalars cost more to make and to read)
        io: Sequence[float] = (
            io_vector if isinstance(io_vector, list | memoryview) else io_vector.tolist()
        )
        policy = self.policy
        enforcement = policy.enforcement
        level = int(io[L.O_ACTION])
        score = io[L.O_SCORE]
        denied = int(io[L.O_DENIED_KINDS])
        profile = p.profile
        bucket = policy.bucket
        policies: tuple[PolicyState, ...] = ()
        if bucket is not None and (self.local_buckets if buckets_known is None else buckets_known):
            name, capacity, window = self.bucket_shape
            policies = (
                PolicyState(
                    name, capacity, window, io[L.O_REMAINING], io[L.O_RESET], bool(denied & 1)
                ),
            )
        if denied & ~1:
            policies = policies + self.network_bucket_states(denied, io)
        remaining = io[L.O_REMAINING] if bucket is not None else None
        app_quotas, conc = self.app_limits if p.plan is None else self.limits_for_plan(p.plan)
        if (
            level == 0
            and not denied
            and not io[L.O_BANNED]
            and not app_quotas
            and conc is None
            and (profile is None or profile.rule_action is None)
        ):
            return Decision(
                Action.ALLOW, (), score, None, remaining, False, p.identity, (), policies, p.cost
            )

        reasons: list[str] = []
        retry_after: float | None = None
        if io[L.O_BANNED]:
            action = self.ladder[level] if level < len(self.ladder) else Action.BLOCK
            reasons.append("banned")
            retry_after = io[L.O_RETRY_AFTER]
            shadow = enforcement.shadow
        else:
            action, shadow = self.risk_action(level, profile)
            if level > 0:
                reasons.extend(_reason_names(int(io[L.O_REASONS])))
            if profile is not None and profile.rule_action is not None:
                reasons.insert(0, profile.rule_reason or "deny_list")
            if denied:
                if _SEVERITY[action] <= _THROTTLE_SEVERITY or action not in _DENIALS:
                    action = Action.THROTTLE
                    shadow = not denied & ~self.shadow_kinds
                reasons.append("rate")
                retry_after = io[L.O_RETRY_AFTER]
        if not shadow and action != Action.ALLOW:
            # A shadowed refusal is served as an allow: the quotas and concurrency an
            # allow would meet still count it.
            shadow = policy.shadow or action in enforcement.shadow_actions
        held: tuple[str, ...] = ()
        quotas_asked = False
        if action not in _DENIALS or shadow:
            if limits is None:
                limits = self.own_limits
            local = self.local_limits
            if app_quotas:
                if local is not None and limits is local:
                    # Asked now, counted below once the request is known to be served.
                    quota_result, quota_fits = self.quotas_fit(p, local, app_quotas)
                    quotas_asked = True
                else:
                    quota_states: list[PolicyState] = list(policies)
                    quota_result = self.hit_quotas(p, quota_states, limits, app_quotas)
                    policies = tuple(quota_states)
                if quota_result is not None:
                    quota, reset = quota_result
                    if action not in _DENIALS or shadow:
                        action, shadow = Action.THROTTLE, quota.shadow
                    reasons.append("quota")
                    retry_after = max(retry_after or 0.0, reset)
            if conc is not None and (action not in _DENIALS or shadow):
                ident = p.identity if conc.per == "key" else "i:" + p.address.ip_key
                ident = f"c:{ident}"
                if limits.acquire(ident, conc.limit):
                    held = (ident,)
                else:
                    if action not in _DENIALS or shadow:
                        action, shadow = Action.THROTTLE, conc.shadow
                    reasons.append("concurrency")
                    retry_after = max(retry_after or 0.0, 1.0)
        if not shadow and (policy.shadow or action in enforcement.shadow_actions):
            shadow = action != Action.ALLOW
        if action == Action.ALLOW:
            reasons = []
        served = shadow or action_serves(action)
        remaining = self.settle_buckets(p, io, level, denied, served, policies, remaining)
        if quotas_asked:
            assert local is not None
            policies = policies + self.count_quotas(p, local, served, quota_fits, app_quotas)
        return Decision(
            action=action,
            reasons=tuple(dict.fromkeys(reasons)),
            score=score,
            retry_after=retry_after if retry_after is None else max(retry_after, 0.0),
            remaining=remaining,
            shadow=shadow,
            identity=p.identity,
            contributions=(contributions(io) if self.explain and action != Action.ALLOW else ()),
            policies=policies,
            cost=p.cost,
            held=held,
        )

    def risk_action(self, level: int, profile: NetworkProfile | None) -> tuple[Action, bool]:
        """The action and shadow flag from the risk ladder and the network rules alone,
        before any limit is looked at (a shared backend gates its limits on it)."""
        action = self.ladder[level] if level < len(self.ladder) else Action.BLOCK
        shadow = self.policy.enforcement.shadow if level > 0 else False
        if (
            profile is not None
            and profile.rule_action is not None
            and _SEVERITY[profile.rule_action] >= _SEVERITY[action]
        ):
            network = self.policy.network
            action = profile.rule_action
            shadow = bool(network and network.shadow)
        return action, shadow

    def bucket_shadow(self, denied: int) -> bool:
        """Whether every bucket that refused (``denied``, a bitmask of kinds) is shadowed."""
        denied &= self.bucket_kinds
        return bool(denied) and not denied & ~self.shadow_kinds

    def settle_buckets(
        self,
        p: Prepared,
        io: Sequence[float],
        level: int,
        denied: int,
        served: bool,
        policies: tuple[PolicyState, ...],
        remaining: float | None,
    ) -> float | None:
        """Make the kernel's buckets charged exactly when the request is served: a request
        refused after the kernel charged it (a quota, a concurrency limit, a network rule)
        gets its tokens back; one served although the kernel did not charge it (a shadowed
        ban or rule) is charged. Only for the kernel's own io (memory and synced modes),
        right after its call. Returns the key bucket's remaining tokens."""
        if io is not self.io:
            return remaining
        charged = (
            not io[L.O_BANNED]
            and not denied & ~self.shadow_kinds
            and level < len(self.level_serves)
            and self.level_serves[level]
        )
        if charged == served or not p.cost:
            return remaining
        self.engine.adjust_last(-p.cost if charged else p.cost)
        bucket = self.bucket
        if bucket is None:
            return remaining
        tokens = self.key_rows[self.engine.rows[L.I_ROW + L.KIND_KEY], L.F_TOKENS]
        left = tokens if tokens > 0.0 else 0.0
        for state in policies:
            if state.name == bucket.name and state.quota == bucket.capacity:
                given_back = (left - state.remaining) / bucket.per_second
                state.reset = max(0.0, state.reset - given_back)
                state.remaining = left
                break
        return left

    def quotas_fit(
        self, p: Prepared, limits: LocalLimits, quotas: tuple[Quota, ...]
    ) -> tuple[tuple[Quota, float] | None, list[tuple[float, float] | None]]:
        """The quota that refuses the request (and its reset): the first violated one
        that is enforced, else the first violated one (all shadowed); and per quota None
        when it admits the request, else its (remaining, reset); nothing is counted."""
        violated: tuple[Quota, float] | None = None
        fits: list[tuple[float, float] | None] = []
        for quota in quotas:
            ident = p.identity if quota.per == "key" else "i:" + p.address.ip_key
            ident = quota_counter(APP_WIDE, quota, ident)
            cost = max(0, round(p.cost)) if quota.by_cost else 1
            if limits.quota_fits(quota.limit, quota.strategy, ident, cost):
                fits.append(None)
                continue
            state = limits.quota_state(quota.limit, quota.strategy, ident)
            fits.append(state)
            if violated is None or (violated[0].shadow and not quota.shadow):
                violated = quota, state[1]
        return violated, fits

    def count_quotas(
        self,
        p: Prepared,
        limits: LocalLimits,
        served: bool,
        fits: list[tuple[float, float] | None],
        quotas: tuple[Quota, ...],
    ) -> tuple[PolicyState, ...]:
        """Count a served request in every one of ``quotas`` (a refused one in none);
        their states."""
        states = []
        for quota, refused in zip(quotas, fits, strict=True):
            ident = p.identity if quota.per == "key" else "i:" + p.address.ip_key
            ident = quota_counter(APP_WIDE, quota, ident)
            cost = max(0, round(p.cost)) if quota.by_cost else 1
            if served:
                ok, remaining, reset = limits.hit_quota(quota.limit, quota.strategy, ident, cost)
            elif refused is not None:
                ok = False
                remaining, reset = refused
            else:
                ok = True
                remaining, reset = limits.quota_state(quota.limit, quota.strategy, ident)
            states.append(
                PolicyState(
                    quota.name or "quota", quota.amount, quota.window, remaining, reset, not ok
                )
            )
        return tuple(states)

    def hit_quotas(
        self,
        p: Prepared,
        policies: list[PolicyState],
        limits: LimitSource,
        quotas: tuple[Quota, ...],
    ) -> tuple[Quota, float] | None:
        """Hit every one of ``quotas`` through ``limits`` (a shared backend's answers, or
        the memory backend's peeked by the pre-check), appending their states to
        ``policies``; the quota that refused (the first enforced one, else the first
        shadowed one) and its reset."""
        violated: tuple[Quota, float] | None = None
        for quota in quotas:
            ident = p.identity if quota.per == "key" else "i:" + p.address.ip_key
            # the memory backend's counter (a shared backend's answers come in order)
            ident = quota_counter(APP_WIDE, quota, ident)
            cost = max(0, round(p.cost)) if quota.by_cost else 1
            ok, remaining, reset = limits.hit_quota(quota.limit, quota.strategy, ident, cost)
            policies.append(
                PolicyState(
                    quota.name or "quota", quota.amount, quota.window, remaining, reset, not ok
                )
            )
            if not ok and (violated is None or (violated[0].shadow and not quota.shadow)):
                violated = (quota, reset)
        return violated

    def network_bucket_states(self, denied: int, io: Sequence[float]) -> tuple[PolicyState, ...]:
        """The network buckets (per IP, prefix, ASN) that refused this request, for the
        RateLimit headers and the problem body."""
        network = self.policy.network
        if network is None:
            return ()
        states = []
        tight_kind = int(io[L.O_TIGHTEST_KIND])
        for kind, name, net_bucket in (
            (L.KIND_IP, "ip", network.per_ip),
            (L.KIND_PREFIX, "prefix", network.per_prefix),
            (L.KIND_ASN, "asn", network.per_asn),
        ):
            if net_bucket is None or not denied & (1 << kind):
                continue
            exact = kind == tight_kind
            states.append(
                PolicyState(
                    name if net_bucket.name == "default" else net_bucket.name,
                    net_bucket.capacity,
                    net_bucket.window,
                    io[L.O_TIGHT_REMAINING] if exact else 0.0,
                    io[L.O_TIGHT_RESET] if exact else io[L.O_RETRY_AFTER],
                    True,
                )
            )
        return tuple(states)


def contributions(io: Sequence[float]) -> tuple[tuple[str, float], ...]:
    """(signal, contribution) for every signal that added to the score."""
    return tuple(
        [
            pair
            for pair in zip(
                L.SIGNAL_NAMES, io[L.O_CONTRIB : L.O_CONTRIB + L.N_SIGNALS], strict=True
            )
            if pair[1] > 0.0
        ]
    )


_REASON_NAMES: dict[int, tuple[str, ...]] = {}


def _reason_names(mask: int) -> tuple[str, ...]:
    """The signal names of a reason bitmask (a few hundred masks occur: cached)."""
    names = _REASON_NAMES.get(mask)
    if names is None:
        names = tuple(name for bit, name in L.REASON_BIT_NAMES if mask & (1 << bit))
        if len(_REASON_NAMES) < 4096:
            _REASON_NAMES[mask] = names
    return names


_O_REMAINING = L.O_REMAINING
_O_RESET = L.O_RESET
_O_SCORE = L.O_SCORE
_DENIALS = DENIAL_ACTIONS
_SEVERITY = {action: action.severity for action in Action}
_THROTTLE_SEVERITY = Action.THROTTLE.severity

__all__ = ["Decider", "contributions"]
