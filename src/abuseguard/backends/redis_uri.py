"""Backend URIs: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
``rediss+cluster://``, with the backend's own options in the query string.

``redis://h:6379/0?budget=0.02&fail_open=false&health_check_interval=5`` becomes the
redis-py URL ``redis://h:6379/0?health_check_interval=5`` and the backend keyword
arguments ``budget=0.02, fail_open=False`` (plus ``cluster``). ``mode`` picks the backend:
``inline`` (the default, `RedisBackend`) or ``synced`` (`SyncedRedisBackend`, which alone
takes ``workers``, ``sync_max_pending`` and ``share_window``). A bad value fails with a
ConfigError naming the option.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from abuseguard.errors import ConfigError

BACKEND_OPTIONS: dict[str, Any] = {
    "prefix": str,
    "budget": float,
    "breaker_threshold": int,
    "breaker_cooldown": float,
    "breaker_max_cooldown": float,
    "fail_open": bool,
    "deny_cache_seconds": float,
    "lease_ttl": float,
    "lease_max": float,
    "server_time": bool,
    "sync_interval": float,
    "fallback_workers": int,
    "shared_sketches": bool,
    "sketch_refresh": float,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "max_connections": int,
    "mode": str,
    "workers": int,
    "sync_max_pending": int,
    "share_window": float,
}
MODES = ("inline", "synced")
SYNCED_ONLY = ("workers", "sync_max_pending", "share_window")  # options of the synced mode alone


def _bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"RedisBackend.{name}", f"expected true or false, got {text!r}")


_CERT_REQS = ("none", "optional", "required")


def redacted(url: str) -> str:
    """The URL without its password, for logs: ``redis://user:***@host:6379/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:***@{host}{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def split_backend_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """(the URL for redis-py, the backend's keyword arguments)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    cluster = scheme.endswith("+cluster")
    if cluster:
        scheme = scheme[: -len("+cluster")]
    kwargs: dict[str, Any] = {"cluster": cluster}
    rest = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = BACKEND_OPTIONS.get(name)
        if kind is None:
            # TLS mistakes would otherwise surface only at connect time, as an "outage"
            # that fails open: catch them here, where the configuration is read.
            if name.startswith("ssl_") and scheme != "rediss":
                raise ConfigError(
                    f"RedisBackend.{name}", f"TLS options need a rediss:// URI, not {scheme}://"
                )
            if name == "ssl_cert_reqs" and value.lower() not in _CERT_REQS:
                raise ConfigError(
                    "RedisBackend.ssl_cert_reqs",
                    f"use one of {', '.join(_CERT_REQS)}, not {value!r}",
                )
            rest.append((name, value))
            continue
        if name == "mode" and value not in MODES:
            raise ConfigError("RedisBackend.mode", f"use one of {', '.join(MODES)}, not {value!r}")
        try:
            kwargs[name] = _bool(name, value) if kind is bool else kind(value)
        except ValueError:
            raise ConfigError(f"RedisBackend.{name}", f"bad value {value!r} in the URI") from None
    query = urlencode(rest)
    # urlunsplit would drop the empty host of unix:///path
    return f"{scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else ""), kwargs


__all__ = ["BACKEND_OPTIONS", "MODES", "SYNCED_ONLY", "redacted", "split_backend_uri"]
