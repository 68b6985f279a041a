"""Plain TCP carried over the mesh: an HTTP/2 CONNECT stream between sidecars (one port and one
protocol between sidecars, as Istio's HBONE), bytes pumped both ways with back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from mesh.transport.h1 import UpstreamError
from mesh.transport.messages import Request, Response

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
