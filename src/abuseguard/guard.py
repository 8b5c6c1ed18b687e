"""Guard: the framework-free core. identify -> enrich -> observe and score -> decide.

``Guard.check(info)`` answers a :class:`RequestInfo` with a :class:`Decision`; after the
app answered, ``Guard.complete(info, decision, status=..., cost=...)`` feeds the outcome
back (error-rate signals, real cost, concurrency release). The middleware, the replay
command and the benchmarks all drive this same object.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from abuseguard.backends.base import (
    UNKNOWN_LIMITS,
    Backend,
    LimitSource,
    LocalDecider,
    LocalLimits,
    RoundTripDecider,
    backend_from_uri,
    require_capabilities,
)
from abuseguard.backends.memory import MemoryBackend
from abuseguard.config_check import check_callables
from abuseguard.decision import DENIAL_ACTIONS, Action, Decision, PolicyState
from abuseguard.engine import layout as L
from abuseguard.engine.engine import Engine
from abuseguard.engine.params import bucket_kinds, shadow_kinds
from abuseguard.engine.params import serves as action_serves
from abuseguard.errors import ConfigError
from abuseguard.exempt import ExemptPaths
from abuseguard.identity import AddressBook, ClientAddress, hash_key
from abuseguard.intel.agents import AgentClassifier, ClientClass
from abuseguard.intel.client import ClientEnricher
from abuseguard.intel.geo import GeoIntel
from abuseguard.intel.network import NetworkProfile, NetworkView
from abuseguard.keyprobe import UNVERIFIED_KEY_REASON, UnverifiedKeyLimiter, UnverifiedRefusal
from abuseguard.policy import Policy, Quota, TokenBucket
from abuseguard.precheck import precheck_reading
from abuseguard.request import RequestInfo
from abuseguard.route_limits import RouteLimiter, Verdict
from abuseguard.stages import GuardStages
from abuseguard.startup_log import log_startup

logger = logging.getLogger("abuseguard")

Observer = Callable[[RequestInfo, Decision], "Awaitable[None] | None"]


@dataclass(slots=True)
class Prepared:
    """Everything the engine and the backend need for one request, derived from RequestInfo."""

    ts: float
    identity: str  # "k:<hash>" or "i:<ip key>"
    has_account: bool
    address: ClientAddress
    profile: NetworkProfile | None
    cost: float
    ua_class: int
    persona: int
    persona_mismatch: float
    simhash: int
    template_id: int
    elicitation: float
    has_content: bool


class Guard:
    """Decides what to do with each request.

    Not thread-safe: use one Guard per event loop (the middleware does). ``clock`` returns
    seconds; ``RequestInfo.ts``, when set, is used instead (replay runs in virtual time).
    ``intel`` overrides the databases named in ``policy.network.databases``. ``explain``
    False leaves `Decision.contributions` empty, for bulk runs that only count decisions
    (the replay command: building them costs about a microsecond per refusal).
    """

    def __init__(
        self,
        policy: Policy | None = None,
        backend: Backend | str | None = None,
        *,
        clock: Callable[[], float] | None = None,
        intel: GeoIntel | None = None,
        observers: Iterable[Observer] = (),
        explain: bool = True,
    ) -> None:
        self.policy = policy if policy is not None else Policy()
        if not isinstance(self.policy, Policy):
            raise ConfigError("policy", f"expected a Policy, got {type(self.policy).__name__}")
        if clock is not None and not callable(clock):
            raise ConfigError("clock", f"expected a callable returning seconds, got {clock!r}")
        if intel is not None and not isinstance(intel, GeoIntel):
            raise ConfigError("intel", f"expected a GeoIntel or None, got {intel!r}")
        if not isinstance(explain, bool):
            raise ConfigError("explain", f"expected a bool, got {explain!r}")
        observers = check_callables("observers", observers)
        self.backend = backend_from_uri(backend)
        require_capabilities(self.backend)
        self.route_limits = RouteLimiter.build(self.policy, self.backend)
        self.clock = clock if clock is not None else time.time
        self._now = self.clock()
        policy = self.policy
        network = policy.network
        self.addresses = AddressBook(
            ipv6_prefix=policy.ipv6_prefix,
            ipv4_network_prefix=network.ipv4_prefix if network else 24,
            ipv6_network_prefix=network.ipv6_prefix if network else 48,
        )
        if intel is None and network is not None and network.databases:
            intel = GeoIntel(**dict(network.databases))  # type: ignore[arg-type]
        self.intel = intel
        self.network = NetworkView(network, intel) if network is not None else None
        scoring = policy.scoring
        self.scoring_on = scoring is not None and scoring.enabled
        self.agents = AgentClassifier()
        self.content: Any = None
        if scoring is not None and scoring.enabled and scoring.content:
            from abuseguard.intel.content import ContentFingerprinter

            # Kernels Numba has not cached compile in a background thread; until they are
            # ready, fingerprint() finds no prompt (as when the body read times out).
            self.content = ContentFingerprinter(
                max_bytes=scoring.content_max_bytes, background=True
            )
        self.local_buckets = not self.backend.shared
        self.engine = Engine(policy, local_buckets=self.local_buckets)
        self._tables = self.engine.tables
        self._key_index = self.engine.tables[L.KIND_KEY].index
        # Python floats from the key table without numpy's scalar objects.
        self._key_rows = memoryview(self.engine.tables[L.KIND_KEY].data)  # type: ignore[arg-type]
        self._accounts = self.engine.accounts
        self._state = self.engine.state
        self._decide_with = self.engine.decide_with
        # Python floats from the io vector without numpy's scalar objects (~25 ns a read).
        self._io = memoryview(self.engine.io)  # type: ignore[arg-type]
        # load_target <= 0 means off: no in-flight count is ever above infinity.
        self._load_target = policy.load_target if policy.load_target > 0 else float("inf")
        if isinstance(self.backend, MemoryBackend):
            self.backend.bind(self._virtual_now)
        self.ladder: tuple[Action, ...] = (
            Action.ALLOW,
            *(Action(a) for _, a in policy.enforcement.ladder),
        )
        self.observers: list[Observer] = list(observers)
        self.explain = explain
        self._key_hashes: dict[str, str] = {}
        self.client_enricher = ClientEnricher(self.agents)
        self._client_of = self.client_enricher.client_of
        self._network_rows = (False, True, True, True, True)
        self._anonymous_network_rows = (
            False,
            bool(network and network.per_ip),
            bool(network and network.per_prefix),
            bool(network and network.per_asn),
            False,
        )
        self.inflight = 0
        bucket = policy.bucket
        self._cost_is_static = bucket is None or isinstance(bucket.cost, int | float)
        self._static_cost = (
            float(bucket.cost)
            if bucket is not None and isinstance(bucket.cost, int | float)
            else 1.0
        )
        self._exempt = ExemptPaths(policy.exempt_paths) if policy.exempt_paths else None
        self._bucket = bucket
        self._bucket_shape = (
            (bucket.name, bucket.capacity, bucket.window) if bucket is not None else ("", 0, 0)
        )
        self._key_func = policy.key_func
        self._shared = self.backend.shared
        # Who answers the quotas and concurrency of a decision no store answered (an
        # identity test in `_decide`: an ABC's isinstance costs ~150 ns).
        self._local_limits = self.backend if isinstance(self.backend, LocalLimits) else None
        self._own_limits: LimitSource = (
            self._local_limits if self._local_limits is not None else UNKNOWN_LIMITS
        )
        self._round_trip = self.backend if isinstance(self.backend, RoundTripDecider) else None
        # A shared backend that decides from local state (synced mode) answers in-process.
        self._local_decider = self.backend if isinstance(self.backend, LocalDecider) else None
        # A plain allow from the kernel is final unless a quota or a concurrency limit
        # still has to be asked.
        self._plain_allow_final = not policy.quotas and policy.concurrency is None
        self.unverified_keys = (
            UnverifiedKeyLimiter(policy.unverified_keys, self.addresses)
            if policy.unverified_keys is not None
            else None
        )
        # What the kernel charged: it charges every bucket when no bucket it enforces
        # refused and the ladder level serves (see `_settle_buckets`).
        self._shadow_kinds = shadow_kinds(policy)
        self._bucket_kinds = bucket_kinds(policy)
        params = self.engine.params
        self._level_serves = tuple(bool(params[L.P_LADDER_SERVES + i]) for i in range(9))
        # What a shared backend gets instead of the Guard: the stages it may run.
        self._stages = GuardStages(self)
        if self._round_trip is not None:
            self._round_trip.attach(self._stages)  # checks the policy, precomputes numbers
        if self.unverified_keys is not None:
            # Budgets a round-trip backend keeps in its store; None: kept in this process.
            self.unverified_keys.store = self.backend.unverified_budgets(self.unverified_keys)

    # -- identity ----------------------------------------------------------------------

    def _virtual_now(self) -> float:
        return self._now

    def identity_of(self, info: RequestInfo) -> tuple[str, bool, ClientAddress]:
        address = self.addresses.resolve(info.ip)
        key_func = self._key_func
        raw = key_func(info) if key_func is not None else info.key
        if raw:
            hashed = self._key_hashes.get(raw)
            if hashed is None:
                if len(self._key_hashes) >= 100_000:
                    self._key_hashes.clear()
                hashed = self._key_hashes[raw] = "k:" + hash_key(self.policy.secret, raw)
            return hashed, True, address
        return "i:" + address.ip_key, False, address

    def cost_of(self, info: RequestInfo) -> float:
        """What the request costs up front. A given cost that is not a finite number >= 0
        (NaN, inf, negative, not a number) is ignored and the policy's cost applies."""
        if info.cost is not None:
            try:
                given = float(info.cost)
            except (TypeError, ValueError):
                given = -1.0
            if 0.0 <= given < float("inf"):
                return given
            logger.warning("RequestInfo.cost %r is not a finite cost >= 0; ignored", info.cost)
        if self._cost_is_static:
            return self._static_cost
        bucket = self.policy.bucket
        assert bucket is not None
        cost = bucket.cost
        if isinstance(cost, Mapping):
            route = info.route or info.path
            value = cost.get(f"{info.method} {route}")
            if value is None and info.method == "HEAD":
                # Starlette answers HEAD on every GET route by running the GET handler.
                value = cost.get(f"GET {route}")
            if value is None:
                value = cost.get(route, 1.0)
            return float(value)
        try:
            value = float(cost(info))  # type: ignore[operator]
        except Exception:
            logger.exception("TokenBucket.cost callable failed; charging 1")
            return 1.0
        return value if 0.0 <= value < float("inf") else 1.0

    # -- the decision ------------------------------------------------------------------

    def prepare(self, info: RequestInfo) -> Prepared:
        ts = info.ts
        if ts is None:
            ts = self.clock()
        identity, has_account, address = self.identity_of(info)
        network = self.network
        profile = (
            network.profile(
                address, info.asn, info.as_org, info.country, info.anon, info.anon_confidence
            )
            if network is not None
            else None
        )
        ua_class = _UNKNOWN_CLASS
        persona = 0
        mismatch = 0.0
        if self.scoring_on:
            ua_class, persona, mismatch = self._client_of(info.ua, info.headers)
        simhash, template_id, elicitation, has_content = self._content_of(info)
        return Prepared(
            ts,
            identity,
            has_account,
            address,
            profile,
            self._static_cost if info.cost is None and self._cost_is_static else self.cost_of(info),
            ua_class,
            persona,
            mismatch,
            simhash,
            template_id,
            elicitation,
            has_content,
        )

    def _content_of(self, info: RequestInfo) -> tuple[int, int, float, bool]:
        """The body's fingerprint: (simhash, template_id, elicitation, has_content)."""
        if self.scoring_on and self.content is not None and info.body:
            facts = self.content.fingerprint(info.body, info.headers.get("content-type"))
            if facts.prompt_found:
                return facts.simhash, facts.template_id, facts.elicitation, True
        return _NO_CONTENT

    def _with_body(self, info: RequestInfo, p: Prepared) -> Prepared:
        """What `precheck` prepared without the body, completed once the body is read:
        the decision's time, the cost (a cost callable may price the body) and the body's
        fingerprint; the identity, network profile and client class are kept."""
        ts = info.ts
        if ts is None:
            ts = self.clock()
        simhash, template_id, elicitation, has_content = self._content_of(info)
        return Prepared(
            ts,
            p.identity,
            p.has_account,
            p.address,
            p.profile,
            self._static_cost if info.cost is None and self._cost_is_static else self.cost_of(info),
            p.ua_class,
            p.persona,
            p.persona_mismatch,
            simhash,
            template_id,
            elicitation,
            has_content,
        )

    def run_engine(self, p: Prepared) -> Any:
        """Find the rows, call the kernel once, return the io vector."""
        self._run(p)
        return self.engine.io

    def decision_from_engine(self, info: RequestInfo, p: Prepared) -> Decision:
        """The Decision for a request from the outputs its `run_engine(p)` just left in the
        io vector (memory backend): `check_prepared` in two steps, each of which can be
        timed on its own (the benchmarks)."""
        if self._shared:
            raise RuntimeError(
                "Guard.decision_from_engine() is for the memory backend; "
                f"not for the {type(self.backend).__name__}"
            )
        self._now = p.ts
        io = self._io
        plain = io[L.O_ACTION] == 0.0 and io[L.O_DENIED_KINDS] == 0.0 and io[L.O_BANNED] == 0.0
        return self._conclude(info, p, plain)

    def _run(self, p: Prepared) -> bool:
        """Find the rows and call the kernel once; True for a plain allow (see
        `kernels.decide_with`), the io vector holds the outputs."""
        # (Layout constants are read as locals here: an ``L.X`` lookup costs ~40 ns.)
        key_table, ip_table, prefix_table, asn_table, persona_table = self._tables
        identity = p.identity
        r_key = key_table.index.get(identity)
        if r_key is None:
            r_key = key_table.row(identity, p.ts)
        r_acc = -1
        if p.has_account:
            accounts = self._accounts
            r_acc = accounts.index.get(identity, -1)
            if r_acc < 0:
                r_acc = accounts.row(identity)
        inflight = self.inflight
        load = 1.0 if inflight <= self._load_target else self._load_factor()
        profile = p.profile
        r_ip = r_pfx = r_asn = r_per = -1
        if profile is None or profile.allowed:
            # No network policy, or allow-listed: no network rows; an allow-listed request
            # passes its buckets but is not scored.
            scored = profile is None
            country = 0
            anon = geo = distrust = nat = 0.0
        else:
            # Network rows count accounts (fan-in) and hold network buckets. An anonymous
            # client has no account to count, so it only gets the rows whose bucket it must
            # pass: an IPv6 flood then costs one narrow key row per address and no more.
            scored = True
            _, want_ip, want_prefix, want_asn, want_persona = (
                self._network_rows if p.has_account else self._anonymous_network_rows
            )
            address = p.address
            if address.version:
                if want_ip:
                    r_ip = ip_table.index.get(address.ip_key, -1)
                    if r_ip < 0:
                        r_ip = ip_table.row(address.ip_key)
                if want_prefix:
                    r_pfx = prefix_table.index.get(address.prefix_key, -1)
                    if r_pfx < 0:
                        r_pfx = prefix_table.row(address.prefix_key)
            asn_key = profile.asn_key
            if asn_key is not None and want_asn:
                r_asn = asn_table.index.get(asn_key, -1)
                if r_asn < 0:
                    r_asn = asn_table.row(asn_key)
            persona = p.persona
            if persona and want_persona:
                r_per = persona_table.index.get(persona, -1)
                if r_per < 0:
                    r_per = persona_table.row(persona)
            country = profile.country_code
            anon = profile.anon_signal
            geo = profile.geo_signal
            distrust = profile.distrust
            nat = 1.0 if profile.nat_eligible else 0.0
        return self._decide_with(  # type: ignore[no-any-return]
            self._state,
            r_key,
            r_ip,
            r_pfx,
            r_asn,
            r_per,
            country,
            p.simhash,
            p.template_id,
            p.ua_class,
            r_acc,
            p.ts,
            p.cost,
            load,
            anon,
            geo,
            p.persona_mismatch if scored else 0.0,
            p.elicitation,
            1.0 if p.has_content else 0.0,
            distrust,
            nat,
            scored,
        )

    def _load_factor(self) -> float:
        target = self._load_target
        if self.inflight <= target:
            return 1.0
        return max(0.1, target / self.inflight)

    def check(self, info: RequestInfo, read_without_body: Prepared | None = None) -> Decision:
        """Decide for one request (memory backend, or a shared backend that decides
        locally: Redis in synced mode). Use `acheck` with the others.
        ``read_without_body``: what `precheck_reading` prepared for this request before
        its body was read; only the body's part is read again."""
        if self._shared:
            if self._local_decider is not None:
                refusal = (
                    None
                    if self.unverified_keys is None
                    else self._unverified_first(info, read_without_body)
                )
                if refusal is not None:
                    return refusal
                return self._check_merged(info, read_without_body)
            raise RuntimeError(
                "Guard.check() is synchronous; use 'await guard.acheck(info)' "
                f"with the {type(self.backend).__name__}"
            )
        if self._exempt and self._exempt.matches(info.path):
            return _EXEMPT
        p = (
            self.prepare(info)
            if read_without_body is None
            else self._with_body(info, read_without_body)
        )
        self._now = p.ts
        if p.has_account and self.unverified_keys is not None:
            refusal = self._refuse_unverified(info, p.identity, p.address, p.ts, p.cost)
            if refusal is not None:
                return refusal
        if self.route_limits is not None:
            return self._check_route_limits(info, p, self.route_limits)
        return self._conclude(info, p, self._run(p))

    def _check_merged(
        self, info: RequestInfo, read_without_body: Prepared | None = None
    ) -> Decision:
        """Decide from local state with a backend that merges it into a store in the
        background (`LocalDecider`: Redis in synced mode): the memory backend's path, the
        kernel's buckets charged exactly when the request is served, then the backend notes
        what to merge."""
        if self._exempt and self._exempt.matches(info.path):
            return _EXEMPT
        p = (
            self.prepare(info)
            if read_without_body is None
            else self._with_body(info, read_without_body)
        )
        plain = self._run(p)
        decision = self._conclude(info, p, plain)
        assert self._local_decider is not None
        self._local_decider.note_decision(p, decision, plain, self._io)
        return decision

    def precheck(self, info: RequestInfo) -> Decision | None:
        """Is this request refused whatever its body says? The refusal, decided from what
        needs no body (a ban, a network deny rule, the identity's bucket, quotas,
        concurrency) without changing any state, or None when it could be served: then
        decide it once, in full, with `check` or `acheck`. Never waits for a shared
        backend (see `abuseguard.precheck`)."""
        return precheck_reading(self, info)[0]

    def precheck_reading(self, info: RequestInfo) -> tuple[Decision | None, Prepared | None]:
        """`precheck`, with what it prepared from the request without its body (None when
        it prepared nothing): hand it to `check` or `acheck` with the body read, which then
        reads only the body's part again."""
        return precheck_reading(self, info)

    def prepare_many(self, infos: Iterable[RequestInfo]) -> list[Prepared | None]:
        """`prepare` for a batch of requests (None for an exempt path), for `check_prepared`.

        Reading a request (identity, network profile, client class, prompt fingerprint)
        depends on the request alone, not on the state earlier requests leave, so a batch
        entry point (replay) reads a batch at once, which keeps that code and its caches
        hot, then decides the requests in order."""
        exempt = self._exempt
        prepare = self.prepare
        return [None if exempt and exempt.matches(info.path) else prepare(info) for info in infos]

    def check_prepared(self, info: RequestInfo, p: Prepared | None) -> Decision:
        """`check` for a request `prepare_many` read (memory backend); requests must come
        in the order they arrived, as with `check`."""
        if p is None:
            return _EXEMPT
        if self._shared:
            raise RuntimeError(
                f"Guard.check_prepared() is synchronous; not for the {type(self.backend).__name__}"
            )
        self._now = p.ts
        if p.has_account and self.unverified_keys is not None:
            refusal = self._refuse_unverified(info, p.identity, p.address, p.ts, p.cost)
            if refusal is not None:
                return refusal
        if self.route_limits is not None:
            return self._check_route_limits(info, p, self.route_limits)
        return self._conclude(info, p, self._run(p))

    def _check_route_limits(
        self, info: RequestInfo, p: Prepared, route_limits: RouteLimiter
    ) -> Decision:
        """The pipeline with `Policy.routes` and `Policy.plans`: a request one of their
        limits refuses goes no further (nothing counted, the kernel not run); a served one
        is counted in each of them, with their states in the decision."""
        verdict = route_limits.test(info, p.identity, p.address.ip_key, p.cost, p.ts)
        return self._route_decision(
            info, p, route_limits, verdict, lambda: self._conclude_on_plan(info, p, route_limits)
        )

    def _conclude_on_plan(
        self, info: RequestInfo, p: Prepared, route_limits: RouteLimiter
    ) -> Decision:
        """`_conclude` after the kernel ran with the key bucket of the request's plan, when
        plans carry their own bucket (it replaces the app-wide one: the key row's F_PLAN)."""
        if not route_limits.plan_slots:
            return self._conclude(info, p, self._run(p))
        row = self._tables[L.KIND_KEY].row(p.identity, p.ts)
        self._tables[L.KIND_KEY].data[row, L.F_PLAN] = route_limits.plan_slot(info)
        decision = self._conclude(info, p, self._run(p))
        io = self._io
        decision.policies = route_limits.with_plan_bucket(
            info, decision.policies, self._bucket, io[L.O_REMAINING], io[L.O_RESET],
            bool(int(io[L.O_DENIED_KINDS]) & 1 << L.KIND_KEY),
        )  # fmt: skip
        return decision

    def _route_decision(
        self,
        info: RequestInfo,
        p: Prepared,
        route_limits: RouteLimiter,
        verdict: Verdict,
        decide: Callable[[], Decision],
    ) -> Decision:
        """The decision with the route and plan limits' ``verdict``: their refusal, or
        ``decide()``'s decision holding their states once counted."""
        refusal = self.route_refusal(info, p, verdict)
        if refusal is not None:
            return refusal
        # Observers see the decision once it holds the route and plan limits' answers.
        observers = self.observers
        self.observers = []
        try:
            decision = decide()
        finally:
            self.observers = observers
        if verdict.violated and decision.action == Action.ALLOW:  # shadowed refusal
            decision.action = Action.THROTTLE
            decision.shadow = True
            decision.reasons = verdict.reasons
            decision.retry_after = verdict.retry_after
            decision.policies = decision.policies + verdict.violated
        elif decision.served and verdict.applied:
            states, held = route_limits.count(verdict, p.identity, p.address.ip_key, p.cost, p.ts)
            decision.policies = decision.policies + states
            decision.held = decision.held + held
        if observers:
            self._notify(info, decision)
        return decision

    def route_refusal(self, info: RequestInfo, p: Prepared, verdict: Verdict) -> Decision | None:
        """The refusal when a route or plan limit refuses the request and it is enforced
        (not shadowed); None otherwise. Shown to the observers."""
        policy = self.policy
        if not verdict.violated or (
            policy.shadow or Action.THROTTLE in policy.enforcement.shadow_actions
        ):
            return None
        decision = Decision(
            action=Action.THROTTLE,
            reasons=verdict.reasons,
            retry_after=verdict.retry_after,
            remaining=min(state.remaining for state in verdict.violated),
            identity=p.identity,
            policies=verdict.violated,
            cost=p.cost,
        )
        if self.observers:
            self._notify(info, decision)
        return decision

    def _unverified_first(
        self, info: RequestInfo, read_without_body: Prepared | None = None
    ) -> Decision | None:
        """The unverified-key check ahead of a shared backend, which prepares the request
        itself: a refused request never reaches it."""
        if self._exempt and self._exempt.matches(info.path):
            return None
        if read_without_body is None:
            identity, has_account, address = self.identity_of(info)
        else:
            p = read_without_body
            identity, has_account, address = p.identity, p.has_account, p.address
        if not has_account:
            return None
        ts = info.ts if info.ts is not None else self.clock()
        return self._refuse_unverified(info, identity, address, ts, self.cost_of(info))

    async def _unverified_first_shared(self, info: RequestInfo) -> Decision | None:
        """`_unverified_first` with the budgets in Redis (inline mode)."""
        if self._exempt and self._exempt.matches(info.path):
            return None
        identity, has_account, address = self.identity_of(info)
        if not has_account:
            return None
        ts = info.ts if info.ts is not None else self.clock()
        assert self.unverified_keys is not None and self.unverified_keys.store is not None
        refusal = await self.unverified_keys.store.admit(identity, address, ts)
        if refusal is None:
            return None
        return self._unverified_decision(info, identity, refusal, self.cost_of(info))

    def _refuse_unverified(
        self, info: RequestInfo, identity: str, address: ClientAddress, ts: float, cost: float
    ) -> Decision | None:
        """A refusal when the request's key is not accepted and its address's or prefix's
        budget for such keys is empty (see `keyprobe`); None to go on."""
        assert self.unverified_keys is not None
        refusal = self.unverified_keys.admit(identity, address, ts)
        if refusal is None:
            return None
        return self._unverified_decision(info, identity, refusal, cost)

    def _unverified_decision(
        self, info: RequestInfo, identity: str, refusal: UnverifiedRefusal, cost: float
    ) -> Decision:
        policy = self.policy
        decision = Decision(
            action=Action.THROTTLE,
            reasons=(UNVERIFIED_KEY_REASON,),
            retry_after=refusal.retry_after,
            remaining=min(state.remaining for state in refusal.policies),
            shadow=policy.shadow or Action.THROTTLE in policy.enforcement.shadow_actions,
            identity=identity,
            policies=refusal.policies,
            cost=cost,
        )
        if self.observers:
            self._notify(info, decision)
        return decision

    def _conclude(self, info: RequestInfo, p: Prepared, plain: bool) -> Decision:
        """The Decision from the kernel's outputs (memory backend). ``plain``: the kernel
        answered a plain allow, which is final unless a quota, a concurrency limit or a
        network rule still has a say; that common answer is built without converting the
        whole io vector."""
        if (
            plain
            and self._plain_allow_final
            and (p.profile is None or p.profile.rule_action is None)
        ):
            io = self._io
            remaining = None
            policies: tuple[PolicyState, ...] = ()
            if self._bucket is not None:
                name, capacity, window = self._bucket_shape
                remaining = io[_O_REMAINING]
                policies = (PolicyState(name, capacity, window, remaining, io[_O_RESET]),)
            decision = Decision(
                _ALLOW, (), io[_O_SCORE], None, remaining, False, p.identity, (), policies,
                p.cost,
            )  # fmt: skip
            if self.observers:
                self._notify(info, decision)
            return decision
        return self._decide(info, p, self._io)

    async def acheck(
        self, info: RequestInfo, read_without_body: Prepared | None = None
    ) -> Decision:
        """Decide for one request with any backend (``read_without_body``: as in `check`;
        a backend that decides in a round trip prepares the request itself)."""
        if not self._shared:
            return self.check(info, read_without_body)
        if self.unverified_keys is not None:
            if self.unverified_keys.store is not None:
                refusal = await self._unverified_first_shared(info)
            else:
                refusal = self._unverified_first(info, read_without_body)
            if refusal is not None:
                return refusal
        if self._local_decider is not None:
            return self._check_merged(info, read_without_body)
        if self._round_trip is None:
            raise RuntimeError(f"{type(self.backend).__name__} cannot decide requests")
        return await self._check_round_trip(self._round_trip, info)

    async def _check_round_trip(self, backend: RoundTripDecider, info: RequestInfo) -> Decision:
        """The pipeline with a backend that answers the limits in a round trip (Redis in
        inline mode): prepare, the engine with the backend's buckets off (the fail mode may
        turn the kernel's on), the limits from the backend, the Decision."""
        if self._exempt and self._exempt.matches(info.path):
            return _EXEMPT
        reachable = await backend.reach(info)
        p = self.prepare(info)
        io = self.run_engine(p).tolist()  # a copy: other requests run the kernel meanwhile
        answer = await backend.answer(info, p, io, reachable)
        if answer.refusal is not None:
            if self.observers:
                self._notify(info, answer.refusal)
            return answer.refusal
        if answer.routes is not None and self.route_limits is not None:
            decision = self._route_decision(
                info, p, self.route_limits, answer.routes,
                lambda: self._decide(info, p, io, answer.limits, answer.buckets_known),
            )  # fmt: skip
        else:
            decision = self._decide(info, p, io, answer.limits, answer.buckets_known)
        if answer.policies_kept >= 0:
            decision.policies = decision.policies[: answer.policies_kept]
        if not answer.holds:
            decision.held = ()
        if answer.after is not None:
            answer.after(decision)
        return decision

    def _decide(
        self,
        info: RequestInfo,
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
            name, capacity, window = self._bucket_shape
            policies = (
                PolicyState(
                    name, capacity, window, io[L.O_REMAINING], io[L.O_RESET], bool(denied & 1)
                ),
            )
        if denied & ~1:
            policies = policies + self._network_bucket_states(denied, io)
        remaining = io[L.O_REMAINING] if bucket is not None else None
        if (
            level == 0
            and not denied
            and not io[L.O_BANNED]
            and not policy.quotas
            and policy.concurrency is None
            and (profile is None or profile.rule_action is None)
        ):
            decision = Decision(
                Action.ALLOW, (), score, None, remaining, False, p.identity, (), policies, p.cost
            )
            if self.observers:
                self._notify(info, decision)
            return decision

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
                    shadow = not denied & ~self._shadow_kinds
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
                limits = self._own_limits
            local = self._local_limits
            if policy.quotas:
                if local is not None and limits is local:
                    # Asked now, counted below once the request is known to be served.
                    quota_result, quota_fits = self._quotas_fit(p, local)
                    quotas_asked = True
                else:
                    quota_states: list[PolicyState] = list(policies)
                    quota_result = self._quotas(p, quota_states, limits)
                    policies = tuple(quota_states)
                if quota_result is not None:
                    quota, reset = quota_result
                    if action not in _DENIALS or shadow:
                        action, shadow = Action.THROTTLE, quota.shadow
                    reasons.append("quota")
                    retry_after = max(retry_after or 0.0, reset)
            conc = policy.concurrency
            if conc is not None and (action not in _DENIALS or shadow):
                ident = p.identity if conc.per == "key" else "i:" + p.address.ip_key  # type: ignore[union-attr]
                ident = f"c:{ident}"
                if limits.acquire(ident, conc.limit):  # type: ignore[union-attr]
                    held = (ident,)
                else:
                    if action not in _DENIALS or shadow:
                        action, shadow = Action.THROTTLE, conc.shadow  # type: ignore[union-attr]
                    reasons.append("concurrency")
                    retry_after = max(retry_after or 0.0, 1.0)
        if not shadow and (policy.shadow or action in enforcement.shadow_actions):
            shadow = action != Action.ALLOW
        if action == Action.ALLOW:
            reasons = []
        served = shadow or action_serves(action)
        remaining = self._settle_buckets(p, io, level, denied, served, policies, remaining)
        if quotas_asked:
            assert local is not None
            policies = policies + self._count_quotas(p, local, served, quota_fits)
        decision = Decision(
            action=action,
            reasons=tuple(dict.fromkeys(reasons)),
            score=score,
            retry_after=retry_after if retry_after is None else max(retry_after, 0.0),
            remaining=remaining,
            shadow=shadow,
            identity=p.identity,
            contributions=(
                self._contributions(io) if self.explain and action != Action.ALLOW else ()
            ),
            policies=policies,
            cost=p.cost,
            held=held,
        )
        if self.observers:
            self._notify(info, decision)
        return decision

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

    def _bucket_shadow(self, denied: int) -> bool:
        """Whether every bucket that refused (``denied``, a bitmask of kinds) is shadowed."""
        denied &= self._bucket_kinds
        return bool(denied) and not denied & ~self._shadow_kinds

    def _settle_buckets(
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
        if io is not self._io:
            return remaining
        charged = (
            not io[L.O_BANNED]
            and not denied & ~self._shadow_kinds
            and level < len(self._level_serves)
            and self._level_serves[level]
        )
        if charged == served or not p.cost:
            return remaining
        self.engine.adjust_last(-p.cost if charged else p.cost)
        if self._bucket is None:
            return remaining
        tokens = self._key_rows[self.engine.rows[L.I_ROW + L.KIND_KEY], L.F_TOKENS]
        left = tokens if tokens > 0.0 else 0.0
        for state in policies:
            if state.name == self._bucket.name and state.quota == self._bucket.capacity:
                given_back = (left - state.remaining) / self._bucket.per_second
                state.reset = max(0.0, state.reset - given_back)
                state.remaining = left
                break
        return left

    def _quotas_fit(
        self, p: Prepared, limits: LocalLimits
    ) -> tuple[tuple[Quota, float] | None, list[tuple[float, float] | None]]:
        """The first quota that would refuse the request (and its reset), and per quota
        None when it admits the request, else its (remaining, reset); nothing is counted."""
        violated: tuple[Quota, float] | None = None
        fits: list[tuple[float, float] | None] = []
        for quota in self.policy.quotas:
            ident = p.identity if quota.per == "key" else "i:" + p.address.ip_key
            cost = max(0, round(p.cost)) if quota.by_cost else 1
            if limits.quota_fits(quota.limit, quota.strategy, ident, cost):
                fits.append(None)
                continue
            state = limits.quota_state(quota.limit, quota.strategy, ident)
            fits.append(state)
            if violated is None:
                violated = quota, state[1]
        return violated, fits

    def _count_quotas(
        self,
        p: Prepared,
        limits: LocalLimits,
        served: bool,
        fits: list[tuple[float, float] | None],
    ) -> tuple[PolicyState, ...]:
        """Count a served request in every quota (a refused one in none); their states."""
        states = []
        for quota, refused in zip(self.policy.quotas, fits, strict=True):
            ident = p.identity if quota.per == "key" else "i:" + p.address.ip_key
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

    def _quotas(
        self, p: Prepared, policies: list[PolicyState], limits: LimitSource
    ) -> tuple[Quota, float] | None:
        violated: tuple[Quota, float] | None = None
        for quota in self.policy.quotas:
            ident = p.identity if quota.per == "key" else "i:" + p.address.ip_key
            cost = max(0, round(p.cost)) if quota.by_cost else 1
            ok, remaining, reset = limits.hit_quota(quota.limit, quota.strategy, ident, cost)
            policies.append(
                PolicyState(
                    quota.name or "quota", quota.amount, quota.window, remaining, reset, not ok
                )
            )
            if not ok and violated is None:
                violated = (quota, reset)
        return violated

    @staticmethod
    def _contributions(io: Sequence[float]) -> tuple[tuple[str, float], ...]:
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

    def _network_bucket_states(self, denied: int, io: Sequence[float]) -> tuple[PolicyState, ...]:
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

    def notify(self, info: RequestInfo, decision: Decision) -> None:
        """Show a decision to every observer (sync ones now, async ones as tasks)."""
        self._notify(info, decision)

    def _notify(self, info: RequestInfo, decision: Decision) -> None:
        for observer in self.observers:
            try:
                result = observer(info, decision)
                if inspect.isawaitable(result):
                    _schedule(result)
            except Exception:
                logger.exception("abuseguard observer %r failed", observer)

    # -- after the response ------------------------------------------------------------

    def complete(
        self,
        info: RequestInfo,
        decision: Decision,
        *,
        status: int | None = None,
        cost: float | None = None,
        release: bool = True,
        invalid_key: bool = False,
    ) -> None:
        """Feed the outcome back: status (error signals), real cost, concurrency release.

        ``release`` False: the caller released the decision's concurrency slots already
        (`release`). With a shared backend the release and the cost reconciliation are
        queued to it (sent in the background, never awaited here); the error signal stays
        local. The status also tells whether the request's API key was accepted or
        invalid (`Policy.unverified_keys`); ``invalid_key`` True: the app said the key is
        invalid, whatever the status.
        """
        if release and decision.held:
            self.release(decision)
        identity = decision.identity
        unverified = self.unverified_keys
        if (
            unverified is not None
            and identity[:2] == "k:"
            and (status is not None or invalid_key)
            and decision.served
        ):
            now = info.ts if info.ts is not None else self.clock()
            unverified.learn(identity, info.ip, status, now, invalid=invalid_key)
        # A refusal teaches nothing: only the origin's answers count (the guard's own
        # refusals would feed themselves) and a refused request cost nothing.
        if not identity or not decision.served:
            return
        row = self._key_index.get(identity)
        if row is None and not self._shared:
            return
        if row is not None and status is not None and self.scoring_on:
            is_error = 400 <= status < 600 and status != 429
            # A success moves a zero error share nowhere: skip the call, the common case.
            if is_error or self._key_rows[row, L.F_ERR] != 0.0:
                self.engine.record_outcome(row, is_error)
        if cost is not None and 0 <= cost < float("inf") and cost != decision.cost:
            self._reconcile(info, decision, row, cost)

    def _reconcile(
        self, info: RequestInfo, decision: Decision, row: int | None, cost: float
    ) -> None:
        """Charge the difference between the real cost and the estimate to every limit that
        counted the estimate: the key bucket, the network buckets and the by-cost quotas."""
        identity = decision.identity
        delta = cost - decision.cost
        backend = self.backend
        policy = self.policy
        network = policy.network
        net_keys: list[tuple[int, object]] = []
        if network is not None and (network.per_ip or network.per_prefix or network.per_asn):
            net_keys = self._network_keys(info)
        if self._shared:
            backend.reconcile(identity, delta)
            for kind, key in net_keys:
                backend.reconcile_network(kind, key, delta)
        else:
            if row is not None:
                self.engine.charge(L.KIND_KEY, row, delta)
            for kind, key in net_keys:
                net_row = self._tables[kind].index.get(key)
                if net_row is not None:
                    self.engine.charge(kind, net_row, delta)
        hits = max(0, round(cost)) - max(0, round(decision.cost))
        if not hits:
            return
        if self.route_limits is not None:
            ip_key = self.addresses.resolve(info.ip).ip_key
            self.route_limits.reconcile(info, identity, ip_key, hits)
        for index, quota in enumerate(policy.quotas):
            if quota.by_cost:
                ident = (
                    identity
                    if quota.per == "key"
                    else "i:" + self.addresses.resolve(info.ip).ip_key
                )
                if isinstance(backend, LocalLimits):
                    backend.reconcile_quota(quota.limit, quota.strategy, ident, hits)
                else:
                    backend.reconcile_shared_quota(index, quota, ident, hits)

    def _network_keys(self, info: RequestInfo) -> list[tuple[int, object]]:
        """The network buckets' identities of a request (kind, key), as `_run` finds them."""
        network = self.policy.network
        view = self.network
        if network is None or view is None:
            return []
        address = self.addresses.resolve(info.ip)
        keys: list[tuple[int, object]] = []
        if address.version:
            if network.per_ip is not None:
                keys.append((L.KIND_IP, address.ip_key))
            if network.per_prefix is not None:
                keys.append((L.KIND_PREFIX, address.prefix_key))
        if network.per_asn is not None:
            profile = view.profile(
                address, info.asn, info.as_org, info.country, info.anon, info.anon_confidence
            )
            if profile.allowed:
                return []
            if profile.asn_key is not None:
                keys.append((L.KIND_ASN, profile.asn_key))
        return keys

    def report_invalid_key(self, info: RequestInfo) -> bool:
        """The app found the API key of ``info`` invalid: charge the client's address and
        prefix as for a 401 and forget that the key was ever accepted. For apps that tell
        an invalid key some other way than 401/403 (the middleware's `mark_invalid_key`
        does this through `complete`). False when there is nothing to charge: no key, or
        `Policy.unverified_keys` is off."""
        unverified = self.unverified_keys
        if unverified is None:
            return False
        identity, has_account, _ = self.identity_of(info)
        if not has_account:
            return False
        unverified.report_invalid(
            identity, info.ip, info.ts if info.ts is not None else self.clock()
        )
        return True

    def release(self, decision: Decision) -> None:
        """Give back the concurrency slots a decision holds (once: `complete` then needs
        ``release=False``). The middleware calls it as the last body message goes out."""
        backend = self.backend
        for ident in decision.held:
            backend.release(ident)

    def set_prior(self, identity: str, prior: float) -> bool:
        """Background lane: a risk prior (0..1) for an identity, read by the kernel."""
        return self.engine.set_prior(identity, prior)

    async def startup(self) -> None:
        log_startup(self)
        start_compiling = getattr(self.content, "start_compiling", None)  # any fingerprinter
        if start_compiling is not None:
            start_compiling()
        await self.backend.startup()

    async def shutdown(self) -> None:
        await self.backend.shutdown()
        if self.intel is not None:
            self.intel.close()


_UNKNOWN_CLASS = int(ClientClass.UNKNOWN)
_NO_CONTENT = (0, 0, 0.0, False)
_ALLOW = Action.ALLOW
_O_REMAINING = L.O_REMAINING
_O_RESET = L.O_RESET
_O_SCORE = L.O_SCORE


_DENIALS = DENIAL_ACTIONS
_SEVERITY = {action: action.severity for action in Action}
_THROTTLE_SEVERITY = Action.THROTTLE.severity


def action_is_denial(action: Action) -> bool:
    return action in _DENIALS


_REASON_NAMES: dict[int, tuple[str, ...]] = {}


def _reason_names(mask: int) -> tuple[str, ...]:
    """The signal names of a reason bitmask (a few hundred masks occur: cached)."""
    names = _REASON_NAMES.get(mask)
    if names is None:
        names = tuple(name for s, name in enumerate(L.SIGNAL_NAMES) if mask & (1 << s))
        if len(_REASON_NAMES) < 4096:
            _REASON_NAMES[mask] = names
    return names


_background: set[Any] = set()


def _schedule(awaitable: Awaitable[None]) -> None:
    import asyncio

    try:
        task = asyncio.ensure_future(awaitable)
    except RuntimeError:
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


_EXEMPT = Decision(Action.ALLOW)

__all__ = ["Guard", "Prepared", "TokenBucket"]
