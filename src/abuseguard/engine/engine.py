"""Engine: the state tables, the kernel's buffers and parameters, and one call per request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from abuseguard.engine import hashindex, kernel_set, kernels
from abuseguard.engine import layout as L
from abuseguard.engine.bucket_rules import key_bucket_shape
from abuseguard.engine.params import build_params
from abuseguard.engine.table import KeyTable, StateTable
from abuseguard.engine.views import float_view, int_view
from abuseguard.policy import Policy


class Engine:
    """Preallocated state for every identity kind, worked on by `kernels.decide`: one state
    vector (``state``) holds the tables, the kernel's vectors and its parameters, and
    ``decide_with`` is the kernel's compiled entry point, called as
    ``decide_with(state, *inputs)`` (see `kernels.decide_with`).

    Not thread-safe: one engine serves one event loop (as the middleware does). The kernels
    (``implementation``, a `kernel_set.KernelSet`) are compiled or loaded from Numba's on-disk
    cache at construction when not given, never on a request; a guard may start on their
    Python twin and switch with `use_kernels`.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        local_buckets: bool = True,
        implementation: kernel_set.KernelSet | None = None,
    ) -> None:
        self.kernels = implementation if implementation is not None else kernel_set.compiled()
        capacity = policy.max_identities
        small = max(16, min(capacity, 65536))
        # Key, IP, prefix, ASN and persona tables, then the account table: only accounts
        # get a row there (prompt rings, fan-out sketches), so anonymous clients cost one
        # narrow key row.
        rows = (capacity, capacity, max(16, capacity // 2), small, small, capacity)
        self.state = kernels.new_state(rows)
        state = self.state
        # Identity -> row indexes of the six tables, in kind order then the accounts': one
        # int64 vector, so `hashindex.claim_rows` finds a request's rows in one call.
        self.index_vector = hashindex.new_index_vector(rows)
        index = self.index_vector
        # Key rows pushed out while banned or refused are held (see `table.KeyTable`).
        self.key_table = KeyTable(
            capacity,
            L.KEY_WIDTH,
            held_capacity=held_capacity(capacity),
            data=_region(state, L.KIND_KEY, L.KEY_WIDTH),
            index_vector=index,
            index_base=int(index[L.KIND_KEY]),
            kernels=self.kernels,
        )
        # The register blocks of the sketches that hold more than one value (`layout`).
        self.net_pool = _region(state, L.REGION_NET_POOL, L.NET_BLOCK_WIDTH)
        self.acc_pool = _region(state, L.REGION_ACC_POOL, L.ACC_BLOCK_WIDTH)
        self.tables: tuple[StateTable, ...] = (
            self.key_table,
            *(
                StateTable(
                    rows[kind],
                    L.NET_WIDTH,
                    data=_region(state, kind, L.NET_WIDTH),
                    index_vector=index,
                    index_base=int(index[kind]),
                    kernels=self.kernels,
                    sketch_pool=self.net_pool,
                    sketch_cells=(L.F_SKETCH_CELL, L.NET_SKETCHES),
                )
                for kind in range(1, L.N_KINDS)
            ),
        )
        self.accounts = StateTable(
            capacity,
            L.ACC_WIDTH,
            data=_region(state, L.REGION_ACC, L.ACC_WIDTH),
            index_vector=index,
            index_base=int(index[L.KIND_ACCOUNT]),
            kernels=self.kernels,
            sketch_pool=self.acc_pool,
            sketch_cells=(L.A_CELL, L.KEY_SKETCHES),
        )
        self.claim_rows = self.kernels.claim_rows
        # ``claim_rows`` and ``decide_with`` in one call, the request path's (see
        # `kernels.claim_and_decide`).
        self.claim_and_decide: Callable[..., int] = self.kernels.claim_and_decide
        self.cms = _region(state, L.REGION_CMS, L.CMS_WIDTH)
        self.io = _vector(state, L.REGION_IO, L.IO_SIZE)
        # The io vector read as Python floats, without numpy's scalar objects.
        self.io_view = float_view(self.io)
        # The rows the last decide() worked on (int64 words of the state vector).
        self.rows = _vector(state, L.REGION_IV, L.N_INT_INPUTS).view("int64")
        self.params = _vector(state, L.REGION_PRM, L.N_PARAMS)
        self.params[:] = build_params(policy, local_buckets=local_buckets)
        self.decide_with: Callable[..., bool] = self.kernels.decide_with
        # Python numbers without numpy's scalar objects, for the rare adjustments.
        self._rows_view = int_view(self.rows)
        self._params_view = float_view(self.params)
        self._table_views = [t.data_view for t in self.tables]

    def use_kernels(self, chosen: kernel_set.KernelSet) -> None:
        """Switch every table and entry point to ``chosen`` (another implementation of
        the same functions over the same arrays: results do not change)."""
        for state_table in (*self.tables, self.accounts):
            state_table.use_kernels(chosen)
        self.claim_rows = chosen.claim_rows
        self.claim_and_decide = chosen.claim_and_decide
        self.decide_with = chosen.decide_with
        self.kernels = chosen

    def record_outcome(self, key_row: int, is_error: bool) -> None:
        self.kernels.record_outcome(
            self.tables[L.KIND_KEY].data,
            key_row,
            1.0 if is_error else 0.0,
            float(self.params[L.P_ERR_ALPHA]),
        )

    def key_burst(self, row: int) -> float:
        """The burst of a key row's bucket: its plan's (`Policy.plans`) or the policy's."""
        params = self.params
        burst = float(params[L.P_BUCKET + 1])
        plan = int(self.tables[L.KIND_KEY].data[row, L.F_PLAN])
        if plan > 0:
            slot = L.P_PLAN_BUCKET + 2 * (plan - 1)
            burst = key_bucket_shape(float(params[slot]), float(params[slot + 1]), 0.0, burst)[1]
        return burst

    def charge(self, kind: int, row: int, delta: float) -> None:
        burst = (
            self.key_burst(row)
            if kind == L.KIND_KEY
            else float(self.params[L.P_BUCKET + 2 * kind + 1])
        )
        if burst > 0.0:
            self.kernels.charge(self.tables[kind].data, row, delta, burst)

    def adjust_last(self, delta: float) -> None:
        """Take ``delta`` more tokens (< 0: give back) from every bucket of the request the
        kernel decided last; call it before the next one. No cap: a refund restores a level
        the bucket held a moment ago (its ceiling may have been grown by NAT fairness)."""
        rows = self._rows_view
        params = self._params_view
        for kind in range(L.N_KINDS):
            row = rows[L.I_ROW + kind]
            if row >= 0 and (
                params[L.P_BUCKET + 2 * kind + 1] > 0.0
                or (kind == L.KIND_KEY and self._table_views[kind][row, L.F_PLAN] > 0.0)
            ):
                self._table_views[kind][row, L.F_TOKENS] -= delta

    def set_prior(self, key: object, prior: float) -> bool:
        """Background lane: write a risk prior (0..1) for an identity; False if unknown."""
        row = self.tables[L.KIND_KEY].find(key)
        if row is None:
            return False
        self.tables[L.KIND_KEY].data[row, L.F_PRIOR] = min(1.0, max(0.0, prior))
        return True

    def hold(self, key: object, ts: float) -> bool:
        """Background lane: hold an identity at the first accumulated-evidence step from
        ``ts`` on, as if its own evidence had crossed that step then (reason ``evidence``).
        The hold ends like any other: once the identity's evidence stayed below the first
        threshold for ``Evidence.quiet_period``, or at `forgive`. False when the identity
        is unknown here or accumulated evidence is off."""
        row = self.tables[L.KIND_KEY].find(key)
        if row is None or self.params[L.P_EV_STEPS_N] == 0:
            return False
        data = self.tables[L.KIND_KEY].data[row]
        data[L.F_EVIDENCE_HELD] = max(data[L.F_EVIDENCE_HELD], ts)
        data[L.F_STICKY] = max(data[L.F_STICKY], self.params[L.P_EV_LEVEL])
        return True

    def add_spend(self, key_row: int, amount: float, ts: float) -> None:
        """The real cost (tokens) of a served request of the identity at ``key_row``,
        reported after its response: the spend signal reads it."""
        self.kernels.add_spend(
            self.tables[L.KIND_KEY].data, self.cms, key_row, amount, ts, self.params
        )

    def forgive(self, key: object) -> bool:
        """Clear what an identity's risk has built up: its accumulated evidence and the
        hold of its steps, a ban, the smoothed score and ladder level, the lane's prior.
        Its limits (buckets, quotas) stay. False when the identity is unknown here."""
        row = self.key_table.find(key)
        data = self.key_table.data[row] if row is not None else self.key_table.held.row_of(key)
        if data is None:
            return False
        for field in (
            L.F_EVIDENCE,
            L.F_EVIDENCE_HELD,
            L.F_STICKY,
            L.F_BANNED_UNTIL,
            L.F_SCORE,
            L.F_LEVEL,
            L.F_COUPLING_SCORE,
            L.F_STRONG_UNTIL,
            L.F_PRIOR,
        ):
            data[field] = 0.0
        return True

    def last_kernel_inputs(self, *, scored: bool = True) -> tuple[Any, ...]:
        """The arguments of the last ``decide_with`` call, state vector first, read back
        from the state vector, where the kernel keeps its inputs: ``decide_with(*inputs)``
        repeats that call on the state as it is now, which times the kernel alone on a real
        request's inputs (the benchmarks). ``scored`` is not kept: False only when that
        request came from an allow-listed network. Python ints and floats, as a guard
        passes them."""
        vectors = {
            "iv": _vector(self.state, L.REGION_IV, L.N_INT_INPUTS).view(np.int64).tolist(),
            "io": self.io.tolist(),
        }
        inputs = [
            scored if vec == "flag" else vectors[vec][offset] for _, vec, offset in L.KERNEL_INPUTS
        ]
        return (self.state, *inputs)

    @property
    def nbytes(self) -> int:
        return (
            int(self.state.nbytes)
            + int(self.index_vector.nbytes)
            + int(self.key_table.held.data.nbytes)
        )


def held_capacity(max_identities: int) -> int:
    """How many banned or refused key rows are held past eviction: an eighth of the key
    table, at least 64."""
    return max(64, max_identities // 8)


# The views of the state vector as plain Python (calling the njit ones would compile them).
_region = kernels.region.py_func
_vector = kernels.vector.py_func

# The compiled entry of a Numba dispatcher (kept here: other modules cite this name).
_compiled_entry = hashindex.compiled_entry
