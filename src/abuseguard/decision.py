"""Decision, Action and reason codes: what the core answers for one request."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from abuseguard.engine.layout import SIGNAL_NAMES


class Action(StrEnum):
    """Enforcement actions, in ladder order (mildest first).

    What each action means is declared once, in the table of :class:`ActionFacts` below:
    ``action.facts`` or the shortcuts ``severity``, ``serves``, ``serves_in_full``,
    ``denies`` and ``refusal_status``.
    """

    ALLOW = "allow"
    LOG = "log"
    DELAY = "delay"
    DEGRADE = "degrade"
    CHALLENGE = "challenge"
    THROTTLE = "throttle"
    BLOCK = "block"

    @property
    def facts(self) -> ActionFacts:
        return _FACTS[self]

    @property
    def severity(self) -> int:
        """Position on the enforcement ladder: higher is harsher."""
        return _FACTS[self].severity

    @property
    def serves(self) -> bool:
        """True when the request reaches the app (in full or degraded)."""
        return _FACTS[self].serves

    @property
    def serves_in_full(self) -> bool:
        """True when the request reaches the app unchanged (allow, log, delay)."""
        return _FACTS[self].serves_in_full

    @property
    def denies(self) -> bool:
        """True when the request is refused (the app never sees it)."""
        return _FACTS[self].denies

    @property
    def refusal_status(self) -> int | None:
        """The HTTP status the built-in enforcer refuses with; None when served."""
        return _FACTS[self].refusal_status


@dataclass(frozen=True, slots=True)
class ActionFacts:
    """What one action means: see the table ``_FACTS``."""

    severity: int
    serves: bool
    serves_in_full: bool
    denies: bool
    refusal_status: int | None


# The one place that says what each action does; adding an action means a row here and
# an enforcer in enforce.py.
_FACTS: dict[Action, ActionFacts] = {
    #                      severity, serves, serves_in_full, denies, refusal_status
    Action.ALLOW: ActionFacts(0, True, True, False, None),
    Action.LOG: ActionFacts(1, True, True, False, None),
    Action.DELAY: ActionFacts(2, True, True, False, None),
    Action.DEGRADE: ActionFacts(3, True, False, False, None),
    # Without an app's challenge responder, the challenge answers as the throttle does.
    Action.CHALLENGE: ActionFacts(4, False, False, True, 429),
    Action.THROTTLE: ActionFacts(5, False, False, True, 429),
    Action.BLOCK: ActionFacts(6, False, False, True, 403),
}

# Sets read from the table, for hot paths (a frozenset lookup beats a property call).
SERVING_ACTIONS: frozenset[Action] = frozenset(a for a in Action if a.serves)
DENIAL_ACTIONS: frozenset[Action] = frozenset(a for a in Action if a.denies)

# Reason codes. Limit reasons say "over a configured limit"; every other reason is a risk
# signal (the replay report splits "limited" from "mitigated" on this).
LIMIT_REASONS: frozenset[str] = frozenset({"rate", "quota", "concurrency", "unverified_key"})
# Every risk signal of the kernel, then the reasons of the network rules, bans and the
# hold of accumulated evidence (`policy.Evidence`).
RISK_REASONS: tuple[str, ...] = (*SIGNAL_NAMES, "deny_list", "banned", "evidence")


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
        return self.shadow or self.action in SERVING_ACTIONS

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


# A plain allow as `Guard.check_lazily` answers it, before anything asked for its Decision:
# (identity, score, remaining, reset, cost, the bucket's (name, capacity, window) or None
# without a bucket): one tuple made instead of a Decision and its PolicyState, on what is
# nearly every request of a healthy service; `plain_allow_decision` builds the Decision
# when something reads it (`current_decision`, the settle stage with a real cost).
PlainAllow = tuple[str, float, float, float, float, tuple[str, float, float] | None]


def plain_allow_decision(plain: PlainAllow) -> Decision:
    """The Decision of a plain allow: what `Guard.check` answers for the same request."""
    identity, score, remaining, reset, cost, bucket = plain
    if bucket is None:
        return Decision(Action.ALLOW, (), score, None, None, False, identity, (), (), cost)
    name, capacity, window = bucket
    return Decision(
        Action.ALLOW, (), score, None, remaining, False, identity, (),
        (PolicyState(name, capacity, window, remaining, reset),), cost,
    )  # fmt: skip
