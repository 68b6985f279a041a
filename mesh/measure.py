"""Request metrics for the sidecar: a thin wrapper around a handler that counts requests by peer and
status code and records how long the handler took to produce the response head."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mesh.transport.messages import Request, Response
from shared.telemetry.metrics import Counter, Histogram, Registry

Who = TypeVar("Who")


class RequestMetrics:
    """``meshgate_requests_total{direction, peer, code}`` and ``meshgate_request_duration_seconds``."""

    def __init__(self, registry: Registry) -> None:
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

        async def measured(request: Request, who: Who) -> Response:
            started = time.perf_counter()
            response = await handler(request, who)
            peer = peer_of(request, who)
            self.duration.observe(time.perf_counter() - started, direction, peer)
            self.requests.inc(direction, peer, str(response.status))
            error = response.header("x-meshgate-error")
            if error is not None:
                self.errors.inc(direction, error)
            return response

        return measured
