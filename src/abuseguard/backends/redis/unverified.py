"""The unverified-key budgets in Redis, for the inline mode of the Redis backend.

`Policy.unverified_keys` (see `keyprobe`) keeps per address and per network prefix a
budget for requests whose API key the app has not accepted yet. With the inline Redis
backend those budgets (and the keys accepted behind each, which grow them) live in Redis,
so the ceiling holds for the whole fleet, not per worker: a request with a key this
worker has not seen accepted costs one ``EVALSHA`` of ``lua/unverified.lua`` before the
usual one (a refused request costs only that one); acceptances and invalid-key charges
are sent without waiting. Which keys are accepted is still learned per worker, so a real
key draws once on each worker before its first answer there. The address's and the
prefix's keys share the prefix's hash tag: one Cluster slot, one call. Once Redis refused
an address (or a prefix), the worker refuses it without asking again until the budget
can pay, so a flood of invented keys costs Redis nothing while it is refused.

When Redis does not answer in time, or the circuit is open, the draw falls back to the
worker's own budgets (per worker, as with the memory backend) for that request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from abuseguard.backends.redis.pipe import load_script
from abuseguard.identity import ClientAddress
from abuseguard.keyprobe import UnverifiedKeyLimiter, UnverifiedRefusal

if TYPE_CHECKING:
    from abuseguard.backends.redis.backend import RedisBackend

logger = logging.getLogger("abuseguard.backends")


class RedisUnverifiedBudgets:
    """`keyprobe.SharedBudgets` on a `RedisBackend` in inline mode."""

    def __init__(self, backend: RedisBackend, limiter: UnverifiedKeyLimiter) -> None:
        self.backend = backend
        self.limiter = limiter
        self.script = backend.scripts.setdefault("unverified", load_script("unverified"))
        self.sha = self.script.sha
        self.levels = tuple(is_prefix for _, is_prefix in limiter.levels)
        self.params: list[object] = []
        for level, _ in limiter.levels:
            self.params += [
                level.capacity,
                level.per_second,
                level.growth_per_key,
                level.max_growth,
                level.growth_keys,
            ]
        self.fallbacks = 0  # draws decided by the worker's own budgets (Redis did not answer)
        # level name and address or prefix -> (until, the refusal): refused without a call
        self.refused: dict[tuple[bool, str], tuple[float, UnverifiedRefusal]] = {}
        self.max_refused = limiter.config.max_addresses
        self.local_refusals = 0

    def keys(self, address: ClientAddress) -> list[str]:
        base = f"{self.backend.prefix}:{{uv:{address.prefix_key}}}"
        keys: list[str] = []
        for is_prefix in self.levels:
            budget = f"{base}:pfx" if is_prefix else f"{base}:ip:{address.ip_key}"
            keys += [budget, budget + ":acc"]
        return keys

    def command(self, op: str, address: ClientAddress, now: float, arg: object) -> tuple[Any, ...]:
        keys = self.keys(address)
        clock = "" if self.backend.server_time else now
        return ("EVALSHA", self.sha, len(keys), *keys, op, clock, arg, *self.params)

    async def admit(
        self, identity: str, address: ClientAddress, now: float
    ) -> UnverifiedRefusal | None:
        limiter = self.limiter
        if limiter.is_accepted(identity) or not self.levels:
            return None
        memo = self.refused
        if memo:
            for is_prefix in self.levels:
                key = (is_prefix, address.prefix_key if is_prefix else address.ip_key)
                hit = memo.get(key)
                if hit is not None:
                    until, refusal = hit
                    if now < until:
                        self.local_refusals += 1
                        limiter.refused += 1
                        return UnverifiedRefusal(until - now, refusal.policies)
                    del memo[key]
        backend = self.backend
        if backend._loop is not asyncio.get_running_loop():
            await backend.startup()
        pipe = backend.pipe
        if pipe is None or not backend.breaker.closed:
            self.fallbacks += 1
            return limiter.admit(identity, address, now)
        if self.sha not in pipe.scripts:  # a pipeliner made before this guard: NOSCRIPT reloads
            pipe.scripts[self.sha] = self.script
        try:
            reply = await pipe.call(self.command("admit", address, now, ""))
        except Exception as exc:
            logger.debug("abuseguard: the unverified-key draw failed (%s)", exc)
            self.fallbacks += 1
            return limiter.admit(identity, address, now)
        if int(reply[0]) == 1:
            return None
        values = [float(v) for v in reply[1:]]
        budgets = list(zip(values[0::2], values[1::2], strict=True))
        refusal = limiter.refusal(budgets)
        if len(memo) >= self.max_refused:
            memo.clear()
        for is_prefix, (level, _), (tokens, scale) in zip(
            self.levels, limiter.levels, budgets, strict=True
        ):
            if tokens < 1.0:
                key = (is_prefix, address.prefix_key if is_prefix else address.ip_key)
                memo[key] = (now + level.wait(tokens, scale), refusal)
        return refusal

    def accept(self, identity: str, address: ClientAddress, now: float) -> None:
        self._send(self.command("accept", address, now, identity))

    def charge(self, identity: str, address: ClientAddress, tokens: float, now: float) -> None:
        self._send(self.command("charge", address, now, float(tokens)))

    def _send(self, command: tuple[Any, ...]) -> None:
        pipe = self.backend.pipe
        if pipe is not None and self.backend.breaker.closed:
            pipe.send(command)
