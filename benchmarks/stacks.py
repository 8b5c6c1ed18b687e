"""The application stacks compared by the ASGI and HTTP benchmarks.

Every stack serves the same two trivial endpoints: ``GET /`` answers ``ok``, and
``POST /v1/chat/completions`` reads the request body (a chat prompt) and answers ``ok``. The
endpoint counts the guard's decisions it sees (``none`` where no guard runs; a plain allow
without building its Decision, as in an app that never reads it), the same work in every
stack, so a run can prove that nothing was degraded or delayed. Limits are set so high that
nothing is throttled (``generous=True``); ``generous=False`` sets tiny limits so a
self-check can prove each limiter really is in the path (the second request gets 429).

Middleware is added the way users add it (``app.add_middleware``), inside Starlette's own
error middleware. fastapi-limiter is a FastAPI dependency, so it is compared with a bare
FastAPI app as well as with the bare Starlette app. ``limits-asgi`` and ``throttled-asgi``
are what a careful user writes by hand: a pure-ASGI middleware over `limits` or throttled-py
(fixed window per API key, one pass over the headers, one premade header added).
"""

from __future__ import annotations

import collections
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from abuseguard import AbuseGuard, NetworkPolicy, Policy, Scoring, TokenBucket, current_decision
from abuseguard.enforce import DECISION_STATE_KEY

ASGIApp = Any

STACKS: tuple[str, ...] = (
    "bare",
    "noop",
    "abuseguard-memory",
    "abuseguard-memory-proxied",
    "abuseguard-redis",
    "abuseguard-redis-proxied",
    "abuseguard-redis-synced",
    "abuseguard-redis-synced-proxied",
    "slowapi-memory",
    "slowapi-redis",
    "limits-asgi",
    "throttled-asgi",
    "fastapi-bare",
    "fastapi-limiter-memory",
    "fastapi-limiter-redis",
)

# What each stack's overhead is measured against.
BASELINE: dict[str, str] = {
    name: ("fastapi-bare" if name.startswith("fastapi-limiter") else "bare") for name in STACKS
}

GENEROUS_PER_SECOND = 1_000_000

SEEN: collections.Counter[str] = collections.Counter()


class WarmUpClock:
    """Wall time plus an offset that only grows: a warm-up moves it on after each request,
    as if its clients had arrived over minutes, so that they are the known, accepted
    customers of a running service when the measurement starts (not 10,000 new keys in
    one second, which the unverified-key budgets of one network rightly refuse)."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass(frozen=True, slots=True)
class StackConfig:
    redis_url: str | None = None
    mmdb_dir: Path | None = None
    generous: bool = True
    clock: WarmUpClock | None = None  # the memory-backend guards' clock (Redis keeps its own)


def needs_redis(name: str) -> bool:
    return "-redis" in name


def is_proxied(name: str) -> bool:
    """Stacks that sit behind a trusted proxy: the peer is loopback, the client in XFF."""
    return name.endswith("-proxied")


def redis_backend_exists() -> bool:
    return importlib.util.find_spec("abuseguard.backends.redis") is not None


def unavailable_reason(name: str, config: StackConfig) -> str | None:
    """Why ``name`` cannot run here, or None."""
    if needs_redis(name) and config.redis_url is None:
        return "no redis-server on this machine"
    if name.startswith("abuseguard-redis") and not redis_backend_exists():
        return "abuseguard.backends.redis (RedisBackend) does not exist yet"
    if name == "throttled-asgi" and importlib.util.find_spec("throttled") is None:
        return "throttled-py is not installed (pip install '.[bench]')"
    return None


# ----------------------------------------------------------------------------- endpoint


def _seen(request: Request) -> None:
    # Most apps never read the decision, and then the guard never builds one for a plain
    # allow (it leaves a PlainAllow tuple in the state). Counting that tuple as an allow
    # keeps the check that nothing was refused or shadowed without adding the cost of
    # building a Decision the app would not have asked for.
    if isinstance(request.scope.get("state", {}).get(DECISION_STATE_KEY), tuple):
        SEEN["allow"] += 1
        return
    decision = current_decision(request)
    if decision is None:
        SEEN["none"] += 1
    elif decision.action.value == "allow":
        SEEN["allow"] += 1
    else:
        shadow = " (shadow)" if decision.shadow else ""
        SEEN[f"{decision.action.value}{shadow}: {'+'.join(decision.reasons)}"] += 1


async def index(request: Request) -> Response:
    _seen(request)
    return PlainTextResponse("ok")


async def chat(request: Request) -> Response:
    _seen(request)
    await request.body()
    return PlainTextResponse("ok")


async def stats(request: Request) -> Response:
    return JSONResponse(dict(SEEN))


CHAT_PATH = "/v1/chat/completions"


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", index),
            Route(CHAT_PATH, chat, methods=["POST"]),
            Route("/__stats", stats),
        ]
    )


class NoopMiddleware:
    """The cheapest pure-ASGI middleware: the floor any middleware pays."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- by hand

_TOO_MANY_START = {
    "type": "http.response.start",
    "status": 429,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"17")],
}
_TOO_MANY_BODY = {"type": "http.response.body", "body": b"too many requests"}


def _api_key(scope: Any) -> bytes:
    """The Authorization header (one pass over the headers), else the peer address."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    client = scope.get("client")
    return client[0].encode() if client else b""


class _KeyedLimitMiddleware:
    """A pure-ASGI limiter as a careful user writes one: the key from one header scan, one
    fixed-window hit, 429 when refused, one premade header on the answer."""

    header = (b"ratelimit-policy", f"{GENEROUS_PER_SECOND};w=1".encode())

    def __init__(self, app: ASGIApp, generous: bool = True) -> None:
        self.app = app

    async def allowed(self, key: bytes) -> bool:
        raise NotImplementedError

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not await self.allowed(_api_key(scope)):
            await send(_TOO_MANY_START)
            await send(_TOO_MANY_BODY)
            return
        header = self.header

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_header)


class LimitsMiddleware(_KeyedLimitMiddleware):
    """Over `limits`: the synchronous fixed-window limiter on its memory storage (it never
    blocks, so an async middleware may call it directly)."""

    def __init__(self, app: ASGIApp, generous: bool = True) -> None:
        from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter

        super().__init__(app)
        self.limiter = FixedWindowRateLimiter(MemoryStorage())
        self.item = (
            RateLimitItemPerSecond(GENEROUS_PER_SECOND) if generous else RateLimitItemPerMinute(1)
        )

    async def allowed(self, key: bytes) -> bool:
        return bool(self.limiter.hit(self.item, key.decode("latin-1")))


class ThrottledMiddleware(_KeyedLimitMiddleware):
    """Over throttled-py's asyncio API: fixed window, its memory store sized for every
    client of the run (its default keeps 1,024 keys)."""

    def __init__(self, app: ASGIApp, generous: bool = True) -> None:
        from throttled.asyncio import MemoryStore, Throttled, per_min, per_sec

        super().__init__(app)
        self.throttle = Throttled(
            using="fixed_window",
            quota=per_sec(GENEROUS_PER_SECOND) if generous else per_min(1),
            store=MemoryStore(options={"MAX_SIZE": 1 << 21}),
        )

    async def allowed(self, key: bytes) -> bool:
        result = await self.throttle.limit(key.decode("latin-1"))
        return not result.limited


def by_hand_stack(config: StackConfig, middleware: type[_KeyedLimitMiddleware]) -> ASGIApp:
    app = starlette_app()
    app.add_middleware(middleware, generous=config.generous)
    return app


# ----------------------------------------------------------------------------- abuseguard


def abuseguard_policy(generous: bool, *, proxied: bool = False) -> Policy:
    """Scoring on, a per-key bucket and a per-IP network bucket; ``proxied``: loopback is a
    trusted proxy whose X-Forwarded-For names the client."""
    if generous:
        bucket = TokenBucket(f"{GENEROUS_PER_SECOND}/second", burst=GENEROUS_PER_SECOND)
    else:
        bucket = TokenBucket("1/minute", burst=1)
    return Policy(
        bucket=bucket,
        network=NetworkPolicy(per_ip=bucket),
        scoring=Scoring(),
        trusted_proxies=("127.0.0.1/32", "::1/128") if proxied else (),
    )


def _intel(config: StackConfig) -> Any:
    if config.mmdb_dir is None:
        return None
    from benchlib import open_world

    return open_world(config.mmdb_dir)


def abuseguard_stack(config: StackConfig, backend: str | None, *, proxied: bool) -> ASGIApp:
    app = starlette_app()
    app.add_middleware(
        AbuseGuard,
        policy=abuseguard_policy(config.generous, proxied=proxied),
        backend=backend,
        intel=_intel(config),
        clock=config.clock if backend == "memory://" else None,
    )
    return app


def synced_uri(redis_url: str | None) -> str:
    """The Redis backend in synced mode: local decisions, deltas merged every 10 ms."""
    url = str(redis_url)
    return url + ("&" if "?" in url else "?") + "mode=synced&sync_interval=0.01"


# ----------------------------------------------------------------------------- slowapi


def slowapi_stack(config: StackConfig, storage_uri: str) -> ASGIApp:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    rate = f"{GENEROUS_PER_SECOND}/second" if config.generous else "1/minute"
    limiter = Limiter(key_func=get_remote_address, default_limits=[rate], storage_uri=storage_uri)
    app = starlette_app()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIASGIMiddleware)
    return app


# ----------------------------------------------------------------------------- FastAPI


def fastapi_app(dependencies: list[Any] | None = None) -> ASGIApp:
    from fastapi import FastAPI

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def root(request: FastAPIRequest) -> Response:
        _seen(request)
        return PlainTextResponse("ok")

    async def chat_root(request: FastAPIRequest) -> Response:
        _seen(request)
        await request.body()
        return PlainTextResponse("ok")

    app.add_api_route("/", root, methods=["GET"], dependencies=dependencies)
    app.add_api_route(CHAT_PATH, chat_root, methods=["POST"], dependencies=dependencies)
    app.add_api_route("/__stats", stats, methods=["GET"])
    return app


def fastapi_limiter_stack(config: StackConfig, redis_url: str | None) -> ASGIApp:
    from fastapi import Depends
    from fastapi_limiter.depends import RateLimiter
    from pyrate_limiter import Duration, Limiter, Rate

    rate = (
        Rate(GENEROUS_PER_SECOND, Duration.SECOND) if config.generous else Rate(1, Duration.MINUTE)
    )
    if redis_url is None:
        limiter = Limiter(rate)
    else:
        import redis
        import redis.asyncio
        from pyrate_limiter import RedisBucket
        from pyrate_limiter.buckets.redis_bucket import LuaScript

        # RedisBucket.init() is a coroutine with an async client: load the script with a
        # synchronous client instead, so the app can be built outside an event loop.
        with redis.Redis.from_url(redis_url) as sync_client:
            script_hash = sync_client.script_load(LuaScript.PUT_ITEM)
        bucket = RedisBucket(
            [rate], redis.asyncio.Redis.from_url(redis_url), "fastapi-limiter-bench", script_hash
        )
        limiter = Limiter(bucket)
    return fastapi_app([Depends(RateLimiter(limiter=limiter))])


# ----------------------------------------------------------------------------- registry


def build(name: str, config: StackConfig) -> ASGIApp:
    """The ASGI app of stack ``name``."""
    reason = unavailable_reason(name, config)
    if reason is not None:
        raise RuntimeError(f"stack {name!r} is unavailable: {reason}")
    builders: dict[str, Callable[[], ASGIApp]] = {
        "bare": starlette_app,
        "noop": lambda: _with_noop(),
        "abuseguard-memory": lambda: abuseguard_stack(config, "memory://", proxied=False),
        "abuseguard-memory-proxied": lambda: abuseguard_stack(config, "memory://", proxied=True),
        "abuseguard-redis": lambda: abuseguard_stack(config, config.redis_url, proxied=False),
        "abuseguard-redis-proxied": lambda: abuseguard_stack(
            config, config.redis_url, proxied=True
        ),
        "abuseguard-redis-synced": lambda: abuseguard_stack(
            config, synced_uri(config.redis_url), proxied=False
        ),
        "abuseguard-redis-synced-proxied": lambda: abuseguard_stack(
            config, synced_uri(config.redis_url), proxied=True
        ),
        "slowapi-memory": lambda: slowapi_stack(config, "memory://"),
        "slowapi-redis": lambda: slowapi_stack(config, str(config.redis_url)),
        "limits-asgi": lambda: by_hand_stack(config, LimitsMiddleware),
        "throttled-asgi": lambda: by_hand_stack(config, ThrottledMiddleware),
        "fastapi-bare": lambda: fastapi_app(),
        "fastapi-limiter-memory": lambda: fastapi_limiter_stack(config, None),
        "fastapi-limiter-redis": lambda: fastapi_limiter_stack(config, config.redis_url),
    }
    if name not in builders:
        raise ValueError(f"unknown stack {name!r}; choose from {', '.join(STACKS)}")
    return builders[name]()


def _with_noop() -> ASGIApp:
    app = starlette_app()
    app.add_middleware(NoopMiddleware)
    return app
