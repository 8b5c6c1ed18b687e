"""A `limits` storage that reads time from the guard's clock, so quotas run in virtual time.

`limits`' own MemoryStorage calls ``time.time()`` directly, which would make replays of a
day of traffic in a second impossible. This storage implements the same contracts
(fixed window, moving window, sliding window counter) on an injected clock, bounded in the
number of keys it holds, and `limits`' strategies run on top of it unchanged.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from math import floor
from typing import Any

from limits.storage.base import (
    MovingWindowSupport,
    SlidingWindowCounterSupport,
    Storage,
    TimestampedSlidingWindow,
)


class ClockedMemoryStorage(
    Storage, MovingWindowSupport, SlidingWindowCounterSupport, TimestampedSlidingWindow
):
    STORAGE_SCHEME = ["abuseguard-clocked-memory"]

    def __init__(self, clock: Callable[[], float], *, max_keys: int = 200_000, **_: Any) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.counters: dict[str, int] = {}
        self.expirations: dict[str, float] = {}
        self.events: dict[str, list[float]] = {}  # newest first, as limits' MemoryStorage
        super().__init__(None)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def _bound(self) -> None:
        if len(self.counters) + len(self.events) < self.max_keys:
            return
        now = self.clock()
        for key in [k for k, exp in self.expirations.items() if exp <= now]:
            self.clear(key)
        while len(self.counters) + len(self.events) >= self.max_keys:
            if self.expirations:
                soonest = min(self.expirations, key=self.expirations.__getitem__)
                self.clear(soonest)
            elif self.events:
                self.events.pop(next(iter(self.events)))
            else:
                break

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        value = self.get(key) + amount
        if key not in self.counters:
            self._bound()
            self.expirations[key] = self.clock() + expiry
        self.counters[key] = value
        return value

    def decr(self, key: str, amount: int = 1) -> int:
        value = max(self.get(key) - amount, 0)
        if key in self.counters:
            self.counters[key] = value
        return value

    def get(self, key: str) -> int:
        if self.expirations.get(key, 0.0) <= self.clock():
            self.counters.pop(key, None)
            self.expirations.pop(key, None)
        return self.counters.get(key, 0)

    def get_expiry(self, key: str) -> float:
        return self.expirations.get(key, self.clock())

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        count = max(len(self.counters), len(self.events))
        self.counters.clear()
        self.expirations.clear()
        self.events.clear()
        return count

    def clear(self, key: str) -> None:
        self.counters.pop(key, None)
        self.expirations.pop(key, None)
        self.events.pop(key, None)

    # Moving window: a list of hit times per key, newest first, at most `limit` kept.
    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self.clock()
        events = self.events.get(key)
        if events is None:
            self._bound()
            events = self.events[key] = []
        if len(events) > limit - amount and events[limit - amount] >= now - expiry:
            return False
        events[:0] = [now] * amount
        del events[limit:]
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = self.clock()
        events = self.events.get(key, [])
        if events:
            inside = bisect.bisect_left([-t for t in events], -(now - expiry))
            if inside:
                return events[inside - 1], inside
        return now, 0

    # Sliding window counter: two fixed windows weighted, as in limits' MemoryStorage.
    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if amount > limit:
            return False
        now = self.clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous, previous_ttl, current, _ = self._window_info(
            previous_key, current_key, expiry, now
        )
        if floor(previous * previous_ttl / expiry + current) + amount > limit:
            return False
        self.incr(current_key, 2 * expiry, amount)
        return True

    def _window_info(
        self, previous_key: str, current_key: str, expiry: int, now: float
    ) -> tuple[int, float, int, float]:
        previous = self.get(previous_key)
        current = self.get(current_key)
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = self.clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        return self._window_info(previous_key, current_key, expiry, now)

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        now = self.clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        self.clear(previous_key)
        self.clear(current_key)
