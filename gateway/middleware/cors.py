"""CORS on the route's behalf (Fetch standard): preflights answered here, never sent upstream;
actual requests from an allowed origin get ``Access-Control-Allow-Origin`` (and friends) added."""

from __future__ import annotations

from gateway.exchange import Exchange
from mesh.transport.messages import Response
from shared.config.model.edge import Cors


def _origin_allowed(cors: Cors, origin: str) -> bool:
    return "*" in cors.allow_origins or origin in cors.allow_origins


def _allow_origin(cors: Cors, origin: str) -> str:
    # with credentials the origin must be echoed, never "*"
    return "*" if "*" in cors.allow_origins and not cors.allow_credentials else origin


def preflight(ex: Exchange) -> Response | None:
    """The answer to a CORS preflight on a route with CORS, else None (and response headers noted)."""
    assert ex.match is not None
    cors = ex.match.route.cors
    origin = ex.header("origin")
    if cors is None or origin is None:
        return None
    if ex.method == "OPTIONS" and ex.header("access-control-request-method") is not None:
        if not _origin_allowed(cors, origin):
            return Response(403, [("content-length", "0"), ("vary", "origin")])
        asked = ex.header("access-control-request-method") or ""
        if asked.upper() not in cors.allow_methods:
            return Response(403, [("content-length", "0"), ("vary", "origin")])
        headers = [
            ("access-control-allow-origin", _allow_origin(cors, origin)),
            ("access-control-allow-methods", ", ".join(cors.allow_methods)),
            ("access-control-max-age", str(int(cors.max_age.total_seconds()))),
            ("vary", "origin"),
            ("content-length", "0"),
        ]
        if cors.allow_headers:
            headers.append(("access-control-allow-headers", ", ".join(cors.allow_headers)))
        if cors.allow_credentials:
            headers.append(("access-control-allow-credentials", "true"))
        return Response(204, headers)
    if _origin_allowed(cors, origin):
        ex.response_headers.append(("access-control-allow-origin", _allow_origin(cors, origin)))
        ex.response_headers.append(("vary", "origin"))
        if cors.expose_headers:
            ex.response_headers.append(("access-control-expose-headers", ", ".join(cors.expose_headers)))
        if cors.allow_credentials:
            ex.response_headers.append(("access-control-allow-credentials", "true"))
    return None
