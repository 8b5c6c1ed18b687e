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


def test_a_shared_backend_gets_the_stages_never_the_guard() -> None:
    """A round-trip backend drives the pipeline through the `Stages` port: what it is
    given at construction and per request is not the Guard."""
    from abuseguard.backends.base import UNKNOWN_LIMITS, RoundTripDecider, Stages
    from abuseguard.decision import Decision

    given: list[object] = []

    class Recording(Backend, RoundTripDecider):
        shared = True

        def attach(self, stages: Stages) -> None:
            given.append(stages)

        async def check(self, stages: Stages, info: RequestInfo) -> Decision:
            given.append(stages)
            p = stages.prepare(info)
            return stages.decide(info, p, stages.run_engine(p).tolist(), UNKNOWN_LIMITS, False)

    guard = Guard(Policy(scoring=None), backend=Recording())
    decision = asyncio.run(guard.acheck(RequestInfo(ip="192.0.2.1", key="k1", ts=1.0)))
    assert decision.served and decision.identity.startswith("k:")
    assert len(given) == 2 and all(not isinstance(g, Guard) for g in given)


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
