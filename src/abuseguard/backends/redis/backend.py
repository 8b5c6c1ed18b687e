"""RedisBackend: limits shared by every worker and host, one round trip per request.

Per request (the Guard's pipeline asks ``reach``, then ``answer``): the guard prepares the
request and the in-process kernel scores it (its buckets are off with a shared backend);
then ONE ``EVALSHA`` of ``lua/decide.lua``
applies, atomically and on Redis server time, the ban check, the fan-out (and, on a
standalone server, fan-in) HyperLogLogs, the token buckets (the main identity's refill
scaled by the local risk score exactly as the kernel would), the window quotas and the
concurrency lease; the guard turns the answers (a `LimitAnswer`) and the local score into
a Decision, as with the memory backend. Requests queued in the same loop
tick share one pipeline (see `pipe`), so the round trip is also shared under load.

No Redis call at all for: a client banned (the kernel keeps the ban locally once seen), a
client whose bucket or quota Redis just refused (`deny_cache`), an open circuit.

Standalone vs Cluster. On one server every key a request touches goes into the same
script: network buckets (``per_ip``, ``per_prefix``, ``per_asn``) and fan-in sketches
included, so everything is exact. In a Cluster the script may only touch the identity's
slot: network buckets and fan-in sketches are then aggregated per network and sent by a
background task every ``sync_interval`` seconds (`netsync`); a network found short
is refused locally until its debt is refilled. Staleness: a network ceiling can be
overshot by what all workers admit in one ``sync_interval`` plus one round trip, and the
debt is then paid back by refusing for longer, so the long-run rate holds; fan-in
estimates lag by the same interval. Quotas and concurrency ``per="ip"`` of an account
take a second script call on the IP's slot, sent concurrently with the first (same
latency, two commands); that one is gated on the local verdict only, so a request the
account's bucket refuses still counts against the IP quota.

Faults. Every request has a time budget (``budget``, 50 ms by default): each pipeline
runs under it and a cut-short connection is dropped, so a late reply is never read as
another's answer; ``socket_connect_timeout`` defaults to the budget (``socket_timeout``
is passed to redis-py only when set); redis-py retries are off. A circuit breaker opens
after ``breaker_threshold`` consecutive failures and half-opens after
``breaker_cooldown`` (doubling after each failed probe, up to ``breaker_max_cooldown``,
2 s by default) to let one probe through: a PING, sent by the request that finds the
breaker half-open, which is then decided normally if Redis answered and by the fail mode
otherwise. ``Policy.fail_mode`` decides per route
what a request gets meanwhile (`failover`): fail closed, 429 ``backend_unavailable``;
fail open, the local verdict, and while the circuit is open the kernel's own buckets limit
each worker to ``1/fallback_workers`` of every bucket. Concurrency leases expire after
``lease_ttl`` unless the worker holding them renews them (`leases`), so a crashed
worker cannot leak slots. Releases and cost reconciliation are queued, never awaited.

Route and plan limits (`Policy.routes`, `Policy.plans`) ride in the same call, after the
app-wide ones, in the identity's slot (`route_ops`): a refused request costs nothing in
any of them; a plan's bucket is asked in the app-wide bucket's place.

Window quotas: ``fixed-window`` (INCRBY, EXPIRE on the first hit, as `limits`) and
``sliding-window-counter`` (as `limits`' weighted two windows). ``moving-window`` keeps
one entry per hit and is refused at construction.

Shared sketches. Fan-out (per account: IPs, prefixes, ASNs, countries) and, standalone,
fan-in (per network: accounts) HyperLogLogs live in Redis; their estimates are written
into the engine's rows and score the following requests (one request of lag). A worker
does not send again, for ``sketch_refresh`` seconds, an item it has just added, so a
steady client costs no sketch work and a worker that sees only old items reads estimates
up to that old. A worker creates an owner's sketches only from its second request there
(`probation`; the first one's items go with it): a one-shot client leaves only its
bucket keys in Redis, which expire as they refill. Sketch epochs follow the request
clock, buckets and windows Redis' clock.

Where a decision can differ from the memory backend's (one worker, same trace): a request
refused in-process by the deny cache spends no bucket token (the memory backend spends
tokens on a request its quota then refuses); a fixed window's reset is Redis' TTL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from abuseguard.backends.base import Backend, LimitAnswer, LimitSource, RoundTripDecider
from abuseguard.backends.breaker import CLOSED, CircuitBreaker
from abuseguard.backends.redis.call import STRATEGY_CODES, Answers, Reply, ScriptCall, SketchSink
from abuseguard.backends.redis.deny_cache import DenyCache
from abuseguard.backends.redis.failover import DENIALS, UNAVAILABLE, UNKNOWN, Failover
from abuseguard.backends.redis.keys import IdentityKeys, KeySpace
from abuseguard.backends.redis.leases import Leases
from abuseguard.backends.redis.netsync import NetSync
from abuseguard.backends.redis.pipe import Pipeliner, Script, load_script
from abuseguard.backends.redis.probation import SketchProbation
from abuseguard.backends.redis.route_ops import RoutePlan, plan_routes, read_routes
from abuseguard.backends.redis.unverified import RedisUnverifiedBudgets
from abuseguard.backends.redis.uri import SYNCED_ONLY, redacted, split_backend_uri
from abuseguard.backends.workers import detect_workers
from abuseguard.compiled import CompiledLimits, NetworkBucket
from abuseguard.decision import Action, Decision
from abuseguard.engine import layout as L
from abuseguard.errors import ConfigError
from abuseguard.policy import Quota

if TYPE_CHECKING:
    from abuseguard.backends.base import Stages
    from abuseguard.engine.rows import EngineRows
    from abuseguard.guard import Prepared
    from abuseguard.intel.network import NetworkProfile
    from abuseguard.keyprobe import SharedBudgets, UnverifiedKeyLimiter
    from abuseguard.policy import Policy
    from abuseguard.request import RequestInfo

logger = logging.getLogger("abuseguard.backends")

_THROTTLE_SEVERITY = Action.THROTTLE.severity
DEFAULT_MAX_COOLDOWN = 2.0  # seconds: the breaker's cooldown stops doubling there


def check_seconds(field: str, value: object, at_least: float = 0.0) -> float:
    """``value`` as seconds, or a ConfigError naming ``RedisBackend.<field>`` unless it is a
    finite number > 0 (and >= ``at_least``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or not math.isfinite(value)
        or not value >= at_least
    ):
        floor = f" >= {at_least!r}" if at_least > 0 else " > 0"
        raise ConfigError(f"RedisBackend.{field}", f"expected seconds{floor}, got {value!r}")
    return float(value)


def check_count(field: str, value: object) -> None:
    """A ConfigError naming ``RedisBackend.<field>`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"RedisBackend.{field}", f"expected an int >= 1, got {value!r}")


class RedisBackend(Backend, RoundTripDecider):
    """Shared state in Redis (standalone, TLS, unix socket) or Redis Cluster (Valkey too).

    ``url``: ``redis://host:port/db``, ``rediss://...``, ``unix:///path?db=0``, or with
    ``cluster=True`` (URI schemes ``redis+cluster://``, ``rediss+cluster://``) a seed node.
    Options may also ride in the URI query (``?budget=0.02&fail_open=false``), and so may
    the redis-py options listed in `uri`; any other option is refused at construction.
    One backend serves one Guard on one event loop.
    """

    shared = True
    counts_route_limits = True  # in the same call (`route_ops`); synced mode does not
    schemes = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
    mode = "inline"  # one round trip per request; "synced": SyncedRedisBackend
    #: The backend class of each ``mode`` a URI may ask for; subclasses register theirs.
    modes: ClassVar[dict[str, type[RedisBackend]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        RedisBackend.modes[cls.mode] = cls

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        cluster: bool = False,
        prefix: str = "ag",
        budget: float = 0.05,
        socket_timeout: float | None = None,
        socket_connect_timeout: float | None = None,
        max_connections: int = 64,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 1.0,
        breaker_max_cooldown: float | None = None,
        fail_open: bool | None = None,
        deny_cache_seconds: float = 60.0,
        lease_ttl: float = 30.0,
        lease_max: float = 3600.0,
        server_time: bool = True,
        sync_interval: float = 0.05,
        fallback_workers: int | None = None,
        shared_sketches: bool = True,
        sketch_refresh: float = 10.0,
        client: Any = None,
        **client_kwargs: Any,
    ) -> None:
        for name, value in (
            ("budget", budget),
            ("breaker_cooldown", breaker_cooldown),
            ("lease_ttl", lease_ttl),
            ("lease_max", lease_max),
            ("sketch_refresh", sketch_refresh),
            ("sync_interval", sync_interval),
        ):
            check_seconds(name, value)
        for name, timeout in (
            ("socket_timeout", socket_timeout),
            ("socket_connect_timeout", socket_connect_timeout),
        ):
            if timeout is not None:
                check_seconds(name, timeout)
        if not (isinstance(deny_cache_seconds, int | float) and deny_cache_seconds >= 0):
            raise ConfigError(
                "RedisBackend.deny_cache_seconds", f"expected >= 0, got {deny_cache_seconds!r}"
            )
        check_count("breaker_threshold", breaker_threshold)
        if fallback_workers is not None:
            check_count("fallback_workers", fallback_workers)
        check_count("max_connections", max_connections)
        if breaker_max_cooldown is None:
            # A probe is one PING: a short ceiling costs Redis nothing and ends an outage
            # (fail-closed refusals included) within seconds of Redis answering.
            breaker_max_cooldown = max(DEFAULT_MAX_COOLDOWN, breaker_cooldown)
        if breaker_max_cooldown < breaker_cooldown:
            raise ConfigError("RedisBackend.breaker_max_cooldown", "must be >= breaker_cooldown")
        self.url = url
        self.uri = url
        self.cluster = cluster
        self.budget = float(budget)
        self.socket_timeout = float(socket_timeout) if socket_timeout is not None else None
        self.socket_connect_timeout = (
            float(socket_connect_timeout) if socket_connect_timeout is not None else self.budget
        )
        self.max_connections = max_connections
        self.prefix = prefix
        self.keys = KeySpace(prefix)
        self.breaker = CircuitBreaker(
            threshold=breaker_threshold,
            cooldown=breaker_cooldown,
            max_cooldown=breaker_max_cooldown,
            probe_timeout=max(0.2, 4 * self.budget),
        )
        self.fail_open_override = fail_open
        self.deny = DenyCache(max_seconds=float(deny_cache_seconds))
        self.lease_ttl = float(lease_ttl)
        self.lease_max = float(lease_max)
        self.server_time = server_time
        self.sync_interval = float(sync_interval)
        self.fallback_workers = fallback_workers or detect_workers()[0]
        self.shared_sketches = shared_sketches
        self.sketch_refresh = float(sketch_refresh)
        self._sketch_sent: dict[tuple[Any, ...], float] = {}
        self._probation = SketchProbation()
        self.client_kwargs = client_kwargs
        self._external_client = client
        self.client: Any = None
        self.pipe: Pipeliner | None = None
        self.scripts: dict[str, Script] = {
            n: load_script(n) for n in ("decide", "reconcile", "reconcile_quota", "renew")
        }
        self._decide_sha = self.scripts["decide"].sha
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.leases = Leases(ttl=self.lease_ttl, max_hold=self.lease_max)
        self.netsync: NetSync | None = None
        self.stages: Stages | None = None
        self.failover: Failover | None = None
        self.local_denials = 0  # requests refused without a Redis call (bans, deny cache)

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_uri(cls, uri: str) -> RedisBackend:
        """A backend from a URI; backend options in its query string are taken out.
        ``mode=synced`` makes a `SyncedRedisBackend`, ``mode=inline`` (default) this one."""
        url, kwargs = split_backend_uri(uri)
        mode = kwargs.pop("mode", cls.mode)
        if mode != RedisBackend.mode:
            return RedisBackend.modes[mode](url, **kwargs)
        for name in SYNCED_ONLY:
            if name in kwargs:
                raise ConfigError(f"RedisBackend.{name}", "is an option of mode=synced only")
        return RedisBackend(url, **kwargs)

    def attach(self, stages: Stages) -> None:
        """Called by the Guard at construction, with its stages: check the policy,
        precompute its numbers."""
        policy: Policy = stages.policy
        for i, quota in enumerate(policy.quotas):
            if quota.strategy == "moving-window":
                raise ConfigError(
                    f"Policy.quotas[{i}].strategy",
                    "moving-window is not supported by "
                    "the Redis backend; use fixed-window or sliding-window-counter",
                )
        if len(policy.quotas) > 99:
            raise ConfigError("Policy.quotas", "the Redis backend takes at most 99 quotas")
        self._check_route_quotas(policy)
        self.stages = stages
        # A route or plan limit's refusal is shadowed as the guard shadows it (served and
        # counted by the script, reported by the guard).
        self.route_shadow = policy.shadow or Action.THROTTLE in policy.enforcement.shadow_actions
        limits = self.limits = CompiledLimits.from_policy(policy)
        self.keys = KeySpace(self.prefix, limits.quota_names)
        bucket = self.bucket = limits.key_bucket
        self.key_ttl_rate = limits.key_ttl_rate
        self.net_buckets: tuple[NetworkBucket, ...] = limits.network_buckets
        self.load_floor = limits.load_floor
        enforcement = policy.enforcement
        rows = stages.rows
        self.serves = tuple(rows.parameter(L.P_LADDER_SERVES + level) != 0.0 for level in range(9))
        self.ban_level = int(rows.parameter(L.P_BAN_LEVEL))
        self.ban_ms = int(enforcement.ban_seconds * 1000)
        ladder = stages.ladder
        ban_action = ladder[self.ban_level] if 0 < self.ban_level < len(ladder) else Action.BLOCK
        self.ban_gate = enforcement.shadow or ban_action not in DENIALS
        scoring = policy.scoring
        horizon = scoring.sketch_horizon if scoring is not None else 3600.0
        self.half_horizon = horizon / 2
        self.sketch_ttl_ms = int(horizon * 1000)
        fail_mode = policy.fail_mode
        if self.fail_open_override is not None:
            fail_mode = dataclasses.replace(fail_mode, open=self.fail_open_override)
        self.failover = Failover(
            self.breaker,
            fail_mode,
            np.array(limits.bucket_vector()) / float(self.fallback_workers),
            self.fallback_workers,
            stages,
            has_bucket=bucket is not None,
        )
        if self.cluster:
            self.netsync = NetSync(self, stages)

    @staticmethod
    def _check_route_quotas(policy: Policy) -> None:
        """Route and plan quotas ride in the app-wide ones' call: the same strategies, and
        at most 99 quotas in one call."""
        most = 0
        for where, limits in (
            *((f"Policy.routes[{k!r}]", v) for k, v in policy.routes.items()),
            *((f"Policy.plans[{k!r}]", v) for k, v in policy.plans.items()),
            *(
                (f"Policy.plans[{plan!r}].routes[{k!r}]", v)
                for plan, plan_limits in policy.plans.items()
                for k, v in plan_limits.routes.items()
            ),
        ):
            for i, quota in enumerate(limits.quotas):
                if quota.strategy == "moving-window":
                    raise ConfigError(
                        f"{where}.quotas[{i}].strategy",
                        "moving-window is not supported by the Redis backend; use "
                        "fixed-window or sliding-window-counter",
                    )
        route_most = max((len(v.quotas) for v in policy.routes.values()), default=0)
        for plan_limits in policy.plans.values():
            own = max((len(v.quotas) for v in plan_limits.routes.values()), default=0)
            most = max(most, len(plan_limits.quotas) + max(own, route_most))
        if len(policy.quotas) + max(most, route_most) > 99:
            raise ConfigError(
                "Policy.routes" if policy.routes else "Policy.plans",
                "the Redis backend takes at most 99 quotas per request (app-wide, route "
                "and plan quotas together)",
            )

    # -- lifecycle -----------------------------------------------------------------------

    def _make_client(self) -> Any:
        if self._external_client is not None:
            return self._external_client
        from redis.asyncio import Redis, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        common: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": self.max_connections,
            **self.client_kwargs,
        }
        if self.cluster:
            return RedisCluster.from_url(self.url, **common)
        return Redis.from_url(self.url, retry_on_error=[], **common)

    def _bind_loop(self, timeout: float) -> Pipeliner | None:
        """Make the client and the pipeliner (``timeout`` a pipeline) on the running event
        loop and return the pipeliner; None when they already run on it."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return None
        if self._loop is not None:
            self._stop_tasks()  # a new event loop (tests, reloads): start over on this one
        self._loop = loop
        self.client = self._make_client()
        self.pipe = Pipeliner(
            self.client,
            list(self.scripts.values()),
            timeout=timeout,
            direct=not self.cluster,
            max_connections=self.max_connections,
        )
        return self.pipe

    async def startup(self) -> None:
        """Connect and load the scripts. A Redis that is down does not stop the app: the
        failure is logged, the fail mode applies and the scripts load when it returns."""
        pipe = self._bind_loop(self.budget)
        if pipe is None:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(1.0, 10 * self.budget)):
                if self.cluster:
                    await self.client.initialize()
                await pipe.load_scripts()
                await pipe.call(("PING",))  # opens the first connection of the hot path
        except Exception as exc:
            self.breaker.failure(exc)
            logger.warning(
                "abuseguard: Redis at %s is not answering (%s: %s); requests follow "
                "the fail mode until it does",
                redacted(self.url),
                type(exc).__name__,
                exc,
            )
        self._tasks.append(
            loop.create_task(
                self.leases.renew_forever(
                    lambda: self.pipe, lambda: self.breaker.closed, self.scripts["renew"].sha
                )
            )
        )
        if self.netsync is not None:
            self._tasks.append(loop.create_task(self.netsync.run()))

    def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    def _stop_tasks(self) -> None:
        self._cancel_tasks()
        if self.pipe is not None:
            self.pipe.cancel()

    async def shutdown(self) -> None:
        if self._loop is None:
            return
        self._cancel_tasks()
        if self.netsync is not None:
            await self.netsync.flush()
        if self.pipe is not None:
            await self.pipe.drain(timeout=max(0.2, 4 * self.budget))
            self.pipe.cancel()
            await self.pipe.close()
        if self.client is not None and self._external_client is None:
            try:
                await self.client.aclose()
            except Exception:
                logger.debug("closing the Redis client failed", exc_info=True)
        self.client = None
        self.pipe = None
        self._loop = None

    # -- the decision ----------------------------------------------------------------------

    async def reach(self, info: RequestInfo) -> bool:
        """Before the engine runs: can Redis be asked? Connects on a new event loop and
        probes a half-open breaker. The kernel's own buckets are turned on when the fail
        mode limits in-process (`failover`), off otherwise."""
        if self._loop is not asyncio.get_running_loop():
            await self.startup()
        breaker = self.breaker
        failover = self.failover
        assert failover is not None, "RedisBackend.attach() was not called (use it via Guard)"
        if breaker.state != CLOSED and not (breaker.allow() and await self._probe()):
            failover.before_engine(info)
            return False
        if failover.active:
            failover.local_buckets(on=False)
        return True

    async def answer(
        self, info: RequestInfo, p: Prepared, io: list[float], reachable: bool
    ) -> LimitAnswer:
        """The limits of one request, the engine's outputs in ``io`` (a copy: the bucket
        outputs Redis answers are written in): one round trip, or none when this worker
        already knows (a ban, the deny cache, a network short in a Cluster) or Redis is
        unreachable (the fail mode)."""
        failover = self.failover
        assert failover is not None and self.stages is not None
        stages = self.stages
        if not reachable:
            return failover.while_open(info, p, io)
        breaker = self.breaker
        rows = stages.rows
        key_row = rows.row(L.KIND_KEY, p.identity)
        assert key_row is not None  # the engine just ran on it
        # The kernel measures idle time (score forgiveness) from the bucket's last refill,
        # which it never moves with its buckets off: move it here.
        rows.put(L.KIND_KEY, key_row, L.F_BUCKET_TS, p.ts)
        if io[L.O_BANNED] and not self.ban_gate:
            self.local_denials += 1
            return LimitAnswer(UNKNOWN, False)
        deny = self.deny
        if deny.buckets and self.bucket is not None:
            short = deny.bucket_short(p.identity, p.cost)
            if short is not None:
                tokens, wait, rate = short
                io[L.O_DENIED_KINDS] = 1.0
                io[L.O_RETRY_AFTER] = wait
                _told_to_wait(rows, key_row, p.ts + wait)
                io[L.O_REMAINING] = tokens if tokens > 0.0 else 0.0
                io[L.O_RESET] = (self.bucket.capacity - tokens) / rate
                self.local_denials += 1
                return LimitAnswer(UNKNOWN, True)
        # a quota refusal remembered for this identity was the app-wide quotas': not for
        # a client whose plan replaced them (`plan_overrides`)
        if deny.quotas and stages.app_limits_for(p.plan).quotas:
            exhausted = deny.quota_exhausted(p.identity)
            if exhausted is not None:
                self.local_denials += 1
                return self._quota_memo_answer(exhausted)
        netsync = self.netsync
        if netsync is not None and netsync.denied and p.profile is not None:
            mask, wait = netsync.blocked(p)
            if mask and not stages.buckets_shadowed(mask):
                io[L.O_DENIED_KINDS] = float(mask)
                io[L.O_RETRY_AFTER] = wait
                _told_to_wait(rows, key_row, p.ts + wait)
                self.local_denials += 1
                return LimitAnswer(UNKNOWN, False)
        main, side, routes = self._plan(stages, p, io, key_row, info)
        pipe = self.pipe
        assert pipe is not None
        try:
            # No timeout here: each pipeline is bounded by the budget and always answers.
            if side is None:
                replies = [await pipe.call(main.command(self._decide_sha))]
            else:
                replies = list(
                    await asyncio.gather(
                        pipe.call(main.command(self._decide_sha)),
                        pipe.call(side.command(self._decide_sha)),
                    )
                )
            answers = [
                call.parse(reply)
                for call, reply in zip(
                    (main, side) if side is not None else (main,), replies, strict=True
                )
            ]
        except Exception as exc:
            if breaker.closed and breaker.failures == 0:
                logger.warning("abuseguard: Redis call failed (%s: %s)", type(exc).__name__, exc)
            breaker.failure(exc)
            self._give_back(main, side)
            return failover.failed(info, p, io)
        breaker.success()
        return self._apply(stages, p, io, key_row, main, side, answers, routes)

    def precheck_limits(self, p: Prepared, io: list[float]) -> tuple[LimitSource, bool]:
        """For `Guard.precheck`: what this worker knows without asking Redis, read-only.
        A bucket the deny cache saw short is written into ``io`` as `check` writes it (then
        the bucket outputs are known: True); quotas it saw exhausted are answered by the
        limits returned, any other limit is admitted (Redis decides it with the body)."""
        deny = self.deny
        if not self.breaker.closed:
            return UNKNOWN, False  # `check` decides by the fail mode, not the cache
        if deny.buckets and self.bucket is not None:
            short = deny.peek_bucket(p.identity, p.cost)
            if short is not None:
                tokens, wait, rate = short
                io[L.O_DENIED_KINDS] = 1.0
                io[L.O_RETRY_AFTER] = wait
                io[L.O_REMAINING] = tokens if tokens > 0.0 else 0.0
                io[L.O_RESET] = (self.bucket.capacity - tokens) / rate
                return UNKNOWN, True
        if deny.quotas and self.stages is not None and self.stages.app_limits_for(p.plan).quotas:
            exhausted = deny.peek_quota(p.identity)
            if exhausted is not None:
                now = time.monotonic()
                quotas: list[tuple[bool, float, float] | None] = [
                    (q[0], q[1], max(0.0, q[2] - now)) if q is not None else None
                    for q in exhausted[1]
                ]
                return Answers(quotas, None), False
        return UNKNOWN, False

    async def _probe(self) -> bool:
        """The half-open breaker's probe: a PING, so that the request waiting on it is decided
        by Redis when it answers and by the fallback when it does not (never unlimited)."""
        pipe = self.pipe
        assert pipe is not None
        try:
            await pipe.call(("PING",))
        except Exception as exc:
            self.breaker.failure(exc)
            return False
        self.breaker.success()
        return True

    def _plan(
        self, stages: Stages, p: Prepared, io: list[float], key_row: int, info: RequestInfo
    ) -> tuple[ScriptCall, ScriptCall | None, RoutePlan | None]:
        level = int(io[L.O_ACTION])
        profile = p.profile
        if level == 0 and (profile is None or profile.rule_action is None):
            gate = override = True  # the common case: nothing local refuses the request
        else:
            action, shadow = stages.local_verdict(level, profile)
            denial = action in DENIALS
            enforcement = stages.policy.enforcement
            shadow = shadow or stages.policy.shadow or action in enforcement.shadow_actions
            gate = not denial or shadow
            override = action.severity <= _THROTTLE_SEVERITY or not denial
        now: float | str = "" if self.server_time else p.ts
        main = ScriptCall(
            now,
            serves=gate and self.serves[level] if level < 9 else False,
            gate=gate,
            override=override,
            ban_gate=self.ban_gate,
        )
        keys = self.keys.of(p.identity)
        if self.ban_level:
            if level >= self.ban_level and self.ban_ms > 0:
                main.ban(keys.ban, ban_ms=self.ban_ms, check=False)
            else:
                main.ban(keys.ban)
        address = p.address
        network = profile is not None and not profile.allowed
        standalone = not self.cluster
        net_keys = self._network_keys(p) if network else []
        if network and self.shared_sketches and p.has_account:
            assert profile is not None
            self._plan_sketches(main, p, profile, keys, net_keys if standalone else [])
        bucket = self.bucket
        load = stages.load_factor()
        cost = p.cost
        if not 0.0 <= cost < math.inf:  # NaN or infinite: the whole burst; negative: nothing
            cost = 0.0 if cost < 0.0 else (bucket.capacity if bucket is not None else 0.0)
        route_limits = stages.route_limits
        applied = route_limits.applying(info) if route_limits is not None else ()
        # a plan's own bucket takes the app-wide bucket's place (`route_ops`)
        replaced = bool(applied) and any(named.replaces_key_bucket for named in applied)
        factor = 1.0
        if bucket is not None or replaced:
            smoothed = stages.rows.get(L.KIND_KEY, key_row, L.F_COUPLING_SCORE)
            factor = self.limits.key_refill_factor(smoothed)
        if bucket is not None and not replaced:
            rate = max(bucket.per_second * load * factor, 1e-9)  # as the kernel clamps it
            main.bucket(
                keys.bucket,
                rate,
                bucket.capacity,
                cost,
                self.key_ttl_rate,
                bool(stages.shadow_kinds & 1 << L.KIND_KEY),
                (L.KIND_KEY, rate),
            )
        if network and standalone and self.net_buckets:
            nat = self.limits.nat_multiplier(
                profile is not None and profile.nat_eligible, io[L.O_FANIN]
            )
            keys_by_kind = dict(net_keys)
            for kind, net_bucket, net_shadow in self.net_buckets:
                net_key = keys_by_kind.get(kind)
                if net_key is None:
                    continue
                rate = net_bucket.per_second * load
                burst = net_bucket.capacity
                if kind != L.KIND_ASN:
                    rate *= nat
                    burst *= nat
                rate = max(rate, 1e-9)
                main.bucket(
                    self.keys.network_base(kind, net_key) + ":b",
                    rate,
                    burst,
                    cost,
                    net_bucket.per_second * self.load_floor,
                    net_shadow or bool(stages.shadow_kinds & 1 << kind),
                    (kind, rate),
                )
        side: ScriptCall | None = None
        # the app-wide quotas and concurrency, unless the request's plan replaced them
        app_quotas, conc = stages.app_limits_for(p.plan)
        if gate and (app_quotas or conc is not None):
            ip_identity = "i:" + address.ip_key
            # app_quotas is the policy's tuple or empty: i is the quota's index in the policy
            for i, quota in enumerate(app_quotas):
                ident = p.identity if quota.per == "key" else ip_identity
                hits = max(0, round(cost)) if quota.by_cost else 1
                target = main
                if ident != p.identity and self.cluster:
                    side = side or ScriptCall(now, gate=gate, override=override)
                    target = side
                target.quota(
                    self.keys.of(ident).quotas[i],
                    quota.strategy,
                    quota.amount,
                    quota.window,
                    hits,
                    quota.shadow,
                    i,
                )
            if conc is not None:
                ident = p.identity if conc.per == "key" else ip_identity
                target = main
                if ident != p.identity and self.cluster:
                    side = side or ScriptCall(now, gate=gate, override=override)
                    target = side
                key = self.keys.of(ident).conc
                lease = self.leases.new_id()
                target.conc(
                    key,
                    conc.limit,
                    lease,
                    self.leases.ttl_ms,
                    ("c:" + ident, key, lease),
                    conc.shadow,
                )
        routes: RoutePlan | None = None
        if applied:
            sides: list[ScriptCall] = [side] if side is not None else []

            def side_for(identity: str) -> ScriptCall:
                if not self.cluster:
                    return main
                if not sides:
                    sides.append(ScriptCall(now, gate=gate, override=override))
                return sides[0]

            routes = plan_routes(
                applied,
                p.identity,
                "i:" + address.ip_key,
                cost,
                self.route_shadow,
                self.keys,
                self.leases,
                main,
                side_for,
                key_scale=load * factor,
                key_ttl_scale=self.load_floor * (bucket.min_refill_factor if bucket else 1.0),
            )
            side = sides[0] if sides else None
        return main, side, routes

    def _plan_sketches(
        self,
        call: SketchSink,
        p: Prepared,
        profile: NetworkProfile,
        keys: IdentityKeys,
        net_keys: list[tuple[int, object]],
    ) -> None:
        """Fan-out items of the account and (standalone) the account as a fan-in item of its
        networks. What this worker added recently is not sent again before sketch_refresh:
        a steady client costs no sketch work, a fanning-out one refreshes often. The items
        of an owner this worker sees for the first time wait for its second request
        (`probation`): a one-shot client creates no sketch key in Redis."""
        sent = self._sketch_sent
        if len(sent) >= 262144:
            sent.clear()
        now_mono = time.monotonic()
        refresh = self.sketch_refresh
        address = p.address
        v4or6 = address.version != 0
        country = profile.country_code
        assert self.stages is not None
        rows = self.stages.rows
        probation = self._probation
        account_proven = probation.proven(rows, L.KIND_KEY, L.KIND_ACCOUNT, p.identity, call)
        whole = (p.identity, address.ip_key, profile.asn_key, country, p.persona)
        last = sent.get(whole)
        if last is not None and now_mono - last < refresh:
            return  # the same client, network and persona as a moment ago
        epoch = int(p.ts // self.half_horizon)
        ttl = self.sketch_ttl_ms
        fo: tuple[str, ...] = ()
        for sk, item in (
            (L.SK_IPS, address.ip_key if v4or6 else None),
            (L.SK_PREFIXES, address.prefix_key if v4or6 else None),
            (L.SK_ASNS, profile.asn_key),
            (L.SK_COUNTRIES, country if country else None),
        ):
            if item is None:
                continue
            tag = (L.KIND_ACCOUNT, p.identity, L.A_EST + sk)
            fo = fo or self.keys.fanout(p.identity, keys, epoch)
            if not account_proven:
                probation.hold(
                    L.KIND_ACCOUNT, p.identity, (fo[2 * sk], fo[2 * sk + 1], ttl, [item], tag)
                )
                continue
            memo = (p.identity, sk, item)
            last = sent.get(memo)
            if last is not None and now_mono - last < refresh:
                continue
            sent[memo] = now_mono
            call.sketch(fo[2 * sk], fo[2 * sk + 1], ttl, [item], tag)
        all_proven = account_proven
        for kind, net_key in net_keys:
            base = self.keys.network_base(kind, net_key)
            op = (
                f"{base}:fi:{epoch}",
                f"{base}:fi:{epoch - 1}",
                ttl,
                [p.identity],
                (kind, net_key, L.F_SKETCH_EST),
            )
            if not probation.proven(rows, kind, kind, net_key, call):
                probation.hold(kind, net_key, op)
                all_proven = False
                continue
            net_memo = (kind, net_key, p.identity)
            last = sent.get(net_memo)
            if last is not None and now_mono - last < refresh:
                continue
            sent[net_memo] = now_mono
            call.sketch(*op)
        if all_proven:
            sent[whole] = now_mono

    @staticmethod
    def _network_keys(p: Prepared) -> list[tuple[int, object]]:
        """The network identities of a request, as the guard's run_engine finds rows."""
        profile = p.profile
        out: list[tuple[int, object]] = []
        if profile is None or profile.allowed:
            return out
        if p.address.version:
            out.append((L.KIND_IP, p.address.ip_key))
            out.append((L.KIND_PREFIX, p.address.prefix_key))
        if profile.asn_key is not None:
            out.append((L.KIND_ASN, profile.asn_key))
        if p.persona:
            out.append((L.KIND_PERSONA, p.persona))
        return out

    def _apply(
        self,
        stages: Stages,
        p: Prepared,
        io: list[float],
        key_row: int,
        main: ScriptCall,
        side: ScriptCall | None,
        replies: list[Reply],
        routes: RoutePlan | None = None,
    ) -> LimitAnswer:
        reply = replies[0]
        rows = stages.rows
        if reply.status == 1:  # banned: seen from another worker
            self._give_back(main, side)
            io[L.O_BANNED] = 1.0
            io[L.O_ACTION] = float(self.ban_level)
            io[L.O_RETRY_AFTER] = reply.ban_left
            if rows.owns(L.KIND_KEY, key_row, p.identity):
                cap = self.deny.max_seconds if self.deny.enabled else 0.0
                rows.put(L.KIND_KEY, key_row, L.F_BANNED_UNTIL, p.ts + min(reply.ban_left, cap))
            return LimitAnswer(UNKNOWN, False)
        for (kind, key, field), estimate in zip(main.sketch_tags, reply.sketches, strict=True):
            row = rows.row(kind, key)
            if row is not None:
                rows.put(kind, row, field, estimate)
        denied_kinds = 0
        if reply.denied:
            for j, (kind, _) in enumerate(main.bucket_tags[: main.app_ops[0]]):
                if reply.denied & (1 << j):
                    denied_kinds |= 1 << kind
            io[L.O_DENIED_KINDS] = float(denied_kinds)
            io[L.O_RETRY_AFTER] = reply.retry
            # A shadowed refusal is served: nobody was told to wait.
            if rows.owns(L.KIND_KEY, key_row, p.identity) and denied_kinds & ~stages.shadow_kinds:
                _told_to_wait(rows, key_row, p.ts + reply.retry)
        bucket = self.bucket
        key_rate = 0.0
        if routes is not None and routes.replaces_key_bucket:
            bucket = None  # the plan's bucket replaced it: a route op (`route_ops`)
        if bucket is not None:
            key_rate = main.bucket_tags[0][1]
            tokens = reply.tokens[0]
            io[L.O_REMAINING] = tokens if tokens > 0.0 else 0.0
            io[L.O_RESET] = (bucket.capacity - tokens) / key_rate
        if reply.status == 2:
            io[L.O_BANNED] = 1.0
            io[L.O_ACTION] = float(self.ban_level)
            io[L.O_RETRY_AFTER] = reply.ban_left
        quotas: list[tuple[bool, float, float] | None] = [None] * len(stages.policy.quotas)
        acquired: bool | None = None
        lease: tuple[str, str, str] | None = None
        for call, answer in zip((main, side), replies, strict=False):
            if call is None:
                continue
            _, n_quotas, n_conc = call.app_ops
            for index, (ran, ok, remaining, reset) in zip(
                call.quota_tags[:n_quotas], answer.quotas[:n_quotas], strict=True
            ):
                if ran:
                    quotas[index] = (ok, remaining, reset)
            for tag, (ran, got) in zip(call.conc_tags[:n_conc], answer.conc[:n_conc], strict=True):
                if ran:
                    acquired = got
                    if got:
                        lease = tag
        if lease is not None:
            self.leases.hold(*lease)
        answers = Answers(quotas, acquired)
        verdict = None
        if routes is not None:
            by_call = {
                id(call): answer for call, answer in zip((main, side), replies, strict=False)
            }
            verdict = read_routes(routes, by_call)
            for op in routes.ops:
                if op.slot is not None and op.slot[0] in verdict.held:
                    self.leases.hold(*op.slot)

        def settle(decision: Decision) -> None:
            if lease is not None and lease[0] not in decision.held:
                self.release(lease[0])
            if verdict is not None:
                for slot in verdict.held:
                    if slot not in decision.held:
                        self.release(slot)
            if not decision.shadow and decision.action is Action.THROTTLE:
                self._remember_denial(p, decision, denied_kinds, reply, key_rate, quotas)
            if self.netsync is not None:
                served_clean = decision.served and not decision.reasons
                self.netsync.add(p, io[L.O_FANIN], stages.load_factor(), served_clean)

        return LimitAnswer(answers, bucket is not None, after=settle, routes=verdict)

    def _remember_denial(
        self,
        p: Prepared,
        decision: Decision,
        denied_kinds: int,
        reply: Reply,
        key_rate: float,
        quotas: list[tuple[bool, float, float] | None],
    ) -> None:
        deny = self.deny
        if not deny.enabled:
            return
        bucket = self.bucket
        if denied_kinds & 1 and bucket is not None and not bucket.shadow:
            deny.note_bucket(
                p.identity, reply.tokens[0], key_rate, bucket.per_second, bucket.capacity
            )
        elif "quota" in decision.reasons and not denied_kinds:
            now = time.monotonic()
            resets = [q[2] for q in quotas if q is not None and not q[0]]
            if resets:
                memo = tuple((q[0], q[1], now + q[2]) if q is not None else None for q in quotas)
                deny.note_quota(p.identity, min(resets), memo)

    @staticmethod
    def _quota_memo_answer(exhausted: tuple[float, tuple[Any, ...]]) -> LimitAnswer:
        _, memo = exhausted
        now = time.monotonic()
        quotas: list[tuple[bool, float, float] | None] = [
            (q[0], q[1], max(0.0, q[2] - now)) if q is not None else None for q in memo
        ]
        return LimitAnswer(Answers(quotas, None), False, holds=False)

    def unverified_budgets(self, limiter: UnverifiedKeyLimiter) -> SharedBudgets | None:
        """The unverified-key budgets in Redis, shared by every worker (inline mode);
        synced mode keeps the worker's own, in process."""
        if self.decides_locally:
            return None
        return RedisUnverifiedBudgets(self, limiter)

    # -- after the response -------------------------------------------------------------------

    def release(self, identity: str) -> None:
        """Give back one concurrency slot this worker holds for ``identity`` ("c:...")."""
        self.leases.release(identity, self.pipe, send=self.breaker.closed)

    def _give_back(self, main: ScriptCall, side: ScriptCall | None) -> None:
        """A call failed or was cut short: a lease it may have taken is given back."""
        for call in (main, side):
            if call is not None:
                Leases.give_back(((key, lease) for _, key, lease in call.conc_tags), self.pipe)

    def reconcile(self, identity: str, delta: float) -> None:
        """Charge (delta > 0) or refund (delta < 0) the identity's bucket after the fact."""
        bucket = self.bucket
        if bucket is None or delta == 0.0 or self.pipe is None or not self.breaker.closed:
            return
        if delta < 0:
            self.deny.forget_bucket(identity)
        now: float | str = "" if self.server_time else (self.stages.clock() if self.stages else "")
        self.pipe.send(
            (
                "EVALSHA",
                self.scripts["reconcile"].sha,
                1,
                self.keys.of(identity).bucket,
                delta,
                bucket.capacity,
                self.key_ttl_rate,
                now,
            )
        )

    def reconcile_network(self, kind: int, key: object, delta: float) -> None:
        """Charge (delta > 0) or refund (delta < 0) a network bucket after the fact."""
        if delta == 0.0 or self.pipe is None or not self.breaker.closed:
            return
        for bucket_kind, net_bucket, _ in self.net_buckets:
            if bucket_kind == kind:
                self.pipe.send(
                    (
                        "EVALSHA",
                        self.scripts["reconcile"].sha,
                        1,
                        self.keys.network_base(kind, key) + ":b",
                        delta,
                        net_bucket.capacity,
                        net_bucket.per_second * self.load_floor,
                        self._reconcile_now(),
                    )
                )

    def reconcile_shared_quota(self, index: int, quota: Quota, identity: str, delta: int) -> None:
        """Count ``delta`` more (< 0: fewer) in a by-cost quota's current window."""
        if delta == 0 or self.pipe is None or not self.breaker.closed:
            return
        self.pipe.send(
            (
                "EVALSHA",
                self.scripts["reconcile_quota"].sha,
                1,
                self.keys.of(identity).quotas[index],
                STRATEGY_CODES[quota.strategy],
                quota.window,
                delta,
                self._reconcile_now(),
            )
        )

    def reconcile_route_quota(self, limits: str, quota: Quota, identity: str, delta: int) -> None:
        """Count ``delta`` more (< 0: fewer) in a by-cost quota of the route or plan limits
        named ``limits`` (`route_ops`)."""
        if delta == 0 or self.pipe is None or not self.breaker.closed:
            return
        self.pipe.send(
            (
                "EVALSHA",
                self.scripts["reconcile_quota"].sha,
                1,
                self.keys.route(identity, limits) + f":q:{quota.name}",
                STRATEGY_CODES[quota.strategy],
                quota.window,
                delta,
                self._reconcile_now(),
            )
        )

    def _reconcile_now(self) -> float | str:
        return "" if self.server_time else (self.stages.clock() if self.stages else "")

    # -- introspection -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        pipe = self.pipe
        return {
            "round_trips": pipe.round_trips if pipe else 0,
            "commands": pipe.commands if pipe else 0,
            "dropped": pipe.dropped if pipe else 0,
            "script_reloads": pipe.reloads if pipe else 0,
            "breaker": self.breaker.state,
            "breaker_opened": self.breaker.opened,
            "failures": self.failover.failures if self.failover else 0,
            "local_denials": self.local_denials,
            "deny_cache_hits": self.deny.hits,
            "leases_held": len(self.leases),
        }


def _told_to_wait(rows: EngineRows, row: int, until: float) -> None:
    """A bucket refused the request: note when the client was told to come back, as the
    kernel does with its own buckets (a request before then counts as impatience)."""
    if until > rows.get(L.KIND_KEY, row, L.F_WAIT_UNTIL):
        rows.put(L.KIND_KEY, row, L.F_WAIT_UNTIL, until)


RedisBackend.modes[RedisBackend.mode] = RedisBackend

__all__ = ["UNAVAILABLE", "RedisBackend"]
