"""Signals a trusted proxy or CDN computed before the request arrived (`Policy.edge`).

A CDN sees what the app cannot: the TLS ClientHello (a JA4 or JA3 fingerprint) and its
own bot verdict. Neither is a verdict on an API, where every SDK client is automated by
design; both are evidence about whether a client is what it claims to be. So they feed
the persona-consistency signal (``persona``): a User-Agent that claims a browser over a
TLS handshake no browser sends, or that the edge scores as automated, is a forgery, while
an SDK or script that the edge calls automated is exactly what it says.

Browsers send SNI, offer TLS 1.3 and negotiate HTTP/2 or HTTP/3 through ALPN; HTTP
libraries often offer only HTTP/1.1 (or no ALPN) and sometimes no SNI. JA4's first part
says all of that in readable form (``t13d1516h2``: TCP, TLS 1.3, SNI to a domain, 15
ciphers, 16 extensions, ALPN h2), so no table of fingerprints is needed for the common
case; `EdgeSignals.tls_families` maps exact fingerprints (JA4 or JA3) to client kinds for
the rest.

The headers are read only from requests whose direct peer is one of
`Policy.trusted_proxies` (the middleware drops them otherwise): a client could send its
own.
"""

from __future__ import annotations

from collections.abc import Mapping

from abuseguard.intel.agents import ClientClass

# Client kinds a fingerprint may be mapped to (EdgeSignals.tls_families values).
TLS_KINDS = ("browser", "mobile", "sdk", "script", "headless", "crawler")
_BROWSER_LIKE = frozenset({ClientClass.BROWSER, ClientClass.MOBILE})
_KIND_CLASSES: dict[str, frozenset[int]] = {
    "browser": frozenset({ClientClass.BROWSER, ClientClass.MOBILE}),
    "mobile": frozenset({ClientClass.MOBILE, ClientClass.BROWSER}),
    "sdk": frozenset({ClientClass.SDK, ClientClass.SCRIPT}),
    "script": frozenset({ClientClass.SCRIPT, ClientClass.SDK}),
    "headless": frozenset({ClientClass.HEADLESS}),
    "crawler": frozenset({ClientClass.CRAWLER}),
}


def ja4_browser_like(ja4: str) -> bool | None:
    """Whether a JA4 fingerprint's first part could come from a current browser: TLS 1.3
    (or QUIC), SNI to a domain, ALPN h2 or h3. None when it is not a JA4 string."""
    head = ja4.split("_", 1)[0].strip().lower()
    if len(head) != 10 or head[0] not in "tqd" or not head[4:8].isdigit():
        return None
    version, sni, alpn = head[1:3], head[3], head[8:10]
    if head[0] == "q":
        return sni == "d"
    return version == "13" and sni == "d" and alpn in ("h2", "h3")


class EdgeReader:
    """Turns the edge's headers into a persona-mismatch value 0..1 for one request."""

    __slots__ = ("_bot_header", "_families", "_ja3_header", "_ja4_header", "_scale")

    def __init__(
        self,
        bot_score_header: str | None,
        bot_score_range: tuple[float, float],
        bot_score_low_is_bot: bool,
        ja4_header: str | None,
        ja3_header: str | None,
        tls_families: Mapping[str, str],
    ) -> None:
        self._bot_header = bot_score_header
        low, high = bot_score_range
        self._scale = (low, high, bot_score_low_is_bot)
        self._ja4_header = ja4_header
        self._ja3_header = ja3_header
        self._families = {k.strip().lower(): v for k, v in tls_families.items()}

    @property
    def headers(self) -> tuple[str, ...]:
        """The header names it reads (the middleware drops them from untrusted peers)."""
        names = (self._bot_header, self._ja4_header, self._ja3_header)
        return tuple(name for name in names if name)

    def automation(self, headers: Mapping[str, str]) -> float | None:
        """The edge's bot score as a likelihood of automation 0..1, or None."""
        if self._bot_header is None:
            return None
        text = headers.get(self._bot_header)
        if not text:
            return None
        try:
            value = float(text.strip())
        except ValueError:
            return None
        low, high, low_is_bot = self._scale
        if not low <= value <= high:  # also rejects nan
            return None
        share = (value - low) / (high - low)
        return 1.0 - share if low_is_bot else share

    def mismatch(self, headers: Mapping[str, str], ua_class: int) -> float:
        """How far the edge's view contradicts the client the User-Agent claims (0..1)."""
        out = 0.0
        for header in (self._ja4_header, self._ja3_header):
            if header is None:
                continue
            fingerprint = headers.get(header)
            if not fingerprint:
                continue
            kind = self._families.get(fingerprint.strip().lower())
            if kind is not None:
                if ua_class not in _KIND_CLASSES.get(kind, frozenset()):
                    return 1.0
                continue
            if (
                header == self._ja4_header
                and ua_class in _BROWSER_LIKE
                and ja4_browser_like(fingerprint) is False
            ):
                return 1.0
        if ua_class in _BROWSER_LIKE:
            automated = self.automation(headers)
            if automated is not None and automated > 0.5:
                out = max(out, 2.0 * (automated - 0.5))
        return out


__all__ = ["TLS_KINDS", "EdgeReader", "ja4_browser_like"]
