"""``/metrics`` of the control plane, in the Prometheus text format (names and labels: docs/metrics.md):
the API's requests (recorded by a small ASGI middleware) and families computed at scrape time from the
registry, the CA, the policy watcher and the counters of :class:`~mesh.controlplane.core.ControlPlane`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Match

from shared.telemetry.common_metrics import ConfigStatus, common_families
from shared.telemetry.metrics import Family, Registry

if TYPE_CHECKING:
    from mesh.controlplane.core import ControlPlane

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def control_plane_families(cp: ControlPlane) -> list[Family]:
    """Every scrape-time family of the control plane."""
    status = cp.watcher.status
    config = ConfigStatus(status.version, status.reloads_ok, status.reloads_failed, status.ok)
    now = time.time()
    certificates = {"ca": cp.ca.signing_cert.not_valid_after_utc.timestamp() - now}
    if cp.server_cert_expires_at is not None:
        certificates["svid"] = cp.server_cert_expires_at - now
    families = common_families("controlplane", ready=cp.ready(), config=config, certificates=certificates)
    health: dict[tuple[str, str], int] = {}
    for view in cp.registry.instances():
        key = (view.record.service, view.health)
        health[key] = health.get(key, 0) + 1
    instances = Family(
        "meshgate_controlplane_instances",
        "gauge",
        "Registered instances by service and health (passing, warning, critical).",
        ("service", "health"),
    )
    for (service, state), n in sorted(health.items()):
        instances.add(n, service, state)
    counters = cp.counters
    auth_failures = Family(
        "meshgate_controlplane_auth_failures_total",
        "counter",
        "Join tokens refused, by reason (unknown, bad-secret, expired, used).",
        ("reason",),
    )
    for reason, n in sorted(counters.auth_failures.items()):
        auth_failures.add(n, reason)

    def one(name: str, kind: Literal["counter", "gauge"], help_text: str, value: float) -> Family:
        return Family(name, kind, help_text).add(value)

    return [
        *families,
        one(
            "meshgate_controlplane_index", "gauge", "Current change index of the registry.", cp.registry.index
        ),
        instances,
        one(
            "meshgate_controlplane_registrations_total",
            "counter",
            "Instance registrations.",
            counters.registrations,
        ),
        one(
            "meshgate_controlplane_certificates_signed_total",
            "counter",
            "Workload certificates (SVIDs) signed.",
            counters.csr_signed,
        ),
        one(
            "meshgate_controlplane_csr_rejections_total",
            "counter",
            "Certificate signing requests refused as malformed or not allowed.",
            counters.csr_rejected,
        ),
        auth_failures,
        one(
            "meshgate_controlplane_watchers",
            "gauge",
            "Blocking snapshot queries waiting now.",
            counters.watchers,
        ),
        one(
            "meshgate_controlplane_snapshot_builds_total",
            "counter",
            "Snapshots serialized (each index once).",
            counters.snapshot_builds,
        ),
        one(
            "meshgate_controlplane_bundle_sequence",
            "gauge",
            "Sequence number of the SPIFFE trust bundle.",
            cp.ca.bundle().sequence,
        ),
    ]


class ApiMetrics:
    """The control plane's metrics registry; :meth:`middleware` counts and times API requests by route
    (the route's path template, ``-`` when none matched) and status code."""

    def __init__(self, cp: ControlPlane) -> None:
        self.registry = Registry()
        self.routes: Sequence[BaseRoute] = ()
        self.requests = self.registry.counter(
            "meshgate_controlplane_requests_total",
            "API requests answered, by route (path template, - when none matched) and HTTP status code.",
            ("route", "code"),
        )
        self.duration = self.registry.histogram(
            "meshgate_controlplane_request_duration_seconds",
            "Time until the response head, by route (blocking snapshot queries wait for a change).",
            ("route",),
        )
        self.registry.collect(lambda: control_plane_families(cp))

    def route_of(self, scope: Scope) -> str:
        """The path template of the route ``scope`` goes to, or ``-``."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return str(getattr(route, "path", "-"))
        return "-"

    def middleware(self) -> Middleware:
        """For ``Starlette(middleware=[...])``."""
        return Middleware(_Measured, metrics=self)

    def render(self) -> str:
        """Prometheus text."""
        return self.registry.render()


class _Measured:
    """Pure ASGI: HTTP requests through ``app`` are counted and timed in ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # when the app raises before answering
        elapsed: list[float] = []

        async def measured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                elapsed.append(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, measured_send)
        finally:
            route = self.metrics.route_of(scope)
            self.metrics.requests.inc(route, str(status[0]))
            self.metrics.duration.observe(elapsed[0] if elapsed else time.perf_counter() - started, route)
