"""Unverified API keys per address: invented keys must not multiply the allowance.

Every API key has its own bucket, and the guard cannot tell a valid key from an invented
one; the app can. `UnverifiedKeyLimiter` remembers which keys the app accepted (answered
with an accepted status, 2xx by default) and makes every request with any other key draw
from a budget of its client address and of its network prefix first (`Policy.unverified_keys`).
When a budget is empty the guard refuses the request before the per-key state is touched,
so invented keys do not even create key rows. A key the app says is invalid (401/403 by
default, or `mark_invalid_key`) costs its address and prefix far more than one request.

The ceiling grows with the distinct keys accepted behind an address (NAT fairness), never
with keys refused or never answered: only an accepted answer adds a key to an address's
growth set. Memory is bounded whatever clients invent: the accepted keys are a fixed-size
LRU of keyed hashes that only accepted answers enter, and the address and prefix budgets
are fixed-size LRUs whose growth sets stop at the number of keys the growth cap needs.
The state lives in the process (per worker), except the budgets with the inline Redis
backend (`backends.redis.unverified`).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Any, Protocol

from abuseguard.decision import PolicyState
from abuseguard.identity import AddressBook, ClientAddress
from abuseguard.policy import TokenBucket, UnverifiedKeys

INVALID_KEY_STATE_KEY = "abuseguard_invalid_key"
UNVERIFIED_KEY_REASON = "unverified_key"


def mark_invalid_key(scope_or_request: Any) -> None:
    """Tell the middleware that this request's API key is invalid.

    For apps that answer an unknown key with something other than 401/403 (a 200 with an
    error body, a 404): call it with the Starlette ``Request`` (or the ASGI scope) while
    handling the request. The key is then charged as invalid to the client's address and
    prefix and is never taken as accepted, whatever status the app answers.
    """
    scope = getattr(scope_or_request, "scope", scope_or_request)
    if not isinstance(scope, dict):
        raise TypeError(f"expected a Request or an ASGI scope, got {type(scope).__name__}")
    scope.setdefault("state", {})[INVALID_KEY_STATE_KEY] = True


class _Ceiling:
    """The budgets of one level (addresses or prefixes): token buckets whose burst and rate
    grow with the distinct keys accepted behind them, in a bounded LRU.

    A budget is a slot: its tokens and when they were last refilled in two arrays of
    doubles, the keys accepted behind it in a tuple (at most the few keys the growth cap
    needs), and the LRU a dict from the address or prefix to the slot. No object per
    budget for the garbage collector to walk (a tuple of strings it stops tracking)."""

    __slots__ = (
        "accepted",
        "budgets",
        "capacity",
        "growth_keys",
        "growth_per_key",
        "max_entries",
        "max_growth",
        "name",
        "per_second",
        "tokens",
        "updated",
        "window",
    )

    def __init__(self, bucket: TokenBucket, config: UnverifiedKeys) -> None:
        self.name = bucket.name
        self.capacity = bucket.capacity
        self.per_second = bucket.per_second
        self.window = bucket.window
        self.growth_per_key = config.growth_per_key
        self.max_growth = config.max_growth
        # More accepted keys than this cannot grow the ceiling further: not remembered.
        self.growth_keys = (
            math.ceil((config.max_growth - 1) / config.growth_per_key - 1e-9)
            if config.growth_per_key > 0
            else 0
        )
        self.max_entries = config.max_addresses
        self.budgets: dict[str, int] = {}  # address or prefix -> slot, least recent first
        self.tokens = array("d")
        self.updated = array("d")
        self.accepted: list[tuple[str, ...]] = []

    def scale(self, slot: int) -> float:
        return min(self.max_growth, 1.0 + self.growth_per_key * len(self.accepted[slot]))

    def budget(self, key: str, now: float) -> int:
        """The slot of the budget of ``key``, refilled up to ``now`` and made the most
        recently used."""
        budgets = self.budgets
        slot = budgets.pop(key, None)
        if slot is None:
            if len(budgets) >= self.max_entries:
                slot = budgets.pop(next(iter(budgets)))  # the least recently used's slot
                self.tokens[slot] = self.capacity
                self.updated[slot] = now
                self.accepted[slot] = ()
            else:
                slot = len(self.tokens)
                self.tokens.append(self.capacity)
                self.updated.append(now)
                self.accepted.append(())
        elif now > self.updated[slot]:
            scale = self.scale(slot)
            self.tokens[slot] = min(
                self.capacity * scale,
                self.tokens[slot] + (now - self.updated[slot]) * self.per_second * scale,
            )
            self.updated[slot] = now
        budgets[key] = slot
        return slot

    def wait(self, tokens: float, scale: float) -> float:
        """Seconds until a budget holding ``tokens`` at ``scale`` holds one token."""
        short = 1.0 - tokens
        return short / (self.per_second * scale) if short > 0 else 0.0

    def state(self, tokens: float, scale: float) -> PolicyState:
        """The RateLimit state of a budget holding ``tokens`` at ``scale``."""
        capacity = self.capacity * scale
        reset = (capacity - tokens) / (self.per_second * scale)
        return PolicyState(
            self.name, capacity, self.window, max(0.0, tokens), max(0.0, reset), tokens < 1.0
        )

    def charge(self, slot: int, tokens: float) -> None:
        # Into debt by at most one full ceiling: an invalid key is paid back by waiting.
        self.tokens[slot] = max(self.tokens[slot] - tokens, -self.capacity * self.scale(slot))

    def accept(self, slot: int, identity: str) -> None:
        """A key newly accepted behind this budget: while it can still grow, it grows by
        the key and the token the key's first request drew comes back (so real keys
        arriving together behind one NAT do not run it dry)."""
        accepted = self.accepted[slot]
        if len(accepted) < self.growth_keys:
            if identity not in accepted:
                self.accepted[slot] = (*accepted, identity)
            self.tokens[slot] = min(self.capacity * self.scale(slot), self.tokens[slot] + 1.0)

    def forget(self, slot: int, identity: str) -> None:
        """``identity`` no longer grows this budget (the app said its key is invalid)."""
        accepted = self.accepted[slot]
        if identity in accepted:
            self.accepted[slot] = tuple(key for key in accepted if key != identity)


class SharedBudgets(Protocol):
    """Budgets kept outside the process (Redis inline mode): the draw is awaited, the
    acceptances and the charges are sent without waiting."""

    async def admit(
        self, identity: str, address: ClientAddress, now: float
    ) -> UnverifiedRefusal | None: ...

    def accept(self, identity: str, address: ClientAddress, now: float) -> None: ...

    def charge(self, identity: str, address: ClientAddress, tokens: float, now: float) -> None: ...


@dataclass(slots=True)
class UnverifiedRefusal:
    """Why a request with an unaccepted key was refused: when to retry and the budgets."""

    retry_after: float
    policies: tuple[PolicyState, ...]


class UnverifiedKeyLimiter:
    """The unverified-key budgets of one guard (see the module docstring).

    ``admit`` runs before the engine for every request with a key; ``learn`` after the
    app answered a served request; ``report_invalid`` when the app says a key is invalid.
    Identities are the guard's keyed hashes ("k:..."), never raw keys.
    """

    def __init__(self, config: UnverifiedKeys, addresses: AddressBook) -> None:
        self.config = config
        self.addresses = addresses
        self.levels: tuple[tuple[_Ceiling, bool], ...] = tuple(
            (_Ceiling(bucket, config), is_prefix)
            for bucket, is_prefix in ((config.per_ip, False), (config.per_prefix, True))
            if bucket is not None
        )
        self.accepted: dict[str, None] = {}
        self.max_accepted = config.max_accepted_keys
        self.accepted_statuses = frozenset(config.accepted_statuses)
        self.invalid_statuses = frozenset(config.invalid_statuses)
        self.invalid_cost = config.invalid_key_cost
        self.refused = 0  # requests refused, for tests and stats
        # Where the budgets live when not here: Redis in inline mode (backends/redis/unverified.py).
        self.store: SharedBudgets | None = None
        self.invalid = 0  # keys charged as invalid

    def is_accepted(self, identity: str) -> bool:
        return identity in self.accepted

    def admit(self, identity: str, address: ClientAddress, now: float) -> UnverifiedRefusal | None:
        """None when the request may go on (an accepted key, or a token drawn from each
        budget); else the refusal, with nothing drawn."""
        if identity in self.accepted or not self.levels:
            return None
        slots = [
            (level, level.budget(address.prefix_key if is_prefix else address.ip_key, now))
            for level, is_prefix in self.levels
        ]
        if all(level.tokens[slot] >= 1.0 for level, slot in slots):
            for level, slot in slots:
                level.tokens[slot] -= 1.0
            return None
        return self.refusal([(level.tokens[slot], level.scale(slot)) for level, slot in slots])

    def refusal(self, budgets: list[tuple[float, float]]) -> UnverifiedRefusal:
        """The refusal for budgets (tokens, scale) of each level, one of them short."""
        self.refused += 1
        levels = [level for level, _ in self.levels]
        retry_after = max(
            level.wait(tokens, scale)
            for level, (tokens, scale) in zip(levels, budgets, strict=True)
        )
        policies = tuple(
            level.state(tokens, scale)
            for level, (tokens, scale) in zip(levels, budgets, strict=True)
        )
        return UnverifiedRefusal(retry_after, policies)

    def learn(
        self,
        identity: str,
        ip: str | None,
        status: int | None,
        now: float,
        *,
        invalid: bool = False,
    ) -> None:
        """The app answered a served request with this key: an accepted status makes the key
        accepted (and grows the ceiling of its address and prefix); an invalid status
        for a key not accepted, or ``invalid``, charges them. No status teaches nothing."""
        if invalid:
            self.report_invalid(identity, ip, now)
            return
        if status is None:
            return
        accepted = self.accepted
        if status in self.accepted_statuses:
            if identity in accepted:
                del accepted[identity]  # re-inserted: the most recently accepted
                accepted[identity] = None
                return
            if len(accepted) >= self.max_accepted:
                del accepted[next(iter(accepted))]  # the least recently accepted
            accepted[identity] = None
            address = self.addresses.resolve(ip)
            if self.store is not None:
                self.store.accept(identity, address, now)
                return
            for level, is_prefix in self.levels:
                key = address.prefix_key if is_prefix else address.ip_key
                level.accept(level.budget(key, now), identity)
        elif status in self.invalid_statuses and identity not in accepted:
            self._charge(self.addresses.resolve(ip), now, identity)

    def report_invalid(self, identity: str, ip: str | None, now: float) -> None:
        """The app says this key is invalid: forget it was accepted (it no longer grows any
        ceiling) and charge its address and prefix ``invalid_key_cost`` tokens in all (a
        request with a key not accepted drew one already)."""
        was_accepted = identity in self.accepted
        self.accepted.pop(identity, None)
        self._charge(self.addresses.resolve(ip), now, identity, drawn=not was_accepted)

    def _charge(
        self, address: ClientAddress, now: float, identity: str, *, drawn: bool = True
    ) -> None:
        self.invalid += 1
        tokens = self.invalid_cost - 1.0 if drawn else self.invalid_cost
        if self.store is not None:
            self.store.charge(identity, address, tokens, now)
            return
        for level, is_prefix in self.levels:
            slot = level.budget(address.prefix_key if is_prefix else address.ip_key, now)
            level.forget(slot, identity)
            level.charge(slot, tokens)

    def stats(self) -> dict[str, int]:
        return {
            "accepted_keys": len(self.accepted),
            "addresses": sum(len(level.budgets) for level, _ in self.levels),
            "refused": self.refused,
            "invalid": self.invalid,
        }
