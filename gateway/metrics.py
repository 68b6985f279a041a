"""The gateway's metrics (names and labels: docs/metrics.md): what the edge steps record as requests
pass, and the families computed at scrape time from the runtime (configuration, certificate, rate
limiter, mesh client)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.measure import upstream_families
from shared.telemetry.common_metrics import ConfigStatus, common_families
from shared.telemetry.metrics import Family, Registry

if TYPE_CHECKING:
    from gateway.state import GatewayRuntime

#: ``reason`` of ``meshgate_gateway_auth_failures_total``.
AUTH_MISSING = "missing"  # no provider found credentials
AUTH_INVALID = "invalid"  # credentials were offered and refused (or a provider could not be used)
AUTH_DENIED = "denied"  # an external authorizer answered with its own denial


class GatewayMetrics:
    """One worker's metrics; the steps call :meth:`auth_failure`, :meth:`rate_limited`, :meth:`denied`."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.config = ConfigStatus()
        r = self.registry
        self.requests = r.counter(
            "meshgate_gateway_requests_total",
            "Requests answered at the edge, by route (- when none matched) and HTTP status code.",
            ("route", "code"),
        )
        self.duration = r.histogram(
            "meshgate_gateway_request_duration_seconds",
            "Time until the response head (the whole exchange for a WebSocket), by route.",
            ("route",),
        )
        self.auth_failures = r.counter(
            "meshgate_gateway_auth_failures_total",
            "Requests refused by authentication, by route and reason (missing, invalid, denied).",
            ("route", "reason"),
        )
        self.ratelimit = r.counter(
            "meshgate_gateway_ratelimit_decisions_total",
            "Rate-limit decisions, by route, result (allowed, denied) and source (redis, local-cache, "
            "fallback-allow, fallback-deny, fallback-local).",
            ("route", "result", "source"),
        )
        self.denials = r.counter(
            "meshgate_policy_denials_total",
            "Requests the policy engine denied; mode audit: would have denied (logged, let through).",
            ("mode",),
        )
        for mode in ("enforce", "audit"):  # both series exist from the start, as on sidecars
            self.denials.inc(mode, amount=0)

    def auth_failure(self, route: str, reason: str) -> None:
        """Count one request refused by authentication."""
        self.auth_failures.inc(route, reason)

    def rate_limited(self, route: str, allowed: bool, source: str) -> None:
        """Count one rate-limit decision."""
        self.ratelimit.inc(route, "allowed" if allowed else "denied", source)

    def denied(self, mode: str) -> None:
        """Count one policy denial (``enforce`` or ``audit``)."""
        self.denials.inc(mode)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.inc(route, str(status))
        self.duration.observe(seconds, route)

    def collect_from(self, runtime: GatewayRuntime) -> None:
        """Render ``runtime``'s state at every scrape."""
        self.registry.collect(lambda: self._families(runtime))

    def _families(self, runtime: GatewayRuntime) -> list[Family]:
        certs = runtime.registry.certs if runtime.registry is not None else None
        families = common_families(
            "gateway",
            ready=runtime.ready,
            config=self.config,
            certificates={"svid": certs.seconds_to_expiry()} if certs is not None else {},
        )
        stats = runtime.limiter.stats
        families += [
            Family(
                "meshgate_gateway_ratelimit_redis_up",
                "gauge",
                "1 while rate-limit decisions are made in Redis, 0 without Redis or while it is down.",
            ).add(int(runtime.limiter.redis_ok)),
            Family(
                "meshgate_gateway_ratelimit_redis_errors_total",
                "counter",
                "Failed Redis round trips (connection, timeout) and per-decision script errors.",
            ).add(stats.get("redis_errors", 0)),
            Family(
                "meshgate_gateway_ratelimit_redis_round_trips_total",
                "counter",
                "Pipelines (and script loads) sent to Redis.",
            ).add(stats.get("round_trips", 0)),
            Family(
                "meshgate_gateway_ratelimit_script_loads_total",
                "counter",
                "Rate-limit script loads after Redis answered NOSCRIPT.",
            ).add(stats.get("noscript_reloads", 0)),
        ]
        if runtime.has_client:
            families += upstream_families(runtime.client)
        return families

    def render(self) -> str:
        """Prometheus text."""
        return self.registry.render()
