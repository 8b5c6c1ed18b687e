"""Decision, Action and reason codes: what the core answers for one request."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from abuseguard.engine.layout import SIGNAL_NAMES


class Action(StrEnum):
    """Enforcement actions, in ladder order (mildest first)."""

    ALLOW = "allow"
    LOG = "log"
    DELAY = "delay"
    DEGRADE = "degrade"
    CHALLENGE = "challenge"
    THROTTLE = "throttle"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def serves_in_full(self) -> bool:
        """True when the request reaches the app unchanged (allow, log, delay)."""
        return self in (Action.ALLOW, Action.LOG, Action.DELAY)


_SEVERITY = {action: i for i, action in enumerate(Action)}
_SERVED = frozenset({Action.ALLOW, Action.LOG, Action.DELAY, Action.DEGRADE})

# Reason codes. Limit reasons say "over a configured limit"; every other reason is a risk
# signal (the replay report splits "limited" from "mitigated" on this).
LIMIT_REASONS: frozenset[str] = frozenset({"rate", "quota", "concurrency", "unverified_key"})
# Every risk signal of the kernel, then the reasons of the network rules and bans.
RISK_REASONS: tuple[str, ...] = (*SIGNAL_NAMES, "deny_list", "banned")


@dataclass(slots=True)
class Decision:
    """What the guard decided for one request, and why.

    ``reasons`` are reason codes (``rate``, ``quota``, ``concurrency`` for limits; risk
    codes such as ``fan_in`` or ``cadence``). ``score`` is the risk score in 0..1.
    ``retry_after`` is in seconds, or None. ``remaining`` is what is left in the tightest
    limit that applied (tokens or window hits), or None. ``shadow`` is True when the
    decided action was not enforced (shadow mode): the request is served as if allowed.
    ``contributions`` lists (signal, contribution to the score's logit) for every signal
    that added to the score, unrounded; it is empty for an allowed request.
    Treat it as read-only (it is not frozen only because frozen dataclasses cost a
    microsecond more to build, on every request).
    """

    action: Action
    reasons: tuple[str, ...] = ()
    score: float = 0.0
    retry_after: float | None = None
    remaining: float | None = None
    shadow: bool = False
    identity: str = ""
    contributions: tuple[tuple[str, float], ...] = ()
    policies: tuple[PolicyState, ...] = field(default=(), compare=False)
    cost: float = field(default=1.0, compare=False)
    held: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def enforced_action(self) -> Action:
        """The action that actually runs: ALLOW when the decision is shadowed."""
        return Action.ALLOW if self.shadow else self.action

    @property
    def served(self) -> bool:
        """True when the app handles the request (in full, degraded, or under shadow)."""
        return self.shadow or self.action in _SERVED

    @property
    def limited(self) -> bool:
        return bool(self.reasons) and all(r in LIMIT_REASONS for r in self.reasons)


@dataclass(slots=True)
class PolicyState:
    """The state of one named limit after this request, for RateLimit headers and bodies.

    ``quota`` and ``window`` (seconds) describe the policy; ``remaining`` and ``reset``
    (seconds until full or until the window ends) describe the state.
    """

    name: str
    quota: float
    window: float
    remaining: float
    reset: float
    violated: bool = False
