"""``Mesh`` (trust domain and defaults) and ``Service`` (protocol, port, traffic policy)."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from shared.config.model.base import Document
from shared.config.model.types import Duration, Name, Percent, Port, Spec, TrustDomain


class MtlsSettings(Spec):
    """``strict``: sidecars accept only mTLS; ``permissive`` also accepts plaintext (migration only)."""

    mode: Literal["strict", "permissive"] = "strict"


class Mesh(Document):
    """The mesh itself: one per policy set. Only ``trustDomain`` is required."""

    KIND: ClassVar[str] = "Mesh"
    kind: Literal["Mesh"]
    name: Name = "mesh"
    trust_domain: TrustDomain
    default_access: Literal["allow", "deny"] = "allow"
    namespace: Name = "default"
    mtls: MtlsSettings = Field(default_factory=MtlsSettings)
    certificate_ttl: Duration = Field(default=timedelta(hours=24), alias="certificateTTL")
    #: Services whose workloads may tell a sidecar who the end user is (``x-meshgate-principal``):
    #: the edge gateways. From any other caller the header is dropped.
    edge_gateways: list[Name] = Field(default_factory=lambda: ["gateway"])

    @model_validator(mode="after")
    def _positive_certificate_ttl(self) -> Mesh:
        if self.certificate_ttl <= timedelta(0):  # the CA refuses it: every /v1/sign would be a 500
            raise ValueError("certificateTTL must be positive, e.g. 24h")
        return self


class Backoff(Spec):
    """Exponential backoff with full jitter between retries."""

    base: Duration = timedelta(milliseconds=25)
    max: Duration = timedelta(milliseconds=250)


class RetryBudget(Spec):
    """Retries allowed on top of normal traffic, as Linkerd's budget: 20% extra plus 10 per second."""

    percent: Percent = 0.2
    min_per_second: int = Field(default=10, ge=0)


RetryOn = Literal["connect-failure", "reset", "refused-stream", "gateway-error", "5xx"]
DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("connect-failure", "reset", "refused-stream", "gateway-error")


class Retries(Spec):
    """When and how often a failed request is tried again."""

    attempts: int = Field(default=2, ge=0, le=10)
    per_try_timeout: Duration | None = None
    retry_on: list[RetryOn] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))
    non_idempotent: bool = False
    budget: RetryBudget = Field(default_factory=RetryBudget)
    backoff: Backoff = Field(default_factory=Backoff)


class LoadBalancer(Spec):
    """``least-request`` (power of two choices, the default), ``round-robin`` or ``ring-hash``."""

    policy: Literal["least-request", "round-robin", "ring-hash"] = "least-request"
    hash_header: str | None = None

    @model_validator(mode="after")
    def _hash_header_for_ring_hash(self) -> LoadBalancer:
        if self.policy == "ring-hash" and not self.hash_header:
            raise ValueError("policy ring-hash needs hashHeader (the header whose value picks the endpoint)")
        if self.policy != "ring-hash" and self.hash_header:
            raise ValueError("hashHeader is used only with policy ring-hash")
        return self


class CircuitBreaker(Spec):
    """Limits answered at once with 503 ``circuit_open`` when reached."""

    max_connections: int = Field(default=1024, ge=1)
    max_pending_requests: int = Field(default=1024, ge=0)
    max_requests: int = Field(default=1024, ge=1)


class OutlierDetection(Spec):
    """Eject endpoints after consecutive failures, for a growing time, never more than a share of them."""

    consecutive_5xx: int = Field(default=5, ge=1, alias="consecutive5xx")
    consecutive_connect_failures: int = Field(default=5, ge=1)
    base_ejection_time: Duration = timedelta(seconds=30)
    max_ejection_time: Duration = timedelta(seconds=300)
    max_ejection_percent: Percent = 0.5
    #: As Envoy's: each ``interval`` an endpoint spends out of ejection takes one off the count that
    #: multiplies ``baseEjectionTime``, so a blip months after an outage is not punished as its sequel.
    interval: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _positive_interval(self) -> OutlierDetection:
        if self.interval <= timedelta(0):
            raise ValueError("outlierDetection.interval must be positive, e.g. 10s")
        return self


class TrafficPolicy(Spec):
    """How callers treat this service: timeouts, retries, balancing, breaking."""

    timeout: Duration = timedelta(seconds=15)
    retries: Retries = Field(default_factory=Retries)
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    outlier_detection: OutlierDetection = Field(default_factory=OutlierDetection)


class Service(Document):
    """A service in the mesh. Only ``name`` is required."""

    KIND: ClassVar[str] = "Service"
    kind: Literal["Service"]
    namespace: Name | None = None
    protocol: Literal["http", "grpc", "tcp"] = "http"
    port: Port | None = None
    traffic_policy: TrafficPolicy = Field(default_factory=TrafficPolicy)
