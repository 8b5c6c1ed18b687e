"""The one line logged at startup with the effective policy, so an operator sees what runs.

``abuseguard policy: backend=redis mode=inline url=redis://cache:6379/0 bucket=default:10/1s
burst=40 ...`` on the ``abuseguard`` logger at INFO, and a warning when API keys would be
hashed with an empty secret. Never the secret itself, a password or a query string.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from abuseguard.policy import Concurrency
from abuseguard.rates import parse_rate
from abuseguard.route_limits import describe as describe_route_limits

if TYPE_CHECKING:
    from abuseguard.guard import Guard
    from abuseguard.policy import Policy, TokenBucket

logger = logging.getLogger("abuseguard")

EMPTY_SECRET_WARNING = "keys are hashed with an empty secret: set Policy(secret=...)"


def _number(value: float) -> str:
    return f"{value:g}"


def _bucket(bucket: TokenBucket) -> str:
    amount, window, _ = parse_rate("TokenBucket.rate", bucket.rate)
    shadow = ":shadow" if bucket.shadow else ""
    return (
        f"{bucket.name}:{_number(amount)}/{_number(window)}s{shadow} "
        f"burst={_number(bucket.capacity)}"
    )


def _backend(guard: Guard) -> str:
    from abuseguard.backends.memory import MemoryBackend

    backend = guard.backend
    if isinstance(backend, MemoryBackend):
        return "memory"
    name = "redis" if type(backend).__module__.startswith("abuseguard.backends.redis") else ""
    parts = [name or type(backend).__name__]
    mode = getattr(backend, "mode", None)
    if isinstance(mode, str):
        parts.append(f"mode={mode}")
    if backend.uri:
        from abuseguard.backends.redis.uri import redacted

        # Without the query: it may carry ssl_password or password.
        parts.append(f"url={redacted(backend.uri.partition('?')[0])}")
    return " ".join(parts)


def describe_policy(guard: Guard) -> str:
    """The effective policy of ``guard`` as one logfmt-like line."""
    policy: Policy = guard.policy
    fields = [f"backend={_backend(guard)}"]
    fields.append(f"bucket={_bucket(policy.bucket)}" if policy.bucket else "bucket=none")
    network = policy.network
    for name in ("per_ip", "per_prefix", "per_asn"):
        bucket = getattr(network, name) if network is not None else None
        if bucket is not None:
            fields.append(f"{name}={_bucket(bucket).replace(' burst=', ':burst=')}")
    quotas = [
        f"{quota.name}:{quota.amount}/{_number(quota.window)}s"
        + (":shadow" if quota.shadow else "")
        for quota in policy.quotas
    ]
    fields.append(f"quotas={','.join(quotas) or 'none'}")
    concurrency = policy.concurrency
    fields.append(
        f"concurrency={concurrency.limit}/{concurrency.per}"
        if isinstance(concurrency, Concurrency)
        else "concurrency=none"
    )
    route_limits = guard.route_limits
    if route_limits is not None:
        fields.append(describe_route_limits(route_limits.routes, route_limits.plans, policy))
    scoring = policy.scoring
    fields.append(f"scoring={'on' if scoring is not None and scoring.enabled else 'off'}")
    fields.append(f"content={'on' if guard.content is not None else 'off'}")
    enforcement = policy.enforcement
    steps = ",".join(f"{action}@{_number(threshold)}" for threshold, action in enforcement.ladder)
    fields.append(f"ladder={'shadow:' if enforcement.shadow else ''}{steps or 'none'}")
    shadowed = sorted(str(action) for action in enforcement.shadow_actions)
    if shadowed:
        fields.append(f"shadow_actions={','.join(shadowed)}")
    ban = enforcement.ban_at if enforcement.ban_level() else None
    fields.append(f"ban={ban}:{_number(enforcement.ban_seconds)}s" if ban else "ban=off")
    fields.append(f"shadow={'on' if policy.shadow else 'off'}")
    proxies = ",".join(str(net) for net in policy.trusted_proxies)
    fields.append(f"trusted_proxies={proxies or 'none'}")
    fields.append(f"exempt={','.join(policy.exempt_paths) or 'none'}")
    fields.append(f"websocket={'on' if policy.websocket is not None else 'off'}")
    fields.append(f"fail_mode={'open' if policy.fail_mode.open else 'closed'}")
    fields.append(f"secret={'set' if policy.secret else 'empty'}")
    return "abuseguard policy: " + " ".join(fields)


def log_startup(guard: Guard) -> None:
    """Log the effective policy (INFO) and warn when the secret is empty."""
    logger.info("%s", describe_policy(guard))
    if not guard.policy.secret:
        logger.warning("abuseguard: %s", EMPTY_SECRET_WARNING)


__all__ = ["EMPTY_SECRET_WARNING", "describe_policy", "log_startup"]
