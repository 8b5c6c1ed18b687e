"""Prometheus metrics for the guard: an observer, plus a small hook for backends.

``PrometheusObserver`` is an observer (``Guard(observers=[...])`` or
``AbuseGuard(app, observers=[...])``) that counts every decision. It needs the
``prometheus-client`` package (``pip install 'abuseguard[metrics]'``), imported only when
an observer is built. Series (``abuseguard`` is the default namespace):

========================================== ========= ==========================================
name                                       type      labels and meaning
========================================== ========= ==========================================
abuseguard_decisions_total                 counter   ``action``, ``shadow``: every decision
abuseguard_decision_reasons_total          counter   ``action``, ``reason``: one per reason
abuseguard_near_limit_total                counter   ``policy``: served with < 10% left
abuseguard_shadow_would_block_total        counter   ``action``: shadowed challenge/throttle/block
abuseguard_risk_score                      histogram the risk score of every decision
abuseguard_degraded_requests_total         counter   ``shadow``: requests degraded (or would be)
abuseguard_degrade_withheld_bytes_total    counter   ``shadow``: response bytes withheld
abuseguard_backend_latency_seconds         gauge     ``backend``: the last round trip
abuseguard_backend_round_trip_seconds      histogram ``backend``: every round trip
abuseguard_backend_circuit_state           gauge     ``backend``: 0 closed, 1 half-open, 2 open
========================================== ========= ==========================================

The observer runs on every decision, so the decision series are plain Python counts
turned into metric families only when Prometheus scrapes (a custom collector); that keeps
the observer well under a microsecond.

Backends report through two functions that cost next to nothing when no observer exists
and never raise: :func:`record_backend_latency` and :func:`record_circuit_state`. Every
registry that has a PrometheusObserver receives them (once per registry and namespace)::

    from abuseguard.metrics import record_backend_latency, record_circuit_state

    started = time.perf_counter()
    reply = await redis.evalsha(...)
    record_backend_latency("redis", time.perf_counter() - started)
    record_circuit_state("redis", "open")   # or "closed", "half_open"

Label values are bounded: reasons, policy names and backend names beyond
``MAX_LABEL_VALUES`` distinct values per label are counted as ``other``.
"""

from __future__ import annotations

import logging
import math
import weakref
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import pairwise
from types import ModuleType
from typing import Any, Literal

from abuseguard.decision import DENIAL_ACTIONS, SERVING_ACTIONS, Action, Decision
from abuseguard.request import RequestInfo

logger = logging.getLogger("abuseguard.metrics")

CircuitState = Literal["closed", "half_open", "half-open", "open"]
CIRCUIT_VALUES: dict[str, float] = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}
SCORE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
NEAR_LIMIT_SHARE = 0.1
MAX_LABEL_VALUES = 64
_WOULD_BLOCK = DENIAL_ACTIONS
_SERVED = SERVING_ACTIONS


def _prometheus() -> ModuleType:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "abuseguard.metrics.PrometheusObserver needs the prometheus-client package: "
            "pip install 'abuseguard[metrics]'"
        ) from exc
    return prometheus_client


class _BoundedLabel:
    """Maps label values to themselves until too many were seen, then to ``other``."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return "other"
        self.seen.add(value)
        return value


def _check_buckets(name: str, buckets: Sequence[float]) -> tuple[float, ...]:
    values = tuple(buckets)
    if not values:
        raise ValueError(f"{name}: at least one bucket bound is needed")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"{name}: bucket bounds are numbers, got {value!r}")
    if any(b <= a for a, b in pairwise(values)):
        raise ValueError(f"{name}: bucket bounds must rise, got {values!r}")
    return tuple(float(v) for v in values if v != math.inf)


class DecisionCounts:
    """Raw decision counts, turned into metric families when the registry is scraped.

    Registered with a prometheus_client registry as a custom collector. Reads copy each
    dict first (a C-level copy, atomic under the GIL), so a scrape from another thread
    never sees a dict change size mid-iteration.
    """

    def __init__(self, namespace: str, score_buckets: Sequence[float]) -> None:
        self.prefix = f"{namespace}_" if namespace else ""
        # Keys are what the observer has at hand (Action, bool); labels are made at scrape.
        self.decisions: dict[tuple[Action, bool], int] = {}
        self.reasons: dict[tuple[Action, str], int] = {}
        self.near_limit: dict[str, int] = {}
        self.would_block: dict[Action, int] = {}
        # Counted by the degrade enforcer (record_degrade), keyed by shadow.
        self.degraded: dict[bool, int] = {}
        self.withheld_bytes: dict[bool, int] = {}
        self.bounds = _check_buckets("score_buckets", score_buckets)
        self.score_counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.score_sum = 0.0
        self.reason_label = _BoundedLabel(MAX_LABEL_VALUES)
        self.policy_label = _BoundedLabel(MAX_LABEL_VALUES)

    def _families(self, with_samples: bool) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        p = self.prefix
        specs: tuple[tuple[str, str, list[str], dict[Any, int]], ...] = (
            ("decisions", "Decisions of the guard by action; shadow decisions were not "
             "enforced.", ["action", "shadow"], self.decisions),
            ("decision_reasons", "Reasons behind non-allow decisions, one count per reason.",
             ["action", "reason"], self.reasons),
            ("near_limit", f"Served decisions that left less than the near-limit share "
             f"(default {NEAR_LIMIT_SHARE:.0%}) of a policy.", ["policy"], self.near_limit),
            ("shadow_would_block", "Shadow decisions that would have challenged, throttled or "
             "blocked.", ["action"], self.would_block),
            ("degraded_requests", "Requests served degraded; shadow ones were only "
             "computed.", ["shadow"], self.degraded),
            ("degrade_withheld_bytes", "Response bytes the degrade withheld (reasoning); "
             "shadow ones would have been.", ["shadow"], self.withheld_bytes),
        )  # fmt: skip
        for name, doc, labels, counts in specs:
            family = CounterMetricFamily(p + name, doc, labels=labels)
            if with_samples:
                for key, value in counts.copy().items():
                    family.add_metric(_labels(key), value)
            yield family
        histogram = HistogramMetricFamily(p + "risk_score", "Risk score of every decision.")
        if with_samples:
            counts_now = list(self.score_counts)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*self.bounds, math.inf), counts_now, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            histogram.add_metric([], buckets, self.score_sum)
        yield histogram

    def collect(self) -> Iterator[Any]:
        return self._families(with_samples=True)

    def describe(self) -> Iterator[Any]:
        return self._families(with_samples=False)


def _labels(key: object) -> list[str]:
    parts = key if isinstance(key, tuple) else (key,)
    out = []
    for part in parts:
        if isinstance(part, Action):
            out.append(part.value)
        elif isinstance(part, bool):
            out.append("true" if part else "false")
        else:
            out.append(str(part))
    return out


class _BackendFamilies:
    """Backend gauges and histogram (ordinary prometheus_client metrics: called rarely)."""

    def __init__(
        self, prom: ModuleType, registry: Any, namespace: str, latency_buckets: Sequence[float]
    ) -> None:
        kw: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.latency = prom.Gauge(
            "backend_latency_seconds", "The last backend round trip.", ["backend"], **kw
        )
        self.round_trip = prom.Histogram(
            "backend_round_trip_seconds",
            "Backend round trips.",
            ["backend"],
            buckets=_check_buckets("latency_buckets", latency_buckets),
            **kw,
        )
        self.circuit = prom.Gauge(
            "backend_circuit_state",
            "Backend circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["backend"],
            **kw,
        )
        self.label = _BoundedLabel(MAX_LABEL_VALUES)

    def latency_seconds(self, backend: str, seconds: float) -> None:
        label = self.label(backend)
        self.latency.labels(label).set(seconds)
        self.round_trip.labels(label).observe(seconds)

    def circuit_state(self, backend: str, value: float) -> None:
        self.circuit.labels(self.label(backend)).set(value)


class _Families:
    """Everything one registry and namespace hold; shared by the observers built on them."""

    def __init__(
        self,
        registry: Any,
        namespace: str,
        score_buckets: Sequence[float],
        latency_buckets: Sequence[float],
    ) -> None:
        prom = _prometheus()
        self.counts = DecisionCounts(namespace, score_buckets)
        registry.register(self.counts)
        self.backend = _BackendFamilies(prom, registry, namespace, latency_buckets)


# One set of families per registry and namespace, alive as long as the registry: their
# collectors stay registered there, so a second observer must reuse them.
_by_registry: weakref.WeakKeyDictionary[Any, dict[str, _Families]] = weakref.WeakKeyDictionary()


def _all_families() -> list[_Families]:
    return [f for by_namespace in list(_by_registry.values()) for f in by_namespace.values()]


class PrometheusObserver:
    """Counts decisions into Prometheus metrics. See the module docs for the series.

    ``registry`` defaults to prometheus_client's global REGISTRY; observers built on one
    registry and namespace share their metric families (the first one's buckets win).
    ``near_limit`` is the share of a policy below which a served request counts as near
    the limit.
    """

    def __init__(
        self,
        registry: Any = None,
        *,
        namespace: str = "abuseguard",
        near_limit: float = NEAR_LIMIT_SHARE,
        score_buckets: Sequence[float] = SCORE_BUCKETS,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        prom = _prometheus()
        bad = isinstance(near_limit, bool) or not isinstance(near_limit, int | float)
        if bad or not 0.0 < near_limit < 1.0:
            raise ValueError(f"near_limit must be within 0..1 (exclusive), got {near_limit!r}")
        if not isinstance(namespace, str) or not namespace.replace("_", "").isalnum():
            raise ValueError(f"namespace must be letters, digits and _, got {namespace!r}")
        self.registry = registry if registry is not None else prom.REGISTRY
        self.near_limit = float(near_limit)
        by_namespace = _by_registry.setdefault(self.registry, {})
        families = by_namespace.get(namespace)
        if families is None:
            families = _Families(self.registry, namespace, score_buckets, latency_buckets)
            by_namespace[namespace] = families
        self.families = families
        self.counts = families.counts

    def __call__(self, info: RequestInfo, decision: Decision) -> None:
        c = self.counts
        action = decision.action
        shadow = decision.shadow
        key = (action, shadow)
        decisions = c.decisions
        decisions[key] = decisions.get(key, 0) + 1
        score = decision.score
        if score == score:  # NaN never reaches the histogram
            c.score_counts[bisect_left(c.bounds, score)] += 1
            c.score_sum += score
        if decision.reasons:
            reasons = c.reasons
            for reason in decision.reasons:
                rkey = (action, c.reason_label(reason))
                reasons[rkey] = reasons.get(rkey, 0) + 1
            if shadow and action in _WOULD_BLOCK:
                c.would_block[action] = c.would_block.get(action, 0) + 1
        if decision.policies and (shadow or action in _SERVED):
            share = self.near_limit
            near = c.near_limit
            for state in decision.policies:
                if not state.violated and state.remaining < share * state.quota:
                    name = c.policy_label(state.name)
                    near[name] = near.get(name, 0) + 1

    def record_backend_latency(self, backend: str, seconds: float) -> None:
        """Like the module's :func:`record_backend_latency`, for this registry only."""
        if _valid_seconds(seconds):
            self.families.backend.latency_seconds(str(backend), float(seconds))

    def record_circuit_state(self, backend: str, state: CircuitState) -> None:
        """Like the module's :func:`record_circuit_state`, for this registry only."""
        value = CIRCUIT_VALUES.get(state)
        if value is not None:
            self.families.backend.circuit_state(str(backend), value)

    def asgi_app(self) -> Any:
        """An ASGI app serving this registry in Prometheus' text format (mount at /metrics)."""
        return _prometheus().make_asgi_app(registry=self.registry)


def _valid_seconds(seconds: object) -> bool:
    return (
        isinstance(seconds, int | float)
        and not isinstance(seconds, bool)
        and math.isfinite(seconds)
        and seconds >= 0
    )


def record_backend_latency(backend: str, seconds: float) -> None:
    """Hook for backends: one round trip to ``backend`` took ``seconds``. Never raises.

    Negative, infinite or non-numeric durations are ignored.
    """
    if not _by_registry or not _valid_seconds(seconds):
        return
    for families in _all_families():
        try:
            families.backend.latency_seconds(str(backend), float(seconds))
        except Exception:
            logger.exception("abuseguard metrics: cannot record backend latency")


def record_circuit_state(backend: str, state: CircuitState) -> None:
    """Hook for backends: the circuit breaker of ``backend`` is now ``state``.

    ``state`` is "closed" (healthy), "half_open" or "half-open" (probing) or "open"
    (failing fast).
    Unknown states are ignored. Never raises.
    """
    if not _by_registry:
        return
    value = CIRCUIT_VALUES.get(state)
    if value is None:
        return
    for families in _all_families():
        try:
            families.backend.circuit_state(str(backend), value)
        except Exception:
            logger.exception("abuseguard metrics: cannot record circuit state")


def record_degrade(*, shadow: bool, withheld_bytes: int) -> None:
    """Hook for the degrade enforcer: one request was degraded (or, with ``shadow``, would
    have been) and ``withheld_bytes`` of its response were (would have been) withheld.
    Never raises."""
    if not _by_registry:
        return
    for families in _all_families():
        counts = families.counts
        counts.degraded[shadow] = counts.degraded.get(shadow, 0) + 1
        if withheld_bytes > 0:
            counts.withheld_bytes[shadow] = counts.withheld_bytes.get(shadow, 0) + withheld_bytes


__all__ = [
    "CIRCUIT_VALUES",
    "LATENCY_BUCKETS",
    "NEAR_LIMIT_SHARE",
    "SCORE_BUCKETS",
    "CircuitState",
    "DecisionCounts",
    "PrometheusObserver",
    "record_backend_latency",
    "record_circuit_state",
    "record_degrade",
]
