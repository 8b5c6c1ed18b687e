"""The engine as a backend reaches it: rows by identity and the bucket parameters.

A shared backend reads and writes single fields of the engine's rows (a sketch estimate,
when a client was told to wait, the tokens its share of a synced bucket leaves here) and,
in the fail mode or in synced mode, swaps the kernel's bucket parameters. `EngineRows` is
that port; `engine_rows` builds it over an `Engine` (backends never see the arrays).
Kinds are the layout's (``L.KIND_KEY`` .. ``L.KIND_PERSONA``, and ``L.KIND_ACCOUNT`` for
the account table); fields are the layout's ``F_*`` / ``A_*`` columns.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Protocol

from numpy.typing import ArrayLike

from abuseguard.engine import layout as L

if TYPE_CHECKING:
    from abuseguard.engine.engine import Engine


class EngineRows(Protocol):
    """Rows by identity, and the kernel's bucket parameters."""

    def row(self, kind: int, key: Hashable) -> int | None:
        """The row of ``key`` in the ``kind`` table, None when it has none here."""
        ...

    def owns(self, kind: int, row: int, key: Hashable) -> bool:
        """Does ``row`` still belong to ``key`` (rows are reused after an eviction)?"""
        ...

    def get(self, kind: int, row: int, field: int) -> float: ...
    def put(self, kind: int, row: int, field: int, value: float) -> None: ...
    def charge(self, kind: int, row: int, delta: float) -> None:
        """Take ``delta`` tokens from a row's bucket (< 0: give back), as the kernel."""
        ...

    def hold_ban(self, key: Hashable, until: float, now: float, burst: float) -> None:
        """Keep a ban of an identity evicted here until ``until`` (see `engine.held`)."""
        ...

    def parameter(self, index: int) -> float:
        """One of the kernel's parameters (``L.P_*``), read-only."""
        ...

    def set_bucket_parameters(self, vector: ArrayLike) -> None:
        """(rate, burst) of every kind's bucket, in kind order; zeros turn a bucket off."""
        ...

    def fill_tokens(self, kind: int, tokens: float) -> None:
        """Every row of the ``kind`` table starts with ``tokens`` (a new outage)."""
        ...


class _Rows:
    """`EngineRows` over an `Engine`: Python floats through memoryviews, no numpy scalars."""

    __slots__ = ("_engine", "_tables", "_views")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._tables = (*engine.tables, engine.accounts)  # index L.KIND_ACCOUNT: accounts
        self._views = [t.data_view for t in self._tables]

    def row(self, kind: int, key: Hashable) -> int | None:
        return self._tables[kind].find(key)

    def owns(self, kind: int, row: int, key: Hashable) -> bool:
        return self._tables[kind].owns(row, key)

    def get(self, kind: int, row: int, field: int) -> float:
        value: float = self._views[kind][row, field]
        return value

    def put(self, kind: int, row: int, field: int, value: float) -> None:
        self._views[kind][row, field] = value

    def charge(self, kind: int, row: int, delta: float) -> None:
        self._engine.charge(kind, row, delta)

    def hold_ban(self, key: Hashable, until: float, now: float, burst: float) -> None:
        self._engine.key_table.hold_ban(key, until, now, burst)

    def parameter(self, index: int) -> float:
        return float(self._engine.params[index])

    def set_bucket_parameters(self, vector: ArrayLike) -> None:
        self._engine.params[L.P_BUCKET : L.P_BUCKET + 2 * L.N_KINDS] = vector

    def fill_tokens(self, kind: int, tokens: float) -> None:
        self._tables[kind].data[:, L.F_TOKENS] = tokens


def engine_rows(engine: Engine) -> EngineRows:
    """The `EngineRows` port of ``engine``."""
    return _Rows(engine)


__all__ = ["EngineRows", "engine_rows"]
