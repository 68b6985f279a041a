"""Repeated trace context headers (W3C Trace Context): two ``traceparent`` headers make the context
invalid (a new trace, no tracestate); several ``tracestate`` headers are combined in order."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from shared.telemetry.tracecontext import from_headers, parse_traceparent
from shared.telemetry.tracing import Tracing, finish

T1 = "4bf92f3577b34da6a3ce929d0e0e4736"
T2 = "1" * 32
P1 = f"00-{T1}-00f067aa0ba902b7-01"
P2 = f"00-{T2}-2222222222222222-01"


class _Nowhere(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _forwarded(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    tracing = Tracing("svc", _Nowhere())
    try:
        with tracing.span(SpanKind.SERVER, "GET", headers, {}) as (_, out):
            return [(k, v) for k, v in out if k in ("traceparent", "tracestate")]
    finally:
        tracing.shutdown()


def test_two_traceparent_headers_start_a_new_trace_without_tracestate() -> None:
    out = _forwarded([("traceparent", P1), ("tracestate", "a=1"), ("traceparent", P2)])
    assert [k for k, _ in out] == ["traceparent"]
    parsed = parse_traceparent(out[0][1])
    assert parsed is not None
    assert parsed[0] not in (T1, T2)


def test_tracestate_headers_are_combined_in_order() -> None:
    out = _forwarded([("traceparent", P1), ("tracestate", "a=1"), ("x", "y"), ("tracestate", "b=2")])
    parsed = parse_traceparent(dict(out)["traceparent"])
    assert parsed is not None and parsed[0] == T1
    assert dict(out)["tracestate"] == "a=1,b=2"


def test_one_traceparent_and_its_tracestate_are_read_as_they_are() -> None:
    assert from_headers([("traceparent", P1), ("tracestate", "a=1")]) == (P1, "a=1")
    assert from_headers([("traceparent", P1)]) == (P1, None)
    assert from_headers([("tracestate", "a=1")]) == (None, None)
    assert from_headers([("traceparent", P1), ("traceparent", P1)]) == (None, None)


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def test_error_type_is_the_status_code_on_failed_answers() -> None:
    """OTel HTTP conventions: a SERVER span for a 5xx, a CLIENT span for a 4xx or 5xx, sets
    ``error.type`` to the status code; a transport error named earlier stays."""
    keep = _Keep()
    tracing = Tracing("svc", keep)
    cases = [(SpanKind.SERVER, 503, None), (SpanKind.SERVER, 404, None), (SpanKind.CLIENT, 404, None)]
    cases.append((SpanKind.CLIENT, 502, "upstream_reset"))
    try:
        for kind, status, named in cases:
            with tracing.span(kind, "GET", [("traceparent", P1)], {}) as (span, _):
                if named is not None:
                    span.set_attribute("error.type", named)
                finish(span, status, client=kind == SpanKind.CLIENT)
    finally:
        tracing.shutdown()
    got = [(s.attributes or {}).get("error.type") for s in keep.spans]
    assert got == ["503", None, "404", "upstream_reset"]
