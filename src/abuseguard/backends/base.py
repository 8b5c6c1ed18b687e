"""The backend interface: where limits that must be shared live."""

from __future__ import annotations

import importlib
from typing import Protocol

from abuseguard.errors import ConfigError


class Backend:
    """A place for limit state.

    ``shared`` backends (Redis) hold buckets, quotas, concurrency and sketches for many
    processes and are reached asynchronously; the in-process engine still scores every
    request. The memory backend keeps everything in the process and is used synchronously.
    A shared backend that ``decides_locally`` (Redis in synced mode) decides without
    waiting for anything, so ``Guard.check`` works with it too (``check_now``).
    """

    shared: bool = False
    decides_locally: bool = False
    uri: str = ""

    async def startup(self) -> None:
        """Connect, load scripts. Called at lifespan start (or on first use)."""

    async def shutdown(self) -> None:
        """Release connections."""


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


_SCHEMES = {
    "memory": "abuseguard.backends.memory:MemoryBackend",
    "redis": "abuseguard.backends.redis:RedisBackend",
    "rediss": "abuseguard.backends.redis:RedisBackend",
    "unix": "abuseguard.backends.redis:RedisBackend",
    "redis+cluster": "abuseguard.backends.redis:RedisBackend",
    "rediss+cluster": "abuseguard.backends.redis:RedisBackend",
}


def backend_from_uri(value: Backend | str | None) -> Backend:
    """A backend object from an object or a URI ("memory://", "redis://host:6379/0", ...)."""
    if value is None:
        # Through the scheme table, like every backend: base.py never imports a backend.
        value = "memory://"
    if isinstance(value, Backend):
        return value
    if not isinstance(value, str):
        raise ConfigError("backend", f"expected a Backend or a URI string, got {value!r}")
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ConfigError(
            "backend",
            f"unknown backend URI {value!r}; use one of " + ", ".join(f"{s}://" for s in _SCHEMES),
        )
    module_name, _, class_name = _SCHEMES[scheme.lower()].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            "backend", f"{scheme}:// needs {exc.name}: pip install 'abuseguard[redis]'"
        ) from None
    cls = getattr(module, class_name)
    backend: Backend = cls.from_uri(value) if hasattr(cls, "from_uri") else cls()
    return backend


__all__ = ["Backend", "LimitSource", "backend_from_uri"]
