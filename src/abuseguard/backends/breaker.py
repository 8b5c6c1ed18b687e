"""A circuit breaker: stop calling a failing dependency, probe it now and then, recover.

Closed: every call goes through; ``threshold`` consecutive failures open it. Open: no call
goes through until ``cooldown`` has passed; then the breaker is half-open and lets exactly
one call through as a probe. The probe's success closes the breaker; its failure opens it
again for twice the previous cooldown (at most ``max_cooldown``). A probe that never
reports back (its task was cancelled) is replaced after ``probe_timeout``.

An outage runs from the breaker opening while closed to the success that closes it again:
the re-opens after failed probes belong to the same outage (``outages`` counts outages,
``opened`` every opening) and are logged at debug level only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger("abuseguard.backends")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    """Not thread-safe: one breaker per event loop (as one backend serves one loop)."""

    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown: float = 1.0,
        max_cooldown: float = 30.0,
        probe_timeout: float = 1.0,
        name: str = "redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold!r}")
        if not cooldown > 0 or not max_cooldown >= cooldown:
            raise ValueError(
                f"need 0 < cooldown <= max_cooldown, got {cooldown!r}, {max_cooldown!r}"
            )
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.probe_timeout = probe_timeout
        self.name = name
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.cooldown = cooldown
        self.open_until = 0.0
        self.probe_deadline = 0.0
        self.opened = 0  # how many times the breaker opened (for metrics and tests)
        self.outages = 0  # how many times it opened while closed

    def allow(self) -> bool:
        """May a call go through now? In half-open state only the probe may."""
        if self.state == CLOSED:
            return True
        now = self.clock()
        if self.state == OPEN:
            if now < self.open_until:
                return False
        elif now < self.probe_deadline:
            return False  # a probe is in flight
        self.state = HALF_OPEN
        self.probe_deadline = now + self.probe_timeout
        return True

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def retry_after(self) -> float:
        """Seconds until the next probe may run (0 when closed)."""
        if self.state == CLOSED:
            return 0.0
        return max(0.0, self.open_until - self.clock())

    def success(self) -> None:
        self.failures = 0
        if self.state != CLOSED:
            logger.warning("abuseguard: %s answered again; circuit closed", self.name)
            self.state = CLOSED
            self.cooldown = self.base_cooldown

    def failure(self, error: BaseException | None = None) -> None:
        self.failures += 1
        if self.state == HALF_OPEN:
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self._open(error, new_outage=False)
        elif self.state == CLOSED and self.failures >= self.threshold:
            self._open(error, new_outage=True)

    def _open(self, error: BaseException | None, *, new_outage: bool) -> None:
        self.state = OPEN
        self.opened += 1
        self.open_until = self.clock() + self.cooldown
        if new_outage:
            self.outages += 1
        logger.log(
            logging.WARNING if new_outage else logging.DEBUG,
            "abuseguard: %s failing (%s); circuit open for %.2fs",
            self.name,
            type(error).__name__ if error is not None else "error",
            self.cooldown,
        )


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]
