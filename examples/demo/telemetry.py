"""OpenTelemetry for the demo apps, configured only by the standard OTEL_* environment variables
(``meshgate up`` sets them): a tracer provider with the OTLP/HTTP exporter, W3C trace context in and out.

What a Python team would write with the OpenTelemetry API: server spans continue the caller's trace
(``traceparent`` from the sidecar), client spans inject it into outgoing calls."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def setup(default_name: str) -> TracerProvider:
    """Install the global tracer provider; spans go over OTLP/HTTP unless OTEL_TRACES_EXPORTER=none."""
    os.environ.setdefault("OTEL_SERVICE_NAME", default_name)
    provider = TracerProvider(resource=Resource.create())  # sampler from OTEL_TRACES_SAMPLER
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") != "none":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


class TracingMiddleware:
    """ASGI middleware: one SERVER span per HTTP request, parented on the incoming ``traceparent``."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.tracer = trace.get_tracer("meshgate.demo")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        with self.tracer.start_as_current_span(
            f"{method} {scope['path']}",
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:

            async def send_status(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        span.set_status(trace.StatusCode.ERROR)
                await send(message)

            await self.app(scope, receive, send_status)


def outgoing_headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, for an outgoing call."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers
