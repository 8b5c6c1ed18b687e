"""RedisBackend over TLS (``rediss://``) end to end: a TLS-only redis-server with a
throwaway CA, the middleware under real uvicorn, real HTTP (httpx).

The CA reaches redis-py through the URI query (``ssl_ca_certs``, ``ssl_cert_reqs``):
`redis_uri` passes options it does not own through to ``Redis.from_url`` unchanged.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from abuseguard import AbuseGuard, Policy, TokenBucket
from abuseguard.backends.redis import RedisBackend
from abuseguard.backends.redis.uri import redacted, split_backend_uri
from abuseguard.errors import ConfigError
from abuseguard.testing import serve
from tests.conftest import RedisTLSServer

pytestmark = pytest.mark.redis

CLIENT_TIMEOUT = 5.0
_prefixes = itertools.count()


def prefix() -> str:
    return f"tls{os.getpid()}x{next(_prefixes)}"


def tls_uri(server: RedisTLSServer, ca: Path, **options: str) -> str:
    query = "&".join(
        f"{name}={quote(value, safe='')}"
        for name, value in {"ssl_ca_certs": str(ca), "ssl_cert_reqs": "required", **options}.items()
    )
    return f"rediss://127.0.0.1:{server.port}/0?{query}"


def guarded_app(backend: str) -> AbuseGuard:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", ok)])
    policy = Policy(bucket=TokenBucket("1/minute", burst=3), scoring=None)
    return AbuseGuard(app, policy=policy, backend=backend)


def get_five(app: Any) -> list[int]:
    with serve(app) as base, httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT) as http:
        return [http.get("/").status_code for _ in range(5)]


def redis_backend(app: AbuseGuard) -> RedisBackend:
    backend = app.guard.backend
    assert isinstance(backend, RedisBackend)
    return backend


def test_the_uri_carries_the_tls_options_to_redis_py(redis_tls_server: RedisTLSServer) -> None:
    backend = RedisBackend.from_uri(tls_uri(redis_tls_server, redis_tls_server.ca_cert))
    client = backend._make_client()
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["ssl_ca_certs"] == str(redis_tls_server.ca_cert)
    assert kwargs["ssl_cert_reqs"] == "required"


def test_limits_live_in_the_tls_redis(redis_tls_server: RedisTLSServer) -> None:
    name = prefix()
    uri = tls_uri(redis_tls_server, redis_tls_server.ca_cert, prefix=name, budget="0.5")
    app = guarded_app(uri)

    assert get_five(app) == [200, 200, 200, 429, 429]
    backend = redis_backend(app)
    assert backend.breaker.state == "closed"

    with redis.Redis.from_url(tls_uri(redis_tls_server, redis_tls_server.ca_cert)) as check:
        keys = sorted(k.decode() for k in check.scan_iter(match=f"{name}:*"))
    assert keys, f"no key under {name}: in the TLS Redis"
    assert any(k.endswith(":b") for k in keys), keys  # the token bucket of 127.0.0.1


def test_the_tls_server_refuses_plain_redis(redis_tls_server: RedisTLSServer) -> None:
    plain = redis.Redis(port=redis_tls_server.port, socket_timeout=CLIENT_TIMEOUT)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()


def test_a_wrong_ca_fails_open(
    redis_tls_server: RedisTLSServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The handshake must get far enough to fail verification: on a loaded machine it can
    # take longer than the default connect timeout (the request budget, 50 ms).
    uri = tls_uri(
        redis_tls_server,
        redis_tls_server.wrong_ca_cert,
        prefix=prefix(),
        socket_connect_timeout="2",
    )
    app = guarded_app(uri)

    with caplog.at_level(logging.WARNING, logger="abuseguard.backends"):
        codes = get_five(app)

    # Fail open (the default): every request gets an answer and none is a 500; the first
    # ones are served on the local verdict, later ones may meet the fallback buckets.
    assert codes[:3] == [200, 200, 200], codes
    assert set(codes) <= {200, 429}, codes
    backend = redis_backend(app)
    assert backend.breaker.state != "closed"
    assert "certificate verify failed" in caplog.text, caplog.text


def test_a_missing_ca_file_fails_open(
    redis_tls_server: RedisTLSServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = guarded_app(tls_uri(redis_tls_server, tmp_path / "absent.crt", prefix=prefix()))

    with caplog.at_level(logging.WARNING, logger="abuseguard.backends"):
        codes = get_five(app)

    assert codes[:3] == [200, 200, 200], codes
    assert set(codes) <= {200, 429}, codes
    assert "No such file or directory" in caplog.text, caplog.text


def test_a_bad_ssl_cert_reqs_fails_at_construction(redis_tls_server: RedisTLSServer) -> None:
    uri = tls_uri(redis_tls_server, redis_tls_server.ca_cert, ssl_cert_reqs="bogus")
    try:
        guarded_app(uri)
    except ConfigError as error:
        assert "ssl_cert_reqs" in str(error)
        return
    raise AssertionError("constructed with ssl_cert_reqs=bogus")


def test_tls_options_on_a_plain_uri_fail_at_construction() -> None:
    with pytest.raises(ConfigError) as excinfo:
        split_backend_uri("redis://127.0.0.1:6379/0?ssl_ca_certs=/tmp/ca.pem")
    assert excinfo.value.field == "RedisBackend.ssl_ca_certs"


def test_passwords_are_redacted_for_logs() -> None:
    assert redacted("redis://:s3cretpw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redacted("rediss://app:pw@cache/1?ssl_cert_reqs=required") == (
        "rediss://app:***@cache/1?ssl_cert_reqs=required"
    )
    assert redacted("redis://cache:6379/0") == "redis://cache:6379/0"
