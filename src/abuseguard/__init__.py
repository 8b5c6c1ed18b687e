"""abuseguard: ASGI middleware against API abuse and model-output harvesting."""

from __future__ import annotations

from abuseguard.backends import Backend, MemoryBackend
from abuseguard.decision import Action, Decision, PolicyState
from abuseguard.degrade import DegradeContext, DegradeOptions
from abuseguard.enforce import Allow, Block, Challenge, Degrade, Delay, Enforcer, Log, Throttle
from abuseguard.errors import BackendError, ConfigError
from abuseguard.guard import Guard
from abuseguard.keyprobe import mark_invalid_key
from abuseguard.middleware import AbuseGuard, current_decision
from abuseguard.policy import (
    AnonymizerRule,
    Concurrency,
    Enforcement,
    FailMode,
    NetworkPolicy,
    Policy,
    Quota,
    Scoring,
    TokenBucket,
    UnverifiedKeys,
    WebSocketPolicy,
)
from abuseguard.request import RequestInfo

__all__ = [
    "AbuseGuard",
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
    "Enforcement",
    "Enforcer",
    "FailMode",
    "Guard",
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
