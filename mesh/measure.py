"""Request telemetry for the sidecar: a thin wrapper around a handler that makes a span (continuing the
caller's W3C trace context and passing ours on; it ends when the response body is done), counts
requests by peer service and status code, and records how long the handler took to produce the
response head. Also the scrape-time families of the mesh client (``meshgate_upstream_*``), which
sidecars and gateways share. Names and labels: docs/metrics.md."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry.trace import SpanKind

from mesh.transport.messages import LOCAL_ERROR_CODES, Request, Response, on_finish, target_path
from shared.policy.request import split_spiffe_id
from shared.telemetry.metrics import Counter, Family, Histogram, Registry
from shared.telemetry.tracing import Tracing, end, finish

if TYPE_CHECKING:
    from mesh.outbound.client import MeshClient

Who = TypeVar("Who")
access = logging.getLogger("meshgate.access")

#: Callers in one heartbeat report (the control plane's limit, mesh/controlplane/schemas.py).
MAX_REPORTED_CALLERS = 256


@functools.lru_cache(maxsize=4096)
def service_of(spiffe_id: str) -> str:
    """The service name in a workload SPIFFE ID (``spiffe://td/ns/N/sa/S`` -> ``S``), else ``_unknown``."""
    try:
        return split_spiffe_id(spiffe_id)[2] or "_unknown"
    except ValueError:
        return "_unknown"


class RequestMetrics:
    """``meshgate_sidecar_requests_total{direction, service, code}``,
    ``meshgate_sidecar_request_duration_seconds{direction, service}`` and
    ``meshgate_sidecar_local_errors_total{direction, reason}``."""

    def __init__(self, registry: Registry, tracing: Tracing | None = None, access_log: bool = False) -> None:
        self.tracing = tracing or Tracing("meshgate")
        self.access_log = access_log
        self.requests: Counter = registry.counter(
            "meshgate_sidecar_requests_total",
            "Requests answered, by direction (inbound: from a peer sidecar; outbound: from the app), "
            "service on the other side and HTTP status code.",
            ["direction", "service", "code"],
        )
        self.duration: Histogram = registry.histogram(
            "meshgate_sidecar_request_duration_seconds",
            "Time until the response head, by direction and service on the other side.",
            ["direction", "service"],
        )
        self.denied: dict[str, int] = {}  # inbound policy denials by calling service
        self.errors: Counter = registry.counter(
            "meshgate_sidecar_local_errors_total",
            "Responses the sidecar made itself, by direction and reason (the x-meshgate-error code; "
            "_other for a value Meshgate does not send, e.g. from an app).",
            ["direction", "reason"],
        )

    def traffic_report(self) -> dict[str, dict[str, Any]]:
        """Inbound requests so far by calling service: ``requests``, ``errors`` (5xx), ``denied``
        (by policy), and the latency histogram (``buckets`` upper bounds, cumulative ``counts`` with
        +Inf last). Cumulative since start: the control plane turns two reports into rates."""
        out: dict[str, dict[str, Any]] = {}
        for (direction, service, code), value in list(self.requests.values.items()):
            if direction != "inbound":
                continue
            entry = out.setdefault(service, {"requests": 0, "errors": 0, "denied": 0})
            entry["requests"] += int(value)
            if code.startswith("5"):
                entry["errors"] += int(value)
        if len(out) > MAX_REPORTED_CALLERS:  # keep heartbeats small: the busiest callers
            busiest = sorted(out.items(), key=lambda item: item[1]["requests"], reverse=True)
            out = dict(busiest[:MAX_REPORTED_CALLERS])
        for service, entry in out.items():
            entry["denied"] = self.denied.get(service, 0)
            series = self.duration.series.get(("inbound", service))
            if series is not None:
                running, counts = 0, []
                for n in series[0]:
                    running += n
                    counts.append(running)
                entry["buckets"] = list(self.duration.buckets)
                entry["counts"] = counts
        return out

    def wrap(
        self,
        direction: str,
        handler: Callable[[Request, Who], Awaitable[Response]],
        peer_of: Callable[[Request, Who], str],
    ) -> Callable[[Request, Who], Awaitable[Response]]:
        """``handler`` with every call measured; ``peer_of`` names the other side (a SPIFFE ID or a
        service name: the ``service`` label is the service name either way)."""

        # the sidecar serves its app too: a SERVER span on both sides; each outbound attempt then gets
        # its own CLIENT span from the mesh client, as OTel asks of proxies
        kind = SpanKind.SERVER

        async def measured(request: Request, who: Who) -> Response:
            started = time.perf_counter()
            attributes: dict[str, str] = {}
            if self.tracing.enabled:
                attributes = {
                    "url.path": target_path(request.path),
                    "url.scheme": "https" if direction == "inbound" else "http",
                    # the app's side (ClientInfo) says which; peers always speak HTTP/2 to the inbound
                    "network.protocol.version": getattr(who, "protocol", "2"),
                }
                address = getattr(who, "address", None)
                if address:
                    attributes["client.address"] = address
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
            service = service_of(peer) if peer.startswith("spiffe://") else peer
            self.duration.observe(elapsed, direction, service)
            self.requests.inc(direction, service, str(response.status))
            error = response.header("x-meshgate-error")
            if error is not None and response.local:
                self.errors.inc(direction, error if error in LOCAL_ERROR_CODES else "_other")
                if error == "policy_denied" and direction == "inbound":
                    self.denied[service] = self.denied.get(service, 0) + 1
            if self.access_log:
                parent = next((v for k, v in request.headers if k == "traceparent"), "")
                access.info(
                    "request",
                    extra={
                        "trace_id": parent.split("-")[1] if parent.count("-") == 3 else None,
                        "direction": direction,
                        "peer": peer,
                        "method": request.method,
                        "path": target_path(request.path),
                        "status": response.status,
                        "duration_ms": round(elapsed * 1000, 3),  # to the response head
                        "error": error,
                        "attempt": next((v for k, v in request.headers if k == "x-meshgate-attempt"), None),
                        "retries": response.attempts - 1 if direction == "outbound" else None,
                    },
                )
            return response

        return measured


def upstream_families(client: MeshClient) -> list[Family]:
    """The mesh client's counters (sidecars and gateways): retries, ejections, overflows by service,
    and connections opened to peer sidecars, and connects to them that failed."""
    help_texts = {
        "retries": "Retries of requests to a service (each retry once).",
        "ejections": "Endpoints of a service ejected by outlier detection.",
        "overflows": "Requests refused at once by the circuit breaker (requests, pending or connections).",
    }
    families = {
        key: Family(f"meshgate_upstream_{key}_total", "counter", text, ("service",))
        for key, text in help_texts.items()
    }
    for service, stats in sorted(client.upstream_stats().items()):
        for key, family in families.items():
            family.add(stats.get(key, 0), service)
    opened = Family(
        "meshgate_upstream_connections_opened_total",
        "counter",
        "Connections (mTLS, HTTP/2) opened to peer sidecars.",
    ).add(client.pool.opened)
    failed = Family(
        "meshgate_upstream_connect_failures_total",
        "counter",
        "Connects to peer sidecars that failed (refused, timed out, TLS or identity); a reconnect "
        "backoff's refusals are not connects.",
    ).add(client.pool.connects_failed)
    return [*families.values(), opened, failed]
