"""Exceptions raised by abuseguard."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration, raised at construction. The message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class BackendError(RuntimeError):
    """A storage backend failed (connection, timeout, script error)."""
