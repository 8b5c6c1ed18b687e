"""Local deny cache: refuse, without asking Redis, a client Redis just refused.

Two kinds of entries, both keyed by identity:

- a token bucket seen short: its tokens at the time of the answer, the burst, the refill
  in force then and the fastest refill the policy allows. Other workers can only take
  tokens, never add them, so ``tokens + elapsed * fastest_rate`` bounds what Redis holds:
  while that bound cannot pay a request, Redis would refuse it too. (A refund reconciled
  by another worker is the one exception; it is invisible here for at most the time the
  bound needs to refill the request's cost.)
- a window quota seen exhausted: refused until the window ends.

Entries live at most ``max_seconds`` (so an operator's reset in Redis takes effect within
that bound) and the cache holds at most ``max_entries`` (oldest dropped first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class BucketMemo:
    __slots__ = ("burst", "expires", "fastest", "observed", "rate", "tokens")

    def __init__(
        self,
        observed: float,
        tokens: float,
        rate: float,
        fastest: float,
        burst: float,
        expires: float,
    ) -> None:
        self.observed = observed
        self.tokens = tokens
        self.rate = rate
        self.fastest = fastest
        self.burst = burst
        self.expires = expires


class QuotaMemo:
    __slots__ = ("answers", "until")

    def __init__(self, until: float, answers: tuple[Any, ...]) -> None:
        self.until = until
        self.answers = answers  # every quota's (ok, remaining, reset) as last answered


class DenyCache:
    def __init__(
        self,
        *,
        max_seconds: float = 60.0,
        max_entries: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_seconds = max_seconds
        self.max_entries = max_entries
        self.clock = clock
        self.buckets: dict[str, BucketMemo] = {}
        self.quotas: dict[str, QuotaMemo] = {}
        self.hits = 0

    @property
    def enabled(self) -> bool:
        return self.max_seconds > 0

    def note_bucket(
        self, identity: str, tokens: float, rate: float, fastest: float, burst: float
    ) -> None:
        if self.max_seconds <= 0:
            return
        now = self.clock()
        if len(self.buckets) >= self.max_entries:
            self.buckets.pop(next(iter(self.buckets)))
        self.buckets.pop(identity, None)  # re-insert: the dict stays in age order
        self.buckets[identity] = BucketMemo(
            now, tokens, rate, fastest, burst, now + self.max_seconds
        )

    def bucket_short(self, identity: str, cost: float) -> tuple[float, float, float] | None:
        """(tokens now, seconds until ``cost`` is affordable, refill rate) when the bucket
        surely cannot pay ``cost`` yet; None (and the entry dropped) when it might."""
        short = self.peek_bucket(identity, cost)
        if short is not None:
            self.hits += 1
        else:
            self.buckets.pop(identity, None)
        return short

    def peek_bucket(self, identity: str, cost: float) -> tuple[float, float, float] | None:
        """`bucket_short` that changes nothing (no hit counted, no entry dropped)."""
        memo = self.buckets.get(identity)
        if memo is None:
            return None
        now = self.clock()
        elapsed = now - memo.observed
        need = cost if cost < memo.burst else memo.burst
        if now < memo.expires and memo.tokens + elapsed * memo.fastest < need:
            tokens = min(memo.burst, memo.tokens + elapsed * memo.rate)
            return tokens, (need - tokens) / memo.rate, memo.rate
        return None

    def forget_bucket(self, identity: str) -> None:
        self.buckets.pop(identity, None)

    def note_quota(self, identity: str, reset: float, answers: tuple[Any, ...]) -> None:
        if self.max_seconds <= 0 or reset <= 0:
            return
        if len(self.quotas) >= self.max_entries:
            self.quotas.pop(next(iter(self.quotas)))
        self.quotas[identity] = QuotaMemo(self.clock() + min(reset, self.max_seconds), answers)

    def quota_exhausted(self, identity: str) -> tuple[float, tuple[Any, ...]] | None:
        """(seconds left, the quota answers) while a quota of ``identity`` is exhausted."""
        exhausted = self.peek_quota(identity)
        if exhausted is not None:
            self.hits += 1
        else:
            self.quotas.pop(identity, None)
        return exhausted

    def peek_quota(self, identity: str) -> tuple[float, tuple[Any, ...]] | None:
        """`quota_exhausted` that changes nothing (no hit counted, no entry dropped)."""
        memo = self.quotas.get(identity)
        if memo is None:
            return None
        left = memo.until - self.clock()
        return (left, memo.answers) if left > 0 else None

    def clear(self) -> None:
        self.buckets.clear()
        self.quotas.clear()


__all__ = ["BucketMemo", "DenyCache", "QuotaMemo"]
