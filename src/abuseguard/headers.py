"""Response headers and bodies: RateLimit / RateLimit-Policy, Retry-After, problem+json.

RateLimit-Policy and RateLimit follow draft-ietf-httpapi-ratelimit-headers-11 (Structured
Field lists of items named after each policy)::

    RateLimit-Policy: "default";q=10;w=2, "quota-10000-86400s";q=10000;w=86400
    RateLimit: "default";r=3;t=1, "quota-10000-86400s";r=9876;t=41000

``q`` is the quota and ``w`` the window in seconds; ``r`` what remains and ``t`` the
seconds until the quota is fully restored. Retry-After is sent only with 429 and 503.
Error bodies are ``application/problem+json`` (RFC 9457).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from http import HTTPStatus

from abuseguard.decision import (
    LIMIT_REASONS,
    Decision,
    PlainAllow,
    PolicyState,
    plain_allow_decision,
)


def _int_up(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))


def _sf_string(name: str) -> str:
    # Policy names are validated to [A-Za-z0-9_-], so no escaping is needed; be safe anyway.
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ratelimit_policy_value(policies: Iterable[PolicyState]) -> str:
    return ", ".join(
        f"{_sf_string(p.name)};q={max(0, math.floor(p.quota))};w={max(1, _int_up(p.window))}"
        for p in policies
    )


def ratelimit_value(policies: Iterable[PolicyState]) -> str:
    return ", ".join(
        f"{_sf_string(p.name)};r={max(0, math.floor(p.remaining))};t={_int_up(p.reset)}"
        for p in policies
    )


def retry_after_value(seconds: float | None) -> str:
    return str(max(1, _int_up(seconds or 0.0)))


_POLICY_VALUES: dict[object, bytes] = {}
# RateLimit values of one policy by (name, remaining, reset): few distinct ones repeat
# (a bucket's remaining tokens and refill seconds are small integers), and a dict lookup
# costs less than formatting.
_VALUES: dict[tuple[str, int, int], bytes] = {}


def _policy_value(policies: tuple[PolicyState, ...]) -> bytes:
    """The RateLimit-Policy value; it only changes with the configuration: formatted once
    per shape (one policy, the common case, is keyed without building nested tuples)."""
    if len(policies) == 1:
        p = policies[0]
        shape: object = (p.name, p.quota, p.window)
    else:
        shape = tuple((p.name, p.quota, p.window) for p in policies)
    value = _POLICY_VALUES.get(shape)
    if value is None:
        value = ratelimit_policy_value(policies).encode("latin-1")
        if len(_POLICY_VALUES) < 1024:
            _POLICY_VALUES[shape] = value
    return value


HeaderItems = tuple[tuple[bytes, bytes], ...]
# The whole RateLimit-Policy and RateLimit pair of one policy by (name, quota, window,
# remaining, reset), as the response of a plain allow carries it: a served request's
# headers are one lookup, no formatting and no list (callers copy the items, never
# change them).
_ITEMS: dict[tuple[str, float, float, int, int], HeaderItems] = {}


def rate_limit_header_items(decision: Decision, *, legacy: bool = False) -> HeaderItems:
    """`rate_limit_headers` as a tuple, prebuilt per (policy, remaining, reset) for one
    policy without the legacy headers (the common answer): not to be changed."""
    policies = decision.policies
    if len(policies) != 1 or legacy:
        return tuple(rate_limit_headers(decision, legacy=legacy))
    p = policies[0]
    remaining = int(p.remaining) if p.remaining > 0 else 0
    reset = math.ceil(p.reset - 1e-9)
    key = (p.name, p.quota, p.window, remaining, reset if reset > 0 else 0)
    items = _ITEMS.get(key)
    if items is None:
        items = tuple(rate_limit_headers(decision))
        if len(_ITEMS) >= 4096:
            _ITEMS.clear()
        _ITEMS[key] = items
    return items


def plain_allow_header_items(plain: PlainAllow) -> HeaderItems:
    """`rate_limit_header_items` of ``plain``'s Decision (no legacy headers), without
    building it: one lookup in the same prebuilt items."""
    bucket = plain[5]
    if bucket is None:
        return ()
    remaining = plain[2]
    reset = math.ceil(plain[3] - 1e-9)
    key = (
        bucket[0], bucket[1], bucket[2], int(remaining) if remaining > 0 else 0,
        reset if reset > 0 else 0,
    )  # fmt: skip
    items = _ITEMS.get(key)
    if items is None:
        items = rate_limit_header_items(plain_allow_decision(plain))
    return items


def rate_limit_headers(decision: Decision, *, legacy: bool = False) -> list[tuple[bytes, bytes]]:
    """RateLimit-Policy and RateLimit (and optionally X-RateLimit-*) for a decision."""
    policies = decision.policies
    if not policies:
        return []
    policy_value = _policy_value(policies)
    if len(policies) == 1:  # the common case, formatted without the generic path
        p = policies[0]
        remaining = int(p.remaining) if p.remaining > 0 else 0
        reset = math.ceil(p.reset - 1e-9)
        shape = (p.name, remaining, reset if reset > 0 else 0)
        value = _VALUES.get(shape)
        if value is None:
            value = b'"%s";r=%d;t=%d' % (p.name.encode("latin-1"), shape[1], shape[2])
            if len(_VALUES) >= 4096:
                _VALUES.clear()
            _VALUES[shape] = value
    else:
        value = ratelimit_value(policies).encode("latin-1")
    headers = [(b"ratelimit-policy", policy_value), (b"ratelimit", value)]
    if legacy:
        tight = min(policies, key=lambda p: p.remaining / p.quota if p.quota else 0.0)
        headers += [
            (b"x-ratelimit-limit", str(max(0, math.floor(tight.quota))).encode()),
            (b"x-ratelimit-remaining", str(max(0, math.floor(tight.remaining))).encode()),
            (b"x-ratelimit-reset", str(_int_up(tight.reset)).encode()),
        ]
    return headers


# Reasons a refused client may read: the limits it hit. Risk reasons would tell an abuser
# which signal to dodge; they stay in logs, metrics and the Decision.
SHOWN_REASONS = LIMIT_REASONS | {"backend_unavailable"}


def problem_body(
    status: int, decision: Decision, *, detail: str | None = None, reveal_reasons: bool = False
) -> bytes:
    """An RFC 9457 problem document naming the violated policies and the limit reasons
    (every reason with ``reveal_reasons``)."""
    title = HTTPStatus(status).phrase
    violated = [p.name for p in decision.policies if p.violated]
    reasons = (
        list(decision.reasons)
        if reveal_reasons
        else [reason for reason in decision.reasons if reason in SHOWN_REASONS]
    )
    body: dict[str, object] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail or _detail(reasons),
        "reasons": reasons,
    }
    if violated:
        body["violated_policies"] = violated
    if decision.retry_after is not None:
        body["retry_after"] = _int_up(decision.retry_after)
    return json.dumps(body, separators=(",", ":")).encode()


def _detail(shown_reasons: Iterable[str]) -> str:
    reasons = set(shown_reasons)
    if "banned" in reasons:
        return "This client is temporarily banned."
    if "unverified_key" in reasons:
        return "Too many requests with API keys not recognized yet; retry later."
    if reasons & {"rate", "quota", "concurrency"} and reasons <= {"rate", "quota", "concurrency"}:
        return "Request limit exceeded; retry later."
    if "deny_list" in reasons or "geo" in reasons:
        return "Requests from this network are not accepted."
    return "The request was refused by the abuse protection."
