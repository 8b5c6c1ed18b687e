"""The builder of a Guard's pipeline: every stage constructed once from a `Policy` and a
backend, wired to the others, and handed to the Guard as one `Pipeline` record. No stage
gets the Guard: each gets the parts it reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from abuseguard.account import AccountRules
from abuseguard.backends.base import (
    Backend,
    LocalDecider,
    RoundTripDecider,
    backend_from_uri,
    kernel_buckets,
    require_capabilities,
)
from abuseguard.backends.memory import MemoryBackend
from abuseguard.decide import Decider
from abuseguard.engine import kernel_set
from abuseguard.engine import layout as L
from abuseguard.engine.engine import Engine
from abuseguard.engine_run import EngineRun
from abuseguard.errors import ConfigError
from abuseguard.exempt import ExemptPaths
from abuseguard.identity import AddressBook, hash_key
from abuseguard.intel.agents import AgentClassifier
from abuseguard.intel.client import ClientEnricher
from abuseguard.intel.geo import GeoIntel
from abuseguard.intel.network import NetworkView
from abuseguard.keyprobe import UnverifiedKeyLimiter
from abuseguard.keyprobe_gate import UnverifiedKeyGate
from abuseguard.observe import Observer
from abuseguard.plan_run import PlanRun
from abuseguard.policy import Policy
from abuseguard.prepare import RequestReader
from abuseguard.round_trip import RoundTripRun
from abuseguard.route_gate import RouteGate
from abuseguard.route_limits import RouteLimiter
from abuseguard.settle import Settlement
from abuseguard.stages import GuardStages


@dataclass(slots=True)
class Pipeline:
    """The stages of one Guard, in the order a request meets them, and what they share."""

    backend: Backend
    route_limits: RouteLimiter | None
    addresses: AddressBook
    intel: GeoIntel | None
    network: NetworkView | None
    agents: AgentClassifier
    client_enricher: ClientEnricher
    exempt: ExemptPaths | None
    reader: RequestReader  # identify -> enrich
    unverified_keys: UnverifiedKeyLimiter | None
    unverified_gate: UnverifiedKeyGate | None
    route_gate: RouteGate | None
    engine: Engine
    local_buckets: bool  # whether the kernel's own buckets decide, as the backend declares
    engine_run: EngineRun
    decider: Decider
    plan_run: PlanRun | None  # the engine and decide stages on a plan's bucket
    settlement: Settlement
    stages: GuardStages  # what a shared backend gets instead of the Guard
    round_trip: RoundTripRun | None  # the pipeline with a round-trip backend
    local_decider: LocalDecider | None  # a shared backend deciding from local state


def build_pipeline(
    policy: Policy,
    backend_given: Backend | str | None,
    *,
    clock: Callable[[], float],
    virtual_now: Callable[[], float],
    intel: GeoIntel | None,
    explain: bool,
    observers: list[Observer],
) -> Pipeline:
    """``virtual_now``: the memory backend's clock (the time of the request being decided,
    so that replay runs its quotas in virtual time)."""
    backend = backend_from_uri(backend_given)
    require_capabilities(backend)
    route_limits = RouteLimiter.build(policy, backend)
    network = policy.network
    addresses = AddressBook(
        ipv6_prefix=policy.ipv6_prefix,
        ipv4_network_prefix=network.ipv4_prefix if network else 24,
        ipv6_network_prefix=network.ipv6_prefix if network else 48,
    )
    if intel is None and network is not None and network.databases:
        intel = GeoIntel.from_paths(network.databases)
    network_view = NetworkView(network, intel) if network is not None else None
    scoring = policy.scoring
    agents = AgentClassifier()
    content: Any = None
    if scoring is not None and scoring.enabled and scoring.content:
        from abuseguard.intel.content import ContentFingerprinter

        # Kernels Numba has not cached compile in a background thread; until they are
        # ready, fingerprint() finds no prompt (as when the body read times out).
        content = ContentFingerprinter(
            max_bytes=scoring.content_max_bytes,
            background=True,
            evaluation_formats=scoring.evaluation_formats,
        )
    local_buckets = kernel_buckets(backend)
    # Kernels not in Numba's cache compile in a background thread; until then the engine
    # runs their Python twin (same decisions, slower): a guard never waits for a
    # compilation, and no request compiles.
    engine = Engine(policy, local_buckets=local_buckets, implementation=_kernels_at_construction())
    if isinstance(backend, MemoryBackend):
        backend.bind(virtual_now)
    client_enricher = ClientEnricher(agents)
    reader = RequestReader(
        policy,
        addresses=addresses,
        network=network_view,
        client_of=client_enricher.client_of,
        content=content,
        clock=clock,
    )
    exempt = ExemptPaths(policy.exempt_paths) if policy.exempt_paths else None
    unverified_keys = (
        UnverifiedKeyLimiter(policy.unverified_keys, addresses)
        if policy.unverified_keys is not None
        else None
    )
    decider = Decider(policy, engine, backend, local_buckets=local_buckets, explain=explain)
    secret = policy.secret
    account_rules = (
        AccountRules(
            policy.accounts,
            decider.ladder,
            lambda raw: "k:" + hash_key(secret, raw),
            L.F_LEVEL_CAP,
            L.F_PRIOR,
        )
        if policy.accounts is not None
        else None
    )
    engine_run = EngineRun(policy, engine, account_rules)
    plan_run = None
    if route_limits is not None:
        plan_run = PlanRun(
            route_limits, engine, run=engine_run.run, conclude=decider.conclude, io=decider.io,
            bucket=policy.bucket,
        )  # fmt: skip
    settlement = Settlement(
        policy,
        backend,
        engine,
        addresses=addresses,
        network=network_view,
        unverified_keys=unverified_keys,
        scoring_on=reader.scoring_on,
        clock=clock,
        route_limits=route_limits,
    )
    unverified_gate = (
        UnverifiedKeyGate(
            unverified_keys,
            policy,
            identity_of=reader.identity_of,
            cost_of=reader.cost_of,
            clock=clock,
            exempt=exempt,
        )
        if unverified_keys is not None
        else None
    )
    route_gate = RouteGate(route_limits, policy) if route_limits is not None else None
    stages = GuardStages(
        policy, engine, decider, clock=clock, load_factor=engine_run.load_factor,
        route_limits=route_limits,
    )  # fmt: skip
    round_trip = None
    if isinstance(backend, RoundTripDecider):
        backend.attach(stages)  # checks the policy, precomputes numbers
        round_trip = RoundTripRun(
            backend, prepare=reader.prepare, run_engine=engine_run.run_engine, decider=decider,
            route_gate=route_gate, observers=observers,
        )  # fmt: skip
    if unverified_keys is not None:
        # Budgets a round-trip backend keeps in its store; None: kept in this process.
        unverified_keys.store = backend.unverified_budgets(unverified_keys)
    return Pipeline(
        backend,
        route_limits,
        addresses,
        intel,
        network_view,
        agents,
        client_enricher,
        exempt,
        reader,
        unverified_keys,
        unverified_gate,
        route_gate,
        engine,
        local_buckets,
        engine_run,
        decider,
        plan_run,
        settlement,
        stages,
        round_trip,
        backend if isinstance(backend, LocalDecider) else None,
    )


def check_arguments(
    policy: Policy | None,
    clock: Callable[[], float] | None,
    intel: GeoIntel | None,
    explain: bool,
    freeze_gc: bool,
) -> Policy:
    """The Guard's arguments checked (`ConfigError` naming the wrong one); the policy."""
    policy = policy if policy is not None else Policy()
    if not isinstance(policy, Policy):
        raise ConfigError("policy", f"expected a Policy, got {type(policy).__name__}")
    if clock is not None and not callable(clock):
        raise ConfigError("clock", f"expected a callable returning seconds, got {clock!r}")
    if intel is not None and not isinstance(intel, GeoIntel):
        raise ConfigError("intel", f"expected a GeoIntel or None, got {intel!r}")
    if not isinstance(explain, bool):
        raise ConfigError("explain", f"expected a bool, got {explain!r}")
    if not isinstance(freeze_gc, bool):
        raise ConfigError("freeze_gc", f"expected a bool, got {freeze_gc!r}")
    return policy


def _kernels_at_construction() -> kernel_set.KernelSet:
    """The compiled kernels when Numba can load them now, else their Python twin."""
    return kernel_set.compiled() if kernel_set.cached() else kernel_set.python_twin()


__all__ = ["Pipeline", "build_pipeline", "check_arguments"]
