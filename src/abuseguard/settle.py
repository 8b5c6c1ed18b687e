"""The settle stage: what the response teaches, after the app answered.

`Settlement.complete` feeds one outcome back: the concurrency slots a decision holds are
released, a status teaches the unverified-key budgets whether the key was accepted and
the key's error share, and a real cost that differs from the estimate is charged to every
limit that counted the estimate (`Settlement.reconcile`). With a shared backend the release
and the reconciliation go through the backend port (queued, never awaited); the error
signal stays in the local engine. A refused request teaches nothing, and neither does, to
the engine, a served success without a cost of a key whose error share is zero (known
without looking its row up: `Settlement._erring`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from abuseguard.backends.base import Backend, LocalLimits
from abuseguard.backends.memory import APP_WIDE, quota_counter
from abuseguard.engine import layout as L
from abuseguard.plan_overrides import PlanOverrides

# Bits of the filter of identities whose key row may hold a non-zero error share (one
# bit per identity hash, 1 MiB): a served success of any other identity has nothing to
# record, so its key row is not even looked up.
_ERRING_BITS = 1 << 23
_ERRING_MASK = _ERRING_BITS - 1

if TYPE_CHECKING:
    from abuseguard.decision import Decision
    from abuseguard.engine.engine import Engine
    from abuseguard.identity import AddressBook, ClientAddress
    from abuseguard.intel.network import NetworkView
    from abuseguard.keyprobe import UnverifiedKeyLimiter
    from abuseguard.policy import Policy
    from abuseguard.request import RequestInfo
    from abuseguard.route_limits import RouteLimiter


class Settlement:
    """The settle stage of one Guard."""

    def __init__(
        self,
        policy: Policy,
        backend: Backend,
        engine: Engine,
        *,
        addresses: AddressBook,
        network: NetworkView | None,
        unverified_keys: UnverifiedKeyLimiter | None,
        scoring_on: bool,
        clock: Callable[[], float],
        route_limits: RouteLimiter | None = None,
    ) -> None:
        self.policy = policy
        self.backend = backend
        self.engine = engine
        self.addresses = addresses
        self.network = network
        self.unverified_keys = unverified_keys
        self.scoring_on = scoring_on
        self.clock = clock
        self.route_limits = route_limits
        self.plan_overrides = PlanOverrides(policy)
        self.shared = backend.shared
        self.tables = engine.tables
        self.key_index = engine.tables[L.KIND_KEY].index
        # Python floats from the key table without numpy's scalar objects.
        self.key_rows = engine.tables[L.KIND_KEY].data_view
        # A Bloom filter with one hash, never cleared: an identity whose key row was ever
        # given an error (`Engine.record_outcome`, the only writer of the error share) has
        # its bit set, so a clear bit means a zero share. Bits, not a set of identities:
        # no Python object per client, and no bound to pass.
        self._erring = bytearray(_ERRING_BITS // 8)

    def complete(
        self,
        info: RequestInfo,
        decision: Decision,
        status: int | None,
        cost: float | None,
        release: bool,
        invalid_key: bool,
        usage: float | None = None,
    ) -> None:
        """`Guard.complete`: release, what the status teaches, the real cost (and the
        spend: ``usage``, else the cost)."""
        if release and decision.held:
            self.release(decision)
        identity = decision.identity
        unverified = self.unverified_keys
        if (
            unverified is not None
            and identity[:2] == "k:"
            and (status is not None or invalid_key)
            and decision.served
        ):
            now = info.ts if info.ts is not None else self.clock()
            unverified.learn(identity, info.ip, status, now, invalid=invalid_key)
        # A refusal teaches nothing: only the origin's answers count (the guard's own
        # refusals would feed themselves) and a refused request cost nothing.
        if not identity or not decision.served:
            return
        outcome = status is not None and self.scoring_on
        is_error = outcome and status is not None and 400 <= status < 600 and status != 429
        if cost is None and usage is None and not is_error:
            h = hash(identity) & _ERRING_MASK
            if not self._erring[h >> 3] & (1 << (h & 7)):
                # Nothing to record: a success moves a zero error share nowhere, and
                # there is no cost to reconcile or spend to add.
                return
        row = self.key_index.get(identity)
        if row is None and not self.shared:
            return
        if row is not None and outcome:
            self._record_outcome(identity, row, is_error)
        spent = cost if usage is None else usage
        if (
            row is not None
            and spent is not None
            and 0 < spent < float("inf")
            and self.scoring_on
            and identity[:2] == "k:"
        ):
            self.engine.add_spend(row, spent, info.ts if info.ts is not None else self.clock())
        if cost is not None and 0 <= cost < float("inf") and cost != decision.cost:
            self.reconcile(info, decision, row, cost)

    def complete_plain_allow(self, info: RequestInfo, identity: str, status: int | None) -> None:
        """`complete` of a plain allow (served, no slot held) without a real cost, a usage
        or an invalid key: only what the status teaches."""
        if status is None:
            return
        unverified = self.unverified_keys
        if unverified is not None and identity[:2] == "k:":
            now = info.ts if info.ts is not None else self.clock()
            unverified.learn(identity, info.ip, status, now)
        if not identity or not self.scoring_on:
            return
        is_error = 400 <= status < 600 and status != 429
        if not is_error:
            h = hash(identity) & _ERRING_MASK
            if not self._erring[h >> 3] & (1 << (h & 7)):
                return  # a success moves a zero error share nowhere
        row = self.key_index.get(identity)
        if row is not None:
            self._record_outcome(identity, row, is_error)

    def _record_outcome(self, identity: str, row: int, is_error: bool) -> None:
        """Teach the key row of ``identity`` one answer of the app (its error share)."""
        # A success moves a zero error share nowhere: skip the call, the common case.
        if is_error or self.key_rows[row, L.F_ERR] != 0.0:
            if is_error:
                h = hash(identity) & _ERRING_MASK
                self._erring[h >> 3] |= 1 << (h & 7)
            self.engine.record_outcome(row, is_error)

    def report_invalid_key(
        self, info: RequestInfo, identified: tuple[str, bool, ClientAddress]
    ) -> bool:
        """`Guard.report_invalid_key` for the request ``info``, whose (identity, has an
        account, address) is ``identified``."""
        unverified = self.unverified_keys
        identity, has_account, _ = identified
        if unverified is None or not has_account:
            return False
        unverified.report_invalid(
            identity, info.ip, info.ts if info.ts is not None else self.clock()
        )
        return True

    def release(self, decision: Decision) -> None:
        """Give back the concurrency slots a decision holds."""
        backend = self.backend
        for ident in decision.held:
            backend.release(ident)

    def reconcile(
        self, info: RequestInfo, decision: Decision, row: int | None, cost: float
    ) -> None:
        """Charge the difference between the real cost and the estimate to every limit that
        counted the estimate: the key bucket, the network buckets and the by-cost quotas
        (the plan's own instead of the app-wide ones when its plan replaced them)."""
        identity = decision.identity
        delta = cost - decision.cost
        backend = self.backend
        policy = self.policy
        network = policy.network
        net_keys: list[tuple[int, object]] = []
        if network is not None and (network.per_ip or network.per_prefix or network.per_asn):
            net_keys = self.network_keys(info)
        if self.shared:
            backend.reconcile(identity, delta)
            for kind, key in net_keys:
                backend.reconcile_network(kind, key, delta)
        else:
            if row is not None:
                self.engine.charge(L.KIND_KEY, row, delta)
            for kind, key in net_keys:
                net_row = self.tables[kind].index.get(key)
                if net_row is not None:
                    self.engine.charge(kind, net_row, delta)
        hits = max(0, round(cost)) - max(0, round(decision.cost))
        if not hits:
            return
        if self.route_limits is not None:
            ip_key = self.addresses.resolve(info.ip).ip_key
            self.route_limits.reconcile(info, identity, ip_key, hits)
        replaced = not self.plan_overrides.for_plan(info.plan).quotas
        for index, quota in enumerate(policy.quotas):
            if quota.by_cost and not replaced:
                ident = (
                    identity
                    if quota.per == "key"
                    else "i:" + self.addresses.resolve(info.ip).ip_key
                )
                if isinstance(backend, LocalLimits):
                    counter = quota_counter(APP_WIDE, quota, ident)
                    backend.reconcile_quota(quota.limit, quota.strategy, counter, hits)
                else:
                    backend.reconcile_shared_quota(index, quota, ident, hits)

    def network_keys(self, info: RequestInfo) -> list[tuple[int, object]]:
        """The network buckets' identities of a request (kind, key), as the engine stage
        finds them (`Guard._run`)."""
        network = self.policy.network
        view = self.network
        if network is None or view is None:
            return []
        address = self.addresses.resolve(info.ip)
        keys: list[tuple[int, object]] = []
        if address.version:
            if network.per_ip is not None:
                keys.append((L.KIND_IP, address.ip_key))
            if network.per_prefix is not None:
                keys.append((L.KIND_PREFIX, address.prefix_key))
        if network.per_asn is not None:
            profile = view.profile(
                address, info.asn, info.as_org, info.country, info.anon, info.anon_confidence
            )
            if profile.allowed:
                return []
            if profile.asn_key is not None:
                keys.append((L.KIND_ASN, profile.asn_key))
        return keys


__all__ = ["Settlement"]
