"""Guard: the framework-free core, an orchestrator of the request pipeline.

identify -> enrich (`abuseguard.prepare`) -> engine (`abuseguard.engine_run`: the rows,
one kernel call) -> limits (the backend port) -> decide (`abuseguard.decide`) -> settle
after the response (`abuseguard.settle`), with the gates that may refuse a request before
the engine: unverified keys (`abuseguard.keyprobe_gate`) and route and plan limits
(`abuseguard.route_gate`, `abuseguard.plan_run`). `abuseguard.pipeline` builds the stages;
this module only runs them in order. ``Guard.check(info)`` answers a :class:`RequestInfo`
with a :class:`Decision`; after the app answered, ``Guard.complete(info, decision,
status=..., cost=...)`` feeds the outcome back. The middleware, the replay command and the
benchmarks all drive this same object.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from abuseguard.backends.base import Backend
from abuseguard.config_check import check_callables
from abuseguard.decision import Action, Decision, PlainAllow
from abuseguard.engine import kernel_set
from abuseguard.engine import layout as L
from abuseguard.heap import freeze_startup_objects
from abuseguard.intel.geo import GeoIntel
from abuseguard.intel.network import NetworkProfile
from abuseguard.observe import Observer, notify_observers
from abuseguard.pipeline import build_pipeline, check_arguments
from abuseguard.policy import Policy, TokenBucket
from abuseguard.precheck import precheck_reading
from abuseguard.prepare import Prepared
from abuseguard.request import RequestInfo, RequestTime
from abuseguard.route_limits import Verdict
from abuseguard.startup_log import log_startup


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
        self.policy = policy = check_arguments(policy, clock, intel, explain, freeze_gc)
        self.freeze_gc = freeze_gc
        self._started = False
        self.observers: list[Observer] = list(check_callables("observers", observers))
        self.clock = clock if clock is not None else time.time
        # The memory backend's clock: the time of the request being decided.
        self.request_time = RequestTime(self.clock())
        pipeline = build_pipeline(
            policy, backend, clock=self.clock, virtual_now=self.request_time, intel=intel,
            explain=explain, observers=self.observers,
        )  # fmt: skip
        self.backend, self.engine = pipeline.backend, pipeline.engine
        self.route_limits, self.unverified_keys = pipeline.route_limits, pipeline.unverified_keys
        self.addresses, self.agents = pipeline.addresses, pipeline.agents
        self.intel, self.network = pipeline.intel, pipeline.network
        self.client_enricher = pipeline.client_enricher
        self.local_buckets = pipeline.local_buckets
        self.decider, self.ladder = pipeline.decider, pipeline.decider.ladder
        self.settlement = pipeline.settlement
        self.reader = pipeline.reader  # the identify and enrich stage
        self.scoring_on = pipeline.reader.scoring_on
        self.engine_run = pipeline.engine_run  # the engine stage; it counts requests in flight
        self.identity_of = pipeline.reader.identity_of
        """RequestInfo -> (identity, whether it has an account, its `ClientAddress`)."""
        self.cost_of = pipeline.reader.cost_of
        """What a request costs up front (`RequestReader.cost_of`)."""
        self.prepare = pipeline.reader.prepare
        """RequestInfo -> `Prepared`: identity, network profile, client class, fingerprint."""
        self.run_engine = pipeline.engine_run.run_engine
        """Find a `Prepared` request's rows, call the kernel once, return the io vector."""
        self._with_body, self._run = pipeline.reader.with_body, pipeline.engine_run.run
        self._conclude, self._io = pipeline.decider.conclude, pipeline.decider.io
        self._conclude_lazily = pipeline.decider.conclude_lazily
        self.exempt_paths = pipeline.exempt
        """The paths `Policy.exempt` lets through undecided (an `ExemptPaths`), or None."""
        self._shared = pipeline.backend.shared
        self._unverified, self._routes = pipeline.unverified_gate, pipeline.route_gate
        self._round_trip, self._local_decider = pipeline.round_trip, pipeline.local_decider
        self._on_plan = pipeline.plan_run
        if not self.engine.kernels.compiled:
            kernel_set.compile_in_background(self._use_kernels)

    def _use_kernels(self, chosen: kernel_set.KernelSet) -> None:
        """Switch to ``chosen`` (the compiled kernels, from the compiling thread): same
        functions over the same arrays, so a request in flight may use either."""
        self.engine.use_kernels(chosen)
        self.engine_run.use_kernels(chosen)
        if self.freeze_gc and self._started:
            freeze_startup_objects("kernels")  # the compilation's survivors

    @property
    def kernels_compiled(self) -> bool:
        """Whether decisions run on the compiled kernels (False while they compile)."""
        return bool(self.engine.kernels.compiled)

    @property
    def inflight(self) -> int:
        """Requests in flight (the middleware counts them); above `Policy.load_target`
        refills slow down."""
        return self.engine_run.inflight

    @inflight.setter
    def inflight(self, count: int) -> None:
        self.engine_run.inflight = count

    @property
    def content(self) -> Any:
        """The prompt fingerprinter (a ``ContentFingerprinter``), None with content off."""
        return self.reader.content

    @content.setter
    def content(self, fingerprinter: Any) -> None:
        self.reader.content = fingerprinter

    # -- the decision ------------------------------------------------------------------

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
        if self.exempt_paths and self.exempt_paths.matches(info.path):
            return _EXEMPT
        p = self._prepared(info, read_without_body)
        return self._check_local(info, p)

    def _prepared(self, info: RequestInfo, read_without_body: Prepared | None) -> Prepared:
        """`prepare`, or the pre-check's reading of ``info`` completed with its body."""
        if read_without_body is None:
            return self.prepare(info)
        return self._with_body(info, read_without_body)

    def _check_local(self, info: RequestInfo, p: Prepared) -> Decision:
        """The pipeline after `prepare`, memory backend: the gates, the engine, the
        decision."""
        refusal = self._unverified_refusal(p)
        if refusal is not None:
            return self._notified(info, refusal)
        if self._routes is not None:
            return self._check_routes(info, p)
        decision = self._conclude(p, self._run(p))
        if self.observers:
            notify_observers(self.observers, info, decision)
        return decision

    def check_lazily(
        self, info: RequestInfo, read_without_body: Prepared | None = None
    ) -> Decision | PlainAllow:
        """`check`, except that a plain allow (the kernel allowed, no quota, concurrency
        limit or network rule has a say) is answered as a `PlainAllow`, a tuple whose
        Decision (`abuseguard.decision.plain_allow_decision`) is built only if something
        asks for it. Memory backend without observers or route and plan limits (observers
        are shown a Decision); anything else is `check`."""
        if self._shared or self.observers or self._routes is not None:
            return self.check(info, read_without_body)
        if self.exempt_paths and self.exempt_paths.matches(info.path):
            return _EXEMPT
        p = self._prepared(info, read_without_body)
        refusal = self._unverified_refusal(p)
        if refusal is not None:
            return refusal
        return self._conclude_lazily(p, self._run(p))

    def _unverified_refusal(self, p: Prepared) -> Decision | None:
        """Set the memory backend's clock to the request's time; the refusal of an
        unverified key whose address has spent its budget, or None."""
        self.request_time.now = p.ts
        if p.has_account and self._unverified is not None:
            return self._unverified.refuse(p.identity, p.address, p.ts, p.cost)
        return None

    def _check_merged(
        self, info: RequestInfo, read_without_body: Prepared | None = None
    ) -> Decision:
        """Decide from local state with a backend that merges it into a store in the
        background (`LocalDecider`: Redis in synced mode): the memory backend's path, the
        kernel's buckets charged exactly when the request is served, then the backend notes
        what to merge."""
        if self.exempt_paths and self.exempt_paths.matches(info.path):
            return _EXEMPT
        p = self._prepared(info, read_without_body)
        plain = self._run(p)
        decision = self._conclude(p, plain)
        if self.observers:
            notify_observers(self.observers, info, decision)
        assert self._local_decider is not None
        self._local_decider.note_decision(p, decision, plain, self._io)
        return decision

    def _check_routes(self, info: RequestInfo, p: Prepared) -> Decision:
        """The pipeline with `Policy.routes` and `Policy.plans`: a request one of their
        limits refuses goes no further (nothing counted, the kernel not run); a served one
        is counted in each of them, with their states in the decision."""
        routes, on_plan = self._routes, self._on_plan
        assert routes is not None and on_plan is not None
        verdict = routes.test(info, p.identity, p.address.ip_key, p.cost, p.ts)
        refusal = routes.refusal(p, verdict)
        if refusal is not None:
            return self._notified(info, refusal)
        decision = on_plan.conclude(info, p)
        routes.settle(verdict, decision, p)
        if self.observers:
            notify_observers(self.observers, info, decision)
        return decision

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
        if self.exempt_paths and self.exempt_paths.matches(info.path):
            return _EXEMPT
        return await self._round_trip.check(info)

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
        exempt = self.exempt_paths
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

    def decision_from_engine(self, info: RequestInfo, p: Prepared) -> Decision:
        """The Decision for a request from the outputs its `run_engine(p)` just left in the
        io vector (memory backend): `check_prepared` in two steps, each of which can be
        timed on its own (the benchmarks)."""
        if self._shared:
            raise RuntimeError(
                "Guard.decision_from_engine() is for the memory backend; "
                f"not for the {type(self.backend).__name__}"
            )
        self.request_time.now = p.ts
        io = self._io
        plain = io[L.O_ACTION] == 0.0 and io[L.O_DENIED_KINDS] == 0.0 and io[L.O_BANNED] == 0.0
        decision = self._conclude(p, plain)
        if self.observers:
            notify_observers(self.observers, info, decision)
        return decision

    def route_refusal(self, info: RequestInfo, p: Prepared, verdict: Verdict) -> Decision | None:
        """The refusal when a route or plan limit refuses the request and it is enforced
        (not shadowed); None otherwise. Shown to the observers."""
        assert self._routes is not None
        refusal = self._routes.refusal(p, verdict)
        return refusal if refusal is None else self._notified(info, refusal)

    def risk_action(self, level: int, profile: NetworkProfile | None) -> tuple[Action, bool]:
        """The action and shadow flag from the risk ladder and the network rules alone,
        before any limit is looked at (a shared backend gates its limits on it)."""
        return self.decider.risk_action(level, profile)

    def notify(self, info: RequestInfo, decision: Decision) -> None:
        """Show a decision to every observer (sync ones now, async ones as tasks)."""
        notify_observers(self.observers, info, decision)

    def _notified(self, info: RequestInfo, decision: Decision) -> Decision:
        if self.observers:
            notify_observers(self.observers, info, decision)
        return decision

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
        return self.settlement.report_invalid_key(info, self.identity_of(info))

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


_EXEMPT = Decision(Action.ALLOW)

__all__ = ["Guard", "Observer", "Prepared", "TokenBucket"]
