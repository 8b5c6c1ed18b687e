"""Guard: the framework-free core, an orchestrator of the request pipeline.

identify -> enrich (``Guard.prepare``) -> engine (``Guard._run``: the rows, one kernel
call) -> limits (the backend port) -> decide (`abuseguard.decide`) -> settle after the
response (`abuseguard.settle`), with the gates that may refuse a request before the engine:
unverified keys (`abuseguard.keyprobe_gate`) and route and plan limits
(`abuseguard.route_gate`). ``Guard.check(info)`` answers a :class:`RequestInfo` with a
:class:`Decision`; after the app answered, ``Guard.complete(info, decision, status=...,
cost=...)`` feeds the outcome back. The middleware, the replay command and the benchmarks
all drive this same object.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from abuseguard.account import AccountFacts, AccountRules
from abuseguard.backends.base import (
    Backend,
    LocalDecider,
    RoundTripDecider,
    backend_from_uri,
    kernel_buckets,
    require_capabilities,
)
from abuseguard.backends.memory import MemoryBackend
from abuseguard.config_check import check_callables
from abuseguard.decide import Decider
from abuseguard.decision import Action, Decision
from abuseguard.engine import hashindex, kernel_set
from abuseguard.engine import layout as L
from abuseguard.engine.engine import Engine
from abuseguard.errors import ConfigError
from abuseguard.exempt import ExemptPaths
from abuseguard.heap import freeze_startup_objects
from abuseguard.identity import AddressBook, ClientAddress, hash_key
from abuseguard.intel.agents import AgentClassifier, ClientClass
from abuseguard.intel.client import ClientEnricher
from abuseguard.intel.geo import GeoIntel
from abuseguard.intel.network import NetworkProfile, NetworkView
from abuseguard.keyprobe import UnverifiedKeyLimiter
from abuseguard.keyprobe_gate import UnverifiedKeyGate
from abuseguard.policy import Policy, TokenBucket
from abuseguard.precheck import precheck_reading
from abuseguard.request import RequestInfo
from abuseguard.route_gate import RouteGate
from abuseguard.route_limits import RouteLimiter, Verdict
from abuseguard.settle import Settlement
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
    account: AccountFacts | None = None
    plan: str | None = None  # `Policy.plans`: its limits replace the app-wide ones


class Guard:
    """Decides what to do with each request.

    Not thread-safe: use one Guard per event loop (the middleware does). ``clock`` returns
    seconds; ``RequestInfo.ts``, when set, is used instead (replay runs in virtual time).
    ``intel`` overrides the databases named in ``policy.network.databases``. ``explain``
    False leaves `Decision.contributions` empty, for bulk runs that only count decisions
    (the replay command: building them costs about a microsecond per refusal).
    ``freeze_gc`` (default True): once `startup` is over, and again when kernels compiled in
    the background take over, collect and ``gc.freeze()`` the process's objects, so full
    collections no longer walk them (`abuseguard.heap`; process-wide, see
    docs/deployment.md); False leaves the garbage collector alone.
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
        freeze_gc: bool = True,
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
        if not isinstance(freeze_gc, bool):
            raise ConfigError("freeze_gc", f"expected a bool, got {freeze_gc!r}")
        self.freeze_gc = freeze_gc
        self._started = False
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
            intel = GeoIntel.from_paths(network.databases)
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
        # Whether the kernel's own buckets decide, as the backend declares it.
        self.local_buckets = kernel_buckets(self.backend)
        # Kernels not in Numba's cache compile in a background thread; until then the
        # engine runs their Python twin (same decisions, slower): a guard never waits for
        # a compilation, and no request compiles.
        self.engine = Engine(
            policy, local_buckets=self.local_buckets, implementation=_kernels_at_construction()
        )
        self._tables = self.engine.tables
        self._key_index = self.engine.tables[L.KIND_KEY].index
        # Python floats from the key table without numpy's scalar objects.
        self._key_rows = self.engine.tables[L.KIND_KEY].data_view
        self._accounts = self.engine.accounts
        self._index_vector = self.engine.index_vector
        self._claim_rows = self.engine.claim_rows
        self._state = self.engine.state
        self._decide_with = self.engine.decide_with
        # load_target <= 0 means off: no in-flight count is ever above infinity.
        self._load_target = policy.load_target if policy.load_target > 0 else float("inf")
        if isinstance(self.backend, MemoryBackend):
            self.backend.bind(self._virtual_now)
        self.observers: list[Observer] = list(observers)
        self._key_hashes: dict[str, str] = {}
        self._edge = policy.edge.reader() if policy.edge is not None else None
        self.client_enricher = ClientEnricher(self.agents)
        self._client_of = self.client_enricher.client_of
        # The network tables (bits of `hashindex.claim_rows`'s ``want``) a request with an
        # account gets rows in, and an anonymous one (only those whose bucket it must pass).
        self._network_want = _WANT_NETWORK | _WANT_ASN | _WANT_PERSONA
        self._anonymous_network_want = (
            (1 << L.KIND_IP if network and network.per_ip else 0)
            | (1 << L.KIND_PREFIX if network and network.per_prefix else 0)
            | (_WANT_ASN if network and network.per_asn else 0)
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
        self._key_func = policy.key_func
        self._shared = self.backend.shared
        self._round_trip = self.backend if isinstance(self.backend, RoundTripDecider) else None
        # A shared backend that decides from local state (synced mode) answers in-process.
        self._local_decider = self.backend if isinstance(self.backend, LocalDecider) else None
        self.unverified_keys = (
            UnverifiedKeyLimiter(policy.unverified_keys, self.addresses)
            if policy.unverified_keys is not None
            else None
        )
        # The stages after the engine, and the gates ahead of it.
        self.decider = Decider(
            policy, self.engine, self.backend, local_buckets=self.local_buckets, explain=explain
        )
        self.ladder = self.decider.ladder
        secret = policy.secret
        self._account_rules = (
            AccountRules(
                policy.accounts,
                self.ladder,
                lambda raw: "k:" + hash_key(secret, raw),
                L.F_LEVEL_CAP,
                L.F_PRIOR,
            )
            if policy.accounts is not None
            else None
        )
        self._io = self.decider.io  # the kernel's io vector, read as Python floats
        self._conclude = self.decider.conclude
        self.settlement = Settlement(
            policy,
            self.backend,
            self.engine,
            addresses=self.addresses,
            network=self.network,
            unverified_keys=self.unverified_keys,
            scoring_on=self.scoring_on,
            clock=self.clock,
            route_limits=self.route_limits,
        )
        self._unverified = (
            UnverifiedKeyGate(
                self.unverified_keys,
                policy,
                identity_of=self.identity_of,
                cost_of=self.cost_of,
                clock=self.clock,
                exempt=self._exempt,
            )
            if self.unverified_keys is not None
            else None
        )
        self._routes = (
            RouteGate(self.route_limits, policy) if self.route_limits is not None else None
        )
        # What a shared backend gets instead of the Guard: the stages it may run.
        self._stages = GuardStages(self)
        if self._round_trip is not None:
            self._round_trip.attach(self._stages)  # checks the policy, precomputes numbers
        if self.unverified_keys is not None:
            # Budgets a round-trip backend keeps in its store; None: kept in this process.
            self.unverified_keys.store = self.backend.unverified_budgets(self.unverified_keys)
        if not self.engine.kernels.compiled:
            kernel_set.compile_in_background(self._use_kernels)

    def _use_kernels(self, chosen: kernel_set.KernelSet) -> None:
        """Switch to ``chosen`` (the compiled kernels, from the compiling thread): same
        functions over the same arrays, so a request in flight may use either."""
        self.engine.use_kernels(chosen)
        self._claim_rows = chosen.claim_rows
        self._decide_with = chosen.decide_with
        if self.freeze_gc and self._started:
            freeze_startup_objects("kernels")  # the compilation's survivors

    @property
    def kernels_compiled(self) -> bool:
        """Whether decisions run on the compiled kernels (False while they compile)."""
        return bool(self.engine.kernels.compiled)

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
        assert callable(cost)  # a number made the cost static (returned above)
        try:
            value = float(cost(info))
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
            edge = self._edge
            if edge is not None:
                mismatch = max(mismatch, edge.mismatch(info.headers, ua_class))
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
            info.account,
            info.plan,
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
            info.account,
            info.plan,
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
        decision = self._conclude(p, plain)
        if self.observers:
            self._notify(info, decision)
        return decision

    def _run(self, p: Prepared) -> bool:
        """Find the rows and call the kernel once; True for a plain allow (see
        `kernels.decide_with`), the io vector holds the outputs."""
        # (Layout constants are read as locals here: an ``L.X`` lookup costs ~40 ns.)
        identity = p.identity
        inflight = self.inflight
        load = 1.0 if inflight <= self._load_target else self._load_factor()
        profile = p.profile
        # Which tables the request has a row in (bit kind; bit 5 the account table), and
        # the hash of its identity in each (`engine.hashindex`).
        want = _WANT_ACCOUNT if p.has_account else 0
        h_ip = h_prefix = h_asn = h_persona = 0
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
            address = p.address
            if address.version:
                h_ip = hash(address.ip_key)
                h_prefix = hash(address.prefix_key)
            asn_key = profile.asn_key
            if asn_key is not None:
                h_asn = hash(asn_key)
            persona = p.persona
            if persona:
                h_persona = hash(persona)
            want |= (
                (_WANT_NETWORK if address.version else 0)
                | (_WANT_ASN if asn_key is not None else 0)
                | (_WANT_PERSONA if persona else 0)
            ) & (self._network_want if p.has_account else self._anonymous_network_want)
            country = profile.country_code
            anon = profile.anon_signal
            geo = profile.geo_signal
            distrust = profile.distrust
            nat = 1.0 if profile.nat_eligible else 0.0
        h_key = hash(identity)
        r_key, r_ip, r_pfx, r_asn, r_per, r_acc, full = self._claim_rows(
            self._index_vector, want, h_key, h_ip, h_prefix, h_asn, h_persona
        )
        if full:
            # A table is full and the identity new there: it takes an evicted row (Python).
            key_table, ip_table, prefix_table, asn_table, persona_table = self._tables
            if r_key == _FULL:
                r_key = key_table.evict_for(h_key, p.ts)
            if r_acc == _FULL:
                r_acc = self._accounts.evict_for(h_key, p.ts)
            if r_ip == _FULL:
                r_ip = ip_table.evict_for(h_ip, p.ts)
            if r_pfx == _FULL:
                r_pfx = prefix_table.evict_for(h_prefix, p.ts)
            if r_asn == _FULL:
                r_asn = asn_table.evict_for(h_asn, p.ts)
            if r_per == _FULL:
                r_per = persona_table.evict_for(h_persona, p.ts)
        rules = self._account_rules
        if rules is not None and (p.account is not None or rules.trusted_identities):
            rules.apply(self._tables[0].data[r_key], identity, p.account)
        return self._decide_with(
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
                if self._unverified is not None:
                    refusal = self._unverified.first(info, read_without_body)
                    if refusal is not None:
                        return self._notified(info, refusal)
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
        return self._check_local(info, p)

    def _check_local(self, info: RequestInfo, p: Prepared) -> Decision:
        """The pipeline after `prepare`, memory backend: the gates, the engine, the
        decision."""
        self._now = p.ts
        if p.has_account and self._unverified is not None:
            refusal = self._unverified.refuse(p.identity, p.address, p.ts, p.cost)
            if refusal is not None:
                return self._notified(info, refusal)
        if self._routes is not None:
            return self._check_routes(info, p, self._routes)
        decision = self._conclude(p, self._run(p))
        if self.observers:
            self._notify(info, decision)
        return decision

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
        decision = self._conclude(p, plain)
        if self.observers:
            self._notify(info, decision)
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
        return self._check_local(info, p)

    def _check_routes(self, info: RequestInfo, p: Prepared, routes: RouteGate) -> Decision:
        """The pipeline with `Policy.routes` and `Policy.plans`: a request one of their
        limits refuses goes no further (nothing counted, the kernel not run); a served one
        is counted in each of them, with their states in the decision."""
        verdict = routes.test(info, p.identity, p.address.ip_key, p.cost, p.ts)
        refusal = routes.refusal(p, verdict)
        if refusal is not None:
            return self._notified(info, refusal)
        decision = self._conclude_on_plan(info, p, routes.limiter)
        routes.settle(verdict, decision, p)
        if self.observers:
            self._notify(info, decision)
        return decision

    def _conclude_on_plan(
        self, info: RequestInfo, p: Prepared, route_limits: RouteLimiter
    ) -> Decision:
        """`_conclude` after the kernel ran with the key bucket of the request's plan, when
        plans carry their own bucket (it replaces the app-wide one: the key row's F_PLAN)."""
        if not route_limits.plan_slots:
            return self._conclude(p, self._run(p))
        key_table = self._tables[L.KIND_KEY]
        key_table.data[key_table.row(p.identity, p.ts), L.F_PLAN] = route_limits.plan_slot(info)
        decision = self._conclude(p, self._run(p))
        io = self._io
        decision.policies = route_limits.with_plan_bucket(
            info, decision.policies, self.policy.bucket, io[L.O_REMAINING], io[L.O_RESET],
            bool(int(io[L.O_DENIED_KINDS]) & 1 << L.KIND_KEY),
        )  # fmt: skip
        return decision

    def route_refusal(self, info: RequestInfo, p: Prepared, verdict: Verdict) -> Decision | None:
        """The refusal when a route or plan limit refuses the request and it is enforced
        (not shadowed); None otherwise. Shown to the observers."""
        assert self._routes is not None
        refusal = self._routes.refusal(p, verdict)
        return refusal if refusal is None else self._notified(info, refusal)

    async def acheck(
        self, info: RequestInfo, read_without_body: Prepared | None = None
    ) -> Decision:
        """Decide for one request with any backend (``read_without_body``: as in `check`;
        a backend that decides in a round trip prepares the request itself)."""
        if not self._shared:
            return self.check(info, read_without_body)
        gate = self._unverified
        if gate is not None:
            if gate.limiter.store is not None:
                refusal = await gate.first_shared(info)
            else:
                refusal = gate.first(info, read_without_body)
            if refusal is not None:
                return self._notified(info, refusal)
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
            return self._notified(info, answer.refusal)
        routes = self._routes
        if answer.routes is not None and routes is not None:
            refusal = routes.refusal(p, answer.routes)
            if refusal is not None:
                return self._notified(info, refusal)
            decision = self.decider.decide(p, io, answer.limits, answer.buckets_known)
            routes.settle(answer.routes, decision, p)
        else:
            decision = self.decider.decide(p, io, answer.limits, answer.buckets_known)
        if self.observers:
            self._notify(info, decision)
        if answer.policies_kept >= 0:
            decision.policies = decision.policies[: answer.policies_kept]
        if not answer.holds:
            decision.held = ()
        if answer.after is not None:
            answer.after(decision)
        return decision

    def risk_action(self, level: int, profile: NetworkProfile | None) -> tuple[Action, bool]:
        """The action and shadow flag from the risk ladder and the network rules alone,
        before any limit is looked at (a shared backend gates its limits on it)."""
        return self.decider.risk_action(level, profile)

    def notify(self, info: RequestInfo, decision: Decision) -> None:
        """Show a decision to every observer (sync ones now, async ones as tasks)."""
        self._notify(info, decision)

    def _notified(self, info: RequestInfo, decision: Decision) -> Decision:
        if self.observers:
            self._notify(info, decision)
        return decision

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
        usage: float | None = None,
    ) -> None:
        """Feed the outcome back: status (error signals), real cost, concurrency release.

        The real ``cost`` reconciles the limits that counted the estimate and counts toward
        the account's spend per day (the ``spend`` signal); ``usage`` (e.g. the tokens of
        the response when the limits count requests) counts toward the spend only.

        ``release`` False: the caller released the decision's concurrency slots already
        (`release`). With a shared backend the release and the cost reconciliation are
        queued to it (sent in the background, never awaited here); the error signal stays
        local. The status also tells whether the request's API key was accepted or
        invalid (`Policy.unverified_keys`); ``invalid_key`` True: the app said the key is
        invalid, whatever the status. See `abuseguard.settle`.
        """
        self.settlement.complete(info, decision, status, cost, release, invalid_key, usage)

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
        self.settlement.release(decision)

    def forgive(self, identity: str) -> bool:
        """Clear the risk an identity (a `Decision.identity`) has built up in this process:
        its accumulated evidence and the hold it caused, a ban, the smoothed score and
        ladder level, the background lane's prior. Its limits (buckets, quotas) are kept.
        False when the identity is not known here. With a shared backend, a ban that
        another worker wrote to the store is not lifted."""
        return self.engine.forgive(identity)

    def set_prior(self, identity: str, prior: float) -> bool:
        """Background lane: a risk prior (0..1) for an identity, read by the kernel."""
        return self.engine.set_prior(identity, prior)

    async def startup(self) -> None:
        log_startup(self)
        start_compiling = getattr(self.content, "start_compiling", None)  # any fingerprinter
        if start_compiling is not None:
            start_compiling()
        await self.backend.startup()
        self._started = True
        if self.freeze_gc:
            freeze_startup_objects()

    async def shutdown(self) -> None:
        await self.backend.shutdown()
        if self.intel is not None:
            self.intel.close()


def _kernels_at_construction() -> kernel_set.KernelSet:
    """The compiled kernels when Numba can load them now, else their Python twin."""
    return kernel_set.compiled() if kernel_set.cached() else kernel_set.python_twin()


_UNKNOWN_CLASS = int(ClientClass.UNKNOWN)
_FULL = hashindex.FULL
# Bits of `hashindex.claim_rows`'s ``want``: a table by kind, the account table at 5.
_WANT_NETWORK = (1 << L.KIND_IP) | (1 << L.KIND_PREFIX)
_WANT_ASN = 1 << L.KIND_ASN
_WANT_PERSONA = 1 << L.KIND_PERSONA
_WANT_ACCOUNT = 1 << L.KIND_ACCOUNT
_NO_CONTENT = (0, 0, 0.0, False)

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
