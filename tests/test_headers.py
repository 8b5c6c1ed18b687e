"""RateLimit headers: the one-policy fast path (formatted once per value, then looked up)
says exactly what the generic formatter says, for any remaining count and reset time."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from abuseguard import headers
from abuseguard.decision import Action, Decision, PolicyState
from abuseguard.headers import rate_limit_headers, ratelimit_policy_value, ratelimit_value


def decision(*policies: PolicyState) -> Decision:
    return Decision(Action.ALLOW, (), 0.0, None, None, False, "k:x", (), policies, 1.0)


seconds = st.floats(min_value=-10.0, max_value=1e7, allow_nan=False)
tokens = st.floats(min_value=-1e6, max_value=1e9, allow_nan=False)


@given(remaining=tokens, reset=seconds, quota=st.integers(1, 10**9))
def test_one_policy_matches_the_generic_formatter(
    remaining: float, reset: float, quota: int
) -> None:
    state = PolicyState("default", float(quota), 60.0, remaining, reset)
    expected = [
        (b"ratelimit-policy", ratelimit_policy_value([state]).encode()),
        (b"ratelimit", ratelimit_value([state]).encode()),
    ]
    assert rate_limit_headers(decision(state)) == expected
    assert rate_limit_headers(decision(state)) == expected  # the second time from the cache


def test_values_are_exact_at_the_edges() -> None:
    cases = [
        (0.0, 0.0, b'"default";r=0;t=0'),
        (-3.5, -1.0, b'"default";r=0;t=0'),  # a debt and a past reset read as 0
        (2.999, 0.2, b'"default";r=2;t=1'),  # tokens round down, seconds up
        (7.0, 3.0000000001, b'"default";r=7;t=3'),  # float noise does not add a second
    ]
    for remaining, reset, value in cases:
        state = PolicyState("default", 10.0, 1.0, remaining, reset)
        assert dict(rate_limit_headers(decision(state)))[b"ratelimit"] == value


def test_the_value_cache_stays_bounded() -> None:
    for remaining in range(10_000):
        state = PolicyState("default", 1e6, 1.0, float(remaining), 1.0)
        value = dict(rate_limit_headers(decision(state)))[b"ratelimit"]
        assert value == b'"default";r=%d;t=1' % remaining
    assert len(headers._VALUES) <= 4096


def test_several_policies_take_the_generic_path() -> None:
    a = PolicyState("default", 10.0, 1.0, 4.0, 0.5)
    b = PolicyState("quota-100-86400s", 100.0, 86400.0, 99.0, math.pi)
    out = dict(rate_limit_headers(decision(a, b)))
    assert out[b"ratelimit"] == b'"default";r=4;t=1, "quota-100-86400s";r=99;t=4'
    assert out[b"ratelimit-policy"] == b'"default";q=10;w=1, "quota-100-86400s";q=100;w=86400'


@given(remaining=tokens, reset=seconds, quota=st.integers(1, 10**9), window=seconds)
def test_the_prebuilt_header_items_say_what_the_generic_formatter_says(
    remaining: float, reset: float, quota: int, window: float
) -> None:
    """The served response's headers come prebuilt per (policy, remaining, reset): the same
    items as the generic formatter, and the same tuple again for the same values."""
    state = PolicyState("default", float(quota), max(window, 1.0), remaining, reset)
    expected = (
        (b"ratelimit-policy", ratelimit_policy_value([state]).encode()),
        (b"ratelimit", ratelimit_value([state]).encode()),
    )
    first = headers.rate_limit_header_items(decision(state))
    assert first == expected
    assert headers.rate_limit_header_items(decision(state)) is first
    twin = PolicyState("default", float(quota), max(window, 1.0), remaining, reset)
    assert headers.rate_limit_header_items(decision(twin)) is first


def test_prebuilt_items_for_several_policies_or_legacy_headers_are_the_generic_ones() -> None:
    a = PolicyState("default", 10.0, 60.0, 3.0, 12.5)
    b = PolicyState("quota", 1000.0, 86400.0, 999.0, 400.0)
    assert headers.rate_limit_header_items(decision(a, b)) == tuple(
        rate_limit_headers(decision(a, b))
    )
    assert headers.rate_limit_header_items(decision(a), legacy=True) == tuple(
        rate_limit_headers(decision(a), legacy=True)
    )
    assert headers.rate_limit_header_items(decision()) == ()


def test_the_prebuilt_items_stay_bounded() -> None:
    for remaining in range(5000):
        headers.rate_limit_header_items(decision(PolicyState("default", 1e9, 60.0, remaining, 0)))
    assert len(headers._ITEMS) <= 4096
