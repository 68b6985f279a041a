"""Plain TCP carried over the mesh: an HTTP/2 CONNECT stream between sidecars (one port and one
protocol between sidecars, as Istio's HBONE), bytes pumped both ways with back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from mesh.transport.h1 import UpstreamError
from mesh.transport.messages import Request, Response, body_of

log = logging.getLogger("meshgate.transport.tunnel")
CHUNK = 65536


async def socket_bytes(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """What the socket receives, until it closes."""
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        yield data


async def pump(source: AsyncIterator[bytes], writer: asyncio.StreamWriter) -> None:
    """Copy ``source`` into ``writer`` (waiting for it to drain), then half-close it."""
    try:
        async for chunk in source:
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError) as exc:
        log.debug("tunnel pump ended: %s", exc)
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()


async def connect_app(request: Request, host: str, port: int) -> Response:
    """Inbound end of a tunnel: connect to the app and join the CONNECT stream to that socket.

    Raises UpstreamError(``connect_failure``) when the app does not accept the connection.
    """
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise UpstreamError("connect_failure", f"cannot connect to the app at {host}:{port}: {exc}") from exc
    upstream = asyncio.get_running_loop().create_task(pump(request.body, writer))

    def closed() -> None:
        upstream.cancel()
        writer.close()

    return Response(200, [], socket_bytes(reader), on_close=closed)


TunnelOpener = Callable[[Request], Awaitable[Response]]


def tcp_listener(
    open_stream: TunnelOpener, service: str
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Outbound end: each accepted connection becomes a CONNECT stream to ``service`` over the mesh."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = Request("CONNECT", "/", service, body=socket_bytes(reader))
        try:
            response = await open_stream(request)
            if response.status != 200:
                if response.on_close is not None:
                    response.on_close()
                log.warning(
                    "tunnel to %s refused: %s %s",
                    service,
                    response.status,
                    response.header("x-meshgate-error"),
                )
                return
            await pump(response.body, writer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return handle


#: Headers of the client's WebSocket handshake that the app gets (the mesh sets its own key, version
#: and no extensions: frames pass through the gateway unchanged, so nothing may transform them).
WS_FORWARD_SKIP = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "host", "content-length"}
)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def websocket_app(
    request: Request, host: str, port: int, service: str, timeout: float = 10.0
) -> Response:
    """Inbound end of a WebSocket carried on an extended CONNECT stream (RFC 8441): the HTTP/1.1
    upgrade to the app, then the stream and the socket joined. The app's answer other than 101 comes
    back as it is (its status, headers and body); 200 with the chosen subprotocol means upgraded.

    Raises UpstreamError(``connect_failure``) when the app cannot be reached, ``upstream_reset`` when
    it breaks the handshake.
    """
    import base64
    import hashlib
    import os

    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        raise UpstreamError("connect_failure", f"cannot connect to the app at {host}:{port}: {exc}") from exc
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {request.path} HTTP/1.1".encode(),
        f"Host: {service}".encode(),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
    ]
    for name, value in request.headers:
        if name.startswith(":") or name in WS_FORWARD_SKIP or "\r" in value or "\n" in value:
            continue
        lines.append(f"{name}: {value}".encode("latin-1"))
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError) as exc:
        writer.close()
        raise UpstreamError("upstream_reset", f"the app broke the WebSocket handshake: {exc}") from exc
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isascii() and parts[1].isdigit() else 502
    headers = []
    for line in header_lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    values = dict(headers)
    if status != 101:
        if 200 <= status < 300:  # a success that is not an upgrade: the app does not speak WebSocket here
            writer.close()
            raise UpstreamError(
                "upstream_reset", f"the app answered the WebSocket handshake with {status}, not 101"
            )
        declared = values.get("content-length", "0")
        length = int(declared) if declared.isascii() and declared.isdigit() and len(declared) < 19 else 0
        body = await reader.read(min(length, 65536)) if length else b""
        writer.close()
        kept = [
            (k, v)
            for k, v in headers
            if k not in ("connection", "upgrade", "transfer-encoding", "content-length")
        ]
        return Response(status, [*kept, ("content-length", str(len(body)))], body_of(body))
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID, usedforsecurity=False).digest()).decode()
    if values.get("sec-websocket-accept") != accept:
        writer.close()
        raise UpstreamError(
            "upstream_reset", "the app answered the WebSocket handshake with a wrong accept key"
        )
    upstream = asyncio.get_running_loop().create_task(pump(request.body, writer))

    def closed() -> None:
        upstream.cancel()
        writer.close()

    out = (
        [("sec-websocket-protocol", values["sec-websocket-protocol"])]
        if "sec-websocket-protocol" in values
        else []
    )
    return Response(200, out, socket_bytes(reader), on_close=closed)
