"""Prometheus metrics: decisions, reasons, near-limit, shadow, score, backend hooks."""

from __future__ import annotations

import math
import sys
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from abuseguard import AbuseGuard, Action, Decision, Policy, PolicyState, RequestInfo, TokenBucket
from abuseguard.metrics import (
    MAX_LABEL_VALUES,
    PrometheusObserver,
    record_backend_latency,
    record_circuit_state,
)
from abuseguard.testing import ManualClock, fresh_guard, reset_guards, serve

INFO = RequestInfo(ip="203.0.113.5")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def burst(observer: PrometheusObserver, n: int, **policy: Any) -> None:
    guard = fresh_guard(
        Policy(bucket=TokenBucket("5/second", burst=10), scoring=None, network=None, **policy),
        observers=[observer],
    )
    for _ in range(n):
        guard.check(INFO)


def test_decisions_reasons_near_limit_and_score() -> None:
    registry = CollectorRegistry()
    burst(PrometheusObserver(registry), 12)
    assert value(registry, "abuseguard_decisions_total", action="allow", shadow="false") == 10
    assert value(registry, "abuseguard_decisions_total", action="throttle", shadow="false") == 2
    assert (
        value(registry, "abuseguard_decision_reasons_total", action="throttle", reason="rate") == 2
    )
    # remaining below 10% of a burst of 10 means 0 left: only the 10th request
    assert value(registry, "abuseguard_near_limit_total", policy="default") == 1
    assert value(registry, "abuseguard_risk_score_count") == 12
    assert value(registry, "abuseguard_risk_score_bucket", le="+Inf") == 12
    assert value(registry, "abuseguard_shadow_would_block_total", action="throttle") == 0


def test_shadow_decisions_count_as_would_block() -> None:
    registry = CollectorRegistry()
    burst(PrometheusObserver(registry), 13, shadow=True)
    assert value(registry, "abuseguard_decisions_total", action="throttle", shadow="true") == 3
    assert value(registry, "abuseguard_shadow_would_block_total", action="throttle") == 3


def test_score_histogram_buckets_are_cumulative() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    for score in (0.05, 0.15, 0.5, 0.97, 1.0, math.nan):
        observer(INFO, Decision(Action.LOG, ("cadence",), score))
    assert value(registry, "abuseguard_risk_score_bucket", le="0.1") == 1
    assert value(registry, "abuseguard_risk_score_bucket", le="0.5") == 3
    assert value(registry, "abuseguard_risk_score_bucket", le="0.95") == 3
    assert value(registry, "abuseguard_risk_score_bucket", le="1.0") == 5
    assert value(registry, "abuseguard_risk_score_count") == 5  # NaN is left out
    assert value(registry, "abuseguard_risk_score_sum") == pytest.approx(2.67)
    assert value(registry, "abuseguard_decisions_total", action="log", shadow="false") == 6


def test_near_limit_ignores_violated_and_refused() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, near_limit=0.5)
    low = PolicyState("q", 100, 60, 40, 10)
    observer(INFO, Decision(Action.ALLOW, policies=(low,)))
    observer(INFO, Decision(Action.BLOCK, ("rate",), policies=(low,)))  # not served
    observer(
        INFO,
        Decision(Action.THROTTLE, ("rate",), policies=(PolicyState("q", 100, 60, 0, 10, True),)),
    )
    assert value(registry, "abuseguard_near_limit_total", policy="q") == 1


def test_observers_on_one_registry_share_families() -> None:
    registry = CollectorRegistry()
    first, second = PrometheusObserver(registry), PrometheusObserver(registry)
    first(INFO, Decision(Action.ALLOW))
    second(INFO, Decision(Action.ALLOW))
    assert value(registry, "abuseguard_decisions_total", action="allow", shadow="false") == 2
    other = PrometheusObserver(registry, namespace="edge")
    other(INFO, Decision(Action.ALLOW))
    assert value(registry, "edge_decisions_total", action="allow", shadow="false") == 1


def test_default_registry_can_hold_many_observers() -> None:
    PrometheusObserver()
    observer = PrometheusObserver()
    assert observer.registry is prometheus_client.REGISTRY


def test_label_values_are_bounded() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    for i in range(MAX_LABEL_VALUES + 40):
        observer(INFO, Decision(Action.LOG, (f"reason{i}",)))
    samples = [
        s for m in registry.collect() if m.name == "abuseguard_decision_reasons" for s in m.samples
    ]
    assert len(samples) == MAX_LABEL_VALUES + 1
    assert value(registry, "abuseguard_decision_reasons_total", action="log", reason="other") == 40


def test_backend_hooks_reach_every_registry() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    record_backend_latency("redis", 0.0004)
    record_circuit_state("redis", "open")
    assert value(registry, "abuseguard_backend_latency_seconds", backend="redis") == 0.0004
    assert value(registry, "abuseguard_backend_round_trip_seconds_count", backend="redis") == 1
    assert value(registry, "abuseguard_backend_circuit_state", backend="redis") == 2
    observer.record_circuit_state("redis", "half_open")
    assert value(registry, "abuseguard_backend_circuit_state", backend="redis") == 1
    record_circuit_state("redis", "closed")
    assert value(registry, "abuseguard_backend_circuit_state", backend="redis") == 0
    record_circuit_state("redis", "half-open")  # the breaker's own spelling
    assert value(registry, "abuseguard_backend_circuit_state", backend="redis") == 1
    observer.record_backend_latency("redis", 0.002)
    assert value(registry, "abuseguard_backend_latency_seconds", backend="redis") == 0.002


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "0.1", None, True])
def test_backend_latency_ignores_nonsense(bad: Any) -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    record_backend_latency("redis", bad)
    observer.record_backend_latency("redis", bad)
    assert value(registry, "abuseguard_backend_round_trip_seconds_count", backend="redis") == 0


def test_unknown_circuit_state_is_ignored() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    record_circuit_state("redis", "melted")  # type: ignore[arg-type]
    observer.record_circuit_state("redis", "melted")  # type: ignore[arg-type]
    assert (
        registry.get_sample_value("abuseguard_backend_circuit_state", {"backend": "redis"}) is None
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"near_limit": 0.0},
        {"near_limit": 1.0},
        {"near_limit": True},
        {"namespace": "my-app"},
        {"score_buckets": ()},
        {"score_buckets": (0.5, 0.2)},
        {"score_buckets": (0.1, math.nan)},
        {"latency_buckets": ("fast",)},
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PrometheusObserver(CollectorRegistry(), **kwargs)


def test_missing_prometheus_client_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now fails
    with pytest.raises(ImportError, match=r"abuseguard\[metrics\]"):
        PrometheusObserver(CollectorRegistry())


def test_metrics_endpoint_over_real_http() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", home), Mount("/metrics", app=observer.asgi_app())])
    app.add_middleware(
        AbuseGuard,
        policy=Policy(bucket=TokenBucket("1/minute", burst=2), exempt_paths=("/metrics",)),
        observers=[observer],
    )
    reset_guards(app, ManualClock())
    with serve(app) as base, httpx.Client(base_url=base) as client:
        codes = [client.get("/").status_code for _ in range(3)]
        text = client.get("/metrics/").text
    assert codes == [200, 200, 429]
    assert 'abuseguard_decisions_total{action="allow",shadow="false"} 2.0' in text
    assert 'abuseguard_decisions_total{action="throttle",shadow="false"} 1.0' in text
    assert "abuseguard_risk_score_count 3.0" in text
