"""A request's headers as a read-only mapping over the raw (bytes, bytes) pairs, decoded on
demand.

The middleware reads the few headers the guard needs straight from the raw pairs (one
``dict(raw)``, a C-level pass) and hands the rest of the core this view instead of a dict
of every header decoded up front: a name or value is decoded (as latin-1, which never
fails) only when something asks for it. It is made only when every name occurs once and
no value is over the size limit; it then equals the dict of all headers decoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar, overload

_T = TypeVar("_T")


class ScopeHeaders(Mapping[str, str]):
    """Header name (lower-case, as ASGI servers send it) -> value, decoded on demand."""

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[bytes, bytes]) -> None:
        self._raw = raw  # owned: the caller never changes it afterwards

    def __getitem__(self, name: str) -> str:
        try:
            value = self._raw[name.encode("latin-1")]
        except (KeyError, AttributeError, UnicodeEncodeError):
            raise KeyError(name) from None
        return value.decode("latin-1")

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, default: str, /) -> str: ...
    @overload
    def get(self, name: str, default: _T, /) -> str | _T: ...

    def get(self, name: str, default: object = None, /) -> object:
        try:
            value = self._raw.get(name.encode("latin-1"))
        except (AttributeError, UnicodeEncodeError):
            return default
        return default if value is None else value.decode("latin-1")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            return name.encode("latin-1") in self._raw
        except UnicodeEncodeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name in self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def raw_names(self) -> tuple[bytes, ...]:
        """The header names in order, undecoded: a cheap key for the header shape."""
        return tuple(self._raw)

    def __repr__(self) -> str:
        return f"ScopeHeaders({dict(self)!r})"
