"""What the engine decides about: who calls (:class:`Caller`) and what is called (:class:`Request`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def split_spiffe_id(identity: str) -> tuple[str, str | None, str | None]:
    """``spiffe://td/ns/N/sa/S`` -> (td, N, S); other paths give (td, None, None).

    The ID is assumed already verified (it comes from a certificate); this only splits it.
    Raises ValueError when ``identity`` is not a ``spiffe://`` URI.
    """
    if not identity.startswith("spiffe://"):
        raise ValueError(f"not a SPIFFE ID: {identity!r}")
    rest = identity[len("spiffe://") :]
    td, _, path = rest.partition("/")
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "ns" and parts[2] == "sa" and parts[1] and parts[3]:
        return td, parts[1], parts[3]
    return td, None, None


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller as the mesh knows it: SPIFFE ID from its certificate, end user from the edge."""

    identity: str | None = None
    trust_domain: str | None = None
    namespace: str | None = None
    service: str | None = None
    principal: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    address: IPAddress | None = None

    @classmethod
    def from_identity(
        cls,
        identity: str | None,
        *,
        principal: str | None = None,
        claims: Mapping[str, Any] | None = None,
        address: str | None = None,
    ) -> Caller:
        """Build a caller from a verified SPIFFE ID (or None for an unauthenticated peer)."""
        td = ns = svc = None
        if identity is not None:
            td, ns, svc = split_spiffe_id(identity)
        return cls(
            identity=identity,
            trust_domain=td,
            namespace=ns,
            service=svc,
            principal=principal,
            claims=claims or {},
            address=ipaddress.ip_address(address) if address else None,
        )

    @classmethod
    def for_service(cls, service: str, trust_domain: str, namespace: str = "default", **kw: Any) -> Caller:
        """The caller that a workload of ``service`` in ``trust_domain`` is."""
        return cls.from_identity(f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}", **kw)


@dataclass(frozen=True, slots=True)
class Request:
    """Method, raw path (query allowed) and headers with lower-case names."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """What audit-mode policies would have decided; reported, never enforced."""

    allowed: bool
    rule: str
    policy: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: allowed or not, the deciding rule as ``FILE:LINE`` (or ``default``), and why."""

    allowed: bool
    rule: str
    policy: str | None
    reason: str
    audit: AuditVerdict | None = None

    @property
    def audit_mode(self) -> bool:
        """True when audit-mode policies were evaluated for this request."""
        return self.audit is not None
