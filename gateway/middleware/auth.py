"""Authentication: the route's providers, any-of, in the order the route lists them.

The first provider that accepts wins: its identity becomes the principal the policy engine sees and
``x-meshgate-principal`` upstream. A final denial (ext_authz's own answer) is relayed as it is. When
credentials were offered but none was accepted, or none were offered, the answer is 401.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from gateway.auth.base import Authenticator
from gateway.exchange import Exchange, local_error
from gateway.metrics import AUTH_DENIED, AUTH_INVALID, AUTH_MISSING, GatewayMetrics
from gateway.proxy import wire_safe
from mesh.transport.messages import Response, body_of
from shared.telemetry.tracing import Tracing

log = logging.getLogger("meshgate.gateway.auth")


async def authenticate(
    ex: Exchange,
    providers: Mapping[str, Authenticator],
    tracing: Tracing,
    metrics: GatewayMetrics | None = None,
) -> Response | None:
    """None when the request may go on (``ex.identity`` set when the route asks for auth); a refusal
    is counted in ``metrics`` by reason."""
    assert ex.match is not None
    route = ex.match.route.name
    names = ex.match.route.auth
    if not names:
        return None
    request = ex.edge_request()
    reasons: list[str] = []
    for name in names:
        provider = providers.get(name)
        if provider is None:  # the loader checks references; a provider that failed to build
            reasons.append(f"{name}: not available")
            continue
        with tracing.internal("auth", {"meshgate.auth.provider": name}) as span:
            verdict = await provider.authenticate(request)
            if span is not None:
                span.set_attribute(
                    "meshgate.auth.outcome",
                    "accept"
                    if verdict.identity
                    else "deny"
                    if verdict.denial
                    else "reject"
                    if verdict.reason
                    else "absent",
                )
        if verdict.identity is not None and not wire_safe(verdict.identity.principal):
            # a principal the service could not be told (CR/LF, non-Latin-1): refused, not passed on
            # anonymously (it was accepted and its x-meshgate-principal silently dropped)
            reasons.append(f"{name}: principal {verdict.identity.principal!r} cannot be sent upstream")
            continue
        if verdict.identity is not None:
            identity = verdict.identity
            # headers any provider of the route sets upstream are never the client's, whichever
            # provider accepted (a key-authenticated client must not supply a JWT claim's header)
            owned = {h for n in names if (p := providers.get(n)) is not None for h in p.owned_headers}
            extra = owned.difference(identity.remove_headers, (k for k, _ in identity.upstream_headers))
            if extra:
                identity = dataclasses.replace(
                    identity, remove_headers=(*identity.remove_headers, *sorted(extra))
                )
            ex.identity = identity
            return None
        if verdict.denial is not None:
            log.info("auth %s denied %s %s: %s", name, ex.method, ex.path, verdict.reason)
            if metrics is not None:
                metrics.auth_failure(route, AUTH_DENIED)
            denial = verdict.denial
            return Response(
                denial.status,
                [*denial.headers, ("content-length", str(len(denial.body)))],
                body_of(denial.body),
            )
        if verdict.reason:
            reasons.append(f"{name}: {verdict.reason}")
    if reasons:
        log.info("authentication failed for %s %s: %s", ex.method, ex.path, "; ".join(reasons))
        message = "authentication failed: " + "; ".join(reasons)
    else:
        message = "authentication required"
    if metrics is not None:
        metrics.auth_failure(route, AUTH_INVALID if reasons else AUTH_MISSING)
    return local_error(401, "unauthenticated", message, [("www-authenticate", 'Bearer realm="meshgate"')])
