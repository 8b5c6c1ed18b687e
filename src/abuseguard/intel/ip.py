"""Client address parsing and the special-purpose ranges: one implementation, used by the
identity stage (`abuseguard.identity`) and the MaxMind intel (`abuseguard.intel.geo`).

`parse_ip` (never raises):

- not a string / ipaddress object, longer than `MAX_IP_TEXT`, or not an IPv4/IPv6 address
  (``""``, ``"abc"``, ``"1.2.3.4.5"``, ``"01.2.3.4"``, ``"[::1]"``, ``"1.2.3.4:80"``): None;
- surrounding whitespace is stripped;
- IPv4-mapped IPv6 (``::ffff:1.2.3.4``) and NAT64 addresses (``64:ff9b::1.2.3.4``) are
  read as the IPv4 address they carry;
- a zone (``fe80::1%eth0``) is dropped from IPv6 text; a zone on IPv4 text or an empty zone
  makes the input invalid.

`parse_address` also accepts a port and brackets. `special_network` names the loopback,
private, shared (CGNAT), link-local, unspecified, documentation, benchmarking, multicast
or reserved range (see `_SPECIAL_V4` / `_SPECIAL_V6`) an address is in.
"""

from __future__ import annotations

import socket
from bisect import bisect_right
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_network

# Longest accepted address text: 45 characters of IPv6 with embedded IPv4, plus a zone.
MAX_IP_TEXT = 64


# Upper 96 bits of IPv6 ranges that embed an IPv4 client: ::ffff:0:0/96 (IPv4-mapped) and
# 64:ff9b::/96 (well-known NAT64 prefix, how SIIT shows IPv4 clients to IPv6-only servers).
_MAPPED_V4 = 0xFFFF
_NAT64_V4 = 0x0064_FF9B_0000_0000_0000_0000


# A validated address: (family 4 or 6, integer value, text to look up). A plain tuple
# because it is built on every cache miss.
ParsedIP = tuple[int, int, str]

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes


def parse_ip(raw: object) -> ParsedIP | None:
    """Validate and normalise one address (see the module doc); None when it is not one."""
    if type(raw) is not str:
        if isinstance(raw, IPv4Address | IPv6Address):
            raw = str(raw)
        elif not isinstance(raw, str):
            return None
    if len(raw) > MAX_IP_TEXT:
        return None
    text = raw.strip()
    try:
        if ":" in text:
            if "%" in text:
                text, _, zone = text.partition("%")
                if not zone or "%" in zone or " " in zone or not zone.isprintable():
                    return None
            packed = _inet_pton(_AF_INET6, text)
            value = _from_bytes(packed, "big")
            high = value >> 32
            if high in (_MAPPED_V4, _NAT64_V4):
                return (4, value & 0xFFFFFFFF, socket.inet_ntop(_AF_INET, packed[12:]))
            return (6, value, text)
        return (4, _from_bytes(_inet_pton(_AF_INET, text), "big"), text)
    except (OSError, ValueError):
        return None


def network_text(version: int, value: int, prefix_len: int) -> str:
    """CIDR text of the `prefix_len` network that contains `value`."""
    bits = 32 if version == 4 else 128
    host_bits = bits - prefix_len
    masked = (value >> host_bits) << host_bits
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, masked.to_bytes(4, 'big'))}/{prefix_len}"
    return f"{socket.inet_ntop(socket.AF_INET6, masked.to_bytes(16, 'big'))}/{prefix_len}"


# Special-purpose ranges that never carry internet clients (IANA special-purpose registries).
# Unallocated unicast space is not listed: it is looked up and the databases have no data.
_SPECIAL_V4: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network", unspecified
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, includes limited broadcast
)
_SPECIAL_V6: tuple[str, ...] = (
    "::/8",  # unspecified, loopback, IPv4-compatible (deprecated), reserved (NAT64 and
    # IPv4-mapped addresses inside it are translated to IPv4 before this check)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "2001:2::/48",  # benchmarking
    "2001:10::/28",  # deprecated ORCHID
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "5f00::/16",  # segment routing SIDs
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local
    "ff00::/8",  # multicast
)


class _SpecialRanges:
    """Sorted, non-overlapping special ranges of one family, searched by bisection."""

    def __init__(self, cidrs: Sequence[str]) -> None:
        rows = []
        for cidr in cidrs:
            net = ip_network(cidr)
            rows.append((int(net.network_address), int(net.broadcast_address), str(net)))
        rows.sort(key=lambda row: row[0])
        self._starts = [row[0] for row in rows]
        self._rows = rows

    def find(self, value: int) -> str | None:
        index = bisect_right(self._starts, value) - 1
        if index >= 0:
            _, end, network = self._rows[index]
            if value <= end:
                return network
        return None


_SPECIAL = {4: _SpecialRanges(_SPECIAL_V4), 6: _SpecialRanges(_SPECIAL_V6)}


def special_network(version: int, value: int) -> str | None:
    """The special range (CIDR text) holding the address, or None for a global address."""
    return _SPECIAL[version].find(value)


def all_special_networks() -> tuple[str, ...]:
    """Every special range, as CIDR text normalised like `special_network` answers."""
    return tuple(str(ip_network(cidr)) for cidr in _SPECIAL_V4 + _SPECIAL_V6)


def strip_port(text: str) -> str:
    """``[2001:db8::1]:443`` -> ``2001:db8::1``; ``192.0.2.1:8080`` -> ``192.0.2.1``."""
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else ""
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def parse_address(text: str) -> IPv4Address | IPv6Address | None:
    """`parse_ip` that also accepts a port (``192.0.2.1:8080``, ``[2001:db8::1]:443``), as
    proxy headers and socket peers may carry one, and answers an address object (IPv4 for
    IPv4-mapped and NAT64 addresses, the zone dropped); None when it is not an address."""
    if not isinstance(text, str):
        return None
    parsed = parse_ip(strip_port(text.strip()))
    if parsed is None:
        return None
    version, value, _ = parsed
    return IPv4Address(value) if version == 4 else IPv6Address(value)
