"""How common each prompt template and elicitation phrase is among established accounts.

The ``shared_template`` signal counts the accounts that send one prompt template, and the
``elicitation`` signal weighs phrases that ask for reasoning. Both also fire on honest use
of universal phrasings: eval harnesses running a public benchmark's prompt format, people
asking to "think step by step", students pasting one assignment, SDK backends with their
own template. `PopularityBaseline` learns, in the background lane, how many *established*
accounts use each template and phrase, and turns that into discounts:

- a template used by many established accounts, from many networks and client personas,
  keeps only part of its ``shared_template`` signal (the kernel reads the table written by
  `publish_templates`, ``layout.CB_COMMON``);
- a phrase used by a large share of established accounts keeps only part of its
  ``elicitation`` strength (`ContentFingerprinter.discount_phrases`).

Only requests of accounts in good standing teach: the guard scored the request low, the
lane has not held the account nor linked it into a scored cluster, and the account is
older than ``min_age`` when the host app gives its creation time, else seen by the lane for
at least ``min_tenure``. An operation's new accounts therefore cannot make their own
template common, and neither can established ones without many distinct networks and
personas. Each account counts once per item per ``window``, and teaches at most
``items_per_window`` items per window. When the lane later links an account into a scored
cluster or holds it, `retract` takes back what it taught and bars it from teaching again,
so an operation that looked honest until it was found loses what it made common. Counts
decay with ``half_life``, so a template that stops being used is forgotten. A discount
only weakens these two content signals: cluster priors, lane holds and every other signal
are untouched, so a common template never whitelists an account.

Template counts are Count-Min sketches (accounts, networks and personas per template);
phrase counts are direct counters (the marker set is small and fixed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from abuseguard.config_check import check_fields
from abuseguard.engine import layout as L
from abuseguard.errors import ConfigError

_DEPTH = 4
_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)
_MASK64 = (1 << 64) - 1
_MAX_ACCOUNTS = 100_000
_MAX_GIVEN = 128


@dataclass(frozen=True)
class PopularityConfig:
    """How the baseline learns and how much it discounts (see the module docstring).

    A template is common once at least ``min_accounts`` established accounts use it (or
    ``min_share`` of the established population, if more), from at least ``min_networks``
    networks making ``network_share`` of its accounts, and ``min_personas`` personas; its
    discount then ramps to ``max_discount`` at ``full_accounts_factor`` times that many
    accounts. A phrase's discount ramps from 0 at ``phrase_share_lo`` of the established
    population to ``max_discount`` at ``phrase_share_hi``, under the same spread gates.
    """

    half_life: float = 12 * 3600.0
    # As long as the half-life: a count is then about the accounts that used the item within
    # the last day, not account-hours (an account busy all day would count a dozen times).
    window: float = 12 * 3600.0
    min_age: float = 86400.0
    min_tenure: float = 3600.0
    good_score: float = 0.3
    cluster_score: float = 0.3
    items_per_window: int = 32
    min_accounts: float = 20.0
    min_share: float = 0.01
    full_accounts_factor: float = 3.0
    min_networks: float = 8.0
    network_share: float = 0.25
    min_personas: float = 2.0
    max_discount: float = 0.8
    phrase_share_lo: float = 0.05
    phrase_share_hi: float = 0.4
    width: int = 1 << 14
    max_pairs: int = 500_000

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("half_life", "window", "min_accounts", "full_accounts_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"PopularityConfig.{name}", "must be > 0")
        if self.full_accounts_factor <= 1.0:
            raise ConfigError("PopularityConfig.full_accounts_factor", "must be > 1")
        if not 0.0 <= self.max_discount <= 1.0:
            raise ConfigError("PopularityConfig.max_discount", "must be in 0..1")
        if not 0.0 < self.phrase_share_lo < self.phrase_share_hi <= 1.0:
            raise ConfigError("PopularityConfig.phrase_share_lo", "must be in (0, phrase_share_hi)")
        if self.width & (self.width - 1) or self.width < 64:
            raise ConfigError("PopularityConfig.width", "must be a power of two >= 64")


def _ramp(x: float, lo: float, hi: float) -> float:
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def _mix(x: int) -> int:
    x &= _MASK64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
    return x ^ (x >> 33)


class _FirstUse:
    """Whether a key is new within the current or the previous window; marks it. When the
    current window holds ``limit`` keys, a new key reads as known: counts err low."""

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self.epoch: int | None = None
        self.current: set[int] = set()
        self.previous: set[int] = set()

    def first(self, key: int, ts: float) -> bool:
        epoch = int(ts // self.window)
        if self.epoch is None or epoch > self.epoch:
            self.previous = self.current if self.epoch == epoch - 1 else set()
            self.current = set()
            self.epoch = epoch
        if key in self.current or key in self.previous or len(self.current) >= self.limit:
            return False
        self.current.add(key)
        return True


class _Counts:
    """Decayed counters, one column per measure (accounts, networks, personas): a Count-Min
    over 64-bit items (``rows`` 0) or direct rows (``rows`` > 0: items 0..rows-1)."""

    def __init__(self, width: int, rows: int = 0) -> None:
        self.direct = rows > 0
        self.width = width
        shape = (3, rows) if self.direct else (3, _DEPTH, width)
        self.values = np.zeros(shape, dtype=np.float64)

    def _cells(self, item: int) -> list[int]:
        return [_mix(item ^ seed) & (self.width - 1) for seed in _SEEDS]

    def add(self, measure: int, item: int, amount: float = 1.0) -> None:
        """Add ``amount`` (a negative one takes back, never below 0)."""
        if self.direct:
            self.values[measure, item] = max(0.0, self.values[measure, item] + amount)
            return
        table = self.values[measure]
        for d, j in enumerate(self._cells(item)):
            table[d, j] = max(0.0, table[d, j] + amount)

    def estimate(self, item: int) -> tuple[float, float, float]:
        if self.direct:
            a, n, p = self.values[:, item]
            return float(a), float(n), float(p)
        cells = self._cells(item)
        a, n, p = (min(float(table[d, j]) for d, j in enumerate(cells)) for table in self.values)
        return a, n, p

    def decay(self, factor: float) -> None:
        self.values *= factor


ACCOUNTS, NETWORKS, PERSONAS = range(3)
_TEMPLATE, _PHRASE, _POPULATION, _ITEMS = range(4)


class PopularityBaseline:
    """Learns template and phrase popularity among established accounts; see the module
    docstring. `learn` takes one request of an account in good standing (the lane decides
    standing), `template_discounts` and `phrase_discounts` answer what it learned."""

    def __init__(self, config: PopularityConfig | None = None, n_phrases: int = 0) -> None:
        self.config = config = config if config is not None else PopularityConfig()
        if n_phrases <= 0:
            from abuseguard.intel.content import ELICITATION_MARKERS

            n_phrases = len(ELICITATION_MARKERS) + 1
        self.n_phrases = n_phrases
        self._templates = _Counts(config.width)
        self._phrases = _Counts(0, rows=n_phrases)
        self.population = 0.0  # decayed count of established accounts (once per window)
        self._first = _FirstUse(config.window, config.max_pairs)
        self._taught: dict[int, int] = {}  # account -> items taught in the current window
        self._taught_epoch = -1
        # Templates whose account estimate reached min_accounts: the only ones that can be
        # common (a Count-Min cannot list its items). Bounded by ``4 * COMMON_SLOTS``.
        self._candidates: dict[int, None] = {}
        self._decayed_at: float | None = None
        self.now = 0.0
        # What each account taught, to take it back (`retract`): account -> [(ts, counts
        # (None: the population), item, measure)], bounded; and the accounts barred.
        self._given: dict[int, list[tuple[float, _Counts | None, int, int]]] = {}
        self._barred: dict[int, None] = {}

    def learn(
        self,
        ts: float,
        account: int,
        network: int,
        persona: int,
        template_id: int,
        phrase: int,
    ) -> None:
        """One request of an established account in good standing: its account, network
        and persona items (stable integers, 0 = unknown), template id (0 = none) and
        heaviest elicitation phrase (0 = none)."""
        self._advance(ts)
        if account in self._barred:
            return
        given = self._given.get(account)
        if given is None:
            if len(self._given) >= _MAX_ACCOUNTS:
                self._given.pop(next(iter(self._given)))
            given = self._given[account] = []
        elif len(given) >= _MAX_GIVEN:
            del given[: _MAX_GIVEN // 2]  # the oldest, decayed the most
        first = self._first.first
        if first(hash((_POPULATION, account)), ts):
            self.population += 1.0
            given.append((ts, None, 0, ACCOUNTS))
        epoch = int(ts // self.config.window)
        if epoch != self._taught_epoch:
            self._taught.clear()
            self._taught_epoch = epoch
        for kind, item_id, counts in (
            (_TEMPLATE, template_id, self._templates),
            (_PHRASE, phrase, self._phrases),
        ):
            if not item_id or (kind == _PHRASE and not 0 < item_id < self.n_phrases):
                continue
            if not first(hash((kind, item_id, ACCOUNTS, account)), ts):
                continue
            taught = self._taught.get(account, 0)
            if taught >= self.config.items_per_window:
                continue
            self._taught[account] = taught + 1
            counts.add(ACCOUNTS, item_id)
            given.append((ts, counts, item_id, ACCOUNTS))
            if network and first(hash((kind, item_id, NETWORKS, network)), ts):
                counts.add(NETWORKS, item_id)
                given.append((ts, counts, item_id, NETWORKS))
            if persona and first(hash((kind, item_id, PERSONAS, persona)), ts):
                counts.add(PERSONAS, item_id)
                given.append((ts, counts, item_id, PERSONAS))
            if (
                kind == _TEMPLATE
                and template_id not in self._candidates
                and counts.estimate(template_id)[0] >= self.config.min_accounts
            ):
                if len(self._candidates) >= 4 * L.COMMON_SLOTS:
                    self._candidates.pop(next(iter(self._candidates)))
                self._candidates[template_id] = None

    def retract(self, account: int) -> None:
        """Take back what ``account`` taught (as decayed since) and bar it from teaching:
        the lane found it in an operation or held it. A network or persona it shared with
        honest accounts is taken back too, so counts err low."""
        if account not in self._barred:
            if len(self._barred) >= _MAX_ACCOUNTS:
                self._barred.pop(next(iter(self._barred)))
            self._barred[account] = None
        decayed_at = self._decayed_at if self._decayed_at is not None else 0.0
        half_life = self.config.half_life
        for ts, counts, item_id, measure in self._given.pop(account, ()):
            worth = 0.5 ** (max(0.0, decayed_at - ts) / half_life)
            if counts is None:
                self.population = max(0.0, self.population - worth)
            else:
                counts.add(measure, item_id, -worth)

    def _advance(self, ts: float) -> None:
        if self._decayed_at is None:
            self._decayed_at = ts
        self.now = max(self.now, ts)
        elapsed = ts - self._decayed_at
        half_life = self.config.half_life
        if elapsed >= half_life / 64:
            factor = 0.5 ** (elapsed / half_life)
            self._templates.decay(factor)
            self._phrases.decay(factor)
            self.population *= factor
            self._decayed_at = ts

    def _spread(self, accounts: float, networks: float, personas: float) -> bool:
        c = self.config
        return (
            networks >= max(c.min_networks, c.network_share * accounts)
            and personas >= c.min_personas
        )

    def template_stats(self, template_id: int) -> tuple[float, float, float]:
        """(accounts, networks, personas) estimated for a template, decayed."""
        return self._templates.estimate(template_id)

    def phrase_stats(self, phrase: int) -> tuple[float, float, float]:
        """(accounts, networks, personas) counted for a phrase, decayed."""
        return self._phrases.estimate(phrase)

    def template_discount(self, template_id: int) -> float:
        """The share of a template's ``shared_template`` signal to take away, 0..max_discount."""
        c = self.config
        accounts, networks, personas = self._templates.estimate(template_id)
        if not self._spread(accounts, networks, personas):
            return 0.0
        lo = max(c.min_accounts, c.min_share * self.population)
        return c.max_discount * _ramp(accounts, lo, lo * c.full_accounts_factor)

    def phrase_discount(self, phrase: int) -> float:
        """The share of a phrase's elicitation strength to take away, 0..max_discount."""
        c = self.config
        if not 0 < phrase < self.n_phrases or self.population <= 0.0:
            return 0.0
        accounts, networks, personas = self._phrases.estimate(phrase)
        if accounts < c.min_accounts or not self._spread(accounts, networks, personas):
            return 0.0
        share = accounts / self.population
        return c.max_discount * _ramp(share, c.phrase_share_lo, c.phrase_share_hi)

    def template_discounts(self) -> dict[int, float]:
        """Every candidate template's discount above 0 (template id -> discount); the
        candidates no longer common are dropped."""
        found: dict[int, float] = {}
        for template_id in list(self._candidates):
            discount = self.template_discount(template_id)
            if discount > 0.0:
                found[template_id] = discount
            elif self._templates.estimate(template_id)[0] < self.config.min_accounts:
                del self._candidates[template_id]
        return found

    def phrase_discounts(self) -> dict[int, float]:
        """Every phrase's discount above 0 (phrase number -> discount)."""
        found: dict[int, float] = {}
        for phrase in range(1, self.n_phrases):
            discount = self.phrase_discount(phrase)
            if discount > 0.0:
                found[phrase] = discount
        return found


def publish_templates(cms: np.ndarray, discounts: Iterable[tuple[int, float]]) -> int:
    """Write template discounts into the kernel's table (``layout.CB_COMMON`` of the
    Count-Min's bookkeeping row), replacing what was there; when two templates share a
    slot, the larger discount wins. Returns how many templates were written."""
    book = cms[L.CMS_DEPTH]
    ids = book.view(np.int64)
    start, stop = L.CB_COMMON, L.CB_COMMON + 2 * L.COMMON_SLOTS
    chosen: dict[int, tuple[int, float]] = {}
    for template_id, discount in discounts:
        slot = (template_id & _MASK64) % L.COMMON_SLOTS
        held = chosen.get(slot)
        if held is None or discount > held[1]:
            chosen[slot] = (template_id, discount)
    ids[start:stop] = 0
    for slot, (template_id, discount) in chosen.items():
        at = start + 2 * slot
        ids[at] = template_id
        book[at + 1] = 1.0 - discount
    return len(chosen)
