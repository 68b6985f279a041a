"""Authorization: the route's AccessPolicy rules through the shared policy engine (principals, claims,
methods, paths, headers), with the authenticated end user as the caller's principal."""

from __future__ import annotations

import ipaddress
import logging

from gateway.exchange import Exchange, local_error
from gateway.metrics import GatewayMetrics
from gateway.proxy import wire_safe
from mesh.transport.messages import Response
from shared.policy.engine import PolicyEngine
from shared.policy.request import Caller
from shared.policy.request import Request as PolicyRequest

log = logging.getLogger("meshgate.gateway.authorize")


def authorize(ex: Exchange, engine: PolicyEngine, metrics: GatewayMetrics | None = None) -> Response | None:
    """None when allowed; 403 ``policy_denied`` otherwise (audit rules are logged, not enforced);
    denials (and audit-mode ones) are counted in ``metrics``.

    A route no AccessPolicy targets is open to whoever passes its ``auth`` (publishing a Route is the
    operator's decision to expose it; the Mesh's ``defaultAccess`` is about services)."""
    assert ex.match is not None
    if not engine.guards_route(ex.match.route.name):
        return None
    identity = ex.identity
    try:
        ipaddress.ip_address(ex.client_address)
        address: str | None = ex.client_address
    except ValueError:
        address = None  # a Unix socket peer, say: no address rules can match it
    caller = Caller.from_identity(
        ex.client_spiffe_id,
        principal=identity.principal if identity else None,
        claims=identity.claims if identity else None,
        address=address,
    )
    path = f"{ex.path}?{ex.query}" if ex.query else ex.path
    decision = engine.decide_route(caller, ex.match.route.name, PolicyRequest(ex.method, path, _headers(ex)))
    if decision.audit is not None and not decision.audit.allowed:
        if metrics is not None:
            metrics.denied("audit")
        log.info(
            "audit: route %s would deny %s %s (%s)", ex.match.route.name, ex.method, ex.path, decision.audit
        )
    if decision.allowed:
        return None
    if metrics is not None:
        metrics.denied("enforce")
    log.info(
        "route %s denied %s %s for %s: %s (%s)",
        ex.match.route.name,
        ex.method,
        ex.path,
        caller.principal or "anonymous",
        decision.reason,
        decision.rule,
    )
    return local_error(403, "policy_denied", f"denied by policy ({decision.rule})")


def _headers(ex: Exchange) -> dict[str, str]:
    """The headers rules match: the request's as they go upstream once the caller's identity is
    applied (claims to headers, ext_authz's headers), repeats joined with commas. Not the client's:
    a forged ``x-tenant`` must not pass a rule that the token's own tenant claim fails."""
    identity = ex.identity
    if identity is None or not (identity.remove_headers or identity.upstream_headers):
        return ex.joined_headers()
    drop = {n.lower() for n in identity.remove_headers} | {k.lower() for k, _ in identity.upstream_headers}
    joined: dict[str, str] = {}
    for key, value in [
        *((k, v) for k, v in ex.headers if k not in drop),
        *((k.lower(), v) for k, v in identity.upstream_headers if wire_safe(v)),  # as proxy sends them
    ]:
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined
