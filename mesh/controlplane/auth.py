"""Who is calling the control plane: an operator (admin token), a workload (its SVID over mTLS), or a
workload that has only a join token so far."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from starlette.requests import Request

from mesh.controlplane.errors import ApiError
from shared.identity.spiffeid import SpiffeId
from shared.identity.svid import SvidError, check_leaf

PEER_CERT_KEY = "meshgate_peer_cert_der"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. Workloads carry their SPIFFE ID; admins do not."""

    kind: Literal["admin", "workload"]
    identity: SpiffeId | None = None


def bearer(request: Request) -> str | None:
    """The bearer token of the request, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def peer_identity(request: Request, trust_domain: str) -> SpiffeId | None:
    """The SPIFFE ID of the client certificate (chain already verified by TLS); None without one.

    Raises ApiError(401) when a certificate was presented but breaks an SVID rule.
    """
    der = request.scope.get("state", {}).get(PEER_CERT_KEY)
    if not der:
        return None
    try:
        return check_leaf(x509.load_der_x509_certificate(der), trust_domain)
    except (SvidError, ValueError) as exc:
        raise ApiError(401, "bad_certificate", f"client certificate refused: {exc}") from exc


def authenticate(request: Request, trust_domain: str, admin_token: str | None) -> Caller | None:
    """The caller from its certificate or an admin bearer token; None when neither is presented."""
    identity = peer_identity(request, trust_domain)
    if identity is not None:
        return Caller("workload", identity)
    token = bearer(request)
    # bytes: the header's own (starlette decodes them as latin-1) against the token's UTF-8;
    # compare_digest refuses non-ASCII str (a TypeError, a 500)
    if (
        token is not None
        and admin_token is not None
        and hmac.compare_digest(token.encode("latin-1", "replace"), admin_token.encode())
    ):
        return Caller("admin")
    return None


def require(
    request: Request, trust_domain: str, admin_token: str | None, *, admin_only: bool = False
) -> Caller:
    """The authenticated caller, or ApiError 401/403."""
    caller = authenticate(request, trust_domain, admin_token)
    if caller is None:
        raise ApiError(
            401,
            "unauthenticated",
            "present a workload certificate (mTLS) or 'Authorization: Bearer <admin token>'",
        )
    if admin_only and caller.kind != "admin":
        raise ApiError(403, "forbidden", "this endpoint is for operators (admin token)")
    return caller
