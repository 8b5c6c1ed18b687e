"""Configuration cannot fail silently: every public configuration object refuses a wrong type
or value at construction with a ConfigError naming the field, and so do backend URIs.

The walk below is generated from the dataclass fields and their annotations, so a field
added later is covered without touching this file.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import math
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import abuseguard
from abuseguard import (
    AbuseGuard,
    Block,
    ConfigError,
    Enforcement,
    Guard,
    NetworkPolicy,
    Policy,
    Quota,
    Scoring,
    TokenBucket,
)
from abuseguard.backends.base import backend_from_uri
from abuseguard.backends.memory import MemoryBackend
from abuseguard.backends.redis import RedisBackend
from abuseguard.testing import serve

# Values a required field gets while another field of its class is under test.
REQUIRED_SAMPLES: dict[str, object] = {
    "TokenBucket.rate": "5/second",
    "Quota.limit": "10/day",
    "Concurrency.limit": 2,
}
# Numeric fields where a negative number is meaningful; every other number must be >= 0.
SIGNED_FIELDS = {"Scoring.bias"}


def _annotation_classes(tp: Any) -> Iterator[type]:
    if get_origin(tp) is collections.abc.Callable:
        return  # a field holding a function: what it returns is not configuration
    if isinstance(tp, type):
        yield tp
    for arg in get_args(tp):
        if not isinstance(arg, list):  # Callable's argument list
            yield from _annotation_classes(arg)


def config_classes() -> list[type]:
    """Every dataclass exported by abuseguard's configuration module, and every dataclass
    any of their fields refers to."""
    found: list[type] = [
        obj
        for name in abuseguard.__all__
        if dataclasses.is_dataclass(obj := getattr(abuseguard, name))
        and isinstance(obj, type)
        and obj.__module__ == "abuseguard.policy"
    ]
    for cls in found:
        for tp in typing.get_type_hints(cls).values():
            for ref in _annotation_classes(tp):
                if dataclasses.is_dataclass(ref) and ref not in found:
                    found.append(ref)
    return found


CLASSES = config_classes()


def test_the_walk_finds_the_configuration_classes() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert names >= {
        "TokenBucket",
        "Quota",
        "Concurrency",
        "AnonymizerRule",
        "NetworkPolicy",
        "Scoring",
        "Enforcement",
        "WebSocketPolicy",
        "FailMode",
        "Policy",
    }


# -- what an annotation lets through, worked out independently of the library -------------

ALL_KINDS = frozenset(
    {"none", "bool", "int", "float", "str", "mapping", "list", "tuple", "callable", "object"}
)


def allowed_kinds(tp: Any) -> frozenset[str]:
    """The kinds of value an annotation admits (by type; ranges are the class's business)."""
    origin = get_origin(tp)
    if tp is Any:
        return ALL_KINDS
    if tp is None or tp is type(None):
        return frozenset({"none"})
    if origin in (Union, types.UnionType):
        return frozenset().union(*(allowed_kinds(arg) for arg in get_args(tp)))
    if origin is Literal:
        return frozenset({"literal"})
    if tp is bool:
        return frozenset({"bool"})
    if tp is int:
        return frozenset({"int"})
    if tp is float:
        return frozenset({"int", "float"})
    if tp is str:
        return frozenset({"str"})
    if origin is tuple:  # a list is read as a tuple
        return frozenset({"tuple", "list"})
    if origin is collections.abc.Iterable:
        return frozenset({"tuple", "list"})
    if origin is collections.abc.Mapping:
        return frozenset({"mapping"})
    if origin is collections.abc.Callable:
        return frozenset({"callable"})
    return frozenset({"object"})


def _callable_sample(info: Any) -> float:
    return 1.0


SCALAR_SAMPLES: list[tuple[str, object]] = [
    ("none", None),
    ("str", "x"),
    ("float", 1.5),
    ("bool", True),
    ("int", 7),
]
CONTAINER_SAMPLES: list[tuple[str, object]] = [
    ("mapping", {}),
    ("list", []),
    ("callable", _callable_sample),
]


def wrong_values(tp: Any, default: object) -> Iterator[tuple[str, object]]:
    """(label, value) pairs that the annotation does not admit, or numbers out of range."""
    kinds = allowed_kinds(tp)
    for kind, value in SCALAR_SAMPLES + CONTAINER_SAMPLES:
        if kind not in kinds:
            yield kind, value
    if "literal" in kinds and "str" not in kinds:
        yield "not a member", "no-such-member"
    if kinds & {"int", "float"}:
        yield "nan", math.nan
        yield "inf", math.inf
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        yield "short tuple", tuple(default)[:-1] if isinstance(default, tuple) else ()
        yield "long tuple", (*default, 1.0) if isinstance(default, tuple) else (1.0,) * 9
        for kind, value in SCALAR_SAMPLES:
            if kind not in allowed_kinds(args[0]):
                rest = tuple(default)[1:] if isinstance(default, tuple) else args[1:]
                yield f"element {kind}", (value, *rest)
    elements: Any = None
    if origin is collections.abc.Iterable or (origin is tuple and args[-1:] == (Ellipsis,)):
        elements = args[0]
    if elements is not None:
        for kind, value in SCALAR_SAMPLES:
            if kind not in allowed_kinds(elements):
                yield f"[{kind}]", [value]
    if origin is collections.abc.Mapping:
        key_type, value_type = args
        if "int" not in allowed_kinds(key_type):
            yield "int key", {1: None}
        key = next(iter(default), "x") if isinstance(default, collections.abc.Mapping) else "x"
        for kind, value in SCALAR_SAMPLES:
            if kind not in allowed_kinds(value_type):
                yield f"value {kind}", {key: value}


def negative_is_wrong(qualified: str, tp: Any) -> bool:
    return qualified not in SIGNED_FIELDS and bool(allowed_kinds(tp) & {"int", "float"})


def settings(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields a user sets (a field(init=False) is derived in __post_init__)."""
    return [f for f in dataclasses.fields(cls) if f.init]


def base_kwargs(cls: type) -> dict[str, object]:
    kwargs: dict[str, object] = {}
    for f in settings(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            qualified = f"{cls.__name__}.{f.name}"
            assert qualified in REQUIRED_SAMPLES, f"add a valid sample for {qualified}"
            kwargs[f.name] = REQUIRED_SAMPLES[qualified]
    return kwargs


def default_of(cls: type, name: str) -> object:
    return getattr(cls(**base_kwargs(cls)), name)


def field_cases() -> Iterator[Any]:
    for cls in CLASSES:
        hints = typing.get_type_hints(cls)
        for f in settings(cls):
            qualified = f"{cls.__name__}.{f.name}"
            tp = hints[f.name]
            default = default_of(cls, f.name)
            cases = list(wrong_values(tp, default))
            if negative_is_wrong(qualified, tp):
                cases.append(("negative", -1))
            for label, value in cases:
                yield pytest.param(cls, f.name, value, id=f"{qualified}={label}")


def assert_names(error: ConfigError, qualified: str) -> None:
    assert error.field == qualified or error.field.startswith(qualified + "["), (
        f"{error.field!r} does not name {qualified}"
    )
    assert qualified in str(error)


@pytest.mark.parametrize(("cls", "name", "value"), list(field_cases()))
def test_every_field_refuses_a_wrong_type_naming_the_field(
    cls: type, name: str, value: object
) -> None:
    kwargs = {**base_kwargs(cls), name: value}
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert_names(info.value, f"{cls.__name__}.{name}")


def accepted_values(tp: Any, default: object) -> Iterator[tuple[str, object]]:
    """Values the annotation admits that every such field must take."""
    kinds = allowed_kinds(tp)
    if "none" in kinds:
        yield "None", None
    if "bool" in kinds:
        yield "True", True
        yield "False", False
    for arg in [tp, *get_args(tp)]:
        if get_origin(arg) is Literal:
            for member in get_args(arg):
                yield repr(member), member
    if isinstance(default, float) and default.is_integer() and "int" in kinds:
        yield "int", int(default)
    if isinstance(default, tuple) and "list" in kinds:
        yield "list", list(default)


def accept_cases() -> Iterator[Any]:
    for cls in CLASSES:
        hints = typing.get_type_hints(cls)
        for f in settings(cls):
            default = default_of(cls, f.name)
            for label, value in accepted_values(hints[f.name], default):
                yield pytest.param(cls, f.name, value, id=f"{cls.__name__}.{f.name}={label}")


@pytest.mark.parametrize(("cls", "name", "value"), list(accept_cases()))
def test_a_value_the_annotation_admits_is_accepted(cls: type, name: str, value: object) -> None:
    cls(**{**base_kwargs(cls), name: value})


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_replace_rebuilds_every_class_from_its_normalized_fields(cls: type) -> None:
    instance = cls(**base_kwargs(cls))
    assert dataclasses.replace(instance) == instance


def test_replace_rebuilds_a_populated_policy() -> None:
    policy = Policy(
        quotas=[Quota("10/day")],  # type: ignore[arg-type]
        concurrency=3,
        trusted_proxies=["10.0.0.0/8", "::1/128"],
        network=NetworkPolicy(
            allow_cidrs=["192.0.2.0/24"], anonymizers={"tor": "block"}, deny_countries=["kp"]
        ),
        enforcement=Enforcement(ladder=((0.5, "log"), (0.9, "block")), ban_at="block"),
        exempt_paths=["/health"],  # type: ignore[arg-type]
    )
    again = dataclasses.replace(policy, shadow=True)
    assert again.trusted_proxies == policy.trusted_proxies and again.shadow


@dataclasses.dataclass(frozen=True)
class ScoringWithANewField(Scoring):
    """What another change adding a field looks like: no validation code of its own."""

    content_read_timeout: float = 1.0


@pytest.mark.parametrize("value", ["slow", None, True, -1.0, math.nan, [1.0]])
def test_a_field_added_without_its_own_checks_is_checked(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        ScoringWithANewField(content_read_timeout=value)  # type: ignore[arg-type]
    assert info.value.field == "ScoringWithANewField.content_read_timeout"
    assert ScoringWithANewField(content_read_timeout=2).content_read_timeout == 2


# -- the named cases of the issue -----------------------------------------------------------


async def _app(scope: Any, receive: Any, send: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Policy(shadow="yes"), "Policy.shadow"),
        (lambda: Policy(secret=123), "Policy.secret"),
        (lambda: Policy(secret=None), "Policy.secret"),
        (lambda: TokenBucket("5/second", cost_header=5), "TokenBucket.cost_header"),
        (lambda: Policy(trusted_proxies="10.0.0.0/8"), "Policy.trusted_proxies"),
        (lambda: Policy(trusted_proxies=None), "Policy.trusted_proxies"),
        (lambda: Policy(ipv6_prefix="64"), "Policy.ipv6_prefix"),
        (lambda: NetworkPolicy(databases={"asn": 123}), "NetworkPolicy.databases"),
        (lambda: Scoring(content_max_bytes=1.5), "Scoring.content_max_bytes"),
        (lambda: Policy(max_identities=1e12), "Policy.max_identities"),
        (lambda: Policy(max_identities=10**12), "Policy.max_identities"),
        (lambda: TokenBucket("5/second;100/minute"), "TokenBucket.rate"),
        (lambda: Quota("5/second;100/minute"), "Quota.limit"),
        (lambda: Guard(observers=5), "observers"),
        (lambda: Guard(observers=[5]), "observers"),
        (lambda: Guard(intel="GeoLite2-ASN.mmdb"), "intel"),
        (lambda: Guard(explain="no"), "explain"),
        (lambda: Guard(clock=5), "clock"),
        (lambda: AbuseGuard(_app, fail_open="no"), "fail_open"),
        (lambda: AbuseGuard(_app, observers=5), "observers"),
        (lambda: AbuseGuard(_app, enforcers={"explode": Block()}), "enforcers"),
        (lambda: AbuseGuard(_app, enforcers={"block": "403"}), "enforcers"),
        (lambda: AbuseGuard(_app, enforcers=["block"]), "enforcers"),
    ],
)
def test_named_wrong_configurations_raise_config_error(build: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert_names(info.value, field)


def test_several_limits_in_one_rate_point_to_quotas() -> None:
    with pytest.raises(ConfigError, match="one rate") as info:
        TokenBucket("5/second;100/minute")
    assert "Quota" in info.value.problem
    with pytest.raises(ConfigError, match="one limit"):
        Quota("5/second,100/minute")


def test_trusted_proxies_as_one_string_says_to_use_a_list() -> None:
    with pytest.raises(ConfigError, match="not a single str"):
        Policy(trusted_proxies="10.0.0.0/8")


def test_max_identities_has_a_ceiling_and_a_floor() -> None:
    assert Policy(max_identities=10_000_000).max_identities == 10_000_000
    with pytest.raises(ConfigError, match="10000000"):
        Policy(max_identities=10_000_001)


def test_a_generator_is_read_once_and_kept() -> None:
    policy = Policy(trusted_proxies=(cidr for cidr in ["10.0.0.0/8"]))
    assert [str(net) for net in policy.trusted_proxies] == ["10.0.0.0/8"]  # type: ignore[attr-defined]


# -- backend URIs ---------------------------------------------------------------------------

URI_BASES = [
    "redis://127.0.0.1:6379/0",
    "rediss://127.0.0.1:6379/0",
    "redis+cluster://127.0.0.1:7000",
    "rediss+cluster://127.0.0.1:7000",
    "unix:///tmp/redis.sock",
]


@pytest.mark.parametrize("base", URI_BASES)
def test_an_unknown_uri_option_is_refused_naming_it(base: str) -> None:
    with pytest.raises(ConfigError, match="budget") as info:
        backend_from_uri(f"{base}?budgett=0.02")
    assert info.value.field == "RedisBackend.budgett"


@pytest.mark.parametrize("base", URI_BASES)
@pytest.mark.parametrize(
    "option", ["socket_timeout", "socket_connect_timeout", "timeout", "health_check_interval"]
)
def test_a_negative_timeout_is_refused(base: str, option: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_uri(f"{base}?{option}=-1")
    assert info.value.field == f"RedisBackend.{option}"


@pytest.mark.parametrize(
    "uri",
    [
        "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:0/0",
        "redis://127.0.0.1:port/0",
        "rediss://127.0.0.1:70000/0",
        "redis+cluster://127.0.0.1:65536",
        "rediss+cluster://127.0.0.1:-1",
    ],
)
def test_a_bad_port_is_refused(uri: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_uri(uri)
    assert info.value.field == "RedisBackend.port"


@pytest.mark.parametrize(
    ("uri", "field"),
    [
        (
            "redis://127.0.0.1:6379/0?health_check_interval=soon",
            "RedisBackend.health_check_interval",
        ),
        ("redis://127.0.0.1:6379/0?db=zero", "RedisBackend.db"),
        ("redis://127.0.0.1:6379/0?socket_keepalive=maybe", "RedisBackend.socket_keepalive"),
        ("redis://127.0.0.1:6379/0?protocol=9", "RedisBackend.protocol"),
        ("redis://127.0.0.1:6379/0?max_connections=-3", "RedisBackend.max_connections"),
        ("redis://127.0.0.1:6379/x", "RedisBackend.db"),
        (
            "redis+cluster://127.0.0.1:7000?read_from_replicas=perhaps",
            "RedisBackend.read_from_replicas",
        ),
    ],
)
def test_a_bad_redis_py_option_value_is_refused(uri: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_uri(uri)
    assert info.value.field == field


def test_known_redis_py_options_still_reach_redis_py() -> None:
    backend = backend_from_uri(
        "redis://127.0.0.1:6379/1?health_check_interval=5&client_name=api&socket_keepalive=true"
    )
    assert isinstance(backend, RedisBackend)
    assert backend.url == (
        "redis://127.0.0.1:6379/1?health_check_interval=5&client_name=api&socket_keepalive=true"
    )
    tls = backend_from_uri("rediss://127.0.0.1:6380/0?ssl_check_hostname=false&ssl_min_version=3")
    assert isinstance(tls, RedisBackend)


@pytest.mark.parametrize(
    ("uri", "field"),
    [
        ("memory://?budget=0.02", "MemoryBackend.budget"),
        ("memory://?max_keys=many", "MemoryBackend.max_keys"),
        ("memory://?max_keys=0", "MemoryBackend.max_keys"),
        ("memory://localhost:6379", "MemoryBackend.uri"),
        ("memory:///state", "MemoryBackend.uri"),
    ],
)
def test_memory_uri_refuses_what_it_cannot_use(uri: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        backend_from_uri(uri)
    assert info.value.field == field


def test_memory_uri_takes_max_keys() -> None:
    backend = backend_from_uri("memory://?max_keys=1000")
    assert isinstance(backend, MemoryBackend) and backend.max_keys == 1000
    assert isinstance(backend_from_uri("memory://"), MemoryBackend)


def test_a_typo_in_a_redis_uri_no_longer_serves_unlimited(redis_server: Any) -> None:
    """The typo used to construct; redis-py then raised TypeError on the first request, the
    guard took it for an outage and failed open. Now it stops the app from being built,
    and the URI without the typo limits over real HTTP against the real Redis."""
    with pytest.raises(ConfigError, match="budgett"):
        limited_app(f"{redis_server.url}?budgett=0.02&prefix=typo")
    app = limited_app(f"{redis_server.url}?budget=0.5&prefix=typo&health_check_interval=5")
    with serve(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        codes = [http.get("/").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes


# -- the startup line -----------------------------------------------------------------------


def limited_app(backend: str = "memory://", **policy: Any) -> AbuseGuard:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    options: dict[str, Any] = {"bucket": TokenBucket("1/minute", burst=3), "scoring": None}
    return AbuseGuard(
        Starlette(routes=[Route("/", ok)]), policy=Policy(**{**options, **policy}), backend=backend
    )


def _startup_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "abuseguard" and r.getMessage().startswith("abuseguard policy:")
    ]


def test_startup_logs_the_effective_policy_once(caplog: pytest.LogCaptureFixture) -> None:
    app = limited_app(
        quotas=(Quota("1000/day", name="daily"),),
        trusted_proxies=("10.0.0.0/8",),
        secret="s3cr3t-value",
        enforcement=Enforcement(shadow=True),
    )
    with (
        caplog.at_level(logging.INFO, logger="abuseguard"),
        serve(app) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        assert http.get("/").status_code == 200
        assert http.get("/").status_code == 200
    records = _startup_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    line = records[0].getMessage()
    assert records[0].levelno == logging.INFO
    for part in (
        "backend=memory",
        "bucket=default:1/60s burst=3",
        "quotas=daily:1000/86400s",
        "ladder=shadow",
        "trusted_proxies=10.0.0.0/8",
        "secret=set",
    ):
        assert part in line, line
    assert "s3cr3t-value" not in caplog.text
    assert "empty secret" not in caplog.text


def test_startup_warns_once_when_the_secret_is_empty(caplog: pytest.LogCaptureFixture) -> None:
    app = limited_app()
    with (
        caplog.at_level(logging.INFO, logger="abuseguard"),
        serve(app) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        assert http.get("/", headers={"x-api-key": "k1"}).status_code == 200
        assert http.get("/", headers={"x-api-key": "k2"}).status_code == 200
    warnings = [r for r in caplog.records if "empty secret" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "set Policy(secret=...)" in warnings[0].getMessage()
    line = _startup_records(caplog)[0].getMessage()
    assert "secret=empty" in line and "ladder=log@0.5,delay@0.6" in line, line
    assert "trusted_proxies=none" in line and "quotas=none" in line


def test_startup_line_names_the_redis_mode(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = limited_app(f"{redis_server.url}?mode=synced&prefix=startline", secret="x")
    with (
        caplog.at_level(logging.INFO, logger="abuseguard"),
        serve(app) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        assert http.get("/").status_code == 200
    line = _startup_records(caplog)[0].getMessage()
    assert "backend=redis mode=synced" in line, line
