"""Request bodies of the control-plane API: strict (unknown fields are errors), with limits."""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.requests import Request

from mesh.controlplane.errors import ApiError
from shared.config.model.types import Duration, Name, Port, camel

MAX_BODY_BYTES = 64 * 1024


class Body(BaseModel):
    """Base of request bodies."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=camel, populate_by_name=True)


class CheckBody(Body):
    """The app check the sidecar runs locally and reports with its heartbeats."""

    type: Literal["http", "tcp", "ttl"] = "ttl"
    path: str | None = Field(default=None, pattern=r"^/", max_length=1024)
    interval: Duration = timedelta(seconds=10)
    timeout: Duration = timedelta(seconds=2)


class RegisterBody(Body):
    """An instance: service, where its sidecar's inbound listener is, metadata and health check."""

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    service: Name
    namespace: Name | None = None
    address: str
    port: Port
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)
    check: CheckBody = Field(default_factory=CheckBody)
    ttl: Duration = timedelta(seconds=15)

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"address {value!r} is not an IP address") from None

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if len(key) > 128 or len(item) > 1024:
                raise ValueError(
                    f"metadata {key[:40]!r}: keys at most 128 and values at most 1024 characters"
                )
        return value

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: timedelta) -> timedelta:
        if not 1 <= value.total_seconds() <= 3600:
            raise ValueError("ttl must be between 1s and 1h")
        return value


#: bounded: a workload's report must not overflow the graph's float arithmetic (10**400 made every
#: operator's Traffic page a 500)
Count = Annotated[int, Field(ge=0, le=2**53)]
Bound = Annotated[float, Field(gt=0, allow_inf_nan=False)]

#: Callers one report may carry (the sidecar sends its busiest ones when it sees more).
MAX_REPORTED_CALLERS = 256


class TrafficCounts(Body):
    """Inbound requests from one calling service, cumulative since the sidecar started; ``counts``
    is the cumulative latency histogram over ``buckets`` (upper bounds) with +Inf last."""

    requests: Count
    errors: Count = 0
    denied: Count = 0
    buckets: list[Bound] = Field(default_factory=list, max_length=64)
    counts: list[Count] = Field(default_factory=list, max_length=65)

    @model_validator(mode="after")
    def _histogram(self) -> TrafficCounts:
        if self.buckets != sorted(set(self.buckets)):
            raise ValueError("buckets must be increasing")
        if self.counts and len(self.counts) != len(self.buckets) + 1:
            raise ValueError("counts must have one entry per bucket plus +Inf")
        if any(a > b for a, b in zip(self.counts, self.counts[1:], strict=False)):
            raise ValueError("counts must be cumulative (never decreasing)")
        if self.errors > self.requests:
            raise ValueError("errors cannot exceed requests")
        return self


class ReportBody(Body):
    """What a sidecar tells beyond health: build and policy versions, certificate expiry, traffic."""

    version: str | None = Field(default=None, max_length=64)
    policy_version: str | None = Field(default=None, max_length=64)
    certificate_expires_in: float | None = Field(default=None, allow_inf_nan=False)
    inbound: dict[str, TrafficCounts] = Field(default_factory=dict, max_length=MAX_REPORTED_CALLERS)


class HeartbeatBody(Body):
    """A heartbeat, with the result of the app's check and an optional report."""

    status: Literal["passing", "warning", "critical"] = "passing"
    output: str = Field(default="", max_length=4096)
    report: ReportBody | None = None


class SignBody(Body):
    """A PEM CSR; the identity comes from the caller's token or certificate, never from here."""

    csr: str = Field(max_length=16384)


class TokenBody(Body):
    """A join token request (operators)."""

    service: Name
    namespace: Name | None = None
    ttl: Duration = timedelta(hours=1)
    reusable: bool = False


B = TypeVar("B", bound=Body)


async def read_body(request: Request, model: type[B]) -> B:
    """Read at most MAX_BODY_BYTES of JSON and validate it: 413 when larger, 400 with reasons when bad."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_BODY_BYTES:
                raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        reasons = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "body"
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            reasons.append(f"{where}: {message}")
        raise ApiError(400, "invalid_body", "; ".join(reasons)) from None
