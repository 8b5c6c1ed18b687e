"""The backend port: where limits that must be shared live, and what a backend can do.

A backend class declares its capabilities by the capability classes it derives from, as
`limits` storages do with their strategy mixins, and the URI schemes it answers:

- `LocalLimits`: it counts window quotas and concurrency slots in this process (the
  memory backend); the guard asks it for every quota and slot of a decision.
- `RoundTripDecider` (``shared``): it answers the limits of a request in a round trip to
  a store (Redis in inline mode): the guard awaits `RoundTripDecider.check`.
- `LocalDecider` (``shared``, ``decides_locally``): the Guard decides from local state,
  which the backend merges with a store in the background (Redis in synced mode), so
  ``Guard.check`` works too.

Every backend takes the after-the-fact calls of the `Settlement` port: ``release`` of a
concurrency slot, ``reconcile`` of the key bucket, ``reconcile_network``,
``reconcile_quota``. `require_capabilities` (called by the Guard at construction) refuses
a backend that declares none of the deciding capabilities, or a shared one that declares
no shared one. A backend class registers its URI schemes with ``schemes = (...)``; a URI
of a scheme not yet registered imports the modules in `_PROVIDERS` (Redis lazily: the
memory backend never imports redis).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from abuseguard.errors import ConfigError

if TYPE_CHECKING:
    from abuseguard.decision import Action, Decision
    from abuseguard.engine.rows import EngineRows
    from abuseguard.intel.network import NetworkProfile
    from abuseguard.keyprobe import SharedBudgets, UnverifiedKeyLimiter
    from abuseguard.plan_overrides import AppWideLimits
    from abuseguard.policy import Policy, Quota
    from abuseguard.prepare import Prepared
    from abuseguard.request import RequestInfo
    from abuseguard.route_limits import RouteLimiter, Verdict


class Backend:
    """A place for limit state.

    ``shared`` backends (Redis) hold buckets, quotas, concurrency and sketches for many
    processes and are reached asynchronously; the in-process engine still scores every
    request. The memory backend keeps everything in the process and is used synchronously.
    A shared backend that ``decides_locally`` (Redis in synced mode) decides without
    waiting for anything, so ``Guard.check`` works with it too (``check_now``).
    """

    shared: ClassVar[bool] = False
    decides_locally: ClassVar[bool] = False
    #: A shared backend that tests and counts route and plan limits (`Policy.routes`,
    #: `Policy.plans`) in its store, in the round trip of each request (Redis inline).
    counts_route_limits: ClassVar[bool] = False
    #: The URI schemes this class answers (``backend_from_uri``); registered at definition.
    schemes: ClassVar[tuple[str, ...]] = ()
    uri: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for scheme in cls.__dict__.get("schemes", ()):
            _REGISTRY[scheme.lower()] = cls

    @classmethod
    def from_uri(cls, uri: str) -> Backend:
        """A backend from a URI of one of its ``schemes``; the default takes no options."""
        return cls()

    async def startup(self) -> None:
        """Connect, load scripts. Called at lifespan start (or on first use)."""

    async def shutdown(self) -> None:
        """Release connections."""

    def unverified_budgets(self, limiter: UnverifiedKeyLimiter) -> SharedBudgets | None:
        """Where the unverified-key budgets of ``limiter`` live when not in this process
        (`keyprobe.SharedBudgets`); None (the default): in this process."""
        return None

    # -- the Settlement port: after the response (no-ops unless a backend counts there) --

    def release(self, identity: str) -> None:
        """Give back one concurrency slot held for ``identity`` ("c:...")."""

    def reconcile(self, identity: str, delta: float) -> None:
        """Charge (delta > 0) or refund (delta < 0) a shared key bucket after the fact."""

    def reconcile_network(self, kind: int, key: object, delta: float) -> None:
        """Charge or refund a shared network bucket (``kind``: engine layout kind)."""

    def reconcile_shared_quota(self, index: int, quota: Quota, identity: str, delta: int) -> None:
        """Count ``delta`` more (< 0: fewer) in a shared by-cost quota's current window."""

    def reconcile_route_quota(self, limits: str, quota: Quota, identity: str, delta: int) -> None:
        """The same for a by-cost quota of the route or plan limits named ``limits``."""


class Stages(Protocol):
    """The Guard's pipeline stages a shared backend may run for one request, and the facts
    it may read: what a backend gets instead of the Guard (`abuseguard.stages`)."""

    policy: Policy
    rows: EngineRows  # the engine's rows by identity, its bucket parameters
    route_limits: RouteLimiter | None  # `Policy.routes` and `Policy.plans`, when set
    ladder: tuple[Action, ...]
    shadow_kinds: int  # bitmask of the kinds whose bucket refusals are shadowed

    def clock(self) -> float: ...
    def local_verdict(self, level: int, profile: NetworkProfile | None) -> tuple[Action, bool]:
        """The action and shadow flag from the risk ladder and network rules alone."""
        ...

    def load_factor(self) -> float: ...
    def buckets_shadowed(self, denied: int) -> bool: ...
    def app_limits_for(self, plan: str | None) -> AppWideLimits:
        """The app-wide quotas and concurrency a client of ``plan`` meets (a plan may
        replace them: `abuseguard.plan_overrides`)."""
        ...


@dataclass(slots=True)
class LimitAnswer:
    """What a round-trip backend answers for one request's limits; the Guard decides.

    ``limits`` answers the quotas and the concurrency slot, ``buckets_known``: the bucket
    outputs in the io vector are real. ``refusal``: the fail mode refused the request
    without a decision from the limits (the Guard shows it to the observers).
    ``policies_kept``: keep only this many of the decision's policy states (-1: all);
    ``holds`` False: the decision holds no concurrency slot. ``after`` sees the decision
    (a lease not held is given back, a refusal remembered). ``routes``: the route and
    plan limits' answer, counted in the same call (None: none applied or none was asked)."""

    limits: LimitSource
    buckets_known: bool
    refusal: Decision | None = None
    policies_kept: int = -1
    holds: bool = True
    after: Callable[[Decision], None] | None = None
    routes: Verdict | None = None


class LimitSource(Protocol):
    """Answers the window quotas and concurrency slots of one decision.

    The memory backend counts them itself; a shared backend answers from the reply of its
    one round trip. The guard asks only for the limits that apply, in policy order.
    """

    def hit_quota(
        self, limit: str, strategy: str, identity: str, cost: int
    ) -> tuple[bool, float, float]:
        """Hit a window quota; (admitted, remaining, seconds until reset)."""
        ...

    def acquire(self, identity: str, limit: int) -> bool:
        """Take a concurrency slot; False when all ``limit`` slots are held."""
        ...


class UnknownLimits:
    """Limits nobody could look up (a store failed, or a shared backend has nothing to
    say): admitted, and left out of the headers."""

    def hit_quota(
        self, limit: str, strategy: str, identity: str, cost: int
    ) -> tuple[bool, float, float]:
        return True, 0.0, 0.0

    def acquire(self, identity: str, limit: int) -> bool:
        return True


UNKNOWN_LIMITS = UnknownLimits()


class LocalLimits(ABC):
    """Capability: quotas and concurrency counted in this process (``Guard.check``)."""

    @abstractmethod
    def hit_quota(
        self, limit: str, strategy: str, identity: str, cost: int
    ) -> tuple[bool, float, float]:
        """Hit a window quota; (admitted, remaining, seconds until reset)."""

    @abstractmethod
    def quota_fits(self, limit: str, strategy: str, identity: str, cost: int) -> bool:
        """Whether a hit of ``cost`` would be admitted, nothing counted."""

    @abstractmethod
    def quota_state(self, limit: str, strategy: str, identity: str) -> tuple[float, float]:
        """(remaining, seconds until reset) of a window quota."""

    @abstractmethod
    def reconcile_quota(self, limit: str, strategy: str, identity: str, delta: int) -> None:
        """Count ``delta`` more (< 0: fewer) in a quota's current window."""

    @abstractmethod
    def acquire(self, identity: str, limit: int) -> bool:
        """Take a concurrency slot; False when all ``limit`` slots are held."""

    @abstractmethod
    def release(self, identity: str) -> None:
        """Give back one concurrency slot."""


class RoundTripDecider(ABC):
    """Capability of a shared backend: it answers a request's limits in a round trip."""

    def attach(self, stages: Stages) -> None:  # noqa: B027 (most deciders precompute nothing)
        """Check the policy and precompute its numbers (the Guard, at construction)."""

    @abstractmethod
    async def reach(self, info: RequestInfo) -> bool:
        """Before the engine runs for ``info``: can the store be asked? (Connect, probe;
        set the kernel's own buckets for a fail mode that limits in-process.)"""

    @abstractmethod
    async def answer(
        self, info: RequestInfo, p: Prepared, io: list[float], reachable: bool
    ) -> LimitAnswer:
        """The limits of one request: the store's answers, the bucket outputs written into
        ``io`` (a copy of the engine's outputs), or the fail mode's when not ``reachable``."""

    def precheck_limits(self, p: Prepared, io: list[float]) -> tuple[LimitSource, bool]:
        """For `Guard.precheck`: what this worker knows of the limits without asking the
        store (read-only), and whether the bucket outputs written into ``io`` are known."""
        return UNKNOWN_LIMITS, False


class LocalDecider(ABC):
    """Capability of a shared backend that decides from local state (no waiting): the
    kernel's own buckets decide, and decisions report them (`kernel_buckets`)."""

    @abstractmethod
    def note_decision(
        self, p: Prepared, decision: Decision, plain: bool, io: Sequence[float]
    ) -> None:
        """The Guard decided ``p`` from local state (``plain``: the kernel's plain allow,
        every bucket charged; ``io``: the engine's outputs): note what to merge into the
        store; no I/O."""


def kernel_buckets(backend: Backend) -> bool:
    """Whether the engine's own token buckets decide ``backend``'s requests, and decisions
    report them: a local backend (nothing else holds them) and a `LocalDecider` (Redis
    synced mode) do; a `RoundTripDecider` alone answers the buckets in its round trip
    (its fail mode may turn the kernel's on meanwhile, through `EngineRows`). Read by the
    Guard once, at construction."""
    return not backend.shared or isinstance(backend, LocalDecider)


def require_capabilities(backend: Backend) -> None:
    """A ConfigError unless ``backend`` declares what the guard needs of it: a local one
    counts its limits (`LocalLimits`); a shared one decides by a round trip or locally."""
    name = type(backend).__name__
    if backend.shared:
        if not isinstance(backend, RoundTripDecider | LocalDecider):
            raise ConfigError(
                "backend",
                f"{name} is shared but declares neither RoundTripDecider nor LocalDecider",
            )
        if backend.decides_locally and not isinstance(backend, LocalDecider):
            raise ConfigError("backend", f"{name} decides_locally but is no LocalDecider")
    elif not isinstance(backend, LocalLimits):
        raise ConfigError("backend", f"{name} is not shared and does not count LocalLimits")


_REGISTRY: dict[str, type[Backend]] = {}
# Modules that register backend schemes when imported, tried in order for an unknown one.
_PROVIDERS = ("abuseguard.backends.memory", "abuseguard.backends.redis")
_PROVIDER_SCHEMES = ("memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def backend_from_uri(value: Backend | str | None) -> Backend:
    """A backend object from an object or a URI ("memory://", "redis://host:6379/0", ...)."""
    if value is None:
        value = "memory://"
    if isinstance(value, Backend):
        return value
    if not isinstance(value, str):
        raise ConfigError("backend", f"expected a Backend or a URI string, got {value!r}")
    scheme, sep, _ = value.partition("://")
    scheme = scheme.lower()
    cls = _REGISTRY.get(scheme) if sep else None
    if cls is None and sep and scheme in _PROVIDER_SCHEMES:
        for module_name in _PROVIDERS:
            try:
                importlib.import_module(module_name)
            except ImportError as exc:
                if scheme in _REGISTRY:
                    break
                raise ConfigError(
                    "backend", f"{scheme}:// needs {exc.name}: pip install 'abuseguard[redis]'"
                ) from None
            if scheme in _REGISTRY:
                break
        cls = _REGISTRY.get(scheme)
    if cls is None:
        known = dict.fromkeys((*_PROVIDER_SCHEMES, *_REGISTRY))
        raise ConfigError(
            "backend",
            f"unknown backend URI {value!r}; use one of " + ", ".join(f"{s}://" for s in known),
        )
    return cls.from_uri(value)


__all__ = [
    "UNKNOWN_LIMITS",
    "Backend",
    "LimitAnswer",
    "LimitSource",
    "LocalDecider",
    "LocalLimits",
    "RoundTripDecider",
    "Stages",
    "UnknownLimits",
    "backend_from_uri",
    "kernel_buckets",
    "require_capabilities",
]
