"""The backend port (issue 15 item 1): capabilities declared by the class and checked when
the Guard is built, URI schemes registered by the backend classes themselves, Redis
imported only for a Redis URI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from abuseguard import ConfigError, Guard, Policy, RequestInfo
from abuseguard.backends import base
from abuseguard.backends.base import Backend, backend_from_uri
from abuseguard.backends.memory import MemoryBackend


@pytest.fixture
def registry() -> Iterator[None]:
    """Leave the scheme registry as it was (test classes register schemes)."""
    saved = dict(base._REGISTRY)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)


def test_a_backend_that_declares_no_capability_is_refused_when_the_guard_is_built() -> None:
    class Nothing(Backend):
        pass

    with pytest.raises(ConfigError, match="LocalLimits"):
        Guard(Policy(scoring=None), backend=Nothing())


def test_a_shared_backend_that_cannot_decide_is_refused_when_the_guard_is_built() -> None:
    class SharedNothing(Backend):
        shared = True

    with pytest.raises(ConfigError, match="RoundTripDecider"):
        Guard(Policy(scoring=None), backend=SharedNothing())


def test_a_backend_class_registers_its_own_uri_scheme(registry: None) -> None:
    class TenantStore(MemoryBackend):
        schemes = ("tenant-store",)

    backend = backend_from_uri("tenant-store://?max_keys=7")
    assert type(backend) is TenantStore and backend.max_keys == 7
    guard = Guard(Policy(scoring=None), backend="tenant-store://")
    assert type(guard.backend) is TenantStore
    assert guard.check(RequestInfo(ip="192.0.2.1", ts=1.0)).served


def test_an_unknown_scheme_names_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"memory://.*redis\+cluster://"):
        backend_from_uri("nosuch://x")


def test_the_redis_schemes_and_modes_come_from_the_redis_classes() -> None:
    from abuseguard.backends.redis import RedisBackend, SyncedRedisBackend

    for scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        assert base._REGISTRY[scheme] is RedisBackend
    assert RedisBackend.modes == {"inline": RedisBackend, "synced": SyncedRedisBackend}
    synced = RedisBackend.from_uri("redis://127.0.0.1:1/0?mode=synced")
    assert type(synced) is SyncedRedisBackend


def test_the_memory_backend_imports_no_redis() -> None:
    code = (
        "import sys\n"
        "from abuseguard import Guard, RequestInfo\n"
        "Guard().check(RequestInfo(ip='192.0.2.1', ts=1.0))\n"
        "loaded = [m for m in sys.modules if m == 'redis' or m.startswith('redis.')\n"
        "          or m.startswith('abuseguard.backends.redis')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_round_trip_backend_answers_limits_and_never_gets_the_guard() -> None:
    """The Guard runs the pipeline with a round-trip backend: the backend is asked
    whether its store is reachable, then for the limits of the prepared request (here a
    quota it refuses), and the Guard decides. What it is given is never the Guard."""
    from abuseguard.backends.base import LimitAnswer, RoundTripDecider, Stages
    from abuseguard.guard import Prepared
    from abuseguard.policy import Quota

    given: list[object] = []

    class QuotaRefused:
        def hit_quota(
            self, limit: str, strategy: str, identity: str, cost: int
        ) -> tuple[bool, float, float]:
            return False, 0.0, 42.0

        def acquire(self, identity: str, limit: int) -> bool:
            return True

    class Recording(Backend, RoundTripDecider):
        shared = True

        def attach(self, stages: Stages) -> None:
            given.append(stages)

        async def reach(self, info: RequestInfo) -> bool:
            given.append(info)
            return True

        async def answer(
            self, info: RequestInfo, p: Prepared, io: list[float], reachable: bool
        ) -> LimitAnswer:
            given.append(p)
            return LimitAnswer(QuotaRefused(), False, after=given.append)

    guard = Guard(Policy(scoring=None, quotas=(Quota("5/minute"),)), backend=Recording())
    info = RequestInfo(ip="192.0.2.1", key="k1", ts=1.0)
    decision = asyncio.run(guard.acheck(info))
    assert decision.action.value == "throttle" and decision.reasons == ("quota",)
    assert decision.retry_after == 42.0
    stages, reached, prepared, after = given
    assert not isinstance(stages, Guard) and reached is info
    assert isinstance(prepared, Prepared) and prepared.identity == decision.identity
    assert after is decision


def test_no_backend_module_reads_the_guard() -> None:
    """No module under backends/ names a Guard, imports it or has a ``guard`` (issue 15
    item 1): the code, read with ``ast``, not its prose."""
    import ast
    from pathlib import Path

    import abuseguard.backends

    root = Path(abuseguard.backends.__file__).parent
    offending = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.arg):
                names = [node.arg]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.ImportFrom):
                names = [alias.name for alias in node.names]
            if {"guard", "Guard"} & set(names):
                offending.append(f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}")
    assert not offending, offending


def test_whether_the_kernel_buckets_decide_is_declared_by_the_backend_not_set_by_it() -> None:
    """The kernel's buckets decide (and decisions report them) for a local backend and a
    `LocalDecider`, not for a round-trip decider alone: read from the backend's declared
    capabilities when the Guard is built. The port a shared backend gets holds no
    reference to the Guard, so no backend can flip that (or anything else) on it."""
    from abuseguard.backends.base import (
        LimitAnswer,
        LocalDecider,
        RoundTripDecider,
        Stages,
        kernel_buckets,
    )
    from abuseguard.backends.redis import RedisBackend
    from abuseguard.backends.redis.synced import SyncedRedisBackend

    given: list[Stages] = []

    class RoundTrip(Backend, RoundTripDecider):
        shared = True

        def attach(self, stages: Stages) -> None:
            given.append(stages)

        async def reach(self, info: RequestInfo) -> bool:
            raise NotImplementedError

        async def answer(
            self, info: RequestInfo, p: object, io: list[float], reachable: bool
        ) -> LimitAnswer:
            raise NotImplementedError

    class Merging(RoundTrip, LocalDecider):
        decides_locally = True

        def note_decision(self, p: object, decision: object, plain: bool, io: object) -> None:
            pass

    assert kernel_buckets(MemoryBackend())
    assert not kernel_buckets(RoundTrip()) and kernel_buckets(Merging())
    assert not kernel_buckets(RedisBackend("redis://127.0.0.1:1/0"))
    assert kernel_buckets(SyncedRedisBackend("redis://127.0.0.1:1/0"))
    for backend, expected in ((RoundTrip(), False), (Merging(), True)):
        guard = Guard(Policy(scoring=None), backend=backend)
        assert guard.local_buckets is expected
        stages = given.pop()
        assert not hasattr(stages, "use_local_buckets")
        assert all(value is not guard for value in vars(stages).values())
