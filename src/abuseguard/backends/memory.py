"""The embedded backend: quotas through `limits` on the guard's clock, concurrency counts.

Token buckets, scores and sketches of the memory backend live in the engine's tables and
are charged by the kernel in the same call that scores the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from limits import RateLimitItem, parse
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from abuseguard.backends.base import Backend, LocalLimits
from abuseguard.backends.clocked_storage import ClockedMemoryStorage
from abuseguard.backends.workers import warn_if_multi_worker
from abuseguard.errors import ConfigError

if TYPE_CHECKING:
    from abuseguard.policy import Quota

# The owner of the app-wide quotas' counters (`Policy.quotas`); route and plan limits are
# named "route-..." and "plan-...", so no counter of theirs can meet an app-wide one.
APP_WIDE = "app"


def quota_counter(owner: str, quota: Quota, identity: str) -> str:
    """The identity under which the memory backend counts one quota for one client.
    ``owner`` names the limits the quota belongs to (`APP_WIDE`, a route's or a plan's
    name). `limits` keys a counter by the rate and this identity only: the quota's name
    is part of it so that two quotas of one rate (requests and tokens per day) keep their
    own counts, as they do in Redis (one key per quota)."""
    return f"{owner}:{quota.name}:{identity}"


_STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


class MemoryBackend(Backend, LocalLimits):
    """State in this process only. Under several workers every limit is per worker: the
    first construction in a process that looks like one of several workers (uvicorn or
    gunicorn ``--workers``, ``WEB_CONCURRENCY``) logs a warning."""

    shared = False
    schemes = ("memory",)
    uri = "memory://"

    def __init__(self, *, max_keys: int = 200_000) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigError("MemoryBackend.max_keys", f"expected an int >= 1, got {max_keys!r}")
        self.max_keys = max_keys
        self._clock: Callable[[], float] | None = None
        self._storage: ClockedMemoryStorage | None = None
        self._limiters: dict[str, RateLimiter] = {}
        self._items: dict[str, RateLimitItem] = {}
        self.inflight: dict[str, int] = {}
        warn_if_multi_worker()

    @classmethod
    def from_uri(cls, uri: str) -> MemoryBackend:
        """``memory://``, optionally ``memory://?max_keys=100000`` (quota counters kept)."""
        parts = urlsplit(uri)
        if parts.netloc or parts.path.strip("/"):
            raise ConfigError("MemoryBackend.uri", f"memory:// takes no host or path, got {uri!r}")
        kwargs: dict[str, int] = {}
        for name, text in parse_qsl(parts.query, keep_blank_values=True):
            if name != "max_keys":
                raise ConfigError(
                    f"MemoryBackend.{name}", f"unknown option {name!r}; memory:// takes max_keys"
                )
            if not text.isdigit():
                raise ConfigError("MemoryBackend.max_keys", f"expected an int >= 1, got {text!r}")
            kwargs[name] = int(text)
        return cls(**kwargs)

    def bind(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._storage = ClockedMemoryStorage(clock, max_keys=self.max_keys)
        self._limiters.clear()

    def _limiter(self, strategy: str) -> RateLimiter:
        limiter = self._limiters.get(strategy)
        if limiter is None:
            assert self._storage is not None, "MemoryBackend.bind() was not called"
            limiter = self._limiters[strategy] = _STRATEGIES[strategy](self._storage)
        return limiter

    def _item(self, limit: str) -> RateLimitItem:
        item = self._items.get(limit)
        if item is None:
            item = self._items[limit] = parse(limit)
        return item

    def hit_quota(
        self, limit: str, strategy: str, identity: str, cost: int
    ) -> tuple[bool, float, float]:
        """Hit a window quota; return (admitted, remaining, seconds until reset)."""
        admitted = cost <= 0 or self._limiter(strategy).hit(self._item(limit), identity, cost=cost)
        return (admitted, *self.quota_state(limit, strategy, identity))

    def quota_fits(self, limit: str, strategy: str, identity: str, cost: int) -> bool:
        """Whether a hit of ``cost`` would be admitted, without counting it: the guard
        asks every limit first and counts only the requests it serves."""
        return cost <= 0 or self._limiter(strategy).test(self._item(limit), identity, cost=cost)

    def reconcile_quota(self, limit: str, strategy: str, identity: str, delta: int) -> None:
        """Count ``delta`` more (< 0: fewer) in a quota's current window: the real cost of
        a served request minus the estimate it was counted with. A moving window gives
        back its newest entries; a sliding window counter takes from the current window,
        then from the previous one."""
        storage = self._storage
        if delta == 0 or storage is None:
            return
        item = self._item(limit)
        key = item.key_for(identity)
        expiry = item.get_expiry()
        if strategy == "moving-window":
            events = storage.events.get(key)
            if delta < 0:
                if events:
                    del events[:-delta]
            else:  # at most ``amount`` entries are kept: the oldest go first
                if events is None:
                    events = storage.events[key] = []
                events[:0] = [storage.clock()] * min(delta, item.amount)
                del events[item.amount :]
        elif strategy == "sliding-window-counter":
            previous_key, current_key = storage.sliding_window_keys(key, expiry, storage.clock())
            if delta > 0:
                storage.incr(current_key, 2 * expiry, delta)
            else:
                taken = min(-delta, storage.get(current_key))
                storage.decr(current_key, taken)
                storage.decr(previous_key, -delta - taken)
        elif delta > 0:
            storage.incr(key, expiry, delta)
        else:
            storage.decr(key, -delta)

    def quota_state(self, limit: str, strategy: str, identity: str) -> tuple[float, float]:
        """(remaining, seconds until reset) of a window quota."""
        item = self._item(limit)
        limiter = self._limiter(strategy)
        stats = limiter.get_window_stats(item, identity)
        now = self._clock() if self._clock else 0.0
        if strategy == "sliding-window-counter":
            # limits dates this strategy's reset from time.time(), not from the storage clock
            reset = min(max(0.0, stats.reset_time - time.time()), float(item.get_expiry()))
        else:
            reset = max(0.0, stats.reset_time - now)
        return float(stats.remaining), reset

    def peek_quota(
        self, limit: str, strategy: str, identity: str, cost: int
    ) -> tuple[bool, float, float]:
        """`hit_quota` without the hit (for `Guard.precheck`): would ``cost`` more hits be
        admitted now? Nothing is counted."""
        return (
            self.quota_fits(limit, strategy, identity, cost),
            *self.quota_state(limit, strategy, identity),
        )

    def quota_would_admit(self, limit: str, strategy: str, identity: str, cost: int) -> bool:
        """`peek_quota`'s answer alone (no window statistics)."""
        return self._limiter(strategy).test(self._item(limit), identity, cost=cost)

    def acquire(self, identity: str, limit: int) -> bool:
        held = self.inflight.get(identity, 0)
        if held >= limit:
            return False
        self.inflight[identity] = held + 1
        return True

    def slot_free(self, identity: str, limit: int) -> bool:
        """Would `acquire` get a slot now? Nothing is taken."""
        return self.inflight.get(identity, 0) < limit

    def release(self, identity: str) -> None:
        held = self.inflight.get(identity, 0) - 1
        if held > 0:
            self.inflight[identity] = held
        else:
            self.inflight.pop(identity, None)
