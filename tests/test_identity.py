"""Client IP behind trusted proxies, address normalization, key and route identity."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from abuseguard.identity import (
    UNKNOWN_IP,
    AddressBook,
    api_key_from_headers,
    client_ip,
    hash_key,
)
from abuseguard.intel.ip import parse_address as parse_ip
from abuseguard.routes import RouteResolver

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def test_proxy_headers_ignored_from_untrusted_peer() -> None:
    headers = {"x-forwarded-for": "6.6.6.6", "forwarded": "for=7.7.7.7"}
    assert client_ip("203.0.113.9", headers, TRUSTED) == "203.0.113.9"
    assert client_ip("203.0.113.9", headers, ()) == "203.0.113.9"


def test_xff_walked_right_to_left_skipping_trusted_hops() -> None:
    headers = {"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.1.2.3"}
    # 6.6.6.6 is what the client claimed; 198.51.100.7 is the first untrusted hop.
    assert client_ip("10.0.0.1", headers, TRUSTED) == "198.51.100.7"


def test_forwarded_header_read_when_configured_and_parsed() -> None:
    headers = {
        "forwarded": 'for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"',
        "x-forwarded-for": "6.6.6.6",
    }
    assert client_ip("10.0.0.1", headers, TRUSTED, "forwarded") == "2001:db8:cafe::17"
    assert client_ip("10.0.0.1", headers, TRUSTED) == "6.6.6.6"  # default: X-Forwarded-For


@pytest.mark.parametrize("bad", ["unknown", "_hidden", "not an ip", "999.1.1.1", "", "1.2.3.4.5"])
def test_malformed_hop_stops_the_walk_at_the_last_verified_address(bad: str) -> None:
    headers = {"x-forwarded-for": f"198.51.100.7, {bad}, 10.9.9.9"}
    assert client_ip("10.0.0.1", headers, TRUSTED) == "10.9.9.9"
    assert client_ip("10.0.0.1", {"x-forwarded-for": bad}, TRUSTED) == "10.0.0.1"


def test_all_trusted_chain_gives_the_leftmost_hop() -> None:
    assert client_ip("10.0.0.1", {"x-forwarded-for": "10.0.0.3, 10.0.0.2"}, TRUSTED) == "10.0.0.3"


def test_huge_xff_is_handled() -> None:
    headers = {"x-forwarded-for": ", ".join(["10.0.0.5"] * 5000 + ["198.51.100.1"])}
    assert client_ip("10.0.0.1", headers, TRUSTED) == "198.51.100.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("192.0.2.1:8080", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
    ],
)
def test_parse_ip_normalizes(text: str, expected: str) -> None:
    assert str(parse_ip(text)) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.2.3", "x" * 1000, "[::1", "1.2.3.4.5", "\x00\xff"])
def test_parse_ip_rejects(text: str) -> None:
    assert parse_ip(text) is None


def test_address_book_groups_ipv6_and_flags_private() -> None:
    book = AddressBook(ipv6_prefix=64)
    a = book.resolve("2001:db8:1:2:aaaa::1")
    b = book.resolve("2001:db8:1:2:bbbb::9")
    assert a.ip_key == b.ip_key == "2001:db8:1:2::/64"
    assert a.prefix_key == "2001:db8:1::/48"
    v4 = book.resolve("93.184.216.34")
    assert (v4.ip_key, v4.prefix_key, v4.private) == ("93.184.216.34", "93.184.216.0/24", False)
    assert book.resolve("10.1.2.3").private
    assert book.resolve("fe80::1%eth0").private
    assert book.resolve("::ffff:10.0.0.1").ip == "10.0.0.1"
    assert book.resolve("garbage").ip == UNKNOWN_IP
    assert book.resolve(None).version == 0


def test_address_book_cache_is_bounded() -> None:
    book = AddressBook(cache_size=100)
    for i in range(1000):
        book.resolve(f"2001:db8::{i:x}")
    assert len(book._cache) <= 100


def test_api_key_sources() -> None:
    assert api_key_from_headers({"authorization": "Bearer sk-123"}) == "sk-123"
    assert api_key_from_headers({"authorization": "bearer   sk-9  "}) == "sk-9"
    assert api_key_from_headers({"authorization": "Basic dXNlcjpwdw=="}) is None
    assert api_key_from_headers({"authorization": "Bearer "}) is None
    assert api_key_from_headers({"x-api-key": " k1 "}) == "k1"
    assert api_key_from_headers({}) is None


def test_hash_key_is_keyed_and_short() -> None:
    assert hash_key("", "sk-1") == hash_key("", "sk-1")
    assert hash_key("", "sk-1") != hash_key("s3cret", "sk-1")
    assert "sk-1" not in hash_key("", "sk-1") and len(hash_key("", "sk-1")) == 24
    assert hash_key("", "\udcff surrogate") != ""


def _ok(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_route_template_includes_mount_prefix_never_raw_path() -> None:
    app = Starlette(
        routes=[
            Route("/items/{item_id}", _ok, methods=["GET"]),
            Mount("/v1", routes=[Route("/chat/{model}", _ok, methods=["POST"])]),
        ]
    )
    resolver = RouteResolver()

    def scope(method: str, path: str) -> dict[str, object]:
        return {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": "",
            "app": app,
            "headers": [],
        }

    assert resolver.template(scope("GET", "/items/42")) == "/items/{item_id}"
    assert resolver.template(scope("GET", "/items/43")) == "/items/{item_id}"
    assert resolver.template(scope("POST", "/v1/chat/gpt")) == "/v1/chat/{model}"
    assert resolver.template(scope("GET", "/nope/1")) == RouteResolver.UNMATCHED
    assert resolver.template({"type": "http", "path": "/x"}) == RouteResolver.UNMATCHED


def test_address_text_is_canonical_so_one_client_is_one_identity() -> None:
    book = AddressBook()
    a = book.resolve("2001:DB8:0:0:1::1")
    b = book.resolve("2001:db8::1:0:0:1")
    assert a.ip == b.ip == "2001:db8::1:0:0:1" and a.ip_key == b.ip_key
    assert book.resolve("[2001:db8::1]:443").ip == "2001:db8::1"
    assert book.resolve(" 192.0.2.1:8080 ").ip == "192.0.2.1"
