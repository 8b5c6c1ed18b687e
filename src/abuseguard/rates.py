"""Rate notation (`limits`' "20/second", "10000/day") to numbers."""

from __future__ import annotations

import math

from limits import RateLimitItem, parse, parse_many

from abuseguard.errors import ConfigError


def parse_rate(field: str, value: str | float | int) -> tuple[float, float, RateLimitItem | None]:
    """Return (amount, window_seconds, item) for a rate given as notation or per-second number."""
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a rate such as '20/second', got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(field, f"a rate must be a positive finite number, got {value!r}")
        return float(value), 1.0, None
    if not isinstance(value, str):
        raise ConfigError(field, f"expected a rate such as '20/second', got {type(value).__name__}")
    try:
        item = parse(value)
    except ValueError as exc:
        raise ConfigError(field, f"cannot parse rate {value!r}: {exc}") from None
    if item.amount <= 0:
        raise ConfigError(field, f"a rate needs a positive amount, got {value!r}")
    # `limits` reads "5/second;100/minute" as its first limit: refuse the rest, never drop it.
    several = len(parse_many(value)) if any(sep in value for sep in ",;|") else 1
    if several > 1:
        if field.startswith("TokenBucket."):
            hint = "a bucket has one rate: put each further window in Policy.quotas as a Quota"
        else:
            hint = "give each limit its own Quota in Policy.quotas"
        raise ConfigError(field, f"one rate, one limit: got {several} in {value!r}; {hint}")
    return float(item.amount), float(item.get_expiry()), item
