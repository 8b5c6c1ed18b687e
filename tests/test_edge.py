"""Edge signals from a trusted proxy or CDN (`Policy.edge`, #16 item 6): a JA4/JA3
fingerprint and a bot score feed persona consistency; the headers are believed only from
a trusted peer."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import (
    AbuseGuard,
    Action,
    ConfigError,
    EdgeSignals,
    Enforcement,
    Guard,
    Policy,
    RequestInfo,
    Scoring,
    TokenBucket,
)
from abuseguard.intel.agents import ClientClass
from abuseguard.intel.edge import ja4_browser_like
from abuseguard.sim import personas
from abuseguard.testing import serve

CHROME_JA4 = "t13d1516h2_8daaf6152771_02713d6af862"
LIBRARY_JA4 = "t13d1812h1_85036bcba153_375ca2c5e164"  # HTTP/1.1 only: no browser


@pytest.mark.parametrize(
    ("ja4", "expected"),
    [
        (CHROME_JA4, True),
        ("q13d0310h3_55b375c5d22e_cd85d2d88918", True),  # QUIC
        (LIBRARY_JA4, False),
        ("t12d1516h2_8daaf6152771_02713d6af862", False),  # TLS 1.2
        ("t13i1516h2_8daaf6152771_02713d6af862", False),  # no SNI
        ("t13d151600_8daaf6152771_02713d6af862", False),  # no ALPN
        ("not a ja4", None),
        ("", None),
        ("t13dxx16h2_8daaf6152771_02713d6af862", None),
    ],
)
def test_ja4_browser_like(ja4: str, expected: bool | None) -> None:
    assert ja4_browser_like(ja4) is expected


def reader(**kw: Any) -> Any:
    return EdgeSignals(**{"bot_score_header": "x-bot-score", "ja4_header": "x-ja4", **kw}).reader()


def test_a_browser_user_agent_over_a_library_handshake_is_a_forgery() -> None:
    edge = reader()
    assert edge.mismatch({"x-ja4": LIBRARY_JA4}, ClientClass.BROWSER) == 1.0
    assert edge.mismatch({"x-ja4": CHROME_JA4}, ClientClass.BROWSER) == 0.0
    # an SDK over the same handshake is what it claims
    assert edge.mismatch({"x-ja4": LIBRARY_JA4}, ClientClass.SDK) == 0.0


def test_the_bot_score_counts_against_browsers_only() -> None:
    edge = reader()
    assert edge.mismatch({"x-bot-score": "2"}, ClientClass.BROWSER) == pytest.approx(
        2 * (1 - 1 / 98) - 1
    )
    assert edge.mismatch({"x-bot-score": "90"}, ClientClass.BROWSER) == 0.0
    assert edge.mismatch({"x-bot-score": "2"}, ClientClass.SDK) == 0.0
    high = reader(bot_score_range=(0.0, 1.0), bot_score_low_is_bot=False)
    assert high.mismatch({"x-bot-score": "0.95"}, ClientClass.MOBILE) == pytest.approx(0.9)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-5", "150", "", " "])
def test_a_bad_bot_score_is_ignored(value: str) -> None:
    assert reader().mismatch({"x-bot-score": value}, ClientClass.BROWSER) == 0.0


def test_fingerprints_mapped_to_a_kind() -> None:
    edge = reader(ja4_header=None, ja3_header="x-ja3", tls_families={"ABC123": "script"})
    assert edge.mismatch({"x-ja3": "abc123"}, ClientClass.BROWSER) == 1.0
    assert edge.mismatch({"x-ja3": "abc123"}, ClientClass.SCRIPT) == 0.0
    assert edge.mismatch({"x-ja3": "unknown"}, ClientClass.BROWSER) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ja4_header": "x ja4"}, "EdgeSignals.ja4_header"),
        ({"ja4_header": "  "}, "EdgeSignals.ja4_header"),
        ({"bot_score_header": "s", "bot_score_range": (5.0, 5.0)}, "EdgeSignals.bot_score_range"),
        ({"ja3_header": "x", "tls_families": {"f": "robot"}}, "EdgeSignals.tls_families"),
        ({"ja4_header": 4}, "EdgeSignals.ja4_header"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EdgeSignals(**kwargs)
    assert field in str(caught.value)


def test_edge_needs_trusted_proxies() -> None:
    with pytest.raises(ConfigError, match=r"Policy\.edge"):
        Policy(edge=EdgeSignals(ja4_header="x-ja4"))


def persona_policy(trusted: str) -> Policy:
    """Only the persona signal scores, and it refuses on its own."""
    return Policy(
        bucket=TokenBucket("100/second", burst=100),
        scoring=Scoring(bias=-4.0, weights={"persona": 10.0}, weak_signals=()),
        enforcement=Enforcement(ladder=((0.9, Action.BLOCK),)),
        network=None,
        unverified_keys=None,
        trusted_proxies=[trusted],
        edge=EdgeSignals(ja4_header="x-ja4", bot_score_header="x-bot-score"),
    )


def test_the_guard_scores_the_edge_view() -> None:
    guard = Guard(persona_policy("10.0.0.0/8"))

    chrome = personas.chrome(random.Random(1), "US")  # a real Chrome's header set

    def ask(key: str, ja4: str) -> Any:
        headers = {**dict(chrome.headers), "user-agent": chrome.ua or "", "x-ja4": ja4}
        info = RequestInfo(ip="192.0.2.1", ts=1.0, key=key, ua=chrome.ua, headers=headers)
        return guard.check(info)

    forged = ask("sk-forged", LIBRARY_JA4)
    real = ask("sk-real", CHROME_JA4)
    assert forged.action is Action.BLOCK
    assert "persona" in forged.reasons
    assert real.action is Action.ALLOW


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.mark.parametrize(("trusted", "status"), [("127.0.0.1/32", 403), ("10.0.0.0/8", 200)])
def test_edge_headers_are_believed_only_from_a_trusted_peer(trusted: str, status: int) -> None:
    app = AbuseGuard(Starlette(routes=[Route("/", ok)]), persona_policy(trusted))
    chrome = personas.chrome(random.Random(1), "US")
    headers = {
        **dict(chrome.headers),
        "user-agent": chrome.ua or "",
        "x-ja4": LIBRARY_JA4,
        "x-api-key": "sk-1",
    }
    with serve(app, timeout=90.0) as url, httpx.Client(base_url=url, timeout=30.0) as client:
        response = client.get("/", headers=headers)
    # from 127.0.0.1 the uvicorn peer is trusted in the first case: the forged persona is
    # refused; in the second the client's own x-ja4 is dropped and it is served
    assert response.status_code == status, response.text
