"""WebSocket routes: the upgrade at the edge (the ASGI server's), carried to the service over the mesh
as an HTTP/2 extended CONNECT stream (RFC 8441) that the service's sidecar turns into an HTTP/1.1
upgrade to the app. The gateway is the WebSocket client on the mesh side (``wsproto``, frames masked
as a client's must be): messages, pings and close codes pass both ways; a connection quiet for the
idle timeout is closed with 1001 on both sides. A configuration reload leaves open WebSockets alone:
each holds the objects it started with.

A route with ``cors`` that lists its origins refuses a handshake whose ``Origin`` it does not allow
(403 ``origin_not_allowed``): browsers send any site's cookies with a WebSocket handshake and no CORS
check applies to it (cross-site WebSocket hijacking). A handshake without ``Origin`` (not a browser)
goes on to the route's ``auth``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from gateway.exchange import Exchange, local_error
from gateway.proxy import upstream_headers
from mesh.outbound.client import MeshClient
from mesh.transport.messages import HOP_BY_HOP, Headers, Request, Response

log = logging.getLogger("meshgate.gateway.websocket")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Handshake headers that belong to the edge's connection, not to the app's.
SKIP = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "content-length"})
IDLE_TIMEOUT = 300.0
#: The largest message reassembled from the app (bytes); larger closes both sides with 1009.
MAX_MESSAGE = 1024 * 1024
#: Headers of a refused handshake's answer that ``refuse`` sets itself (or that are the connection's).
_OWN = HOP_BY_HOP | {"content-type", "content-length"}
#: Close codes an endpoint never sends (RFC 6455 section 7.4.1): the server reports a client that went
#: without a close frame (a TCP FIN or reset) as 1006; the app is told 1001, "going away".
_LOCAL_ONLY = frozenset({1005, 1006, 1015})
#: Of the mesh's answer to a refused CONNECT, the headers the client gets too.
_REFUSAL_HEADERS = frozenset({"x-meshgate-error", "retry-after"})


async def _queue_body(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item


def origin_refusal(ex: Exchange) -> Response | None:
    """403 ``origin_not_allowed`` for a handshake whose ``Origin`` the route's ``cors`` does not allow
    (as the CORS step decides for requests: listed exactly, or ``*``); None without ``cors`` or without
    an ``Origin``."""
    assert ex.match is not None
    cors = ex.match.route.cors
    origin = ex.header("origin")
    if cors is None or origin is None or "*" in cors.allow_origins or origin in cors.allow_origins:
        return None
    return local_error(403, "origin_not_allowed", f"origin {origin[:200]!r} may not open this WebSocket")


async def refuse(
    send: Send, status: int, message: str, scope: dict[str, Any], headers: Headers | None = None
) -> None:
    """Refuse the handshake: with the ``websocket.http.response`` extension, an HTTP answer with
    ``status`` and ``headers`` (the answer's own: ``x-meshgate-error``, ``Retry-After`` and
    ``RateLimit-*``, ``WWW-Authenticate``, ...); otherwise a close before accept (the server answers
    403, and the headers are lost)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = f"{message}\n".encode()
        extra = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in headers or []
            if k.lower() not in _OWN and not k.startswith(":")
        ]
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


def _close_for_app(message: dict[str, Any]) -> CloseConnection:
    """The close frame the app gets for the client's ``websocket.disconnect``: the client's code and
    reason; for a client that went without a close frame (1006, as the server reports it), 1001 "going
    away" (wsproto would turn the local-only 1006 into a normal 1000); for a close frame without a
    code (1005), a close frame without a code."""
    code = int(message.get("code") or 1000)
    reason = str(message.get("reason") or "")
    if code == CloseReason.NO_STATUS_RCVD:
        return CloseConnection(code=CloseReason.NO_STATUS_RCVD)  # wsproto sends an empty close frame
    if code in _LOCAL_ONLY or not (1000 <= code <= 4999):
        return CloseConnection(code=CloseReason.GOING_AWAY, reason="client went away")
    return CloseConnection(code=code, reason=reason)


async def relay(
    ex: Exchange,
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    client: MeshClient,
    idle_timeout: float = IDLE_TIMEOUT,
) -> int:
    """Open the mesh stream, accept the client, relay until either side closes. Returns the HTTP-ish
    status for the metrics (101 when relayed)."""
    assert ex.match is not None
    service = ex.match.backend.service
    headers = [(k, v) for k, v in upstream_headers(ex) if k not in SKIP]
    offered = [p for p in scope.get("subprotocols") or []]
    if offered:
        headers = [(k, v) for k, v in headers if k != "sec-websocket-protocol"]
        headers.append(("sec-websocket-protocol", ", ".join(offered)))
    outgoing: asyncio.Queue[bytes | None] = asyncio.Queue(64)
    request = Request(
        "CONNECT",
        ex.match.upstream_path,
        service,
        "https",
        [(":protocol", "websocket"), *headers],
        _queue_body(outgoing),
    )
    response = await client.request(service, request)
    if response.status != 200:
        if response.on_close is not None:
            response.on_close()
        code = response.header("x-meshgate-error") or "refused by the service"
        kept = [(k, v) for k, v in response.headers if k in _REFUSAL_HEADERS]
        status = response.status if response.status >= 400 else 502
        await refuse(send, status, f"websocket: {code}", scope, kept)
        return response.status
    subprotocol = response.header("sec-websocket-protocol")
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    conn = Connection(ConnectionType.CLIENT)
    loop = asyncio.get_running_loop()
    last = [loop.time()]
    done = asyncio.Event()
    closed_by: list[str] = []

    async def to_app(data: bytes) -> None:
        if data:
            await outgoing.put(data)

    async def client_side() -> None:
        """Messages from the client -> frames to the app."""
        while not done.is_set():
            message = await receive()
            last[0] = loop.time()
            kind = message["type"]
            if kind == "websocket.receive":
                if message.get("text") is not None:
                    await to_app(conn.send(Message(data=message["text"])))
                else:
                    await to_app(conn.send(Message(data=message.get("bytes") or b"")))
            elif kind == "websocket.disconnect":
                closed_by.append("client")
                with contextlib.suppress(LocalProtocolError):
                    await to_app(conn.send(_close_for_app(message)))
                await outgoing.put(None)
                done.set()
                return

    async def app_side() -> None:
        """Frames from the app -> messages to the client (fragments joined)."""
        text_parts: list[str] = []
        byte_parts: list[bytes] = []
        pending = [0]
        try:
            async for chunk in response.body:
                last[0] = loop.time()
                conn.receive_data(chunk)
                for event in conn.events():
                    if isinstance(event, TextMessage | BytesMessage):
                        pending[0] += len(event.data)
                        if pending[0] > MAX_MESSAGE:  # RFC 6455 1009 to both sides
                            closed_by.append("too-big")
                            with contextlib.suppress(LocalProtocolError):
                                await to_app(conn.send(CloseConnection(code=1009, reason="message too big")))
                            await send({"type": "websocket.close", "code": 1009, "reason": "message too big"})
                            return
                        if event.message_finished:
                            pending[0] = 0
                    if isinstance(event, TextMessage):
                        text_parts.append(event.data)
                        if event.message_finished:
                            await send({"type": "websocket.send", "text": "".join(text_parts)})
                            text_parts.clear()
                    elif isinstance(event, BytesMessage):
                        byte_parts.append(bytes(event.data))
                        if event.message_finished:
                            await send({"type": "websocket.send", "bytes": b"".join(byte_parts)})
                            byte_parts.clear()
                    elif isinstance(event, Ping):
                        await to_app(conn.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        closed_by.append("app")
                        with contextlib.suppress(LocalProtocolError):
                            await to_app(conn.send(event.response()))
                        await send(
                            {"type": "websocket.close", "code": event.code, "reason": event.reason or ""}
                        )
                        return
        except RemoteProtocolError as exc:
            log.info("websocket to %s: the app broke the protocol: %s", service, exc)
            await send({"type": "websocket.close", "code": 1002})
            return
        except Exception as exc:  # the mesh stream failed
            log.info("websocket to %s ended: %s", service, exc)
        if not closed_by:
            await send({"type": "websocket.close", "code": 1006 if not done.is_set() else 1000})

    async def idle_watch() -> None:
        while not done.is_set():
            await asyncio.sleep(min(idle_timeout / 4, 5.0))
            if loop.time() - last[0] >= idle_timeout:
                log.info("websocket to %s idle for %.0fs: closing", service, idle_timeout)
                closed_by.append("idle")
                with contextlib.suppress(LocalProtocolError):
                    await to_app(conn.send(CloseConnection(code=1001, reason="idle")))
                await send({"type": "websocket.close", "code": 1001, "reason": "idle"})
                return

    tasks = [
        asyncio.ensure_future(client_side()),
        asyncio.ensure_future(app_side()),
        asyncio.ensure_future(idle_watch()),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        done.set()
        # let the close handshake finish on the other side (bounded)
        await asyncio.wait(tasks[:2], timeout=2.0)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(asyncio.QueueFull):
            outgoing.put_nowait(None)
        if response.on_close is not None:
            response.on_close()
    return 101
