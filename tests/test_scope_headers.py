"""The one-pass header read: `AbuseGuard.request_info` reads the raw ASGI pairs into a
`ScopeHeaders` view and must see exactly what the former read (every header decoded into
a dict, `_joined_headers` when a name repeats or a value is oversized) saw, for any header
list: the same address, key, user agent, headers and client facts."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard import AbuseGuard, EdgeSignals, Policy
from abuseguard.identity import api_key_from_headers, client_ip, peer_is_trusted
from abuseguard.middleware import _joined_headers
from abuseguard.request import RequestInfo
from abuseguard.scope_headers import ScopeHeaders

_NAMES = [
    b"host", b"user-agent", b"accept", b"accept-encoding", b"authorization", b"x-api-key",
    b"x-forwarded-for", b"x-ja4", b"x-bot-score", b"content-type", b"x-stainless-lang",
    b"sec-ch-ua-platform", b"caf\xe9",
]  # fmt: skip
_VALUES = [
    b"", b"Bearer sk-one", b"bearer  sk-two ", b"Basic abc", b"sk-three", b" ", b"10.0.0.7",
    b"198.51.100.4, 10.0.0.7", b"unknown", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0",
    b"OpenAI/Python 1.40.0", b"t13d1516h2_8daaf6152771_02713d6af862", b"3", b"x" * 40,
    b"gzip, br", b"caf\xe9",
]  # fmt: skip


async def _app(scope: Any, receive: Any, send: Any) -> None:
    return None


def _middleware(trusted: bool, edge: bool) -> AbuseGuard:
    policy = Policy(
        trusted_proxies=("10.0.0.0/8",) if trusted or edge else (),
        edge=EdgeSignals(bot_score_header="x-bot-score", ja4_header="x-ja4") if edge else None,
        max_header_bytes=32,  # some values above are over it
    )
    return AbuseGuard(_app, policy=policy)


def _former_request_info(
    mw: AbuseGuard, raw: list[tuple[bytes, bytes]], peer: str | None
) -> RequestInfo:
    """The middleware's request_info before the one-pass read (as of b3bdc3d)."""
    limit = mw.max_header
    headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in raw if len(v) <= limit}
    if len(headers) != len(raw):
        headers = _joined_headers(raw, limit, mw.proxy_header)
    ip = client_ip(peer, headers, mw.trusted, mw.proxy_header) if mw.trusted else peer
    if mw.edge_headers and not peer_is_trusted(peer, mw.trusted):
        for name in mw.edge_headers:
            headers.pop(name, None)
    return RequestInfo(
        ip or "unknown", None, api_key_from_headers(headers), "GET", "/", None,
        headers.get("user-agent"), headers,
    )  # fmt: skip


_MIDDLEWARES = {(t, e): _middleware(t, e) for t in (False, True) for e in (False, True)}

headers_lists = st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=9)


@settings(max_examples=400, deadline=None)
@given(
    raw=headers_lists,
    peer=st.sampled_from(["10.0.0.7", "203.0.113.9", None]),
    trusted=st.booleans(),
    edge=st.booleans(),
)
def test_the_one_pass_read_sees_what_the_decoded_dict_sees(
    raw: list[tuple[bytes, bytes]], peer: str | None, trusted: bool, edge: bool
) -> None:
    mw = _MIDDLEWARES[trusted, edge]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": raw,
        "client": (peer, 5000) if peer else None,
    }
    fast = mw.request_info(scope)
    reference = _former_request_info(mw, raw, peer)
    assert (fast.ip, fast.key, fast.ua) == (reference.ip, reference.key, reference.ua)
    assert dict(fast.headers) == dict(reference.headers)
    assert list(fast.headers) == list(reference.headers)
    assert len(fast.headers) == len(reference.headers)
    for name in ("user-agent", "authorization", "x-ja4", "café", "missing"):
        assert fast.headers.get(name) == reference.headers.get(name)
        assert (name in fast.headers) == (name in reference.headers)
    guard = mw.guard
    # twice: the second answer comes from the client cache, keyed by the raw names
    for _ in range(2):
        assert guard.prepare(fast).persona == guard.prepare(reference).persona
        assert guard.prepare(fast).ua_class == guard.prepare(reference).ua_class
        assert guard.prepare(fast).persona_mismatch == guard.prepare(reference).persona_mismatch


def test_scope_headers_reads_like_a_dict_of_decoded_headers() -> None:
    view = ScopeHeaders({b"user-agent": b"curl/8", b"caf\xe9": b"cr\xe8me", b"x-empty": b""})
    assert view == {"user-agent": "curl/8", "café": "crème", "x-empty": ""}
    assert list(view) == ["user-agent", "café", "x-empty"]
    assert view["café"] == "crème" and view.get("x-empty") == ""
    assert view.get("missing") is None and view.get("missing", "d") == "d"
    assert view.get("\u20ac") is None and "\u20ac" not in view  # not latin-1: never a name
    assert 3 not in view and b"user-agent" not in view
    assert view.raw_names() == (b"user-agent", b"caf\xe9", b"x-empty")
