"""OpenTelemetry for the guard: decisions as metrics and as attributes of the current span.

``OpenTelemetryObserver`` is an observer (``Guard(observers=[...])`` or
``AbuseGuard(app, observers=[...])``) written against the OpenTelemetry API only: the
library never depends on the SDK; your application configures the SDK (or any other
implementation of the API) and its exporters. It needs the ``opentelemetry-api`` package
(``pip install 'abuseguard[otel]'``), imported only when an observer is built.

Instruments (meter ``abuseguard``):

============================== ========= ==================================================
name                           type      attributes and meaning
============================== ========= ==================================================
abuseguard.decisions           counter   ``action``, ``shadow``: every decision
abuseguard.decision.reasons    counter   ``action``, ``reason``, ``shadow``: one per reason
abuseguard.risk_score          histogram the risk score of every decision (0..1)
============================== ========= ==================================================

The two counters are observable (asynchronous) counters: the observer keeps plain counts
and the SDK reads them when it collects, so counting costs a dict update per decision; the
histogram is recorded on every decision.

Span attributes, set on the span current when the guard decides (the server span of your
ASGI instrumentation when it wraps ``AbuseGuard``), only when that span is recording:
``abuseguard.action`` (the decided action), ``abuseguard.shadow``, ``abuseguard.reasons``
(a list), ``abuseguard.score`` and ``abuseguard.identity_hash``.

The identity hash is the decision's identity with the client address hashed:
``k:<keyed hash>`` for an API key (hashed with ``Policy.secret`` by the guard already),
``i:<hash of the address or IPv6 group>`` otherwise. With the default empty ``secret``
the address hash equals the one ``LogObserver(hash_ips=True)`` writes, so logs and traces
can be joined; anyone can recompute it for a guessed address (IPv4 is small enough to
enumerate). Pass ``secret=`` to key it. Raw keys, addresses, headers and bodies never
reach a metric or a span.

Reason values are bounded: beyond ``MAX_LABEL_VALUES`` distinct reasons the rest are
recorded as ``other``.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from abuseguard.decision import Action, Decision
from abuseguard.metrics import MAX_LABEL_VALUES, SCORE_BUCKETS, _check_buckets
from abuseguard.request import RequestInfo

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

INSTRUMENTATION_NAME = "abuseguard"


def _opentelemetry() -> tuple[ModuleType, ModuleType]:
    try:
        from opentelemetry import metrics, trace
    except ImportError as exc:
        raise ImportError(
            "abuseguard.otel.OpenTelemetryObserver needs the opentelemetry-api package: "
            "pip install 'abuseguard[otel]'"
        ) from exc
    return metrics, trace


class _Instruments:
    """The instruments of one meter and the counts behind its counters.

    The SDK keeps the first instrument registered under a name (a second one only logs a
    warning), so every observer on one meter shares these: a reloaded app or a second
    guard counts into the same series instead of losing its counts.
    """

    def __init__(self, meter: Any, observation: Any, bounds: Sequence[float]) -> None:
        # The counters are plain dict counts reported when the SDK collects (observable
        # counters): a synchronous SDK counter costs microseconds per add, on every request.
        self.decision_counts: dict[tuple[Action, bool], int] = {}
        self.reason_counts: dict[tuple[Action, str, bool], int] = {}
        self.seen_reasons: set[str] = set()
        self.observation = observation
        meter.create_observable_counter(
            "abuseguard.decisions",
            callbacks=[self.observe_decisions],
            unit="{decision}",
            description="Decisions of the guard by action; shadow decisions were not enforced.",
        )
        meter.create_observable_counter(
            "abuseguard.decision.reasons",
            callbacks=[self.observe_reasons],
            unit="{reason}",
            description="Reasons behind non-allow decisions, one count per reason.",
        )
        self.score = meter.create_histogram(
            "abuseguard.risk_score",
            unit="1",
            description="Risk score of every decision.",
            explicit_bucket_boundaries_advisory=list(bounds),
        )

    def bounded_reason(self, reason: str) -> str:
        seen = self.seen_reasons
        if reason in seen:
            return reason
        if len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(reason)
        return reason

    # Callbacks run in the SDK's collecting thread: copying a dict is atomic under the GIL,
    # so a decision counted meanwhile never changes its size mid-iteration.
    def observe_decisions(self, options: CallbackOptions) -> Iterable[Observation]:
        observation = self.observation
        return [
            observation(count, {"action": action.value, "shadow": shadow})
            for (action, shadow), count in self.decision_counts.copy().items()
        ]

    def observe_reasons(self, options: CallbackOptions) -> Iterable[Observation]:
        observation = self.observation
        return [
            observation(count, {"action": action.value, "reason": reason, "shadow": shadow})
            for (action, reason, shadow), count in self.reason_counts.copy().items()
        ]


# One set of instruments per meter, alive as long as the meter (its provider keeps it).
_by_meter: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()


class OpenTelemetryObserver:
    """Records decisions as OpenTelemetry metrics and span attributes (see the module docs).

    ``meter_provider`` defaults to the global one (``opentelemetry.metrics``); with no SDK
    configured the API's no-op provider makes the metrics free. ``spans=False`` leaves
    spans alone. ``secret`` keys the hash of client addresses in
    ``abuseguard.identity_hash``. ``score_buckets`` is advice to the SDK for the bounds of
    the score histogram (a view of your own overrides it).
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        spans: bool = True,
        secret: str | bytes = "",
        score_buckets: Sequence[float] = SCORE_BUCKETS,
    ) -> None:
        metrics, trace = _opentelemetry()
        if not isinstance(spans, bool):
            raise ValueError(f"spans must be a bool, got {spans!r}")
        if not isinstance(secret, str | bytes):
            raise ValueError(f"secret must be a str or bytes, got {type(secret).__name__}")
        bounds = list(_check_buckets("score_buckets", score_buckets))
        from abuseguard import __version__

        meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider=meter_provider)
        instruments = _by_meter.get(meter)
        if instruments is None:
            instruments = _by_meter[meter] = _Instruments(meter, metrics.Observation, bounds)
        self.instruments = instruments
        self.decision_counts = instruments.decision_counts
        self.reason_counts = instruments.reason_counts
        self.score = instruments.score
        self.spans = spans
        self.get_current_span = trace.get_current_span
        # blake2b takes keys of up to 64 bytes: a longer secret is hashed down to one.
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        self.secret = key if len(key) <= 64 else hashlib.blake2b(key).digest()

    def __call__(self, info: RequestInfo, decision: Decision) -> None:
        action = decision.action
        shadow = decision.shadow
        key = (action, shadow)
        counts = self.decision_counts
        counts[key] = counts.get(key, 0) + 1
        if decision.reasons:
            reasons = self.reason_counts
            for reason in decision.reasons:
                rkey = (action, self.instruments.bounded_reason(reason), shadow)
                reasons[rkey] = reasons.get(rkey, 0) + 1
        score = decision.score
        if score == score:  # NaN never reaches the histogram
            self.score.record(score)
        if self.spans:
            span = self.get_current_span()
            if span.is_recording():
                span.set_attributes(self.span_attributes(decision))

    def span_attributes(self, decision: Decision) -> dict[str, Any]:
        """The attributes this observer sets on the current span for ``decision``."""
        attributes: dict[str, Any] = {
            "abuseguard.action": decision.action.value,
            "abuseguard.shadow": decision.shadow,
            "abuseguard.reasons": list(decision.reasons),
            "abuseguard.identity_hash": self.identity_hash(decision.identity),
        }
        if not math.isnan(decision.score):
            attributes["abuseguard.score"] = decision.score
        return attributes

    def identity_hash(self, identity: str) -> str:
        """``identity`` with a client address (``i:...``) replaced by its hash."""
        if not identity or identity.startswith("k:"):
            return identity  # "k:<keyed hash>": hashed by the guard with Policy.secret
        prefix, plain = ("i:", identity[2:]) if identity.startswith("i:") else ("", identity)
        digest = hashlib.blake2b(
            plain.encode("utf-8", "surrogateescape"), digest_size=8, key=self.secret
        )
        return prefix + digest.hexdigest()


__all__ = ["INSTRUMENTATION_NAME", "OpenTelemetryObserver"]
