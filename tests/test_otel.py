"""OpenTelemetry observer: metrics and span attributes, read back with the SDK in memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, Action, Decision, Policy, RequestInfo, TokenBucket
from abuseguard.metrics import MAX_LABEL_VALUES
from abuseguard.otel import OpenTelemetryObserver
from abuseguard.testing import fresh_guard, serve

ASGIApp = Any


class Telemetry:
    """An SDK meter provider and tracer provider that keep everything in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.tracer_provider.get_tracer("tests")

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def count(self, name: str, **attributes: Any) -> int:
        return sum(
            int(p.value) for p in self.points(name) if dict(p.attributes or {}) == attributes
        )

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.meter_provider.shutdown()
    t.tracer_provider.shutdown()


def server_spans(inner: ASGIApp, tracer: Any) -> ASGIApp:
    """A server span around every HTTP request, as OpenTelemetry's ASGI instrumentation
    makes one (opentelemetry-instrumentation-asgi) when it wraps the guard."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        with tracer.start_as_current_span(f"{scope['method']} {scope['path']}"):
            await inner(scope, receive, send)

    return app


def guarded_app(policy: Policy, observer: OpenTelemetryObserver, tracer: Any) -> ASGIApp:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/v1/chat", hello, methods=["GET", "POST"])])
    app.add_middleware(AbuseGuard, policy=policy, observers=[observer])
    return server_spans(app, tracer)


def test_decisions_become_metrics_and_span_attributes_over_http(telemetry: Telemetry) -> None:
    observer = OpenTelemetryObserver(telemetry.meter_provider)
    policy = Policy(bucket=TokenBucket("1/minute", burst=2), scoring=None, network=None)
    app = guarded_app(policy, observer, telemetry.tracer)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        statuses = [
            client.post("/v1/chat", headers={"authorization": "Bearer sk-otel-secret"}).status_code
            for _ in range(4)
        ]
    assert statuses == [200, 200, 429, 429]

    assert telemetry.count("abuseguard.decisions", action="allow", shadow=False) == 2
    assert telemetry.count("abuseguard.decisions", action="throttle", shadow=False) == 2
    assert (
        telemetry.count(
            "abuseguard.decision.reasons", action="throttle", reason="rate", shadow=False
        )
        == 2
    )
    (histogram,) = telemetry.points("abuseguard.risk_score")
    assert histogram.count == 4
    assert list(histogram.explicit_bounds) == [
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        0.95,
        1.0,
    ]

    spans = telemetry.spans()
    assert [s.name for s in spans] == ["POST /v1/chat"] * 4
    actions = [s.attributes["abuseguard.action"] for s in spans if s.attributes]
    assert actions == ["allow", "allow", "throttle", "throttle"]
    throttled = spans[3].attributes
    assert throttled is not None
    assert throttled["abuseguard.reasons"] == ("rate",)
    assert throttled["abuseguard.shadow"] is False
    assert isinstance(throttled["abuseguard.score"], float)
    identity = throttled["abuseguard.identity_hash"]
    assert isinstance(identity, str) and identity.startswith("k:")
    assert {s.attributes["abuseguard.identity_hash"] for s in spans if s.attributes} == {identity}
    for span in spans:
        assert "sk-otel-secret" not in repr(span.attributes)


def test_client_addresses_are_hashed_in_spans_and_the_secret_keys_the_hash(
    telemetry: Telemetry,
) -> None:
    observer = OpenTelemetryObserver(telemetry.meter_provider, secret="s3cret")
    policy = Policy(bucket=TokenBucket("10/second", burst=10), scoring=None, network=None)
    with serve(guarded_app(policy, observer, telemetry.tracer)) as url:
        assert httpx.get(url + "/v1/chat").status_code == 200
    (span,) = telemetry.spans()
    assert span.attributes is not None
    identity = span.attributes["abuseguard.identity_hash"]
    assert isinstance(identity, str) and identity.startswith("i:")
    assert "127.0.0.1" not in identity
    assert identity == observer.identity_hash("i:127.0.0.1")
    assert identity != OpenTelemetryObserver(telemetry.meter_provider).identity_hash("i:127.0.0.1")


def test_shadow_decisions_are_counted_as_shadow(telemetry: Telemetry) -> None:
    observer = OpenTelemetryObserver(telemetry.meter_provider)
    guard = fresh_guard(
        Policy(bucket=TokenBucket("1/minute", burst=1), scoring=None, network=None, shadow=True),
        observers=[observer],
    )
    for _ in range(3):
        guard.check(RequestInfo(ip="203.0.113.5"))
    assert telemetry.count("abuseguard.decisions", action="allow", shadow=False) == 1
    assert telemetry.count("abuseguard.decisions", action="throttle", shadow=True) == 2
    assert (
        telemetry.count(
            "abuseguard.decision.reasons", action="throttle", reason="rate", shadow=True
        )
        == 2
    )


def test_no_recording_span_means_metrics_only(telemetry: Telemetry) -> None:
    observer = OpenTelemetryObserver(telemetry.meter_provider)
    guard = fresh_guard(Policy(scoring=None, network=None), observers=[observer])
    guard.check(RequestInfo(ip="203.0.113.5"))  # no span is current here
    with telemetry.tracer.start_as_current_span("off", attributes=None) as span:
        span.end()  # an ended span no longer records
        guard.check(RequestInfo(ip="203.0.113.5"))
    assert telemetry.count("abuseguard.decisions", action="allow", shadow=False) == 2
    (ended,) = telemetry.spans()
    assert not any(name.startswith("abuseguard.") for name in ended.attributes or {})


def test_spans_false_leaves_the_span_alone(telemetry: Telemetry) -> None:
    observer = OpenTelemetryObserver(telemetry.meter_provider, spans=False)
    guard = fresh_guard(Policy(scoring=None, network=None), observers=[observer])
    with telemetry.tracer.start_as_current_span("request"):
        guard.check(RequestInfo(ip="203.0.113.5"))
    (span,) = telemetry.spans()
    assert not any(name.startswith("abuseguard.") for name in span.attributes or {})
    assert telemetry.count("abuseguard.decisions", action="allow", shadow=False) == 1


def test_reason_values_are_bounded(telemetry: Telemetry) -> None:
    observer = OpenTelemetryObserver(telemetry.meter_provider)
    info = RequestInfo(ip="203.0.113.5")
    for i in range(MAX_LABEL_VALUES + 5):
        observer(info, Decision(Action.LOG, reasons=(f"custom_{i}",), score=0.5))
    reasons = {p.attributes["reason"] for p in telemetry.points("abuseguard.decision.reasons")}
    assert len(reasons) == MAX_LABEL_VALUES + 1
    assert (
        telemetry.count("abuseguard.decision.reasons", action="log", reason="other", shadow=False)
        == 5
    )


def test_a_nan_score_is_not_recorded(telemetry: Telemetry) -> None:
    observer = OpenTelemetryObserver(telemetry.meter_provider)
    observer(RequestInfo(ip="203.0.113.5"), Decision(Action.ALLOW, score=float("nan")))
    assert telemetry.count("abuseguard.decisions", action="allow", shadow=False) == 1
    assert all(p.count == 0 for p in telemetry.points("abuseguard.risk_score"))
    assert "abuseguard.score" not in observer.span_attributes(
        Decision(Action.ALLOW, score=float("nan"))
    )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="score_buckets"):
        OpenTelemetryObserver(score_buckets=(0.5, 0.2))
    with pytest.raises(ValueError, match="spans"):
        OpenTelemetryObserver(spans="yes")  # type: ignore[arg-type]


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'abuseguard\[otel\]'"):
        OpenTelemetryObserver()


def test_two_observers_on_one_meter_provider_both_count(telemetry: Telemetry) -> None:
    # A reloaded app or a second guard builds a second observer on the same provider: the
    # SDK keeps the first instruments of a name, so the counts must be shared.
    first = OpenTelemetryObserver(telemetry.meter_provider)
    second = OpenTelemetryObserver(telemetry.meter_provider)
    info = RequestInfo(ip="203.0.113.5")
    first(info, Decision(Action.THROTTLE, reasons=("rate",)))
    second(info, Decision(Action.THROTTLE, reasons=("rate",)))
    assert telemetry.count("abuseguard.decisions", action="throttle", shadow=False) == 2
    assert (
        telemetry.count(
            "abuseguard.decision.reasons", action="throttle", reason="rate", shadow=False
        )
        == 2
    )


def test_a_long_secret_keys_the_hash(telemetry: Telemetry) -> None:
    observer = OpenTelemetryObserver(telemetry.meter_provider, secret="x" * 200)
    hashed = observer.identity_hash("i:203.0.113.5")
    assert hashed.startswith("i:") and "203.0.113.5" not in hashed
    assert hashed != OpenTelemetryObserver(
        telemetry.meter_provider, secret="y" * 200
    ).identity_hash("i:203.0.113.5")
