"""Rate limiting: the route's ``RateLimit`` document, keyed by trusted identity parts only (API key
name, JWT subject, client address after the trusted hops, route, SPIFFE ID, and a header only as the
gateway sets it: the route's ``requestHeaders.set`` or an auth provider's, e.g. a JWT claim copied by
``claimsToHeaders``; what the client sent under that name never counts).

Over the limit: 429 with ``Retry-After`` and the RateLimit headers, without touching the upstream.
Allowed: the RateLimit headers are added to the upstream's answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.exchange import Exchange, local_error
from gateway.metrics import GatewayMetrics
from gateway.ratelimit.limiter import RateLimiter
from mesh.transport.messages import Response
from shared.config.model.edge import KeyPart, RateLimit
from shared.telemetry.tracing import Tracing


def key_of(parts: list[KeyPart], ex: Exchange) -> str:
    """The limiter key: each part's value, ``-`` when the request has none (all such share a bucket)."""
    assert ex.match is not None
    identity = ex.identity
    values = []
    for part in parts:
        value: str | None
        if part.type == "apiKey":
            value = (
                str(identity.claims.get("api_key_name"))
                if identity and "api_key_name" in identity.claims
                else None
            )
        elif part.type == "subject":
            value = identity.principal if identity else None
        elif part.type == "clientAddress":
            value = ex.client_address
        elif part.type == "route":
            value = ex.match.route.name
        elif part.type == "spiffeId":
            value = ex.client_spiffe_id
        else:  # a header as the gateway sets it, never as the client sent it
            assert part.name is not None
            value = _gateway_set(ex, part.name.lower())
        values.append(f"{part.type}={value if value is not None else '-'}")
    return "|".join(values)


def _gateway_set(ex: Exchange, name: str) -> str | None:
    assert ex.match is not None
    for key, value in ex.match.route.request_headers.set.items():
        if key.lower() == name:
            return value
    if ex.identity is not None:
        for key, value in ex.identity.upstream_headers:
            if key.lower() == name:
                return value
    return None


async def limit(
    ex: Exchange,
    documents: Mapping[str, RateLimit],
    limiter: RateLimiter,
    tracing: Tracing,
    metrics: GatewayMetrics | None = None,
) -> Response | None:
    """None when the request may go on; 429 when over the route's limits. Each decision is counted
    in ``metrics``."""
    assert ex.match is not None
    name = ex.match.route.rate_limit
    if name is None:
        return None
    doc = documents.get(name)
    if doc is None:
        return None
    with tracing.internal("rate_limit", {"meshgate.ratelimit.policy": name}) as span:
        decision = await limiter.check(doc, key_of(doc.key, ex))
        if span is not None:
            span.set_attribute("meshgate.ratelimit.allowed", decision.allowed)
            span.set_attribute("meshgate.ratelimit.source", decision.source)
    if metrics is not None:
        metrics.rate_limited(ex.match.route.name, decision.allowed, decision.source)
    headers = decision.headers()
    if decision.allowed:
        ex.response_headers.extend(headers)
        return None
    return local_error(429, "rate_limited", "too many requests", headers)
