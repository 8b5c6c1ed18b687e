"""Header personas: what the set of request headers says about the client software.

Two functions, both on the request path and both pure:

``persona_hash(header_names, headers, agent)``
    A stable signed 64-bit hash of the client's header "shape": the ordered header names
    it sends (minus the volatile ones below), the values of the SDK fingerprint headers
    below, and the client class and family of its User-Agent (not the full UA, so a
    browser or SDK upgrade does not split a persona more than its headers do). Clients
    running the same software send the same persona whatever their account or IP, which
    is what fan-in counts: many accounts behind one persona is a farm. The hash is
    blake2b-64 over UTF-8 text, identical across processes and machines, never 0 (0
    means "no persona" to the engine). Recent digests are memoised (up to 4096 header
    shapes of at most 4096 characters, cleared when full: ~20 MB at the very worst).

    Header names must be lower-case, as ASGI servers, the middleware and the trace loader
    deliver them; a mixed-case name is hashed as given. Only the first
    ``MAX_PERSONA_NAMES`` kept names (looked for among the first 256 names) and
    ``MAX_VALUE_CHARS`` characters of each fingerprint value count, so an absurd header
    set costs no more than a large one.

``persona_mismatch(agent, headers)``
    How strongly the header set contradicts what the User-Agent claims, in 0..1. Each
    rule below that fires contributes its weight ``w``; they combine as a noisy-OR,
    ``1 - prod(1 - w)``, so one strong contradiction scores high and several weak ones
    add up without passing 1.

Mismatch rules (weights in ``MISMATCH_WEIGHTS``):

``browser_no_accept_language`` (0.35), ``browser_no_accept_encoding`` (0.35),
``browser_no_accept`` (0.15)
    The UA names a known browser family (``BROWSER_FAMILIES``) but the request lacks a
    header every browser sends on every fetch/XHR. Scripts that copy a Chrome UA into
    ``requests`` or ``httpx`` usually forget ``accept-language``.
    False positives: privacy proxies and some corporate proxies that strip
    ``accept-language``; a CDN or reverse proxy that drops ``accept-encoding`` before
    the app (check the deployment once: then every browser fires).

``browser_accept_encoding_no_gzip`` (0.2)
    A browser UA with an ``accept-encoding`` that does not offer gzip (all browsers do;
    ``identity`` is what hand-written clients send).
    False positives: proxies that rewrite ``accept-encoding`` to ``identity``.

``chromium_no_fetch_metadata`` (0.5)
    Chrome, Chromium or Edge >= 80 (major as uap-core reports it) without any
    ``sec-fetch-site`` / ``sec-fetch-mode`` / ``sec-fetch-dest``: Chromium sends them on
    every request to a potentially trustworthy origin since version 76-80.
    False positives: the API served over plain HTTP (not localhost): browsers send fetch
    metadata only to HTTPS origins; a proxy stripping ``sec-*`` headers.

``chromium_no_client_hints`` (0.3)
    Chrome, Chromium or Edge >= 90 without ``sec-ch-ua``, which Chromium sends by default
    to HTTPS origins since 89-90. Chrome on iOS (WebKit) is a different family and
    exempt. False positives: as above, plus enterprise policies disabling client hints.

``firefox_no_fetch_metadata`` (0.4)
    Firefox or Firefox Mobile >= 90 without fetch metadata (sent since Firefox 90).
    False positives: as for Chromium; ``privacy.resistFingerprinting`` does not remove it.

``safari_no_fetch_metadata`` (0.3)
    Safari or Mobile Safari >= 17 without fetch metadata (sent since Safari 16.4).
    In-app WebViews are a different family and exempt. False positives: as above.

``browser_with_server_sdk`` (0.6)
    A browser UA together with an ``x-stainless-runtime`` that is not ``browser:...``.
    The OpenAI/Anthropic JS SDKs running in a browser keep the browser's UA and say
    ``browser:chrome``; a ``node`` or ``CPython`` runtime under a browser UA is a forged
    UA. False positives: none known short of a proxy that injects stainless headers.

``sdk_no_stainless`` (0.7)
    The UA claims an SDK that always sends ``x-stainless-*`` headers (OpenAI and
    Anthropic SDKs since 2023, Claude Code) but ``x-stainless-lang`` is absent: a script
    wearing the SDK's UA. False positives: API gateways or proxies that strip unknown
    ``x-*`` headers; very old SDK builds (openai < 1.0 has another UA and is exempt).

``sdk_stainless_contradiction`` (0.5)
    The stainless headers contradict the UA: ``x-stainless-lang`` is not ``python`` for
    a Python SDK UA or not ``js`` for a JS SDK UA, or the major of
    ``x-stainless-package-version`` differs from the UA's (both come from the same
    constant in the SDK). False positives: a hand-made wrapper that overrides the UA of
    one SDK inside another (rare and itself worth a look).

``anthropic_no_version`` (0.4)
    An Anthropic SDK or Claude Code UA without ``anthropic-version`` (the SDKs always
    send it). False positives: header-stripping proxies.

``non_browser_with_fetch_metadata`` (0.5)
    A script or SDK UA with ``sec-fetch-site``, ``sec-fetch-dest`` or ``sec-ch-ua``:
    browsers do not let page scripts replace their UA, so these are browser headers
    copied into a script, or a browser whose UA was rewritten. ``sec-fetch-mode`` alone
    does not count: Node's built-in fetch (undici) sends ``sec-fetch-mode: cors`` and
    ``accept-language: *`` by itself. False positives: browser extensions that rewrite
    the UA for API calls.

``empty_ua_with_fetch_metadata`` (0.5)
    No User-Agent but the browser-only headers above: browsers always send a UA.
    False positives: proxies that drop the UA but keep ``sec-*``.

Cost: ~1 µs for ``persona_hash`` and ~0.3-0.5 µs for ``persona_mismatch`` on a typical
15-header set (see the report of issue 4 for measurements).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Final

from abuseguard.intel.agents import (
    BROWSER_FAMILIES,
    STAINLESS_SDK_FAMILIES,
    Agent,
    ClientClass,
)

__all__ = [
    "FINGERPRINT_VALUE_HEADERS",
    "MAX_PERSONA_NAMES",
    "MAX_VALUE_CHARS",
    "MISMATCH_WEIGHTS",
    "VOLATILE_HEADERS",
    "mismatch_reasons",
    "persona_hash",
    "persona_mismatch",
]

#: Header names left out of the persona. Each depends on the request, the route, the
#: session, the proxies in between or a credential, not on the client software:
#: body framing (content-*, transfer-encoding, expect), credentials and cookies,
#: connection management, proxy/CDN-added addressing and tracing, cache revalidation
#: (the browser's cache state), and per-call SDK extras (helper method, idempotency key,
#: beta flags that depend on the endpoint used).
VOLATILE_HEADERS: Final[frozenset[str]] = frozenset(
    {
        # body framing
        "content-length", "content-type", "content-encoding", "content-md5",
        "transfer-encoding", "expect",
        # credentials and session
        "cookie", "authorization", "proxy-authorization", "x-api-key", "api-key",
        "x-goog-api-key",
        # connection management and HTTP/2 pseudo headers
        "host", "connection", "keep-alive", "te", "upgrade", "proxy-connection",
        ":authority", ":method", ":path", ":scheme",
        # added by proxies, load balancers and CDNs
        "via", "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
        "x-forwarded-port", "x-forwarded-prefix", "x-real-ip", "true-client-ip",
        "cf-connecting-ip", "cf-connecting-ipv6", "cf-ipcountry", "cf-ray", "cf-visitor",
        "cf-worker", "cdn-loop", "x-amzn-trace-id", "x-envoy-external-address",
        "x-envoy-expected-rq-timeout-ms", "x-envoy-attempt-count",
        # request tracing
        "x-request-id", "x-correlation-id", "request-id", "traceparent", "tracestate",
        "baggage", "sentry-trace", "b3", "x-b3-traceid", "x-b3-spanid",
        "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-cloud-trace-context",
        # cache state and ranges
        "cache-control", "pragma", "if-none-match", "if-modified-since", "if-match",
        "if-unmodified-since", "if-range", "range",
        # per-call SDK extras
        "idempotency-key", "x-stainless-helper-method", "x-stainless-poll-helper",
        "anthropic-beta",
    }
)  # fmt: skip

#: Headers whose VALUES enter the persona: SDK build fingerprints and the few browser
#: headers whose value identifies the software rather than the user (accept-language
#: does not: it would split one client program by its users' locales).
FINGERPRINT_VALUE_HEADERS: Final[frozenset[str]] = frozenset(
    {
        "x-stainless-lang", "x-stainless-package-version", "x-stainless-os",
        "x-stainless-arch", "x-stainless-runtime", "x-stainless-runtime-version",
        "x-stainless-async", "anthropic-version", "x-fern-language", "x-fern-sdk-name",
        "x-fern-sdk-version", "x-goog-api-client", "sec-ch-ua-platform", "sec-ch-ua-mobile",
        "accept-encoding",
    }
)  # fmt: skip

MAX_PERSONA_NAMES: Final = 64
MAX_VALUE_CHARS: Final = 128
_MAX_SCANNED_NAMES: Final = 4 * MAX_PERSONA_NAMES
_CLASS_TAGS: Final = tuple(f"\x01{member.value}" for member in ClientClass)
# Personas repeat request after request: remember the digest of recent header shapes.
# Cleared when full, so a flood of random header sets costs one digest each, no memory.
_MEMO_SIZE: Final = 4096
_MEMO_MAX_TEXT: Final = 4096  # header shapes longer than this (absurd names) are not kept
_memo: dict[str, int] = {}

MISMATCH_WEIGHTS: Final[Mapping[str, float]] = {
    "browser_no_accept_language": 0.35,
    "browser_no_accept_encoding": 0.35,
    "browser_no_accept": 0.15,
    "browser_accept_encoding_no_gzip": 0.2,
    "chromium_no_fetch_metadata": 0.5,
    "chromium_no_client_hints": 0.3,
    "firefox_no_fetch_metadata": 0.4,
    "safari_no_fetch_metadata": 0.3,
    "browser_with_server_sdk": 0.6,
    "sdk_no_stainless": 0.7,
    "sdk_stainless_contradiction": 0.5,
    "anthropic_no_version": 0.4,
    "non_browser_with_fetch_metadata": 0.5,
    "empty_ua_with_fetch_metadata": 0.5,
}

_CHROMIUM_FAMILIES: Final = frozenset({"Chrome", "Chrome Mobile", "Chromium", "Edge"})
_FIREFOX_FAMILIES: Final = frozenset({"Firefox", "Firefox Mobile"})
_SAFARI_FAMILIES: Final = frozenset({"Safari", "Mobile Safari"})
_ANTHROPIC_FAMILIES: Final = frozenset(
    family for family in STAINLESS_SDK_FAMILIES if family.startswith("Anthropic")
) | {"Claude Code"}
_BROWSER_CLASSES: Final = (ClientClass.BROWSER, ClientClass.MOBILE)
_SCRIPTED_CLASSES: Final = (ClientClass.SDK, ClientClass.SCRIPT)


def persona_hash(header_names: Sequence[str], headers: Mapping[str, str], agent: Agent) -> int:
    """Stable signed 64-bit persona of a header set (never 0); see the module docstring."""
    if len(header_names) > _MAX_SCANNED_NAMES:
        header_names = header_names[:_MAX_SCANNED_NAMES]
    parts = [name for name in header_names if name not in VOLATILE_HEADERS]
    if len(parts) > MAX_PERSONA_NAMES:
        del parts[MAX_PERSONA_NAMES:]
    # The names already say which fingerprint values follow, and in which order.
    values = [
        headers.get(name, "")[:MAX_VALUE_CHARS]
        for name in parts
        if name in FINGERPRINT_VALUE_HEADERS
    ]
    parts.append("\x01")
    parts += values
    parts.append(_CLASS_TAGS[agent.client_class])
    parts.append(agent.family)
    text = "\x00".join(parts)
    persona = _memo.get(text)
    if persona is None:
        digest = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        persona = int.from_bytes(digest, "little", signed=True) or 1
        if len(text) <= _MEMO_MAX_TEXT:
            if len(_memo) >= _MEMO_SIZE:
                _memo.clear()
            _memo[text] = persona
    return persona


def persona_mismatch(agent: Agent, headers: Mapping[str, str]) -> float:
    """How strongly the header set contradicts the UA's claim, 0..1 (noisy-OR of rules)."""
    return _evaluate(agent, headers, None)


def mismatch_reasons(agent: Agent, headers: Mapping[str, str]) -> tuple[str, ...]:
    """Names of the mismatch rules that fire, for logs and explanations."""
    fired: list[str] = []
    _evaluate(agent, headers, fired)
    return tuple(fired)


def _evaluate(agent: Agent, headers: Mapping[str, str], fired: list[str] | None) -> float:
    keep = 1.0  # product of (1 - weight) over the rules that fire
    cls = agent.client_class
    rules: list[str] = []
    if cls in _BROWSER_CLASSES:
        runtime = headers.get("x-stainless-runtime")
        if runtime is not None and not runtime.startswith("browser:"):
            rules.append("browser_with_server_sdk")
        if agent.family in BROWSER_FAMILIES:
            _browser_rules(agent, headers, rules)
    elif cls in _SCRIPTED_CLASSES:
        if agent.family in STAINLESS_SDK_FAMILIES:
            _stainless_rules(agent, headers, rules)
        if _has_browser_only_headers(headers):
            rules.append("non_browser_with_fetch_metadata")
    elif cls is ClientClass.EMPTY and _has_browser_only_headers(headers):
        rules.append("empty_ua_with_fetch_metadata")
    for rule in rules:
        keep *= 1.0 - MISMATCH_WEIGHTS[rule]
    if fired is not None:
        fired.extend(rules)
    return 1.0 - keep


def _major(agent: Agent) -> int:
    major = agent.major
    return int(major) if major is not None and major.isdigit() and len(major) < 6 else 0


def _browser_rules(agent: Agent, headers: Mapping[str, str], rules: list[str]) -> None:
    if "accept-language" not in headers:
        rules.append("browser_no_accept_language")
    encoding = headers.get("accept-encoding")
    if encoding is None:
        rules.append("browser_no_accept_encoding")
    elif "gzip" not in encoding:
        rules.append("browser_accept_encoding_no_gzip")
    if "accept" not in headers:
        rules.append("browser_no_accept")
    family = agent.family
    if family in _CHROMIUM_FAMILIES:
        major = _major(agent)
        if major >= 80 and not _has_fetch_metadata(headers):
            rules.append("chromium_no_fetch_metadata")
        if major >= 90 and "sec-ch-ua" not in headers:
            rules.append("chromium_no_client_hints")
    elif family in _FIREFOX_FAMILIES:
        if _major(agent) >= 90 and not _has_fetch_metadata(headers):
            rules.append("firefox_no_fetch_metadata")
    elif family in _SAFARI_FAMILIES and _major(agent) >= 17 and not _has_fetch_metadata(headers):
        rules.append("safari_no_fetch_metadata")


def _has_fetch_metadata(headers: Mapping[str, str]) -> bool:
    return "sec-fetch-mode" in headers or "sec-fetch-site" in headers or "sec-fetch-dest" in headers


def _has_browser_only_headers(headers: Mapping[str, str]) -> bool:
    # Not sec-fetch-mode: Node's built-in fetch (undici) sends "sec-fetch-mode: cors" itself.
    return "sec-fetch-site" in headers or "sec-fetch-dest" in headers or "sec-ch-ua" in headers


def _stainless_rules(agent: Agent, headers: Mapping[str, str], rules: list[str]) -> None:
    family = agent.family
    if family in _ANTHROPIC_FAMILIES and "anthropic-version" not in headers:
        rules.append("anthropic_no_version")
    lang = headers.get("x-stainless-lang")
    if lang is None:
        rules.append("sdk_no_stainless")
        return
    expected_lang = "python" if " Python " in family else "js" if " JS " in family else None
    if family == "Claude Code":
        expected_lang = "js"
    contradiction = expected_lang is not None and lang != expected_lang
    if not contradiction and family != "Claude Code" and agent.major is not None:
        version = headers.get("x-stainless-package-version")
        contradiction = version is not None and version.partition(".")[0] != agent.major
    if contradiction:
        rules.append("sdk_stainless_contradiction")
