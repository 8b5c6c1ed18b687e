"""The enrich stage (issue 15 item 5): the core imports no web framework, enrichers share one
interface, IP parsing has one implementation, and simulated traces are written through the
trace schema."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from abuseguard.identity import UNKNOWN_IP, AddressBook, client_ip


def test_core_imports_nothing_from_starlette() -> None:
    # A fresh interpreter: this test process has Starlette loaded by other tests.
    code = (
        "import sys, abuseguard.guard; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'starlette'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


def test_public_adapter_names_still_import_from_the_package() -> None:
    import abuseguard
    from abuseguard.middleware import AbuseGuard, current_decision

    assert abuseguard.AbuseGuard is AbuseGuard
    assert abuseguard.current_decision is current_decision
    assert {"AbuseGuard", "current_decision"} <= set(abuseguard.__all__)


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    "hop",
    [
        "10.0.0.5",
        "::ffff:10.0.0.5",
        "64:ff9b::10.0.0.5",  # NAT64: the identity reads 10.0.0.5, a trusted proxy
        "64:ff9b::c633:6409",  # NAT64 of 198.51.100.9
        "10.0.0.5%eth0",  # a zone on IPv4 is no address to the identity
        "fe80::1%",  # empty zone
        "fd00::7%eth0",
        "[fd00::7]:443",
        "192.0.2.44:8080",
        "unknown",
    ],
)
def test_proxy_walk_reads_each_hop_as_the_address_book_does(hop: str) -> None:
    # One parser for both: a hop the identity sees as a trusted proxy is skipped by the
    # walk, one it cannot read ends the walk, anything else is the client.
    headers = {"x-forwarded-for": f"198.51.100.7, {hop}"}
    client = client_ip("10.0.0.1", headers, TRUSTED)
    seen = AddressBook().resolve(hop)
    if seen.ip == UNKNOWN_IP:
        assert client == "10.0.0.1"
    elif any(ipaddress.ip_address(seen.ip) in net for net in TRUSTED):
        assert client == "198.51.100.7"
    else:
        assert client is not None
        assert AddressBook().resolve(client).ip == seen.ip
