"""``--server meshgate``: an ASGI server on the mesh's own transport (``mesh/transport``).

HTTP/1.1 (llhttp) and HTTP/2 (the ``mesh/h2`` core with its abuse counters) on one port, plaintext
(h2c told apart by its preface) or TLS (ALPN h2 / http/1.1), with what the other servers do not give
an edge gateway: the client certificate in ``scope["extensions"]["tls"]`` (ASGI TLS extension), and
response trailers (``http.response.trailers``) for gRPC.

Per request the bridge runs the ASGI app in a task: the response head comes back as soon as the app
sends it, the body streams through a small bounded queue (back-pressure), trailers resolve a future.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Message as WsMessage
from wsproto.events import Request as WsRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from mesh.h2 import Limits
from mesh.transport.h1 import ClientInfo, RequestHead
from mesh.transport.h1parse import response_head
from mesh.transport.h2c import Drain, serve_sniffing
from mesh.transport.messages import Headers, Request, Response, body_of

log = logging.getLogger("meshgate.gateway.server")

Scope = dict[str, Any]
Message = dict[str, Any]
Asgi = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

_END = object()
#: The largest WebSocket message reassembled (bytes); a larger one closes the connection with 1009.
MAX_MESSAGE = 1024 * 1024


_PEM = Encoding.PEM


class AsgiBridge:
    """Turns the transport's (Request, ClientInfo) -> Response calls into ASGI calls of ``app``."""

    def __init__(self, app: Asgi, *, server: tuple[str, int], body_queue: int = 8) -> None:
        self.app = app
        self.server = server
        self.body_queue = body_queue
        self._tls_cache: dict[bytes, dict[str, Any]] = {}

    def tls_info(self, info: ClientInfo) -> dict[str, Any]:
        if info.peer_cert is None:
            return {"client_cert_chain": [], "client_cert_name": None, "client_cert_error": None}
        cached = self._tls_cache.get(info.peer_cert)
        if cached is None:
            cert = x509.load_der_x509_certificate(info.peer_cert)
            cached = {
                "client_cert_chain": [cert.public_bytes(_PEM).decode()],
                "client_cert_name": cert.subject.rfc4514_string(),
                "client_cert_error": None,
            }
            if len(self._tls_cache) > 1024:
                self._tls_cache.clear()
            self._tls_cache[info.peer_cert] = cached
        return cached

    async def __call__(self, request: Request, info: ClientInfo) -> Response:
        """Run the app for ``request``; return once it sent the response head."""
        path, _, query = request.path.partition("?")
        headers = [(b"host", request.authority.encode("latin-1"))] if request.authority else []
        headers += [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers if not k.startswith(":")
        ]
        extensions: dict[str, Any] = {"http.response.trailers": {}}
        if info.tls:
            extensions["tls"] = self.tls_info(info)
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": info.protocol,
            "method": request.method,
            "scheme": "https" if info.tls else "http",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": headers,
            "client": (info.address, info.port),
            "server": self.server,
            "extensions": extensions,
        }
        loop = asyncio.get_running_loop()
        head: asyncio.Future[tuple[int, Headers, bool]] = loop.create_future()
        chunks: asyncio.Queue[object] = asyncio.Queue(self.body_queue)
        trailers: asyncio.Future[Headers] = loop.create_future()
        finished = asyncio.Event()
        body_iter = request.body.__aiter__()
        body_done = False
        # a response whose end came with its head (no body bytes, no trailers): sent as one HEADERS
        # frame with END_STREAM over HTTP/2 (what gRPC's Trailers-Only needs)
        progress = {"head_taken": False, "bytes": 0, "ended_early": False}

        async def receive() -> Message:
            nonlocal body_done
            if not body_done:
                try:
                    chunk = await anext(body_iter)
                except StopAsyncIteration:
                    body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                except Exception:
                    body_done = True
                    return {"type": "http.disconnect"}
                return {"type": "http.request", "body": chunk, "more_body": True}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if head.cancelled():  # the client went away before the answer: nobody to send it to
                return
            kind = message["type"]
            if kind == "http.response.start":
                if head.done():
                    raise RuntimeError("response already started")
                raw = message.get("headers") or []
                out = [(bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1")) for k, v in raw]
                head.set_result((int(message["status"]), out, bool(message.get("trailers", False))))
            elif kind == "http.response.body":
                body = message.get("body", b"")
                if body:
                    progress["bytes"] += len(body)
                    await chunks.put(bytes(body))
                if not message.get("more_body", False):
                    if not progress["head_taken"] and not progress["bytes"]:
                        progress["ended_early"] = True
                    await chunks.put(_END)
            elif kind == "http.response.trailers":
                raw = message.get("headers") or []
                if not trailers.done():
                    trailers.set_result(
                        [(bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1")) for k, v in raw]
                    )

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if head.cancelled():  # the client went away first: no answer, nothing to report
                    log.debug("ASGI app for %s %s ended after the client left: %r", request.method, path, exc)
                    return
                log.exception("ASGI app failed for %s %s", request.method, path)
                if head.done():
                    await chunks.put(exc)
                else:
                    head.set_exception(exc)
            finally:
                if head.done() and not head.cancelled():
                    with contextlib.suppress(asyncio.QueueFull):
                        chunks.put_nowait(_END)
                if not trailers.done():
                    trailers.set_result([])

        task = loop.create_task(run())
        try:
            status, out_headers, has_trailers = await head
            progress["head_taken"] = True
        except asyncio.CancelledError:  # the client went away before the answer: so does the app's call
            task.cancel()
            raise
        except Exception:
            body = b"internal error\n"
            return Response(
                500, [("content-type", "text/plain"), ("content-length", str(len(body)))], body_of(body)
            )

        async def response_body() -> AsyncIterator[bytes]:
            try:
                while True:
                    item = await chunks.get()
                    if item is _END:
                        return
                    if isinstance(item, Exception):
                        raise item
                    assert isinstance(item, bytes)
                    yield item
            finally:
                finished.set()

        def closed() -> None:
            finished.set()
            if not task.done():
                task.cancel()

        return Response(
            status,
            out_headers,
            response_body(),
            trailers=trailers if has_trailers else None,
            on_close=closed,
            headers_only=bool(progress["ended_early"]) and not has_trailers and info.protocol == "2",
        )


def _handshake_refusal(event: RequestHead) -> tuple[int, str, list[tuple[str, str]]] | None:
    """What RFC 6455 section 4.2.1 makes a server refuse before wsproto sees the handshake (status,
    reason, extra headers), or None: an upgrade over HTTP/1.0 (400), a ``Sec-WebSocket-Version`` other
    than 13 (426 with ``Sec-WebSocket-Version: 13``), a ``Sec-WebSocket-Key`` that is not the base64 of
    16 bytes (400). What wsproto refuses itself (no key, no version, ...) is a 400 too."""
    if event.http_version != b"1.1":
        return 400, "a WebSocket handshake needs HTTP/1.1", []
    versions = [v.strip() for k, v in event.headers if k.lower() == b"sec-websocket-version"]
    if versions and versions != [b"13"]:
        return 426, "only WebSocket version 13 is served", [("sec-websocket-version", "13")]
    keys = [v.strip() for k, v in event.headers if k.lower() == b"sec-websocket-key"]
    if keys:
        try:
            nonce = base64.b64decode(keys[0], validate=True) if len(keys) == 1 else b""
        except binascii.Error:
            nonce = b""
        if len(nonce) != 16:
            return 400, "Sec-WebSocket-Key must be the base64 of 16 bytes", []
    return None


def _refusal(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    """A refused handshake's answer (the connection closes after it)."""
    body = f"{reason}\n".encode()
    fields = [
        *headers,
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
        ("x-meshgate-error", "bad_request"),
        ("connection", "close"),
    ]
    return response_head(status, fields) + body


class WebSocketBridge:
    """ASGI ``websocket`` scopes for connections the HTTP/1.1 server hands over (``Upgrade: websocket``):
    the handshake and frames with ``wsproto``; ``websocket.http.response`` lets the app refuse with
    any HTTP answer. A client that goes without a close frame (FIN or reset) is a disconnect with
    code 1006; a close frame's code and reason reach the app as they came."""

    def __init__(self, app: Asgi, bridge: AsgiBridge) -> None:
        self.app = app
        self.bridge = bridge

    async def __call__(
        self,
        event: RequestHead,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        leftover: bytes,
        info: ClientInfo,
    ) -> None:
        """Serve one WebSocket connection until it closes."""
        handshake = H11Handshake(ConnectionType.SERVER)
        refusal = _handshake_refusal(event)
        if refusal is None:
            try:
                handshake.initiate_upgrade_connection(
                    [(k.lower(), v) for k, v in event.headers], event.target
                )
                request = next(iter(handshake.events()))
            except (RemoteProtocolError, StopIteration) as exc:
                refusal = (400, f"bad WebSocket handshake: {exc}", [])
        if refusal is not None:
            status, reason, extra = refusal
            log.info("bad WebSocket handshake from %s: %s", info.address, reason)
            with contextlib.suppress(Exception):
                writer.write(_refusal(status, reason, extra))
                await writer.drain()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        assert isinstance(request, WsRequest)
        path, _, query = event.target.decode("latin-1").partition("?")
        extensions: dict[str, Any] = {"websocket.http.response": {}}
        if info.tls:
            extensions["tls"] = self.bridge.tls_info(info)
        scope: Scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "wss" if info.tls else "ws",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": [(bytes(k).lower(), bytes(v)) for k, v in event.headers],
            "client": (info.address, info.port),
            "server": self.bridge.server,
            "subprotocols": list(request.subprotocols),
            "extensions": extensions,
        }
        state: dict[str, Any] = {"connected": False, "conn": None, "closed": False, "pending": leftover}
        text_parts: list[str] = []
        byte_parts: list[bytes] = []
        size = [0]

        async def write(data: bytes) -> None:
            if data and not writer.is_closing():
                writer.write(data)
                await writer.drain()

        async def receive() -> Message:
            if not state["connected"]:
                state["connected"] = True
                return {"type": "websocket.connect"}
            conn = state["conn"]
            while conn is not None and not state["closed"]:
                for ws_event in conn.events():
                    if isinstance(ws_event, TextMessage | BytesMessage):
                        size[0] += len(ws_event.data)
                        if size[0] > MAX_MESSAGE:  # RFC 6455 1009: too big to process
                            with contextlib.suppress(LocalProtocolError):
                                await write(conn.send(CloseConnection(code=1009, reason="message too big")))
                            state["closed"] = True
                            return {"type": "websocket.disconnect", "code": 1009}
                    if isinstance(ws_event, TextMessage):
                        text_parts.append(ws_event.data)
                        if ws_event.message_finished:
                            size[0] = 0
                            text = "".join(text_parts)
                            text_parts.clear()
                            return {"type": "websocket.receive", "text": text}
                    elif isinstance(ws_event, BytesMessage):
                        byte_parts.append(bytes(ws_event.data))
                        if ws_event.message_finished:
                            size[0] = 0
                            data = b"".join(byte_parts)
                            byte_parts.clear()
                            return {"type": "websocket.receive", "bytes": data}
                    elif isinstance(ws_event, Ping):
                        await write(conn.send(ws_event.response()))
                    elif isinstance(ws_event, CloseConnection):
                        with contextlib.suppress(LocalProtocolError):
                            await write(conn.send(ws_event.response()))
                        state["closed"] = True
                        return {
                            "type": "websocket.disconnect",
                            "code": int(ws_event.code),
                            "reason": ws_event.reason or "",
                        }
                try:
                    data = state["pending"] or await reader.read(65536)
                except OSError:  # a reset: gone without a close frame, as with a FIN
                    data = b""
                state["pending"] = b""
                if not data:
                    state["closed"] = True
                    return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
                try:
                    conn.receive_data(data)
                except RemoteProtocolError:
                    state["closed"] = True
                    return {"type": "websocket.disconnect", "code": 1002}
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message: Message) -> None:
            kind = message["type"]
            conn = state["conn"]
            if kind == "websocket.accept":
                extra = [(bytes(k), bytes(v)) for k, v in message.get("headers") or []]
                await write(
                    handshake.send(
                        AcceptConnection(subprotocol=message.get("subprotocol"), extra_headers=extra)
                    )
                )
                state["conn"] = handshake.connection
            elif kind == "websocket.send" and conn is not None and not state["closed"]:
                data = message.get("text")
                await write(
                    conn.send(WsMessage(data=data if data is not None else message.get("bytes") or b""))
                )
            elif kind == "websocket.close":
                if conn is None:
                    await write(handshake.send(RejectConnection(status_code=403)))
                elif not state["closed"]:
                    with contextlib.suppress(LocalProtocolError):
                        await write(
                            conn.send(
                                CloseConnection(
                                    code=int(message.get("code", 1000)), reason=message.get("reason")
                                )
                            )
                        )
                state["closed"] = True
            elif kind == "websocket.http.response.start" and conn is None:
                raw = [(bytes(k), bytes(v)) for k, v in message.get("headers") or []]
                await write(
                    handshake.send(
                        RejectConnection(status_code=int(message["status"]), headers=raw, has_body=True)
                    )
                )
            elif kind == "websocket.http.response.body" and conn is None:
                more = bool(message.get("more_body", False))
                await write(
                    handshake.send(RejectData(data=bytes(message.get("body", b"")), body_finished=not more))
                )
                if not more:
                    state["closed"] = True

        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("ASGI app failed on a WebSocket from %s", info.address)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve(
    app: Asgi,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits | None = None,
    reuse_port: bool = False,
    max_header_bytes: int = 65536,
    drain: Drain | None = None,
) -> asyncio.AbstractServer:
    """Listen on ``host:port``: HTTP/1.1 and HTTP/2 (TLS with ALPN, or h2c), all into ``app``;
    ``drain.announce()`` later tells the connected clients to go (see mesh/transport/h2c.py Drain).
    HTTP/2 connections get serve_sniffing's timeouts: the inbound listener's 600 s idle, 300 s stalled
    stream."""
    bridge = AsgiBridge(app, server=(host, port))
    # no extended CONNECT from clients: WebSockets arrive as HTTP/1.1 upgrades; a CONNECT stream would
    # otherwise reach the app as a request the gateway must refuse anyway
    limits = limits or Limits(enable_connect_protocol=False)
    return await serve_sniffing(
        bridge,
        host,
        port,
        limits,
        ssl_context=ssl_context,
        reuse_port=reuse_port,
        upgrade=WebSocketBridge(app, bridge),
        max_header_bytes=max_header_bytes,
        raw_headers=True,  # the hygiene step checks and strips hop-by-hop headers (as under granian)
        drain=drain,
    )


class Lifespan:
    """Drives an ASGI app's lifespan protocol (startup before serving, shutdown after)."""

    def __init__(self, app: Asgi) -> None:
        self.app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}, "state": {}}
        try:
            await self.app(scope, self._inbox.get, self._outbox.put)
        except Exception as exc:
            await self._outbox.put({"type": "lifespan.startup.failed", "message": str(exc)})

    async def startup(self) -> None:
        """Start the app; raises RuntimeError with the app's message when its startup fails."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._outbox.get()
        if answer["type"] != "lifespan.startup.complete":
            raise RuntimeError(answer.get("message") or "startup failed")

    async def shutdown(self) -> None:
        """Stop the app (its shutdown handlers run)."""
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._outbox.get(), 10)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


def tls_context(
    cert: str, key: str, client_ca: str | None = None, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """The edge's TLS context: TLS 1.2+, ALPN h2 and http/1.1, client certificates from ``client_ca``
    (required, or optional and then only verified when presented)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx
