"""The enrich stage (issue 15 item 5): the core imports no web framework, enrichers share one
interface, IP parsing has one implementation, and simulated traces are written through the
trace schema."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import subprocess
import sys
from typing import Any

import pytest

from abuseguard.account import AccountFacts
from abuseguard.guard import Guard, Prepared
from abuseguard.identity import UNKNOWN_IP, AddressBook, client_ip
from abuseguard.intel.content import ContentFingerprinter
from abuseguard.intel.enricher import Enricher
from abuseguard.policy import NetworkPolicy, Policy, Scoring
from abuseguard.request import RequestInfo
from abuseguard.sim import simulate
from abuseguard.traces import TRACE_FIELD_WRITERS, parse_line, trace_fields, trace_line


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


# ---------------------------------------------------------------------------- enrichers


def _scored_guard() -> Guard:
    return Guard(Policy(scoring=Scoring(content=True), network=NetworkPolicy()))


def test_each_source_is_an_enricher_and_fills_what_prepare_reads() -> None:
    guard = _scored_guard()
    assert guard.network is not None and guard.content is not None
    content: ContentFingerprinter = guard.content  # checked by mypy: each is an Enricher
    enrichers: list[Enricher[object]] = [guard.network, guard.client_enricher, content]
    prepared_fields = {f.name for f in dataclasses.fields(Prepared)}
    for enricher in enrichers:
        assert enricher.fills and set(enricher.fills) <= prepared_fields
    info = RequestInfo(
        ip="198.51.100.20",
        method="POST",
        path="/v1/chat",
        ua="OpenAI/Python 1.40.0",
        headers={"x-stainless-lang": "python", "content-type": "application/json"},
        body=json.dumps(
            {"messages": [{"role": "user", "content": "Explain step by step how tides work."}]}
        ),
        asn=64500,
        country="DE",
        anon=("vpn",),
    )
    p = guard.prepare(info)
    address = p.address
    assert guard.network.enrich(info, address) == p.profile
    assert guard.client_enricher.enrich(info, address) == (
        p.ua_class,
        p.persona,
        p.persona_mismatch,
    )
    facts = guard.content.enrich(info, address)
    assert facts is not None and facts.prompt_found and p.has_content
    assert (facts.simhash, facts.template_id, facts.elicitation) == (
        p.simhash,
        p.template_id,
        p.elicitation,
    )
    assert guard.content.enrich(dataclasses.replace(info, body=None), address) is None


# ---------------------------------------------------------------------------- trace schema


def test_every_field_the_trace_writer_writes_reads_back() -> None:
    fields: dict[str, Any] = {
        "ts": 1773151200.25,
        "ip": "2001:db8::7",
        "asn": 64500,
        "as_org": 'Réseau "Ouest"',
        "country": "FR",
        "anon": ("vpn", "tor"),
        "anon_confidence": 80,
        "key": "sk-tést",
        "method": "POST",
        "path": "/v1/chat/completions",
        "ua": "curl/8.0",
        "headers": {"accept": "*/*", "x-q": 'a"b'},
        "body": '{"prompt": "naïve \\u00e9 \\n"}',
        "status": 200,
        "cost": 12.5,
        "duration": 0.75,
        "actor": "abusive:0001",
        "label": "abusive",
        "kind": "bulk_harvest",
        "plan": "pro",
        "account": {"age_days": 2.5, "verified": False, "org": "Acmé", "tags": ["benchmark"]},
    }
    assert set(fields) == set(TRACE_FIELD_WRITERS)
    line = trace_line(trace_fields(**fields))
    record = parse_line(line)
    info = record.info
    assert (info.ts, info.ip, info.asn, info.as_org, info.country) == (
        1773151200.25,
        "2001:db8::7",
        64500,
        'Réseau "Ouest"',
        "FR",
    )
    assert (info.anon, info.anon_confidence, info.key, info.method, info.path) == (
        ("vpn", "tor"),
        80,
        "sk-tést",
        "POST",
        "/v1/chat/completions",
    )
    assert (info.ua, dict(info.headers), info.body) == (
        "curl/8.0",
        {"accept": "*/*", "x-q": 'a"b'},
        fields["body"],
    )
    assert (record.status, record.cost, record.duration) == (200, 12.5, 0.75)
    assert (record.actor, record.label, record.kind) == ("abusive:0001", "abusive", "bulk_harvest")
    assert info.plan == "pro"
    assert info.account == AccountFacts(
        age_days=2.5, verified=False, org="Acmé", tags=frozenset({"benchmark"})
    )
    with pytest.raises(KeyError):
        trace_fields(not_a_field=1)


def test_simulated_lines_are_the_trace_writers_lines() -> None:
    out = io.StringIO()
    simulate(out, hours=0.2, scale=0.05, seed=5)
    lines = out.getvalue().splitlines()
    assert lines
    for text in lines[:300]:
        obj = json.loads(text)
        assert set(obj) <= set(TRACE_FIELD_WRITERS)
        assert trace_line(trace_fields(**obj)) == text
