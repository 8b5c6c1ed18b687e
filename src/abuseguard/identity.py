"""Who is asking: client IP behind trusted proxies, IP grouping, API key identity.

Proxy headers are believed only when the socket peer is a configured trusted proxy, and
only the one header the policy names (``Policy.proxy_header``); it is walked right to
left: each hop that is itself a trusted proxy is skipped, and the first hop that is not
is the client. A malformed hop ends the walk at the last address that could be verified.
Every address is normalized by `abuseguard.intel.ip` (the parser the MaxMind intel uses
too): IPv4-mapped and NAT64 IPv6 become IPv4, a scope (``fe80::1%eth0``) is dropped, and
anything that is not an IP becomes ``UNKNOWN_IP``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from abuseguard.intel.ip import (
    network_text,
    parse_address,
    parse_ip,
    special_network,
    strip_port,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN_IP = "unknown"

# The proxy headers `client_ip` can read; `Policy.proxy_header` names the one to trust.
PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
DEFAULT_PROXY_HEADER = "x-forwarded-for"
# Headers that carry a credential: when repeated, the first value is the one (what
# Starlette's ``request.headers.get`` returns, so what the app authenticates).
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key"})


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """A normalized client address and the identities derived from it."""

    ip: str  # normalized text, or UNKNOWN_IP
    ip_key: str  # IPv4 as is; IPv6 grouped to the configured prefix ("2001:db8::/64")
    prefix_key: str  # the network-level prefix (/24, /48 by default)
    version: int  # 4, 6, or 0 when unknown
    private: bool  # loopback, private, link-local, reserved...


UNKNOWN_ADDRESS = ClientAddress(UNKNOWN_IP, UNKNOWN_IP, UNKNOWN_IP, 0, False)


class AddressBook:
    """Normalizes client addresses and derives their identities, with a bounded cache."""

    def __init__(
        self,
        *,
        ipv6_prefix: int = 64,
        ipv4_network_prefix: int = 24,
        ipv6_network_prefix: int = 48,
        cache_size: int = 65536,
    ) -> None:
        self.ipv6_prefix = ipv6_prefix
        self.ipv4_network_prefix = ipv4_network_prefix
        self.ipv6_network_prefix = ipv6_network_prefix
        self._cache: dict[str, ClientAddress] = {}
        self._cache_size = cache_size

    def resolve(self, text: str | None) -> ClientAddress:
        if text is None:
            return UNKNOWN_ADDRESS
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        result = self._describe(text) if isinstance(text, str) else UNKNOWN_ADDRESS
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # bounded: a flood of unique addresses cannot grow it
        self._cache[text] = result
        return result

    def _describe(self, text: str) -> ClientAddress:
        # inet_pton/inet_ntop (C) instead of ipaddress objects: a flood of new addresses
        # (IPv6 rotation) must stay cheap per address.
        parsed = parse_ip(strip_port(text.strip()))
        if parsed is None:
            return UNKNOWN_ADDRESS
        version, value, _ = parsed
        private = special_network(version, value) is not None
        if version == 4:
            ip = socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
            if ip == text:
                ip = text  # the cache's key already holds this string: keep one copy
            return ClientAddress(
                ip, ip, network_text(4, value, self.ipv4_network_prefix), 4, private
            )
        ip = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
        if ip == text:
            ip = text  # as for IPv4: the cache's key is this string already
        return ClientAddress(
            ip,
            network_text(6, value, self.ipv6_prefix),
            network_text(6, value, self.ipv6_network_prefix),
            6,
            private,
        )


def _in_any(addr: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` values of an RFC 7239 Forwarded header, in order (nearest last)."""
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, sep, val = pair.strip().partition("=")
            if sep and name.strip().lower() == "for":
                hops.append(val.strip().strip('"'))
    return hops


def rightmost_list_items(value: str, limit: int) -> str:
    """The right-most whole items of a comma-separated header value, at most ``limit``
    characters of it: a proxy header too long to keep whole still names the hops nearest
    the trusted proxies, which are the only ones the walk needs. An item cut in two is left
    out (its right half could read as another address)."""
    if len(value) <= limit:
        return value
    if limit <= 0:
        return ""
    tail = value[-limit:]
    if value[: len(value) - limit].rstrip(" \t").endswith(","):
        return tail  # the cut falls between items (or in the whitespace before one)
    comma = tail.find(",")
    return tail[comma + 1 :] if comma >= 0 else ""


def _items_from_right(value: str) -> Iterator[str]:
    """The comma-separated items of ``value``, nearest (right-most) first, split lazily:
    the walk usually stops after a hop or two of a chain that may be kilobytes long."""
    end = len(value)
    while end >= 0:
        start = value.rfind(",", 0, end)
        yield value[start + 1 : end]
        end = start


def peer_is_trusted(peer: str | None, trusted_proxies: tuple[IPNetwork, ...]) -> bool:
    """Whether the direct peer's address is in one of ``trusted_proxies``."""
    if peer is None or not trusted_proxies:
        return False
    addr = parse_address(peer)
    return addr is not None and _in_any(addr, trusted_proxies)


def client_ip(
    peer: str | None,
    headers: Mapping[str, str],
    trusted_proxies: tuple[IPNetwork, ...],
    proxy_header: str = DEFAULT_PROXY_HEADER,
) -> str | None:
    """The client address: the peer, or the ``proxy_header`` hops when the peer is trusted.

    Only ``proxy_header`` is read: a proxy that sets one header passes the others through
    from the client, so any other would let the client choose its address. ``x-real-ip``
    holds one address, but a repeated one (the client's, then the proxy's) is read like
    X-Forwarded-For, from the right."""
    if not peer_is_trusted(peer, trusted_proxies):
        return peer
    value = headers.get(proxy_header)
    if not value:
        hops: Iterable[str] = ()
    elif proxy_header == "forwarded":
        hops = reversed(_forwarded_for(value))
    else:
        hops = _items_from_right(value)
    client = peer
    for hop in hops:
        addr = parse_address(hop)
        if addr is None:
            break  # "unknown", obfuscated or malformed: stop at the last verified hop
        client = str(addr)
        if not _in_any(addr, trusted_proxies):
            break
    return client


def hash_key(secret: str, raw: str) -> str:
    """A short, keyed hash of an API key: raw keys never reach storage, logs or metrics."""
    digest = hashlib.blake2b(
        raw.encode("utf-8", "surrogateescape"), digest_size=12, key=secret.encode()[:64]
    )
    return digest.hexdigest()


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The raw API key from ``Authorization: Bearer …`` or ``x-api-key``, if any."""
    return api_key_from_values(headers.get("authorization"), headers.get("x-api-key"))


def api_key_from_values(auth: str | None, key: str | None) -> str | None:
    """`api_key_from_headers` from the two headers' values (None when absent)."""
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
    if key:
        key = key.strip()
        return key or None
    return None
