"""Backend URIs: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
``rediss+cluster://``, with the backend's own options in the query string.

``redis://h:6379/0?budget=0.02&fail_open=false&health_check_interval=5`` becomes the
redis-py URL ``redis://h:6379/0?health_check_interval=5`` and the backend keyword
arguments ``budget=0.02, fail_open=False`` (plus ``cluster``). ``mode`` picks the backend:
``inline`` (the default, `RedisBackend`) or ``synced`` (`SyncedRedisBackend`, which alone
takes ``workers``, ``sync_max_pending`` and ``share_window``). redis-py's own options
(``REDIS_PY_OPTIONS``; ``TLS_OPTIONS`` on ``rediss`` only; ``CLUSTER_OPTIONS`` on a cluster
URI only) are checked here and passed on. Any other option, a bad value, a bad port or a
database that is not a number fails with a ConfigError naming it: redis-py would hand an
unknown option to the connection, which fails on the first request, and the guard would
take that for an outage and fail open.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
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


def _non_negative_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"RedisBackend.{name}", f"expected an int >= 0, got {text!r}")
    return value


def _positive_int(name: str, text: str) -> int:
    if _non_negative_int(name, text) == 0:
        raise ConfigError(f"RedisBackend.{name}", f"expected an int >= 1, got {text!r}")
    return int(text)


def _protocol(name: str, text: str) -> int:
    if text.strip() not in ("2", "3"):
        raise ConfigError(f"RedisBackend.{name}", f"expected 2 or 3, got {text!r}")
    return int(text)


def _cert_reqs(name: str, text: str) -> str:
    if text.lower() not in _CERT_REQS:
        raise ConfigError(
            "RedisBackend.ssl_cert_reqs", f"use one of {', '.join(_CERT_REQS)}, not {text!r}"
        )
    return text


def _text(name: str, text: str) -> str:
    return text


OptionCheck = Callable[[str, str], object]
# redis-py's options that the URI may carry, left in the URL for redis-py to read.
REDIS_PY_OPTIONS: dict[str, OptionCheck] = {
    "db": _non_negative_int,
    "health_check_interval": _non_negative_int,  # seconds; redis-py reads an int
    "socket_keepalive": _bool,
    "socket_read_size": _positive_int,
    "retry_on_timeout": _bool,
    "protocol": _protocol,
    "client_name": _text,
    "username": _text,
    "password": _text,
}
TLS_OPTIONS: dict[str, OptionCheck] = {
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_ca_data": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "ssl_password": _text,
    "ssl_ciphers": _text,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _bool,
    "ssl_min_version": _non_negative_int,
}
# Options of redis-py's RedisCluster, which takes them as keyword arguments: taken out of
# the URL (redis-py would pass "false" on as a truthy str) and given typed.
CLUSTER_OPTIONS: dict[str, OptionCheck] = {
    "read_from_replicas": _bool,
    "require_full_coverage": _bool,
    "reinitialize_steps": _non_negative_int,
    "cluster_error_retry_attempts": _non_negative_int,
}


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


def _check_address(scheme: str, cluster: bool, uri: str) -> None:
    """A port in 1..65535 and, on TCP, a database number as the path."""
    parts = urlsplit(uri)
    if scheme == "unix":
        return
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        host = parts.netloc.rpartition("@")[2]  # never the password
        raise ConfigError("RedisBackend.port", f"expected a port in 1..65535, got {host!r}")
    db = parts.path.strip("/")
    if db and not (db.isdigit() and (not cluster or int(db) == 0)):
        expected = "no database or /0 on a cluster" if cluster else "a database number"
        raise ConfigError("RedisBackend.db", f"expected {expected} as the path, got {db!r}")


def _unknown_option(name: str, scheme: str, cluster: bool) -> ConfigError:
    if name.startswith("ssl_") and name in TLS_OPTIONS:
        return ConfigError(
            f"RedisBackend.{name}", f"TLS options need a rediss:// URI, not {scheme}://"
        )
    if name in CLUSTER_OPTIONS:
        return ConfigError(f"RedisBackend.{name}", "is an option of redis+cluster:// URIs only")
    known = [*BACKEND_OPTIONS, *REDIS_PY_OPTIONS]
    known += [*TLS_OPTIONS] if scheme == "rediss" else []
    known += [*CLUSTER_OPTIONS] if cluster else []
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        f"RedisBackend.{name}",
        f"unknown option {name!r} in the URI; {hint}known: {', '.join(sorted(known))}",
    )


def _backend_option(name: str, kind: Any, text: str) -> Any:
    if name == "mode" and text not in MODES:
        raise ConfigError("RedisBackend.mode", f"use one of {', '.join(MODES)}, not {text!r}")
    try:
        value = _bool(name, text) if kind is bool else kind(text)
    except ValueError:
        raise ConfigError(f"RedisBackend.{name}", f"bad value {text!r} in the URI") from None
    if kind is float and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"RedisBackend.{name}", f"expected a finite number >= 0, got {text!r}")
    return value


def split_backend_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """(the URL for redis-py, the backend's keyword arguments)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    cluster = scheme.endswith("+cluster")
    if cluster:
        scheme = scheme[: -len("+cluster")]
    _check_address(scheme, cluster, uri)
    kwargs: dict[str, Any] = {"cluster": cluster}
    rest = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = BACKEND_OPTIONS.get(name)
        if kind is not None:
            kwargs[name] = _backend_option(name, kind, value)
        elif name in REDIS_PY_OPTIONS:
            REDIS_PY_OPTIONS[name](name, value)
            rest.append((name, value))
        elif name in TLS_OPTIONS and scheme == "rediss":
            TLS_OPTIONS[name](name, value)
            rest.append((name, value))
        elif name in CLUSTER_OPTIONS and cluster:
            kwargs[name] = CLUSTER_OPTIONS[name](name, value)
        else:
            raise _unknown_option(name, scheme, cluster)
    query = urlencode(rest)
    # urlunsplit would drop the empty host of unix:///path
    return f"{scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else ""), kwargs


__all__ = [
    "BACKEND_OPTIONS",
    "CLUSTER_OPTIONS",
    "MODES",
    "REDIS_PY_OPTIONS",
    "SYNCED_ONLY",
    "TLS_OPTIONS",
    "redacted",
    "split_backend_uri",
]
