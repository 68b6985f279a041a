"""Request telemetry for the sidecar: a thin wrapper around a handler that makes a span (continuing the
caller's W3C trace context and passing ours on; it ends when the response body is done), counts
requests by peer and status code, and records how long the handler took to produce the response head."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from opentelemetry.trace import SpanKind

from mesh.transport.messages import Request, Response, on_finish
from shared.telemetry.metrics import Counter, Histogram, Registry
from shared.telemetry.tracing import Tracing, end, finish

Who = TypeVar("Who")
access = logging.getLogger("meshgate.access")


class RequestMetrics:
    """``meshgate_requests_total{direction, peer, code}`` and ``meshgate_request_duration_seconds``."""

    def __init__(self, registry: Registry, tracing: Tracing | None = None, access_log: bool = False) -> None:
        self.tracing = tracing or Tracing("meshgate")
        self.access_log = access_log
        self.requests: Counter = registry.counter(
            "meshgate_requests_total",
            "Requests by direction (inbound: from a peer sidecar; outbound: from the app), peer and status.",
            ["direction", "peer", "code"],
        )
        self.duration: Histogram = registry.histogram(
            "meshgate_request_duration_seconds",
            "Time until the response head, by direction and peer.",
            ["direction", "peer"],
        )
        self.errors: Counter = registry.counter(
            "meshgate_local_errors_total",
            "Responses the sidecar made itself, by x-meshgate-error code.",
            ["direction", "error"],
        )

    def wrap(
        self,
        direction: str,
        handler: Callable[[Request, Who], Awaitable[Response]],
        peer_of: Callable[[Request, Who], str],
    ) -> Callable[[Request, Who], Awaitable[Response]]:
        """``handler`` with every call measured."""

        # the sidecar serves its app too: a SERVER span on both sides; each outbound attempt then gets
        # its own CLIENT span from the mesh client, as OTel asks of proxies
        kind = SpanKind.SERVER

        async def measured(request: Request, who: Who) -> Response:
            started = time.perf_counter()
            attributes: dict[str, str] = {}
            if self.tracing.enabled:
                attributes = {
                    "url.path": request.path.split("?", 1)[0],
                    "url.scheme": "https" if direction == "inbound" else "http",
                }
            # the span lasts until the response body is done (or the response is dropped)
            with self.tracing.span(kind, request.method, request.headers, attributes, end_on_exit=False) as (
                span,
                headers,
            ):
                request.headers = headers
                try:
                    response = await handler(request, who)
                except BaseException:
                    end(span)
                    raise
                peer = peer_of(request, who)
                if span is not None:
                    span.set_attribute("meshgate.peer", peer)
                    span.set_attribute("meshgate.direction", direction)
                finish(span, response.status, client=False)
            if span is not None:
                on_finish(response, lambda: end(span))
            elapsed = time.perf_counter() - started
            self.duration.observe(elapsed, direction, peer)
            self.requests.inc(direction, peer, str(response.status))
            error = response.header("x-meshgate-error")
            if error is not None:
                self.errors.inc(direction, error)
            if self.access_log:
                parent = next((v for k, v in request.headers if k == "traceparent"), "")
                access.info(
                    "request",
                    extra={
                        "trace_id": parent.split("-")[1] if parent.count("-") == 3 else None,
                        "direction": direction,
                        "peer": peer,
                        "method": request.method,
                        "path": request.path.split("?", 1)[0],
                        "status": response.status,
                        "duration_ms": round(elapsed * 1000, 3),  # to the response head
                        "error": error,
                        "attempt": next((v for k, v in request.headers if k == "x-meshgate-attempt"), None),
                    },
                )
            return response

        return measured
