"""The background lane: signals too slow for the request path, fed back as risk priors.

An observer queues a small record of each request (bounded queue, O(1), no parsing). Every
``interval`` seconds, or on ``flush()``, the lane groups the queued records by cohort (the
identity), hands each cohort to its analyzers, and writes the prior they return into the
state the kernel reads (``Guard.set_prior``), where it becomes the ``prior`` signal of that
identity's next requests. Nothing here runs on the request path except the queue append.

Across accounts, the lane links accounts into operations (`abuseguard.operations`): each
flush hands the queued requests' evidence to an `OperationLinker`, and every member of a
cluster it finds gets the cluster's score as its prior (the larger of that and the
per-account analyzers' priors), and the cluster id as its cohort (`abuseguard.cohorts`,
read by the degrade step). Costs known after the response reach it through
``completed(identity, cost)``.

With ``popularity`` (off by default), the lane also learns how common each prompt
template and elicitation phrase is among established accounts in good standing
(`abuseguard.operations.popularity`) and discounts the ``shared_template`` and
``elicitation`` signals of common ones, so universal phrasings (a public benchmark's
format, "think step by step") are not read as coordination.

The shipped per-account analyzer, :class:`TemplateCoverage`, estimates how systematically an account
sweeps prompt templates: harvesters send many prompts from few templates with a fresh
fill-in each time (covering a template's input space), while people and most apps either
vary their prompts or repeat the same few exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from abuseguard import cohorts
from abuseguard.account import AccountFacts
from abuseguard.config_check import check_fields
from abuseguard.decision import Decision
from abuseguard.errors import ConfigError
from abuseguard.guard import Guard
from abuseguard.operations.evidence import NETWORK, PERSONA, Evidence, EvidenceReader
from abuseguard.operations.linker import OperationLinker
from abuseguard.operations.popularity import (
    PopularityBaseline,
    PopularityConfig,
    publish_templates,
)
from abuseguard.operations.profile import HarvestProfile, HarvestProfileConfig
from abuseguard.operations.sketches import stable_hash
from abuseguard.request import RequestInfo

if TYPE_CHECKING:
    from abuseguard.intel.content import ContentFingerprinter

logger = logging.getLogger("abuseguard.lane")


class LaneRecord(NamedTuple):
    """One queued request: references to what it carried, nothing parsed (a named tuple:
    made on the request path, where a frozen dataclass costs ten times more)."""

    identity: str
    ts: float
    body: bytes | str | None
    content_type: str | None
    ip: str = ""
    ua: str | None = None
    headers: Mapping[str, str] | None = None
    asn: int | None = None
    account: AccountFacts | None = None
    score: float = 0.0  # the guard's risk score of the request
    contributions: tuple[tuple[str, float], ...] = ()  # the score's (signal, logit) parts


_new_record = tuple.__new__


class Analyzer(Protocol):
    def analyze(self, identity: str, records: Sequence[LaneRecord]) -> float | None:
        """A prior in 0..1 for this cohort, or None to leave the current one."""


_MAX_ACCOUNTS = 100_000
_DEFAULT_PROFILE = HarvestProfileConfig()
SAMPLE_AFTER = 8
SAMPLE_EVERY = 4
cohorts_set = cohorts.set_cohort
# The coercion verdict's slot among an account's source priors (the analyzers' follow).
_COERCION_SOURCE = 0


def _asn_lookup(guard: Guard) -> Callable[[str], int | None] | None:
    """The guard's database lookup of an address's ASN (for requests that carry none)."""
    intel = guard.intel
    if intel is None:
        return None

    def asn_of(ip: str) -> int | None:
        return intel.lookup(ip).asn or None

    return asn_of


# The signals the popularity baseline discounts: an account's standing is judged without them,
# or an honest "think step by step" would keep every account that writes it from teaching.
_CONTENT_SIGNALS = frozenset({"elicitation", "shared_template"})


def _standing_score(record: LaneRecord) -> float:
    """The request's risk score without the content signals' part of its logit."""
    content = sum(c for signal, c in record.contributions if signal in _CONTENT_SIGNALS)
    if not content:
        return record.score
    score = min(max(record.score, 1e-9), 1.0 - 1e-9)
    return 1.0 / (1.0 + math.exp(content - math.log(score / (1.0 - score))))


def _ramp(x: float, lo: float, hi: float) -> float:
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


@dataclass
class TemplateCoverage:
    """Prior from the shape of an account's prompt stream over its recent history.

    Per account it keeps the last ``history`` (template id, body hash) pairs. With
    ``top_share`` the share of prompts from the account's three most used templates and
    ``fresh`` the share of distinct bodies among them (fresh fill-ins), the prior is
    ``ramp(top_share, 0.7, 0.95) * ramp(fresh, 0.6, 0.9) * ramp(n, min_prompts, 4 *
    min_prompts)``: high only for many prompts, from few templates, each with new content.
    An app that sends one fixed prompt (fresh near 0) and a person (top_share low) stay near
    0. Costs one fingerprint per request, in the background.
    """

    min_prompts: int = 12
    history: int = 200
    max_accounts: int = 50_000
    _seen: dict[str, deque[tuple[int, int]]] = field(default_factory=dict)
    _fingerprinter: ContentFingerprinter | None = None

    def _fingerprint(self, record: LaneRecord) -> tuple[int, int] | None:
        if self._fingerprinter is None:
            from abuseguard.intel.content import ContentFingerprinter

            self._fingerprinter = ContentFingerprinter()
        facts = self._fingerprinter.fingerprint(record.body, record.content_type)
        if not facts.prompt_found or facts.template_id == 0:
            return None
        # The SimHash is of the masked skeleton (the same for every fill-in): fresh content
        # is told by a hash of the raw body instead.
        raw = (
            record.body.encode("utf-8", "replace") if isinstance(record.body, str) else record.body
        )
        return int(facts.template_id), hash(raw)

    def analyze(self, identity: str, records: Sequence[LaneRecord]) -> float | None:
        pairs = [fp for fp in map(self._fingerprint, records) if fp is not None]
        if not pairs:
            return None
        seen = self._seen.get(identity)
        if seen is None:
            if len(self._seen) >= self.max_accounts:
                self._seen.pop(next(iter(self._seen)))
            seen = self._seen[identity] = deque(maxlen=self.history)
        seen.extend(pairs)
        n = len(seen)
        counts = Counter(template for template, _ in seen)
        top = sum(c for _, c in counts.most_common(3))
        top_templates = {t for t, _ in counts.most_common(3)}
        in_top = [digest for template, digest in seen if template in top_templates]
        fresh = len(set(in_top)) / len(in_top)
        return (
            _ramp(top / n, 0.7, 0.95)
            * _ramp(fresh, 0.6, 0.9)
            * _ramp(n, self.min_prompts, 4 * self.min_prompts)
        )


@dataclass(frozen=True)
class ReasoningCoercion:
    """The lane's verdict on an account that keeps demanding the model's own reasoning.

    Public accounts of distillation (GTIG, February 2026) describe campaigns that coerce
    reasoning models into writing out their internal thinking in full, in the language of
    the question. Asking for reasoning is ordinary ("explain step by step", "show your
    work": the ``elicitation`` signal); demanding the model's *internal* or *hidden*
    thinking verbatim is not (`abuseguard.intel.content.COERCION_MARKERS`). An account
    whose prompts read by the lane hold at least ``min_prompts`` such demands (coercion
    strength >= ``strength``), making at least ``min_share`` of its prompts, gets the prior
    1.0 and is held at the first accumulated-evidence step (a challenge by default),
    released like any hold (``Evidence.quiet_period``, `Guard.forgive`).
    """

    min_prompts: int = 3
    min_share: float = 0.5
    strength: float = 0.8

    def __post_init__(self) -> None:
        check_fields(self)
        if self.min_prompts < 1:
            raise ConfigError("ReasoningCoercion.min_prompts", "must be >= 1")
        for name in ("min_share", "strength"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"ReasoningCoercion.{name}", "must be in (0, 1]")


class BackgroundLane:
    """Batches recent requests per cohort and writes analyzers' priors back to the guard.

    Use it as an observer: ``lane = BackgroundLane(guard); guard.observers.append(lane)``
    (or ``AbuseGuard(..., observers=[lane])`` after building the guard), then either call
    ``flush()`` yourself (replay, tests) or ``start()`` it inside a running event loop.
    ``max_queue`` bounds memory: when full, the oldest records are dropped and counted.
    Only identities with an account are analyzed (``k:`` identities).

    ``operations`` links accounts into operations (an `OperationLinker`; the default
    builds one, None turns it off). ``created_of(identity)``, when given, answers the
    account's creation time (epoch seconds) from the host app, one more kind of evidence;
    without it, the age in the request's account facts (`Policy.accounts`) gives it,
    estimated once per account (the request's time minus the age; later ages are not
    read again, so an age rounded to days or frozen at sign-up cannot move the account
    from one creation day to the next).
    An operation scoring at least ``OperationsConfig.hold_score`` holds each member at the
    first accumulated-evidence step from the flush that links it (`Engine.hold`), so a new
    account of a known operation is held from its next request. ``coercion`` (a
    `ReasoningCoercion`; None: off) judges accounts that keep demanding the model's
    internal reasoning, from the evidence the linker reads (so only with ``operations``).
    ``popularity`` (a `PopularityConfig`; None, the default: off; only with
    ``operations``) learns which templates and phrases established accounts commonly use
    (off by default: on the simulator's capable mixes it served 0.07-0.10 points more
    abusive requests and changed no benign account's outcome), and every
    ``publish_every`` seconds of the records' time writes their discounts where the kernel
    (template table) and the guard's fingerprinter (phrase discounts) read them.
    ``profile`` (a `HarvestProfileConfig`; None: off) keeps a per-account harvest profile
    (`abuseguard.operations.profile`), one of the per-account analyzers: an account it
    judges gets its prior and, with ``HarvestProfileConfig.hold``, is held.
    """

    def __init__(
        self,
        guard: Guard,
        analyzers: Iterable[Analyzer] | None = None,
        *,
        interval: float = 1.0,
        max_queue: int = 10_000,
        body_bytes: int = 16_384,
        operations: OperationLinker | bool | None = True,
        created_of: Callable[[str], float | None] | None = None,
        coercion: ReasoningCoercion | None = ReasoningCoercion(),
        popularity: PopularityConfig | None = None,
        publish_every: float = 60.0,
        profile: HarvestProfileConfig | None = _DEFAULT_PROFILE,
    ) -> None:
        self.guard = guard
        self.analyzers: list[Analyzer] = list(analyzers) if analyzers is not None else []
        self.profile = HarvestProfile(profile) if profile is not None else None
        if self.profile is not None:
            self.analyzers.append(self.profile)
        self.interval = interval
        self.body_bytes = body_bytes
        self.queue: deque[LaneRecord] = deque(maxlen=max_queue)
        self.dropped = 0
        self.priors_written = 0
        # Accounts held by a lane verdict (an operation's, a reasoning coercion's): the
        # hold is written again while the verdict stands; counted once.
        self.accounts_held = 0
        self._held: dict[str, None] = {}
        self._task: asyncio.Task[None] | None = None
        if operations is True:
            operations = OperationLinker()
        self.operations: OperationLinker | None = operations or None
        self.created_of = created_of
        self.coercion = coercion if self.operations is not None else None
        self.popularity = (
            PopularityBaseline(popularity)
            if popularity is not None and self.operations is not None
            else None
        )
        self.publish_every = publish_every
        self._published_at: float | None = None
        # What the last publication discounted: template id -> (discount, accounts), and
        # phrase number -> (discount, share of established accounts).
        self.common_templates: dict[int, tuple[float, float]] = {}
        self.common_phrases: dict[int, tuple[float, float]] = {}
        self._fingerprinter: ContentFingerprinter | None = None
        self._pending: tuple[dict[int, float], dict[int, float]] | None = None
        # Per account: [prompts demanding internal reasoning (-1 once judged), prompts read].
        self._coercion_counts: dict[str, list[int]] = {}
        self.evidence = EvidenceReader(asn_of=_asn_lookup(guard), slot_seconds=1800.0, agents=None)
        # Per account, the last prior of each source (the coercion verdict,
        # `_COERCION_SOURCE`, then the per-account analyzers in order); the account's
        # prior is the largest (`_account_prior`), combined with the operations'. One
        # source lifting its prior (the harvest profile writes 0 on release) leaves the
        # others' standing. Bounded.
        self._source_priors: dict[str, list[float]] = {}
        self._tokens: dict[str, float] = {}
        # Each account's creation time as first estimated from the host app's age: later
        # ages (rounded to days, or an age fixed at sign-up) would move it across days.
        self._created: dict[str, float] = {}

    def __call__(self, info: RequestInfo, decision: Decision) -> None:
        if not decision.identity.startswith("k:") or not info.body:
            return
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        headers: Mapping[str, str] = info.headers
        self.queue.append(
            _new_record(
                LaneRecord,
                (
                    decision.identity,
                    info.ts if info.ts is not None else self.guard.clock(),
                    info.body,
                    headers.get("content-type"),
                    info.ip,
                    info.ua,
                    headers,
                    info.asn,
                    info.account,
                    decision.score,
                    decision.contributions,
                ),
            )
        )

    def completed(self, identity: str, cost: float | None) -> None:
        """The real cost (tokens) of a request of ``identity``, known after its response:
        counted in the token volume of the operation the account belongs to."""
        if cost and self.operations is not None and identity.startswith("k:"):
            if identity not in self._tokens and len(self._tokens) >= _MAX_ACCOUNTS:
                self._tokens.clear()
            self._tokens[identity] = self._tokens.get(identity, 0.0) + float(cost)

    def flush(self) -> int:
        """Analyze what is queued and write the priors; return how many were written."""
        return self._apply(*self._analyze())

    def _analyze(self) -> tuple[dict[str, float], dict[str, float]]:
        """(priors, holds): the priors to write, and the accounts an operation's verdict
        holds (identity -> the time it was linked). The popularity discounts to publish, if
        due, are left in ``_pending``."""
        cohorts: dict[str, list[LaneRecord]] = {}
        while self.queue:
            record = self.queue.popleft()
            cohorts.setdefault(record.identity, []).append(record)
        priors: dict[str, float] = {}
        for identity, records in cohorts.items():
            for source, analyzer in enumerate(self.analyzers, _COERCION_SOURCE + 1):
                try:
                    prior = analyzer.analyze(identity, records)
                except Exception:
                    logger.exception("background analyzer %r failed", analyzer)
                    continue
                if prior is not None:
                    priors[identity] = self._set_source_prior(identity, source, prior)
        holds: dict[str, float] = {}
        if self.profile is not None:
            judged = self.profile.take_judged()
            if self.profile.config.hold:
                holds.update(judged)
        if self.operations is not None and cohorts:
            try:
                self._link(cohorts, priors, holds)
            except Exception:
                logger.exception("operations linker failed")
        if self.popularity is not None:
            self._pending = self._discounts_due()
        return priors, holds

    def _set_source_prior(self, identity: str, source: int, prior: float) -> float:
        """Record ``source``'s prior of the account; return the account's prior."""
        sources = self._source_priors.get(identity)
        if sources is None:
            if len(self._source_priors) >= _MAX_ACCOUNTS:
                self._source_priors.pop(next(iter(self._source_priors)))
            sources = self._source_priors[identity] = [0.0] * (len(self.analyzers) + 1)
        if source >= len(sources):  # an analyzer added to ``analyzers`` since
            sources.extend([0.0] * (source + 1 - len(sources)))
        sources[source] = prior
        return max(sources)

    def _account_prior(self, identity: str) -> float:
        """The largest prior the per-account sources hold for the account (0: none)."""
        sources = self._source_priors.get(identity)
        return max(sources) if sources is not None else 0.0

    def _teach(
        self,
        identity: str,
        records: Sequence[LaneRecord],
        seen: Sequence[tuple[float, Evidence]],
        created: float | None,
        first_ts: float | None,
    ) -> None:
        """Teach the popularity baseline the prompts of an account in good standing: not
        held by the lane, not in a scored cluster, each request scored low by the guard
        (apart from the content signals the baseline discounts), old enough (its creation
        time, else how long the lane has known it)."""
        baseline = self.popularity
        linker = self.operations
        assert baseline is not None and linker is not None
        config = baseline.config
        if (
            identity in self._held
            or linker.prior_of(identity) >= config.cluster_score
            or self._account_prior(identity) >= config.cluster_score
        ):
            return
        account = stable_hash(identity)
        for record, (ts, evidence) in zip(records, seen, strict=True):
            if _standing_score(record) >= config.good_score:
                continue
            if created is not None:
                if ts - created < config.min_age:
                    continue
            elif first_ts is None or ts - first_ts < config.min_tenure:
                continue
            if self._fingerprinter is None:
                from abuseguard.intel.content import ContentFingerprinter

                self._fingerprinter = ContentFingerprinter(max_bytes=self.body_bytes)
            facts = self._fingerprinter.fingerprint(record.body, record.content_type)
            if not facts.prompt_found:
                continue
            items = evidence.items
            baseline.learn(
                ts, account, items[NETWORK], items[PERSONA], facts.template_id, facts.phrase
            )

    def _discounts_due(self) -> tuple[dict[int, float], dict[int, float]] | None:
        """The template and phrase discounts to publish, when ``publish_every`` has passed."""
        baseline = self.popularity
        assert baseline is not None
        now = baseline.now
        if self._published_at is not None and now - self._published_at < self.publish_every:
            return None
        self._published_at = now
        templates = baseline.template_discounts()
        phrases = baseline.phrase_discounts()
        self.common_templates = {
            t: (d, baseline.template_stats(t)[0]) for t, d in templates.items()
        }
        population = max(baseline.population, 1.0)
        self.common_phrases = {
            p: (d, baseline.phrase_stats(p)[0] / population) for p, d in phrases.items()
        }
        return templates, phrases

    def _publish(self, discounts: tuple[dict[int, float], dict[int, float]]) -> None:
        templates, phrases = discounts
        cms = getattr(self.guard.engine, "cms", None)
        if cms is not None:
            publish_templates(cms, templates.items())
        discount_phrases = getattr(self.guard.content, "discount_phrases", None)
        if discount_phrases is not None:
            discount_phrases(phrases)

    def baseline_report(self) -> dict[str, object]:
        """What the popularity baseline discounts now: established accounts counted, and
        the common templates and phrases with their discounts."""
        from abuseguard.intel.content import ELICITATION_MARKERS

        baseline = self.popularity
        if baseline is None:
            return {}
        return {
            "established_accounts": round(baseline.population, 1),
            "templates": [
                {"template_id": t, "discount": round(d, 3), "accounts": round(a, 1)}
                for t, (d, a) in sorted(self.common_templates.items(), key=lambda kv: -kv[1][1])
            ],
            "phrases": [
                {
                    "phrase": ELICITATION_MARKERS[p - 1][0],
                    "discount": round(d, 3),
                    "share": round(share, 3),
                }
                for p, (d, share) in sorted(self.common_phrases.items(), key=lambda kv: -kv[1][1])
            ],
        }

    def _link(
        self,
        cohorts: Mapping[str, list[LaneRecord]],
        priors: dict[str, float],
        holds: dict[str, float],
    ) -> None:
        linker = self.operations
        assert linker is not None
        read = self.evidence.read_fields
        body_bytes = self.body_bytes
        created_of = self.created_of
        tokens = self._tokens
        accounts = linker.accounts
        for identity, records in cohorts.items():
            created = created_of(identity) if created_of is not None else None
            payment = None
            for record in records:  # the account facts the host app gave (Policy.accounts)
                facts = record.account
                if facts is not None:
                    if created is None and facts.age_days is not None:
                        created = self._created.get(identity)
                        if created is None:
                            if len(self._created) >= _MAX_ACCOUNTS:
                                del self._created[next(iter(self._created))]
                            created = record.ts - facts.age_days * 86400.0
                            self._created[identity] = created
                    if facts.org is None:
                        payment = facts.payment
                    break
            known = accounts.get(identity)
            seen = known.requests if known is not None else 0
            # An account's evidence settles within its first requests: past SAMPLE_AFTER,
            # every SAMPLE_EVERY-th request is read (its tokens all count).
            if seen + len(records) > SAMPLE_AFTER:
                records = [
                    record
                    for n, record in enumerate(records, seen)
                    if n < SAMPLE_AFTER or n % SAMPLE_EVERY == 0
                ] or records[-1:]
            spent = tokens.pop(identity, 0.0) / len(records)
            seen_now = [
                (
                    record.ts,
                    read(
                        record.ts,
                        record.ip,
                        record.ua,
                        record.headers,
                        record.body[:body_bytes] if record.body else None,
                        record.asn,
                        spent,
                        created,
                    ),
                )
                for record in records
            ]
            linker.observe(identity, seen_now, payment)
            if self.popularity is not None:
                self._teach(identity, records, seen_now, created, known.first_ts if known else None)
            if self.coercion is not None and self._coerced(identity, seen_now):
                priors[identity] = self._set_source_prior(identity, _COERCION_SOURCE, 1.0)
                holds[identity] = seen_now[-1][0]
        linker.update()
        linker.join_recent(cohorts)
        changed = linker.take_changed()
        hold_score = linker.config.hold_score
        for identity, prior in changed.items():
            cohorts_set(identity, linker.cluster_of(identity))
            priors[identity] = max(prior, self._account_prior(identity))
            if hold_score is not None and prior >= hold_score and identity in linker.firm:
                holds[identity] = linker.now
        baseline = self.popularity
        if baseline is not None:
            # What linked or held accounts taught the baseline is taken back.
            scored = baseline.config.cluster_score
            for identity in {*holds, *(i for i, p in changed.items() if p >= scored)}:
                baseline.retract(stable_hash(identity))
        for identity in list(priors):
            ops = linker.prior_of(identity)
            if ops > priors[identity]:
                priors[identity] = ops

    def _coerced(self, identity: str, seen: Sequence[tuple[float, Evidence]]) -> bool:
        """Count the account's prompts that demand the model's internal reasoning; True
        the first time they reach the verdict (`ReasoningCoercion`)."""
        rule = self.coercion
        assert rule is not None
        counts = self._coercion_counts.get(identity)
        if counts is None:
            if len(self._coercion_counts) >= _MAX_ACCOUNTS:
                self._coercion_counts.pop(next(iter(self._coercion_counts)))
            counts = self._coercion_counts[identity] = [0, 0]
        if counts[0] < 0:
            return False  # already judged
        for _, evidence in seen:
            counts[1] += 1
            counts[0] += evidence.coercion >= rule.strength
        if counts[0] >= rule.min_prompts and counts[0] >= rule.min_share * counts[1]:
            counts[0] = -1
            return True
        return False

    def _apply(self, priors: Mapping[str, float], holds: Mapping[str, float]) -> int:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._publish(pending)
        written = sum(
            1 for identity, prior in priors.items() if self.guard.set_prior(identity, prior)
        )
        self.priors_written += written
        hold = self.guard.engine.hold
        held = self._held
        for identity, ts in holds.items():
            if hold(identity, ts) and identity not in held:
                if len(held) >= _MAX_ACCOUNTS:
                    held.pop(next(iter(held)))
                held[identity] = None
                self.accounts_held += 1
        return written

    def clusters(self, sample: int = 8) -> list[dict[str, object]]:
        """The operations found so far, largest first, each with its evidence."""
        return self.operations.report(sample) if self.operations is not None else []

    def start(self) -> None:
        """Flush every ``interval`` seconds in the running event loop, off the request path."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.queue:
                # Fingerprinting runs in a worker thread; the priors are written back on the
                # loop, so the kernel's state is only ever touched from one thread.
                self._apply(*await asyncio.to_thread(self._analyze))
