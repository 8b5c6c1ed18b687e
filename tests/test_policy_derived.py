"""Values the policy classes derive in __post_init__ live in declared private fields
(``field(init=False)``): not settings, not compared, not in the reference."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Network, IPv6Network

import pytest

from abuseguard import ConfigError, FailMode, Policy, Quota, TokenBucket
from abuseguard.config_check import check_fields


def test_derived_fields_are_declared_but_are_no_settings() -> None:
    derived = {
        cls.__name__: sorted(f.name for f in dataclasses.fields(cls) if not f.init)
        for cls in (TokenBucket, Quota, FailMode, Policy)
    }
    assert derived == {
        "TokenBucket": ["_capacity", "_per_second"],
        "Quota": ["_amount", "_window"],
        "FailMode": ["_rules"],
        "Policy": [],
    }
    bucket = TokenBucket("100/minute", burst=20)
    assert (bucket.per_second, bucket.capacity) == (100 / 60, 20.0)
    assert "_per_second" not in repr(bucket)
    quota = Quota("1000/day")
    assert (quota.amount, quota.window, quota.name) == (1000, 86400.0, "quota-1000-86400s")


def test_derived_fields_take_no_part_in_equality() -> None:
    a, b = TokenBucket("5/second"), TokenBucket("5/second")
    assert a == b and hash(a) == hash(b)
    assert FailMode(routes={"/v1/admin": False}) == FailMode(routes={"/v1/admin": False})


def test_check_fields_checks_the_settings_only() -> None:
    bucket = TokenBucket("5/second")
    check_fields(bucket)  # the derived floats are not read against an annotation
    with pytest.raises(ConfigError, match=r"TokenBucket\.burst"):
        TokenBucket("5/second", burst=-1)


def test_trusted_networks_are_the_parsed_trusted_proxies() -> None:
    policy = Policy(trusted_proxies=["10.0.0.0/8", IPv6Network("2001:db8::/32")])
    assert policy.trusted_networks == (IPv4Network("10.0.0.0/8"), IPv6Network("2001:db8::/32"))
    assert policy.trusted_networks == policy.trusted_proxies
    assert Policy().trusted_networks == ()


def test_a_policy_is_rebuilt_from_its_attributes() -> None:
    policy = Policy(trusted_proxies=["10.0.0.0/8"], concurrency=2)
    assert Policy(**{**vars(policy), "scoring": None}).trusted_proxies == policy.trusted_proxies
