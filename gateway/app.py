"""The gateway's ASGI application, built in one place: the steps in their order, then the answer.

Steps (one per file under ``gateway/middleware``; see docs/gateway.md):
hygiene -> route -> CORS -> read body (only for providers that need it) -> authenticate -> authorize
-> rate limit -> proxy (``gateway/proxy.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from opentelemetry.trace import SpanKind
from starlette.applications import Starlette

from gateway.exchange import Exchange, local_error
from gateway.middleware import auth, authorize, cors, hygiene, ratelimit
from gateway.proxy import BodyTooLarge, forward, read_body
from gateway.routing import Match, Router
from gateway.state import GatewayRuntime
from gateway.translate import grpcweb, websocket
from gateway.translate.transcode import forward_json
from mesh.transport.messages import HOP_BY_HOP, Response, grpc_error
from shared.telemetry.tracing import end, finish

log = logging.getLogger("meshgate.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class EdgeGateway:
    """Pure ASGI: every HTTP request goes through the steps; nothing else of Starlette runs per request."""

    def __init__(self, app: Any, runtime: GatewayRuntime) -> None:
        self.app = app  # the Starlette application: lifespan (and whatever is not HTTP)
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        runtime = self.runtime
        checked = hygiene.check(scope, runtime.hygiene)
        if isinstance(checked, Response):
            await _send(send, checked, [])
            runtime.observe("-", checked.status, started)
            return
        ex = checked
        with runtime.tracing.span(
            SpanKind.SERVER,
            ex.method,
            ex.headers,
            {
                "url.path": ex.path,
                "url.scheme": ex.scheme,
                "network.protocol.version": ex.http_version,
                "client.address": ex.client_address,
            },
            end_on_exit=False,  # ended once the body is sent, below
        ) as (span, headers):
            ex.headers = headers
            ex.span = span
            try:
                response = await self._handle(ex, receive)
            except BaseException:
                end(span)
                raise
            if ex.grpc:
                response = _for_grpc(ex, response)
            elif ex.grpc_web and response.header("x-meshgate-error") is not None and response.status != 200:
                response = _for_grpc_web(ex, response)
            finish(span, response.status, client=False)
            route = ex.match.route.name if ex.match else "-"
            if span is not None and ex.match is not None:
                span.set_attribute("http.route", route)
        extra = ex.response_headers
        if ex.match is not None:
            ops = ex.match.route.response_headers
            if ops.remove or ops.set:
                drop = {n.lower() for n in ops.remove} | {n.lower() for n in ops.set}
                response.headers = [(k, v) for k, v in response.headers if k not in drop]
                extra = [*extra, *((k.lower(), v) for k, v in ops.set.items())]
            if ex.match.route.cors is not None:  # the route's CORS answer replaces the upstream's
                response.headers, extra = cors.response_headers(ex.match.route.cors, response.headers, extra)
        try:
            await _send(send, response, extra, ex.trailers_ok)
        finally:
            if response.on_close is not None:
                response.on_close()
            end(span)
            runtime.observe(route, response.status, started, ex, response.header("x-meshgate-error"), span)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake: the same steps as a request (hygiene, route, the route's allowed
        origins, auth, policy, rate limit), then the relay over the mesh
        (gateway/translate/websocket.py). A refusal keeps its answer's headers."""
        started = time.perf_counter()
        runtime = self.runtime
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        checked = hygiene.check(scope, runtime.hygiene)
        if isinstance(checked, Response):
            await websocket.refuse(
                send, checked.status, checked.header("x-meshgate-error") or "refused", scope, checked.headers
            )
            runtime.observe("-", checked.status, started)
            return
        ex = checked
        state = runtime.state
        route_name = "-"
        answer: Response | None = None
        if state is None:
            answer = local_error(503, "no_configuration", "the gateway has no configuration yet")
        else:
            ex.match = state.router.match(ex.host, "GET", ex.path, ex.query, ex.joined_headers())
            if ex.match is None or ex.match.route.translate != "websocket":
                answer = local_error(404, "route_not_found", f"no WebSocket route for {ex.host}{ex.path}")
            else:
                route_name = ex.match.route.name
                metrics = runtime.metrics
                answer = (
                    websocket.origin_refusal(ex)
                    or await auth.authenticate(ex, state.providers, runtime.tracing, metrics)
                    or authorize.authorize(ex, state.engine, metrics)
                    or await ratelimit.limit(ex, state.rate_limits, runtime.limiter, runtime.tracing, metrics)
                )
        if answer is not None:
            code = answer.header("x-meshgate-error") or "refused"
            await websocket.refuse(send, answer.status, code, scope, answer.headers)
            runtime.observe(route_name, answer.status, started, ex, answer.header("x-meshgate-error"))
            return
        assert ex.match is not None
        timeout = ex.match.route.timeout.total_seconds() if ex.match.route.timeout else websocket.IDLE_TIMEOUT
        status = await websocket.relay(ex, scope, receive, send, runtime.client, idle_timeout=timeout)
        runtime.observe(route_name, status, started, ex)

    async def _handle(self, ex: Exchange, receive: Receive) -> Response:
        state = self.runtime.state
        if state is None:
            return local_error(503, "no_configuration", "the gateway has no configuration yet")
        if ex.method == "CONNECT":  # tunnels are the mesh's own business, never a client's
            return local_error(405, "method_not_allowed", "CONNECT is not served at the edge")
        ex.match = _route(state.router, ex)
        if ex.match is None:
            return local_error(404, "route_not_found", f"no route for {ex.method} {ex.host}{ex.path}")
        route = ex.match.route
        answer = cors.preflight(ex)  # a preflight on a route with cors is answered here, never forwarded
        if answer is not None:
            return answer
        if route.translate == "grpc" and not ex.grpc:
            return local_error(415, "unsupported_media_type", "this route takes gRPC (application/grpc)")
        if route.translate == "grpc-web" and not (ex.grpc or ex.grpc_web) and ex.method != "OPTIONS":
            return local_error(415, "unsupported_media_type", "this route takes gRPC-Web or gRPC")
        if any(state.needs_body(name) for name in route.auth):
            body = await read_body(receive, route.max_body_size)
            if body is None:
                return local_error(413, "body_too_large", f"request body over {route.max_body_size} bytes")
            ex.body = body
        runtime = self.runtime
        answer = await auth.authenticate(ex, state.providers, runtime.tracing, runtime.metrics)
        if answer is not None:
            return answer
        answer = authorize.authorize(ex, state.engine, runtime.metrics)
        if answer is not None:
            return answer
        answer = await ratelimit.limit(
            ex, state.rate_limits, runtime.limiter, runtime.tracing, runtime.metrics
        )
        if answer is not None:
            return answer
        policy = state.service_policy(ex.match.backend.service)
        try:
            if route.translate == "grpc-json":
                transcoder = state.transcoders.get(route.name)
                if transcoder is None:
                    return local_error(
                        503, "no_configuration", f"route {route.name} has no usable descriptor set"
                    )
                return await forward_json(ex, receive, self.runtime.client, transcoder, policy)
            return await forward(ex, receive, self.runtime.client, policy)
        except BodyTooLarge:
            return local_error(413, "body_too_large", f"request body over {route.max_body_size} bytes")
        except ConnectionError as exc:
            return local_error(400, "client_disconnected", str(exc))


def _route(router: Router, ex: Exchange) -> Match | None:
    """The route for ``ex``. A CORS preflight is routed by the method it asks for
    (``Access-Control-Request-Method``), as the actual request will be, so that a route that lists
    ``match.methods`` answers its own preflights; when that route has no ``cors``, the preflight is
    routed as the ``OPTIONS`` request it is (and forwarded, or 404, as any other request)."""
    headers = ex.joined_headers()
    asked = cors.requested_method(ex)
    if asked is not None:
        found = router.match(ex.host, asked, ex.path, ex.query, headers)
        if found is not None and found.route.cors is not None:
            return found
    return router.match(ex.host, ex.method, ex.path, ex.query, headers)


def _for_grpc(ex: Exchange, response: Response) -> Response:
    """gRPC callers get the gateway's own errors as Trailers-Only with the mapped ``grpc-status``, and
    an error instead of a response whose trailers the server cannot carry."""
    code = response.header("x-meshgate-error")
    if code is not None and response.status != 200:
        if response.on_close is not None:
            response.on_close()
        return grpc_error(code, f"meshgate: {code} (HTTP {response.status})")
    if response.trailers is not None and not ex.trailers_ok and not response.headers_only:
        if response.on_close is not None:
            response.on_close()
        return grpc_error(
            "trailers_unsupported", "this gateway's server cannot send trailers: use --server meshgate"
        )
    return response


def _for_grpc_web(ex: Exchange, response: Response) -> Response:
    """The gateway's own errors for gRPC-Web callers: 200, ``grpc-status`` in the headers and in the
    trailer frame of the body."""
    code = response.header("x-meshgate-error") or "internal"
    if response.on_close is not None:
        response.on_close()
    error = grpc_error(code, f"meshgate: {code} (HTTP {response.status})")
    return grpcweb.translate_response(error, ex.header("content-type") or grpcweb.GRPC_WEB)


async def _send(
    send: Send, response: Response, extra: list[tuple[str, str]], trailers_ok: bool = False
) -> None:
    """Response head, then the body as it comes (more_body until the declared length or the end), then
    the trailers when the server carries them."""
    # hop-by-hop fields go, but for "connection: close" (only the gateway's own answers carry one:
    # an HTTP/2 upstream cannot): the server then closes after a request the gateway refused
    raw = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in (*response.headers, *extra)
        if (k not in HOP_BY_HOP or (k == "connection" and v.lower() == "close")) and not k.startswith(":")
    ]
    trailers = response.trailers if trailers_ok and not response.headers_only else None
    start: dict[str, Any] = {"type": "http.response.start", "status": response.status, "headers": raw}
    if trailers is not None:
        start["trailers"] = True
    await send(start)
    if trailers is not None:
        await _send_body(send, response.body, None)
        sent = await trailers
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in sent],
                "more_trailers": False,
            }
        )
        return
    length = response.header("content-length")
    declared = int(length) if length is not None and length.isascii() and length.isdigit() else None
    await _send_body(send, response.body, declared)


async def _send_body(send: Send, body: AsyncIterator[bytes], remaining: int | None) -> None:
    """The body as it comes; ``more_body`` stays true until ``remaining`` bytes (the declared length)
    were sent, or until the end."""
    sent_last = False
    try:
        async for chunk in body:
            if not chunk:
                continue
            if remaining is not None:
                remaining -= len(chunk)
                last = remaining <= 0
            else:
                last = False
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                sent_last = True
                break
    except Exception as exc:  # the upstream broke mid-body: the client sees a cut-off response
        log.info("response body aborted: %s", exc)
        raise
    if not sent_last:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    if sent_last:
        with contextlib.suppress(StopAsyncIteration, Exception):
            await anext(body)  # let the body see its end (connection back to the pool, counts released)


def build_app(runtime: GatewayRuntime) -> EdgeGateway:
    """The application: EdgeGateway serves every HTTP request; the Starlette application inside it
    runs the lifespan (start and stop the runtime). EdgeGateway is outermost so that no Starlette
    middleware wraps ``send`` on the proxy path."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return EdgeGateway(Starlette(lifespan=lifespan), runtime)
