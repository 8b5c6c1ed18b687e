"""Shared machinery of the scenarios: context, line emitter, origin model, daily rhythms.

A scenario turns its parameters into *sources*: iterators of ``(t, line)`` in time order,
``t`` in seconds since the start of the trace. Each source draws from its own
``random.Random`` seeded by (seed, scenario, source name), so a source's output does not
depend on any other source and the whole trace is reproducible from the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from abuseguard.sim.accounts import account_facts
from abuseguard.sim.personas import Persona
from abuseguard.sim.world import World
from abuseguard.traces import trace_fields, trace_line

Source = Iterator[tuple[float, str]]

# Hourly activity of people, by local hour (peak 1.0).
HUMAN_DAY = (
    0.16, 0.10, 0.07, 0.05, 0.05, 0.08, 0.18, 0.38, 0.62, 0.82, 0.93, 1.00,
    0.95, 0.95, 1.00, 0.98, 0.94, 0.88, 0.84, 0.86, 0.82, 0.68, 0.48, 0.28,
)  # fmt: skip
# Office and campus hours.
WORK_DAY = (
    0.02, 0.01, 0.01, 0.01, 0.01, 0.02, 0.05, 0.25, 0.70, 0.95, 1.00, 0.95,
    0.75, 0.90, 1.00, 0.95, 0.85, 0.55, 0.25, 0.15, 0.12, 0.08, 0.05, 0.03,
)  # fmt: skip

UTC_OFFSET: dict[str, float] = {
    "US": -6, "CA": -5, "MX": -6, "BR": -3, "AR": -3, "VE": -4, "GB": 0, "IE": 0, "PT": 0,
    "FR": 1, "DE": 1, "ES": 1, "IT": 1, "NL": 1, "BE": 1, "CH": 1, "AT": 1, "PL": 1, "SE": 1,
    "RO": 2, "UA": 2, "EG": 2, "TR": 3, "RU": 3, "DZ": 1, "MA": 1, "PK": 5, "IN": 5.5,
    "TH": 7, "VN": 7, "ID": 7, "CN": 8, "SG": 8, "PH": 8, "KR": 9, "JP": 9, "AU": 10, "PA": -5,
}  # fmt: skip


@dataclass(slots=True)
class SimContext:
    """What every scenario gets: the world, the window and the seed."""

    world: World
    seed: int
    start: float
    hours: float
    scale: float
    account_facts: bool = False

    @property
    def horizon(self) -> float:
        return self.hours * 3600.0

    def rng(self, *names: object) -> random.Random:
        return random.Random("/".join([str(self.seed), *(str(n) for n in names)]))

    def count(self, base: int, minimum: int = 1) -> int:
        """An actor count scaled by ``--scale`` (never below ``minimum``)."""
        return max(minimum, round(base * self.scale))

    def activity(self, t: float, country: str, day: tuple[float, ...] = HUMAN_DAY) -> float:
        """Relative activity (0..1) at trace time ``t`` for people living in ``country``."""
        hour = (self.start + t) / 3600.0 + UTC_OFFSET.get(country, 0.0)
        index = int(hour) % 24
        frac = hour - math.floor(hour)
        # linear interpolation between hours, so rates do not jump on the hour
        return day[index] * (1.0 - frac) + day[(index + 1) % 24] * frac

    def arrival_times(
        self,
        rng: random.Random,
        rate: float,
        country: str,
        day: tuple[float, ...] | None = HUMAN_DAY,
        begin: float = 0.0,
        end: float | None = None,
        floor: float = 0.0,
    ) -> Iterator[float]:
        """A Poisson process of peak ``rate`` per second shaped by the daily rhythm."""
        end = self.horizon if end is None else end
        t = begin
        if rate <= 0:
            return
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                return
            if day is None:
                yield t
                continue
            level = floor + (1.0 - floor) * self.activity(t, country, day)
            if rng.random() < level:
                yield t


def new_key(rng: random.Random, prefix: str = "sk-") -> str:
    return f"{prefix}{rng.getrandbits(128):032x}"


@dataclass(slots=True)
class Outcome:
    """What the origin did with one request."""

    status: int
    cost: int
    duration: float


def origin(
    rng: random.Random,
    body_chars: int,
    out_median: float,
    out_sigma: float = 0.6,
    max_tokens: int = 4096,
    error_rate: float = 0.01,
    tokens_per_second: float = 65.0,
) -> Outcome:
    """Status, total tokens and duration of a chat completion."""
    prompt_tokens = body_chars // 4 + 12
    if error_rate and rng.random() < error_rate:
        status = rng.choice((400, 400, 408, 413, 499, 500, 502, 503))
        return Outcome(status, 0 if status >= 500 else prompt_tokens, rng.uniform(0.05, 2.0))
    out = int(min(max_tokens, max(1.0, rng.lognormvariate(math.log(out_median), out_sigma))))
    ttft = rng.lognormvariate(math.log(0.45), 0.5)
    return Outcome(
        200, prompt_tokens + out, ttft + out / (tokens_per_second * rng.uniform(0.7, 1.3))
    )


class Emitter:
    """Renders the trace lines of one actor (its key, persona and ground truth are fixed)."""

    __slots__ = ("_head", "_persona", "_tail", "start", "world")

    def __init__(
        self,
        ctx: SimContext,
        actor: str,
        label: str,
        kind: str,
        key: str | None,
        persona: Persona,
    ) -> None:
        self.world = ctx.world
        self.start = ctx.start
        self._head = trace_fields(key=key)
        self._persona = persona.fragment()
        self._tail = trace_fields(actor=actor, label=label, kind=kind)
        if ctx.account_facts:
            facts = account_facts(ctx.seed, actor, label, kind)
            self._tail = trace_fields(account=facts) + "," + self._tail

    def line(
        self,
        t: float,
        ip: str,
        method: str,
        path: str,
        body: str | None,
        outcome: Outcome,
        persona: str | None = None,
    ) -> tuple[float, str]:
        text = trace_line(
            trace_fields(ts=self.start + t),
            self.world.fragment(ip),
            self._head,
            trace_fields(method=method, path=path),
            persona or self._persona,
            "" if body is None else trace_fields(body=body),
            trace_fields(status=outcome.status, cost=outcome.cost, duration=outcome.duration),
            self._tail,
        )
        return t, text


def lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(median), sigma)
