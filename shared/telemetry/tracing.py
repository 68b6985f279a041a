"""Spans for the data path, with the OpenTelemetry SDK, following the OTel HTTP conventions.

Code on the data path calls :meth:`Tracing.server_span` / :meth:`Tracing.client_span`; this module
turns them into spans. Without an exporter nothing is recorded, and the W3C context a caller sent is
forwarded unchanged (a proxy that makes no span must not change it).
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from shared.telemetry.tracecontext import TraceContext, extract, from_headers, new_span_id, new_trace_id

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class JsonLinesExporter(SpanExporter):
    """Writes each finished span as one JSON object per line (for tests, demos and log shippers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append ``spans`` to the file."""
        lines = [json.dumps(json.loads(span.to_json()), separators=(",", ":")) for span in spans]
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


def exporters(
    trace_file: Path | None = None,
    otlp_endpoint: str | None = None,
    otlp_headers: dict[str, str] | None = None,
) -> list[SpanExporter]:
    """The span exporters a process was asked for: a JSON-lines file and/or OTLP over HTTP (protobuf,
    e.g. ``http://collector:4318/v1/traces``, to Jaeger, Tempo or an OpenTelemetry Collector)."""
    out: list[SpanExporter] = []
    if trace_file is not None:
        out.append(JsonLinesExporter(trace_file))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        out.append(OTLPSpanExporter(endpoint=otlp_endpoint, headers=otlp_headers or {}, timeout=5))
    return out


class Tracing:
    """The tracer of one process, or a no-op when ``exporter`` is None. ``scope`` names the
    instrumentation scope (``meshgate.sidecar``, ``meshgate.gateway``): it tells a proxy's spans from
    the app's when both carry the same ``service.name``."""

    def __init__(
        self,
        service: str,
        exporter: SpanExporter | list[SpanExporter] | None = None,
        sample_ratio: float = 1.0,
        scope: str = "meshgate",
    ) -> None:
        chosen = exporter if isinstance(exporter, list) else [exporter] if exporter is not None else []
        self.enabled = bool(chosen)
        self.sample_ratio = min(max(sample_ratio, 0.0), 1.0)
        self._provider: TracerProvider | None = None
        if chosen:
            # new traces are sampled here (see span): the SDK only sees the ones that will be recorded
            self._provider = TracerProvider(
                resource=Resource.create({"service.name": service}), sampler=ParentBased(ALWAYS_ON)
            )
            for one in chosen:
                self._provider.add_span_processor(BatchSpanProcessor(one, schedule_delay_millis=200))
            self._tracer = self._provider.get_tracer(scope)

    def shutdown(self) -> None:
        """Flush what is buffered."""
        if self._provider is not None:
            self._provider.shutdown()

    @contextmanager
    def span(
        self,
        kind: SpanKind,
        method: str,
        headers: list[tuple[str, str]],
        attributes: dict[str, Any],
        *,
        end_on_exit: bool = True,
    ) -> Iterator[tuple[Any, list[tuple[str, str]]]]:
        """A span continuing the caller's W3C context in ``headers``; yields the span (None when
        tracing is off) and ``headers`` with ``traceparent``/``tracestate`` set for the next hop.
        With ``end_on_exit=False`` the caller ends it (when the response body is done)."""
        if not self.enabled:
            yield None, headers
            return
        ctx, continued = extract(*from_headers(headers))
        # not recorded (a parent that is not sampled, or a new trace outside the ratio): no SDK span at
        # all, only the context passed on with the sampled flag off, so that the next hops agree
        if (continued and not ctx.sampled) or (not continued and random.random() >= self.sample_ratio):
            unsampled = ctx.child() if continued else TraceContext(new_trace_id(), new_span_id(), False, "")
            others = [(k, v) for k, v in headers if k not in ("traceparent", "tracestate")]
            yield None, others + unsampled.headers()
            return
        parent = (
            trace.set_span_in_context(
                NonRecordingSpan(
                    SpanContext(
                        int(ctx.trace_id, 16),
                        int(ctx.span_id, 16),
                        is_remote=True,
                        trace_flags=TraceFlags(TraceFlags.SAMPLED if ctx.sampled else TraceFlags.DEFAULT),
                    )
                )
            )
            if continued
            else None
        )
        name = method if method in KNOWN_METHODS else "HTTP"
        attributes = {"http.request.method": method if method in KNOWN_METHODS else "_OTHER", **attributes}
        with self._tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=attributes, end_on_exit=end_on_exit
        ) as span:
            sc = span.get_span_context()
            own = TraceContext(
                f"{sc.trace_id:032x}",
                f"{sc.span_id:016x}",
                bool(sc.trace_flags & TraceFlags.SAMPLED),
                ctx.tracestate,
            )
            forwarded = [(k, v) for k, v in headers if k not in ("traceparent", "tracestate")] + own.headers()
            yield span, forwarded

    @contextmanager
    def internal(self, name: str, attributes: dict[str, Any] | None = None) -> Iterator[Any]:
        """A span for a step of the current request (an auth or rate-limit decision), a child of the
        span that is current; yields None when tracing is off."""
        if not self.enabled or not trace.get_current_span().is_recording():
            yield None
            return
        with self._tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes) as span:
            yield span


def end(span: Any) -> None:
    """End a span made with ``end_on_exit=False`` (None: tracing off, nothing to do)."""
    if span is not None:
        span.end()


def finish(span: Any, status: int, *, client: bool) -> None:
    """Record the response status; Error on 5xx (server) or 4xx and 5xx (client), with ``error.type``
    the status code as a string unless a transport error already named it, as OTel says."""
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500 or (client and status >= 400):
        span.set_status(Status(StatusCode.ERROR))
        attributes = getattr(span, "attributes", None)
        if attributes is None or "error.type" not in attributes:
            span.set_attribute("error.type", str(status))
