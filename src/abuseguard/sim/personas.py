"""Client personas: a User-Agent and the header set that really comes with it.

Browsers send client hints and ``sec-fetch-*`` (Chromium), or ``sec-fetch-*`` only
(Firefox, Safari); official SDKs send their ``x-stainless-*`` set; HTTP libraries send
their few defaults. Forged personas are what abuse tooling sends: a browser or SDK
User-Agent with the header set of the library actually used, or an SDK header set whose
versions do not match its User-Agent.

A persona is rendered once into a JSON fragment (``"ua": ..., "headers": {...}``) that
every line of its actor reuses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from abuseguard.traces import trace_fields

WEB_ORIGIN = "https://chat.example.com"

_ACCEPT_LANGUAGE: dict[str, tuple[str, ...]] = {
    "US": ("en-US,en;q=0.9",),
    "CA": ("en-CA,en-US;q=0.9,en;q=0.8", "fr-CA,fr;q=0.9,en-CA;q=0.8,en;q=0.7"),
    "GB": ("en-GB,en-US;q=0.9,en;q=0.8", "en-GB,en;q=0.9"),
    "DE": ("de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7", "de,en-US;q=0.7,en;q=0.3"),
    "FR": ("fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7",),
    "ES": ("es-ES,es;q=0.9,en;q=0.8",),
    "IT": ("it-IT,it;q=0.9,en-US;q=0.8,en;q=0.7",),
    "NL": ("nl-NL,nl;q=0.9,en-US;q=0.8,en;q=0.7",),
    "CH": ("de-CH,de;q=0.9,en;q=0.8", "fr-CH,fr;q=0.9,en;q=0.8"),
    "IN": ("en-IN,en-GB;q=0.9,en-US;q=0.8,en;q=0.7", "hi-IN,hi;q=0.9,en-US;q=0.8,en;q=0.7"),
    "BR": ("pt-BR,pt;q=0.9,en-US;q=0.8,en;q=0.7",),
    "JP": ("ja,en-US;q=0.9,en;q=0.8",),
    "KR": ("ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7",),
    "AU": ("en-AU,en-GB;q=0.9,en;q=0.8",),
    "MX": ("es-MX,es-419;q=0.9,es;q=0.8,en;q=0.7",),
}

_CHROME_VERSIONS = ("131", "132", "133", "134")
_FIREFOX_VERSIONS = ("133.0", "134.0", "135.0", "136.0")
_SAFARI_VERSIONS = ("17.6", "18.2", "18.3")
_NOT_A_BRAND = ('"Not(A:Brand";v="99"', '"Not A(Brand";v="8"', '"Not:A-Brand";v="24"')

OPENAI_PY_VERSIONS = ("1.58.1", "1.59.7", "1.61.1", "1.63.2", "1.65.4")
OPENAI_JS_VERSIONS = ("4.77.0", "4.82.0", "4.85.1", "4.87.3")
PY_RUNTIMES = ("3.10.12", "3.11.11", "3.12.8", "3.12.9", "3.13.1")
NODE_RUNTIMES = ("v18.20.5", "v20.18.1", "v22.12.0")


@dataclass(frozen=True, slots=True)
class Persona:
    """A User-Agent (or None) and its headers; ``family`` names the client for humans."""

    family: str
    ua: str | None
    headers: tuple[tuple[str, str], ...]

    def fragment(self) -> str:
        """The trace-line JSON fragment for this persona."""
        return trace_fields(ua=self.ua, headers=self.headers)


def accept_language(rng: random.Random, country: str) -> str:
    choices = _ACCEPT_LANGUAGE.get(country)
    if choices is None:
        return rng.choice(("en-US,en;q=0.9", "en-GB,en;q=0.9", "en-US,en;q=0.5"))
    return rng.choice(choices)


def _web_headers(accept: str, language: str) -> list[tuple[str, str]]:
    return [
        ("accept", accept),
        ("accept-language", language),
        ("content-type", "application/json"),
        ("origin", WEB_ORIGIN),
        ("referer", WEB_ORIGIN + "/"),
    ]


def chrome(rng: random.Random, country: str, platform: str = "") -> Persona:
    """Chrome or Edge on a desktop OS, or Chrome on Android when ``platform`` is Android."""
    version = rng.choice(_CHROME_VERSIONS)
    platform = platform or rng.choices(("Windows", "macOS", "Linux"), weights=(6, 3, 1))[0]
    edge = platform == "Windows" and rng.random() < 0.25
    os_part = {
        "Windows": "Windows NT 10.0; Win64; x64",
        "macOS": "Macintosh; Intel Mac OS X 10_15_7",
        "Linux": "X11; Linux x86_64",
        "Android": "Linux; Android 10; K",
    }[platform]
    mobile = platform == "Android"
    ua = (
        f"Mozilla/5.0 ({os_part}) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{version}.0.0.0 {'Mobile ' if mobile else ''}Safari/537.36"
    )
    brand = f'"Google Chrome";v="{version}"'
    if edge:
        ua += f" Edg/{version}.0.0.0"
        brand = f'"Microsoft Edge";v="{version}"'
    sec_ch_ua = f'{rng.choice(_NOT_A_BRAND)}, {brand}, "Chromium";v="{version}"'
    headers = _web_headers("text/event-stream", accept_language(rng, country))
    headers += [
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("priority", "u=1, i"),
        ("sec-ch-ua", sec_ch_ua),
        ("sec-ch-ua-mobile", "?1" if mobile else "?0"),
        ("sec-ch-ua-platform", f'"{platform}"'),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-site"),
    ]
    return Persona("edge" if edge else "chrome", ua, tuple(headers))


def firefox(rng: random.Random, country: str) -> Persona:
    version = rng.choice(_FIREFOX_VERSIONS)
    os_part = rng.choices(
        ("Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10.15", "X11; Linux x86_64"),
        weights=(5, 2, 3),
    )[0]
    ua = f"Mozilla/5.0 ({os_part}; rv:{version}) Gecko/20100101 Firefox/{version}"
    headers = _web_headers("text/event-stream", accept_language(rng, country))
    headers += [
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("priority", "u=4"),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-site"),
    ]
    return Persona("firefox", ua, tuple(headers))


def safari(rng: random.Random, country: str, iphone: bool = False) -> Persona:
    version = rng.choice(_SAFARI_VERSIONS)
    if iphone:
        ios = version.replace(".", "_")
        ua = (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 "
            f"(KHTML, like Gecko) Version/{version} Mobile/15E148 Safari/604.1"
        )
    else:
        ua = (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            f"(KHTML, like Gecko) Version/{version} Safari/605.1.15"
        )
    headers = _web_headers("text/event-stream", accept_language(rng, country))
    headers += [
        ("accept-encoding", "gzip, deflate, br"),
        ("priority", "u=3, i"),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-site"),
    ]
    return Persona("safari", ua, tuple(headers))


def desktop_browser(rng: random.Random, country: str) -> Persona:
    roll = rng.random()
    if roll < 0.68:
        return chrome(rng, country)
    if roll < 0.82:
        return safari(rng, country)
    return firefox(rng, country)


def mobile_client(rng: random.Random, country: str) -> Persona:
    """A phone: mobile Safari, Chrome on Android, or the official app."""
    roll = rng.random()
    if roll < 0.35:
        return safari(rng, country, iphone=True)
    if roll < 0.6:
        return chrome(rng, country, platform="Android")
    language = accept_language(rng, country)
    if roll < 0.82:
        ios = rng.choice(("17.6.1", "18.2", "18.3.1"))
        ua = f"ChatApp/5.12.1 (com.example.chat; build:2025021101; iOS {ios}) Alamofire/5.9.1"
        platform = "ios"
    else:
        android = rng.choice(("13", "14", "15"))
        model = rng.choice(("Pixel 8", "SM-S918B", "SM-A546B", "2201117TG"))
        ua = f"ChatApp/5.12.0 (Android {android}; {model}) okhttp/4.12.0"
        platform = "android"
    headers = (
        ("accept", "text/event-stream"),
        ("accept-encoding", "gzip"),
        ("accept-language", language),
        ("content-type", "application/json"),
        ("x-app-platform", platform),
        ("x-app-version", "5.12"),
    )
    return Persona("chat-app", ua, headers)


def openai_python(
    rng: random.Random,
    version: str | None = None,
    runtime: str | None = None,
    os_name: str = "Linux",
    asyncio: bool | None = None,
) -> Persona:
    version = version or rng.choice(OPENAI_PY_VERSIONS)
    asyncio = rng.random() < 0.4 if asyncio is None else asyncio
    headers = (
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("content-type", "application/json"),
        ("x-stainless-arch", "x64" if os_name != "MacOS" else "arm64"),
        ("x-stainless-async", "async:asyncio" if asyncio else "false"),
        ("x-stainless-lang", "python"),
        ("x-stainless-os", os_name),
        ("x-stainless-package-version", version),
        ("x-stainless-read-timeout", "600"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", runtime or rng.choice(PY_RUNTIMES)),
    )
    return Persona("openai-python", f"OpenAI/Python {version}", headers)


def openai_node(rng: random.Random) -> Persona:
    version = rng.choice(OPENAI_JS_VERSIONS)
    headers = (
        ("accept", "application/json"),
        ("accept-encoding", "gzip,deflate"),
        ("content-type", "application/json"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-lang", "js"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-package-version", version),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-runtime", "node"),
        ("x-stainless-runtime-version", rng.choice(NODE_RUNTIMES)),
    )
    return Persona("openai-node", f"OpenAI/JS {version}", headers)


def sdk(rng: random.Random) -> Persona:
    return openai_python(rng) if rng.random() < 0.65 else openai_node(rng)


def forged_sdk(rng: random.Random) -> Persona:
    """An OpenAI-python User-Agent over a copied, stale x-stainless set (versions disagree)."""
    ua_version = rng.choice(OPENAI_PY_VERSIONS)
    stale = rng.choice(("1.3.7", "1.12.0", "1.30.1", "1.35.3"))
    headers = (
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("content-type", "application/json"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-async", "false"),
        ("x-stainless-lang", "python"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-package-version", stale),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.10.12"),
    )
    return Persona("forged-sdk", f"OpenAI/Python {ua_version}", headers)


def http_library(rng: random.Random) -> Persona:
    """What a script sends: python-httpx, requests, aiohttp, curl or Go."""
    roll = rng.random()
    if roll < 0.4:
        version = rng.choice(("0.27.0", "0.27.2", "0.28.1"))
        return Persona(
            "httpx",
            f"python-httpx/{version}",
            (
                ("accept", "*/*"),
                ("accept-encoding", "gzip, deflate"),
                ("connection", "keep-alive"),
                ("content-type", "application/json"),
            ),
        )
    if roll < 0.75:
        version = rng.choice(("2.31.0", "2.32.3"))
        return Persona(
            "requests",
            f"python-requests/{version}",
            (
                ("accept", "*/*"),
                ("accept-encoding", "gzip, deflate"),
                ("connection", "keep-alive"),
                ("content-type", "application/json"),
            ),
        )
    if roll < 0.9:
        return Persona(
            "aiohttp",
            f"Python/3.{rng.choice(('10', '11', '12'))} aiohttp/{rng.choice(('3.9.5', '3.11.12'))}",
            (
                ("accept", "*/*"),
                ("accept-encoding", "gzip, deflate"),
                ("content-type", "application/json"),
            ),
        )
    if roll < 0.96:
        return Persona(
            "curl",
            f"curl/{rng.choice(('7.81.0', '8.5.0', '8.11.1'))}",
            (("accept", "*/*"), ("content-type", "application/json")),
        )
    return Persona(
        "go",
        "Go-http-client/2.0",
        (("accept-encoding", "gzip"), ("content-type", "application/json")),
    )


def forged_browser(rng: random.Random, country: str, fidelity: float) -> Persona:
    """A browser User-Agent sent by a script.

    With probability ``fidelity`` the header set is a copied Chrome set whose client hints
    name another Chrome version than the User-Agent (impersonation kits drift); otherwise
    it is the HTTP library's own defaults under a browser User-Agent.
    """
    real = chrome(rng, country)
    if rng.random() < fidelity:
        version = (real.ua or "").split("Chrome/")[1].split(".")[0]
        other = str(int(version) - rng.choice((3, 4, 6)))
        headers = tuple(
            (
                name,
                value.replace(f'v="{version}"', f'v="{other}"') if name == "sec-ch-ua" else value,
            )
            for name, value in real.headers
        )
        return Persona("forged-browser", real.ua, headers)
    library = http_library(rng)
    return Persona("forged-browser", real.ua, library.headers)


def tor_browser(rng: random.Random) -> Persona:
    """Tor Browser: a Firefox ESR on Windows, English, no client hints."""
    headers = _web_headers("text/event-stream", "en-US,en;q=0.5")
    headers += [
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-site"),
    ]
    return Persona(
        "tor-browser",
        "Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0",
        tuple(headers),
    )
