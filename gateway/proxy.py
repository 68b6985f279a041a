"""The last step: the route's rewrite and header operations, the body cap, then the mesh client
(mTLS HTTP/2 to the backend service's sidecar, in-process) with the route's timeout and retries."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import unquote_plus

from gateway.exchange import Exchange, local_error
from gateway.translate import grpcweb
from mesh.outbound.client import MeshClient
from mesh.transport.messages import Headers, Request, Response, body_of, empty_body, for_caller
from shared.config.model.edge import Route
from shared.config.model.mesh import TrafficPolicy

log = logging.getLogger("meshgate.gateway.proxy")

Receive = Callable[[], Awaitable[dict[str, Any]]]


class BodyTooLarge(Exception):
    """The client sent more than the route allows."""


_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout(value: str | None) -> float | None:
    """Seconds from a ``grpc-timeout`` header (at most 8 digits and a unit), None when absent or bad."""
    if not value or len(value) < 2 or len(value) > 9:
        return None
    digits, unit = value[:-1], value[-1]
    if not (digits.isascii() and digits.isdigit()) or unit not in _GRPC_UNITS:
        return None
    return int(digits) * _GRPC_UNITS[unit]


def route_policy(
    route: Route, service_policy: TrafficPolicy, deadline: float | None = None
) -> TrafficPolicy | None:
    """The service's traffic policy with the route's timeout and retries (and a client's gRPC deadline
    when shorter), or None when none of them applies (the service's own policy is used as it is)."""
    if route.timeout is None and route.retries is None and deadline is None:
        return None
    update: dict[str, Any] = {}
    timeout = route.timeout.total_seconds() if route.timeout is not None else None
    if deadline is not None:  # a client's deadline may shorten the call, never lengthen it
        timeout = min(timeout if timeout is not None else service_policy.timeout.total_seconds(), deadline)
    if timeout is not None:
        update["timeout"] = timedelta(seconds=timeout)
    if route.retries is not None:
        update["retries"] = service_policy.retries.model_copy(
            update={"attempts": route.retries.attempts, "per_try_timeout": route.retries.per_try_timeout}
        )
    return service_policy.model_copy(update=update)


async def request_body(
    receive: Receive, limit: int, overflow: list[bool] | None = None
) -> AsyncIterator[bytes]:
    """The client's body from ASGI ``receive``, at most ``limit`` bytes (BodyTooLarge beyond, and
    ``overflow`` gets True: the mesh client reports a failed stream, the gateway answers 413)."""
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away mid-body")
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            if overflow is not None:
                overflow.append(True)
            raise BodyTooLarge(f"request body over {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body (for providers that need it), or None when it is over ``limit``."""
    parts = []
    try:
        async for chunk in request_body(receive, limit):
            parts.append(chunk)
    except BodyTooLarge:
        return None
    return b"".join(parts)


def upstream_headers(ex: Exchange) -> Headers:
    """The client's cleaned headers with the route's header operations and the caller's identity
    (``x-meshgate-principal``, the provider's headers) applied."""
    assert ex.match is not None
    route = ex.match.route
    headers = ex.headers
    ops = route.request_headers
    if ops.set or ops.remove or ex.identity is not None:
        drop = {name.lower() for name in ops.remove} | {name.lower() for name in ops.set}
        identity = ex.identity
        if identity is not None:
            drop |= {name.lower() for name in identity.remove_headers}
            drop |= {name.lower() for name, _ in identity.upstream_headers}
        headers = [(k, v) for k, v in headers if k not in drop]
        headers.extend((k.lower(), v) for k, v in ops.set.items())
        if identity is not None:
            headers.extend((k.lower(), v) for k, v in identity.upstream_headers if wire_safe(v))
            if wire_safe(identity.principal):
                headers.append(("x-meshgate-principal", identity.principal))
            else:
                log.warning(
                    "principal %r cannot be sent as a header value: not forwarded", identity.principal
                )
    return headers


def _without_params(path: str, names: set[str]) -> str:
    """``path`` with the query parameters ``names`` removed (the others kept as they were written)."""
    base, _, query = path.partition("?")
    kept = [part for part in query.split("&") if unquote_plus(part.split("=", 1)[0]) not in names]
    return f"{base}?{'&'.join(kept)}" if kept else base


def wire_safe(value: str) -> bool:
    """A header value HTTP/2 and HTTP/1.1 carry as it is: latin-1, no control characters, no
    surrounding white space."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return value == value.strip() and not any(ord(c) < 32 or ord(c) == 127 for c in value)


async def forward(
    ex: Exchange, receive: Receive, client: MeshClient, service_policy: TrafficPolicy | None
) -> Response:
    """Send the request to the chosen backend through the mesh; 413 before sending when the declared
    length is over the route's cap."""
    assert ex.match is not None
    route = ex.match.route
    cap = route.max_body_size
    length = ex.header("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > cap:
        return local_error(413, "body_too_large", f"request body over {cap} bytes")
    headers = upstream_headers(ex)
    overflow: list[bool] = []
    if ex.body is not None:
        body = body_of(ex.body)
    elif ex.has_body:
        body = request_body(receive, cap, overflow)
    else:
        body = empty_body()  # HTTP/1.x with neither Content-Length nor Transfer-Encoding: no body
    deadline = None
    web_type = None
    undecodable: list[grpcweb.GrpcWebError] = []
    if ex.grpc:
        if ex.te_trailers:
            headers = [*headers, ("te", "trailers")]
        deadline = grpc_timeout(ex.header("grpc-timeout"))
    elif ex.grpc_web and route.translate == "grpc-web":
        web_type = ex.header("content-type") or grpcweb.GRPC_WEB
        headers = grpcweb.request_headers(headers, web_type)
        if grpcweb.is_text(web_type):
            body = grpcweb.decode_text(body, undecodable)
        deadline = grpc_timeout(ex.header("grpc-timeout"))
    path = ex.match.upstream_path
    if ex.identity is not None and ex.identity.remove_query and "?" in path:
        path = _without_params(path, set(ex.identity.remove_query))
    upstream = Request(
        method=ex.method,
        path=path,
        authority=ex.match.backend.service,
        scheme="https",
        headers=headers,
        body=body,
    )
    policy = route_policy(route, service_policy or TrafficPolicy(), deadline)
    sent = time.perf_counter()
    try:
        response = await client.request(ex.match.backend.service, upstream, policy=policy)
    except grpcweb.GrpcWebError as exc:  # read before the stream opened (a body buffered to retry)
        return local_error(400, "bad_request", str(exc))
    ex.attempts, ex.upstream_ms = response.attempts, round((time.perf_counter() - sent) * 1000, 3)
    if overflow or undecodable:  # the client's body failed the stream: its fault, not the upstream's
        if response.on_close is not None:
            response.on_close()
        if overflow:
            raise BodyTooLarge(f"request body over {cap} bytes")
        return local_error(400, "bad_request", str(undecodable[0]))
    if web_type is not None:
        return grpcweb.translate_response(for_caller(upstream, response), web_type)
    if ex.grpc:  # an upstream that is not gRPC (its HTTP status) in gRPC form
        return for_caller(upstream, response)
    return response
