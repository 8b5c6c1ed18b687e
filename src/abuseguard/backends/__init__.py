"""Storage backends: memory (embedded default) and Redis (shared by many workers and hosts)."""

from __future__ import annotations

from abuseguard.backends.base import Backend, backend_from_uri
from abuseguard.backends.memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend", "backend_from_uri"]
