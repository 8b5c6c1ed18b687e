"""abuseguard: ASGI middleware against API abuse and model-output harvesting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abuseguard.account import AccountFacts, Accounts
from abuseguard.backends import Backend, MemoryBackend
from abuseguard.decision import Action, Decision, PolicyState
from abuseguard.degrade import DegradeContext, DegradeOptions
from abuseguard.enforce import Allow, Block, Challenge, Degrade, Delay, Enforcer, Log, Throttle
from abuseguard.errors import BackendError, ConfigError
from abuseguard.guard import Guard
from abuseguard.keyprobe import mark_invalid_key
from abuseguard.policy import (
    AnonymizerRule,
    Concurrency,
    EdgeSignals,
    Enforcement,
    Evidence,
    FailMode,
    Limits,
    NetworkPolicy,
    Policy,
    Quota,
    Scoring,
    TokenBucket,
    UnverifiedKeys,
    WebSocketPolicy,
)
from abuseguard.request import RequestInfo

if TYPE_CHECKING:
    from abuseguard.middleware import AbuseGuard, current_decision

__all__ = [
    "AbuseGuard",
    "AccountFacts",
    "Accounts",
    "Action",
    "Allow",
    "AnonymizerRule",
    "Backend",
    "BackendError",
    "Block",
    "Challenge",
    "Concurrency",
    "ConfigError",
    "Decision",
    "Degrade",
    "DegradeContext",
    "DegradeOptions",
    "Delay",
    "EdgeSignals",
    "Enforcement",
    "Enforcer",
    "Evidence",
    "FailMode",
    "Guard",
    "Limits",
    "Log",
    "MemoryBackend",
    "NetworkPolicy",
    "Policy",
    "PolicyState",
    "Quota",
    "RequestInfo",
    "Scoring",
    "Throttle",
    "TokenBucket",
    "UnverifiedKeys",
    "WebSocketPolicy",
    "current_decision",
    "mark_invalid_key",
]
__version__ = "0.1.0"

# The ASGI adapter (and with it Starlette) is imported on first use, so that importing the
# framework-free core (`abuseguard.guard`, `abuseguard.policy` ...) loads no web framework.
_ADAPTER_NAMES = frozenset({"AbuseGuard", "current_decision"})


def __getattr__(name: str) -> Any:
    if name in _ADAPTER_NAMES:
        from abuseguard import middleware

        return getattr(middleware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
