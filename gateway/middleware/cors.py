"""CORS on the route's behalf (Fetch standard): preflights answered here, never sent upstream;
actual requests from an allowed origin get ``Access-Control-Allow-Origin`` (and friends) added.

Two halves: :func:`preflight` (the request step, right after routing) and :func:`response_headers`
(the response step, on every answer of a route with ``cors``: the upstream's own
``Access-Control-Allow-Origin``, ``-Allow-Credentials`` and ``-Expose-Headers`` are dropped, as
Envoy's CORS filter overwrites them, and ``Vary: Origin`` is added whenever the answer depends on the
request's Origin).
"""

from __future__ import annotations

from gateway.exchange import Exchange, local_error
from mesh.transport.messages import Headers, Response
from shared.config.model.edge import Cors

#: The response headers a route's ``cors`` owns: the upstream's are dropped, only the gateway's go out.
OWNED = frozenset(
    {"access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers"}
)


def _origin_allowed(cors: Cors, origin: str) -> bool:
    return "*" in cors.allow_origins or origin in cors.allow_origins


def _allow_origin(cors: Cors, origin: str) -> str:
    # with credentials the origin must be echoed, never "*"
    return "*" if "*" in cors.allow_origins and not cors.allow_credentials else origin


def varies(cors: Cors) -> bool:
    """Whether the answers depend on the request's Origin (everything but ``*`` without credentials):
    then every response of the route carries ``Vary: Origin`` (Fetch standard, "CORS protocol and
    HTTP caches"), also without an Origin or for a refused one."""
    return not ("*" in cors.allow_origins and not cors.allow_credentials)


def requested_method(ex: Exchange) -> str | None:
    """For a CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``), the
    method asked for: the route is chosen by it, as for the actual request. None for other requests."""
    if ex.method != "OPTIONS" or ex.header("origin") is None:
        return None
    return ex.header("access-control-request-method")


_VARY = [("vary", "origin")]


def preflight(ex: Exchange) -> Response | None:
    """The answer to a CORS preflight on a route with CORS, else None (and response headers noted).

    The CORS headers go to ``ex.response_headers`` (the gateway's own, kept by :func:`response_headers`)."""
    assert ex.match is not None
    cors = ex.match.route.cors
    origin = ex.header("origin")
    if cors is None or origin is None:
        return None
    asked = requested_method(ex)
    if asked is not None:
        if not _origin_allowed(cors, origin):
            return local_error(403, "origin_not_allowed", f"origin {origin[:200]!r} is not allowed", _VARY)
        if asked.upper() not in cors.allow_methods:
            return local_error(
                403, "cors_method_not_allowed", f"{asked[:64]!r} is not in allowMethods", _VARY
            )
        ex.response_headers.append(("access-control-allow-origin", _allow_origin(cors, origin)))
        ex.response_headers.append(("access-control-allow-methods", ", ".join(cors.allow_methods)))
        ex.response_headers.append(("access-control-max-age", str(int(cors.max_age.total_seconds()))))
        if cors.allow_headers:
            ex.response_headers.append(("access-control-allow-headers", ", ".join(cors.allow_headers)))
        if cors.allow_credentials:
            ex.response_headers.append(("access-control-allow-credentials", "true"))
        return Response(204, [("vary", "origin"), ("content-length", "0")])
    if _origin_allowed(cors, origin):
        ex.response_headers.append(("access-control-allow-origin", _allow_origin(cors, origin)))
        if cors.expose_headers:
            ex.response_headers.append(("access-control-expose-headers", ", ".join(cors.expose_headers)))
        if cors.allow_credentials:
            ex.response_headers.append(("access-control-allow-credentials", "true"))
    return None


def _names_origin(value: str) -> bool:
    tokens = {token.strip().lower() for token in value.split(",")}
    return "origin" in tokens or "*" in tokens


def response_headers(cors: Cors, upstream: Headers, ours: Headers) -> tuple[Headers, Headers]:
    """The response step of a route with ``cors``, on the answer's headers (``upstream``: the
    upstream's or a gateway-made answer's) and the gateway's added ones (``ours``): the upstream's
    :data:`OWNED` headers dropped, and ``vary: origin`` merged into the first ``Vary`` (or added) when
    :func:`varies` and no ``Vary`` names ``origin`` (or ``*``) yet. Returns new lists."""
    kept = [(k, v) for k, v in upstream if k.lower() not in OWNED]
    added = list(ours)
    if not varies(cors) or any(k.lower() == "vary" and _names_origin(v) for k, v in (*kept, *added)):
        return kept, added
    for headers in (kept, added):
        for i, (k, v) in enumerate(headers):
            if k.lower() == "vary":
                headers[i] = (k, f"{v}, origin" if v.strip() else "origin")
                return kept, added
    added.append(("vary", "origin"))
    return kept, added
