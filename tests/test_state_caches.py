"""The per-client objects of the identify and enrich stages: what a new client costs
there, and that it is shared or bounded (issue 17: a tracked client is bytes in arrays)."""

from __future__ import annotations

import gc

from abuseguard import Guard, NetworkPolicy, Policy, RequestInfo
from abuseguard.identity import AddressBook
from abuseguard.intel.network import NetworkView
from abuseguard.intel.records import NetworkFacts


def test_without_databases_or_cidr_rules_every_address_shares_one_profile() -> None:
    view = NetworkView(NetworkPolicy(), None)
    book = AddressBook()
    profiles = {id(view.profile(book.resolve(f"198.51.{i // 256}.{i % 256}"))) for i in range(500)}
    assert len(profiles) == 1
    assert len(view._cache) == 1


def test_addresses_with_equal_facts_share_one_profile_object() -> None:
    """With a database the cache is per address, but a profile object is per distinct
    facts: a network's addresses share one."""

    class OneNetwork:
        data_version = 1

        def current_data_version(self) -> int:
            return 1

        def lookup(self, ip: str) -> NetworkFacts:
            return NetworkFacts(asn=64500, country="DE", network="198.51.100.0/24")

    view = NetworkView(NetworkPolicy(), OneNetwork())  # type: ignore[arg-type]
    book = AddressBook()
    profiles = [view.profile(book.resolve(f"198.51.100.{i}")) for i in range(200)]
    assert len(view._cache) == 200
    assert len({id(p) for p in profiles}) == 1
    assert profiles[0].asn_key == 64500


def test_a_normalized_ipv4_address_is_kept_once() -> None:
    book = AddressBook()
    text = "".join(["203.0.113.", "7"])  # a fresh string, as a request's would be
    address = book.resolve(text)
    assert address.ip is text and address.ip_key is text
    assert book.resolve(" 203.0.113.7 ").ip == "203.0.113.7"


def test_a_normalized_ipv6_address_is_kept_once() -> None:
    book = AddressBook()
    text = "".join(["2001:db8::", "7"])  # a fresh string, as a request's would be
    address = book.resolve(text)
    assert address.ip is text
    assert book.resolve("2001:DB8:0::7").ip == "2001:db8::7"


def test_tracked_api_key_clients_leave_no_python_objects_in_the_engine() -> None:
    """5,000 API-key clients, each on its own address, each key accepted by the app: the
    engine's tables hold them in arrays and the unverified-key budgets in slots; what the
    garbage collector tracks grows only by the address book's entries (one
    `ClientAddress` per address), not by anything per table row, profile or budget."""
    guard = Guard(Policy(max_identities=10_000))

    def serve(info: RequestInfo) -> None:
        guard.complete(info, guard.check(info), status=200)

    for i in range(100):  # the caches' own first entries, the decision types, ...
        serve(RequestInfo(ip=f"192.0.2.{i}", key=f"warm-{i}", ts=1.0 + i))
    guard.addresses._cache.clear()
    gc.collect()
    before = len(gc.get_objects())
    n = 5_000
    for i in range(n):
        serve(
            RequestInfo(
                ip=f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", key=f"k{i}", ts=200.0 + i
            )
        )
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert len(guard.engine.tables[0]) == n + 100 and len(guard.engine.accounts) == n + 100
    assert guard.unverified_keys is not None
    assert guard.unverified_keys.stats()["accepted_keys"] == n + 100
    assert grown <= n * 1.05, grown
    info = RequestInfo(ip="10.0.0.42", key="k42")
    assert guard.engine.tables[0].find(guard.identity_of(info)[0]) is not None
