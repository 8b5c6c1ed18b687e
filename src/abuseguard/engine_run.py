"""The engine stage: a `Prepared` request's rows claimed in the state tables and the request
decided, in one kernel call (`kernels.claim_and_decide`), its outputs left in the engine's
io vector. It also keeps the count of requests in flight (the middleware's), which slows
refills under load (`Policy.load_target`)."""

from __future__ import annotations

from typing import Any

from abuseguard.account import AccountRules
from abuseguard.engine import hashindex, kernel_set
from abuseguard.engine import layout as L
from abuseguard.engine.engine import Engine
from abuseguard.policy import Policy
from abuseguard.prepare import Prepared

# Bits of `hashindex.claim_rows`'s ``want``: a table by kind, the account table at 5.
_WANT_NETWORK = (1 << L.KIND_IP) | (1 << L.KIND_PREFIX)
_WANT_ASN = 1 << L.KIND_ASN
_WANT_PERSONA = 1 << L.KIND_PERSONA
_WANT_ACCOUNT = 1 << L.KIND_ACCOUNT
_FULL = hashindex.FULL


class EngineRun:
    """Runs the engine of one Guard for a request: ``run(p)`` (True for a plain allow),
    ``run_engine(p)`` (the io vector), ``load_factor()``; ``inflight`` is the count of
    requests in flight the middleware keeps."""

    def __init__(self, policy: Policy, engine: Engine, account_rules: AccountRules | None) -> None:
        self.engine = engine
        self.inflight = 0
        # load_target <= 0 means off: no in-flight count is ever above infinity.
        self.load_target = policy.load_target if policy.load_target > 0 else float("inf")
        self._account_rules = account_rules
        self._tables = engine.tables
        self._accounts = engine.accounts
        self._index_vector = engine.index_vector
        self._state = engine.state
        self._claim_rows = engine.claim_rows
        self._claim_and_decide = engine.claim_and_decide
        network = policy.network
        # The network tables (bits of `hashindex.claim_rows`'s ``want``) a request with an
        # account gets rows in, and an anonymous one (only those whose bucket it must pass).
        self._network_want = _WANT_NETWORK | _WANT_ASN | _WANT_PERSONA
        self._anonymous_network_want = (
            (1 << L.KIND_IP if network and network.per_ip else 0)
            | (1 << L.KIND_PREFIX if network and network.per_prefix else 0)
            | (_WANT_ASN if network and network.per_asn else 0)
        )

    def use_kernels(self, chosen: kernel_set.KernelSet) -> None:
        """Call ``chosen`` from now on (the engine switched its arrays' kernels already)."""
        self._claim_rows = chosen.claim_rows
        self._claim_and_decide = chosen.claim_and_decide

    def load_factor(self) -> float:
        target = self.load_target
        if self.inflight <= target:
            return 1.0
        return max(0.1, target / self.inflight)

    def run_engine(self, p: Prepared) -> Any:
        """Find the rows, call the kernel once, return the io vector."""
        self.run(p)
        return self.engine.io

    def run(self, p: Prepared) -> bool:
        """Claim the rows and decide in one kernel call (two when a table is full: Python
        evicts in between); True for a plain allow (see `kernels.claim_and_decide`), the io
        vector holds the outputs."""
        # (Layout constants are read as locals here: an ``L.X`` lookup costs ~40 ns.)
        identity = p.identity
        inflight = self.inflight
        load = 1.0 if inflight <= self.load_target else self.load_factor()
        profile = p.profile
        # Which tables the request has a row in (bit kind; bit 5 the account table), and
        # the hash of its identity in each (`engine.hashindex`).
        want = _WANT_ACCOUNT if p.has_account else 0
        h_ip = h_prefix = h_asn = h_persona = 0
        if profile is None or profile.allowed:
            # No network policy, or allow-listed: no network rows; an allow-listed request
            # passes its buckets but is not scored.
            scored = profile is None
            country = 0
            anon = geo = distrust = nat = 0.0
        else:
            # Network rows count accounts (fan-in) and hold network buckets. An anonymous
            # client has no account to count, so it only gets the rows whose bucket it must
            # pass: an IPv6 flood then costs one narrow key row per address and no more.
            scored = True
            address = p.address
            if address.version:
                h_ip = hash(address.ip_key)
                h_prefix = hash(address.prefix_key)
            asn_key = profile.asn_key
            if asn_key is not None:
                h_asn = hash(asn_key)
            persona = p.persona
            if persona:
                h_persona = hash(persona)
            want |= (
                (_WANT_NETWORK if address.version else 0)
                | (_WANT_ASN if asn_key is not None else 0)
                | (_WANT_PERSONA if persona else 0)
            ) & (self._network_want if p.has_account else self._anonymous_network_want)
            country = profile.country_code
            anon = profile.anon_signal
            geo = profile.geo_signal
            distrust = profile.distrust
            nat = 1.0 if profile.nat_eligible else 0.0
        h_key = hash(identity)
        ts = p.ts
        rules = self._account_rules
        if rules is not None and (p.account is not None or rules.trusted_identities):
            # The account's rules write its key row before the decision: claim first.
            r_key = self._claim(want, h_key, h_ip, h_prefix, h_asn, h_persona, ts)
            rules.apply(self._tables[0].data[r_key], identity, p.account)
        while True:
            decided = self._claim_and_decide(
                self._state,
                self._index_vector,
                want,
                h_key,
                h_ip,
                h_prefix,
                h_asn,
                h_persona,
                country,
                p.simhash,
                p.template_id,
                p.ua_class,
                ts,
                p.cost,
                load,
                anon,
                geo,
                p.persona_mismatch if scored else 0.0,
                p.elicitation,
                1.0 if p.has_content else 0.0,
                distrust,
                nat,
                scored,
            )
            if decided >= 0:
                return decided == 1
            # A table is full and the identity new there: it takes an evicted row there
            # (Python), and the next call finds every row.
            self._evict(-decided, h_key, h_ip, h_prefix, h_asn, h_persona, ts)

    def _claim(
        self, want: int, h_key: int, h_ip: int, h_prefix: int, h_asn: int, h_persona: int, ts: float
    ) -> int:
        """Claim the request's rows now (evicting where a table is full); its key row."""
        *rows, full = self._claim_rows(
            self._index_vector, want, h_key, h_ip, h_prefix, h_asn, h_persona
        )
        if full:
            full_bits = sum(1 << bit for bit, row in enumerate(rows) if row == _FULL)
            evicted = self._evict(full_bits, h_key, h_ip, h_prefix, h_asn, h_persona, ts)
            if rows[0] == _FULL:
                return evicted
        return int(rows[0])

    def _evict(
        self,
        full_bits: int,
        h_key: int,
        h_ip: int,
        h_prefix: int,
        h_asn: int,
        h_persona: int,
        ts: float,
    ) -> int:
        """Give the identity a row, by eviction, in each table of ``full_bits`` (bit kind,
        bit 5 the account table); its key row if the key table was one, else -1."""
        key_table, ip_table, prefix_table, asn_table, persona_table = self._tables
        key_row = -1
        if full_bits & 1:
            key_row = key_table.evict_for(h_key, ts)
        if full_bits & 32:
            self._accounts.evict_for(h_key, ts)
        if full_bits & 2:
            ip_table.evict_for(h_ip, ts)
        if full_bits & 4:
            prefix_table.evict_for(h_prefix, ts)
        if full_bits & 8:
            asn_table.evict_for(h_asn, ts)
        if full_bits & 16:
            persona_table.evict_for(h_persona, ts)
        return key_row


__all__ = ["EngineRun"]
