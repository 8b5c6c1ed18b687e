"""The Redis backends: limits shared by every worker and host.

- `backend`: `RedisBackend` (inline mode: one round trip per request, ``lua/decide.lua``)
- `synced`: `SyncedRedisBackend` (synced mode: local decisions merged into Redis), with
  `sync` (the syncer) and ``lua/sync.lua``
- `uri`: backend URIs and their options; `keys`: Redis key names
- `pipe`: the pipeliner and Lua scripts; `call`: one script call and its reply
- `failover`: the circuit breaker's fail modes; `deny_cache`: refusals remembered locally
- `leases`: concurrency leases; `probation`: sketches only from a second request;
  `sketches`: the synced mode's sketch queue; `netsync`: network buckets in a Cluster
- `unverified`: the unverified-key budgets in Redis (inline mode)

Importing this package registers the schemes ``redis``, ``rediss``, ``unix``,
``redis+cluster``, ``rediss+cluster`` and both modes.
"""

from __future__ import annotations

from abuseguard.backends.redis.backend import RedisBackend
from abuseguard.backends.redis.failover import UNAVAILABLE
from abuseguard.backends.redis.synced import SyncedRedisBackend

__all__ = ["UNAVAILABLE", "RedisBackend", "SyncedRedisBackend"]
