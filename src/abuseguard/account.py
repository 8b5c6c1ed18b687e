"""What the host app knows about the account behind a request, and the allow-lists it keeps.

The app knows things no request shows: how old an account is, whether it is verified, its
plan and organisation, a fingerprint of its payment method, and tags such as a declared
benchmark run. `Policy.accounts` (an `Accounts`) takes a hook that returns those facts for
a request (`AccountFacts`), and allow-lists of trusted keys, organisations and tags.

What the facts do:

* a trusted account (allow-listed key, organisation or tag) is never acted on for risk
  beyond ``Accounts.trusted_max_action``: its risk ladder stops at the last step no
  harsher than that (a ``log`` step reports the reasons; with none, it is allowed and only
  the score shows), its evidence still accumulates, and its rate limits, quotas and
  concurrency still apply;
* a young, unverified account starts with a risk prior (``new_account_prior``), which an
  account that behaves never turns into an action by itself (the prior is one signal of
  the weighted score);
* every fact travels with the request to observers and the background lane
  (``RequestInfo.account``), and replay reads them from the trace's ``account`` field.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from abuseguard.config_check import check_fields
from abuseguard.decision import Action
from abuseguard.errors import ConfigError

# Called with the request's Starlette HTTPConnection (headers, scope["user"], state).
AccountFactsFunc = Callable[[Any], "AccountFacts | Awaitable[AccountFacts | None] | None"]

_MAX_TEXT = 256
_MAX_TAGS = 32


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """Facts the host app knows about one account; every field is optional.

    ``age_days``: days since the account was created. ``verified``: the app verified it
    (email, phone, identity or payment). ``plan`` and ``org``: the app's names for them.
    ``payment``: a fingerprint of the payment method (a hash the app computes; never the
    card number), which links accounts paid for by one card. ``tags``: the app's labels,
    e.g. "benchmark" for a declared evaluation run or "trusted" for a known customer.
    """

    age_days: float | None = None
    verified: bool | None = None
    plan: str | None = None
    org: str | None = None
    payment: str | None = None
    tags: frozenset[str] = frozenset()

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> AccountFacts:
        """The facts from a mapping with the field names (a trace line's ``account``
        object, or what a hook returns); unknown keys and values of the wrong type are
        dropped, so a client never breaks a request through them."""
        age = value.get("age_days")
        if (
            isinstance(age, bool)
            or not isinstance(age, int | float)
            or not math.isfinite(age)
            or age < 0
        ):
            age = None
        verified = value.get("verified")
        tags = value.get("tags")
        tag_set = (
            frozenset(t for t in list(tags)[:_MAX_TAGS] if isinstance(t, str) and t)
            if isinstance(tags, list | tuple | set | frozenset)
            else frozenset()
        )
        return cls(
            age_days=None if age is None else float(age),
            verified=verified if isinstance(verified, bool) else None,
            plan=_text(value.get("plan")),
            org=_text(value.get("org")),
            payment=_text(value.get("payment")),
            tags=tag_set,
        )

    def as_mapping(self) -> dict[str, Any]:
        """The non-empty fields, as a trace line's ``account`` object holds them."""
        out: dict[str, Any] = {}
        if self.age_days is not None:
            out["age_days"] = round(self.age_days, 3)
        if self.verified is not None:
            out["verified"] = self.verified
        for name in ("plan", "org", "payment"):
            text = getattr(self, name)
            if text is not None:
                out[name] = text
        if self.tags:
            out["tags"] = sorted(self.tags)
        return out


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value[:_MAX_TEXT]
    return None


def as_facts(value: Any) -> AccountFacts | None:
    """What a hook returned, as facts: AccountFacts, a mapping, or None (anything else)."""
    if isinstance(value, AccountFacts):
        return value
    if isinstance(value, Mapping):
        return AccountFacts.from_mapping(value)
    return None


@dataclass(frozen=True)
class Accounts:
    """The host app's account facts and allow-lists (`Policy.accounts`).

    ``facts`` (sync or async) gets the request as a Starlette ``HTTPConnection`` (headers;
    ``scope["user"]`` and ``state`` when authentication middleware runs before
    AbuseGuard) and returns
    `AccountFacts` (or a mapping of its fields, or None). ``trusted_keys`` (API keys as the
    client sends them), ``trusted_orgs`` and ``trusted_tags`` are allow-lists: a request
    from a trusted account is never acted on for risk beyond ``trusted_max_action``
    (default ``log``: served, reasons recorded), while every rate limit, quota and
    concurrency limit still applies. ``new_account_days`` and ``new_account_prior``: an
    account younger than that which is not verified starts with that risk prior (0
    turns it off).
    """

    facts: AccountFactsFunc | None = None
    trusted_keys: Iterable[str] = frozenset()
    trusted_orgs: Iterable[str] = frozenset()
    trusted_tags: Iterable[str] = frozenset({"benchmark", "trusted"})
    trusted_max_action: Action = Action.LOG
    new_account_days: float = 3.0
    new_account_prior: float = 0.15

    def __post_init__(self) -> None:
        check_fields(self)
        if self.facts is not None and not callable(self.facts):
            raise ConfigError("Accounts.facts", "must be callable")
        for name in ("trusted_keys", "trusted_orgs", "trusted_tags"):
            object.__setattr__(self, name, _string_set(f"Accounts.{name}", getattr(self, name)))
        if not isinstance(self.trusted_max_action, Action) or not self.trusted_max_action.serves:
            raise ConfigError(
                "Accounts.trusted_max_action",
                f"expected an action that serves (allow, log, delay, degrade), "
                f"got {self.trusted_max_action!r}",
            )
        days, prior = self.new_account_days, self.new_account_prior
        if isinstance(days, bool) or not isinstance(days, int | float) or not days >= 0:
            raise ConfigError("Accounts.new_account_days", f"expected a number >= 0, got {days!r}")
        if isinstance(prior, bool) or not isinstance(prior, int | float) or not 0 <= prior <= 1:
            raise ConfigError(
                "Accounts.new_account_prior", f"expected a number within 0..1, got {prior!r}"
            )

    def trusted(self, key: str | None, facts: AccountFacts | None) -> bool:
        """Whether the request's account is on an allow-list."""
        # (__post_init__ made the three allow-lists frozensets)
        if key is not None and key in cast(frozenset[str], self.trusted_keys):
            return True
        if facts is None:
            return False
        if facts.org is not None and facts.org in cast(frozenset[str], self.trusted_orgs):
            return True
        return not cast(frozenset[str], self.trusted_tags).isdisjoint(facts.tags)

    def prior(self, facts: AccountFacts | None) -> float:
        """The risk prior the facts give a request (0: none)."""
        if facts is None or facts.verified or facts.age_days is None:
            return 0.0
        return self.new_account_prior if facts.age_days < self.new_account_days else 0.0


def _string_set(field_name: str, value: Iterable[str]) -> frozenset[str]:
    """An allow-list as a frozenset; check_fields has refused a str and non-str items."""
    items = frozenset(value)
    if "" in items:
        raise ConfigError(field_name, "expected non-empty strings, got ''")
    return items


def ladder_cap(accounts: Accounts, ladder: tuple[Action, ...]) -> int:
    """The highest ladder level a trusted account may reach: the last level whose action is
    no harsher than ``trusted_max_action``."""
    limit = accounts.trusted_max_action.severity
    level = 0
    for index, action in enumerate(ladder):
        if action.severity <= limit:
            level = index
        else:
            break
    return level


class AccountRules:
    """`Accounts` as the engine applies them: each request writes its account's ladder cap
    and prior into the identity's key row just before the kernel reads it, so a trusted
    account is capped from its first request and losing trust takes effect at once."""

    __slots__ = ("_cap", "_level_cap_field", "_prior_field", "accounts", "trusted_identities")

    def __init__(
        self,
        accounts: Accounts,
        ladder: tuple[Action, ...],
        hash_identity: Callable[[str], str],
        level_cap_field: int,
        prior_field: int,
    ) -> None:
        self.accounts = accounts
        # stored as level + 1, so that 0 in a row means "no cap"
        self._cap = float(ladder_cap(accounts, ladder) + 1)
        self.trusted_identities = frozenset(hash_identity(key) for key in accounts.trusted_keys)
        self._level_cap_field = level_cap_field
        self._prior_field = prior_field

    def apply(self, key_row: Any, identity: str, facts: AccountFacts | None) -> None:
        accounts = self.accounts
        trusted = identity in self.trusted_identities or (
            facts is not None and accounts.trusted(None, facts)
        )
        key_row[self._level_cap_field] = self._cap if trusted else 0.0
        prior = accounts.prior(facts)
        if prior > key_row[self._prior_field]:
            key_row[self._prior_field] = prior


__all__ = [
    "AccountFacts",
    "AccountFactsFunc",
    "AccountRules",
    "Accounts",
    "as_facts",
    "ladder_cap",
]
