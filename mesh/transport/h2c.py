"""Cleartext HTTP/2 (h2c, prior knowledge) on loopback: to gRPC apps, and from gRPC apps.

``H2cPool`` is the inbound side's client to a local gRPC app (``protocol: grpc``); ``serve_sniffing``
runs a plaintext listener that serves HTTP/1.1 and h2c on one port, telling them apart by the HTTP/2
connection preface, so that an app's gRPC client can use the same outbound port as its HTTP client.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from mesh.h2 import Limits
from mesh.transport.h1 import ClientInfo, H1Server, UpgradeHandler, UpstreamError, client_info
from mesh.transport.h2conn import H2Protocol, StreamError
from mesh.transport.messages import Request, Response

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TcpHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
#: Asked when a connection arrives: the handler to tunnel it with, or None to serve HTTP.
TcpMode = Callable[[], TcpHandler | None]


class H2cPool:
    """One reused cleartext HTTP/2 connection to ``host:port`` (a new one when it cannot take a stream)."""

    def __init__(
        self, host: str, port: int, *, connect_timeout: float = 2.0, limits: Limits | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.limits = limits or Limits()
        self._conns: list[H2Protocol] = []

    async def _connection(self) -> H2Protocol:
        for conn in self._conns:
            if conn.available:
                return conn
        loop = asyncio.get_running_loop()

        def closed(proto: H2Protocol) -> None:
            if proto in self._conns:
                self._conns.remove(proto)

        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: H2Protocol(client_side=True, limits=self.limits, on_close=closed),
                    self.host,
                    self.port,
                ),
                self.connect_timeout,
            )
            await asyncio.wait_for(proto.ready, self.connect_timeout)
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise UpstreamError(
                "connect_failure",
                f"cannot connect to the app at {self.host}:{self.port} (h2c): {exc}",
                retryable=True,
            ) from exc
        self._conns.append(proto)
        return proto

    async def request(self, request: Request) -> Response:
        """Forward ``request`` over h2c; raises UpstreamError when the app cannot be reached or resets."""
        conn = await self._connection()
        request.scheme = "http"
        try:
            return await conn.request(request)
        except StreamError as exc:
            raise UpstreamError(
                exc.code, f"the app reset the stream: {exc}", retryable=exc.retryable
            ) from exc

    async def close(self) -> None:
        """Close every connection."""
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()


class Drain:
    """What a sniffing listener needs to announce a drain to the clients it already has: HTTP/1.1
    connections close after their current response (``Connection: close``) or at once when idle, and
    HTTP/2 connections get GOAWAY (no new streams; streams in flight finish)."""

    def __init__(self) -> None:
        self.h1: list[H1Server] = []
        self.h2: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def announce(self) -> None:
        """Tell every client; closing the listener (no new connections) is the caller's."""
        for server in self.h1:
            server.drain()
        for proto in list(self.h2):
            proto.goaway()


class _Sniffer(asyncio.Protocol):
    """Reads just enough to tell HTTP/2's preface from HTTP/1.1, then hands the connection over."""

    def __init__(
        self,
        h1: H1Server,
        h2: Callable[[Request, ClientInfo], Awaitable[Response]],
        limits: Limits,
        tcp: TcpMode | None = None,
        drain: Drain | None = None,
        timeouts: tuple[float | None, float | None] = (None, None),
    ) -> None:
        self.h1 = h1
        self.h2 = h2
        self.limits = limits
        self.timeouts = timeouts  # HTTP/2: (connection idle, stream idle) seconds
        self.tcp = tcp
        self.drain = drain
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        tunnel = self.tcp() if self.tcp is not None else None
        if tunnel is not None:  # a TCP service: no sniffing (its server may speak first)
            reader = asyncio.StreamReader(limit=256 * 1024)
            proto = asyncio.StreamReaderProtocol(reader, tunnel)
            transport.set_protocol(proto)
            proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < len(PREFACE) and PREFACE.startswith(self.buffer):
            return  # could still be HTTP/2: wait for the rest of the preface
        transport, buffer = self.transport, self.buffer
        if buffer.startswith(b"PRI * HTTP/2.0") and not buffer.startswith(PREFACE):
            transport.close()  # a broken HTTP/2 preface: a connection error, not an HTTP/1.1 request
            return
        if buffer.startswith(PREFACE):
            info = client_info(transport, "2")

            async def handle(request: Request, _proto: H2Protocol) -> Response:
                return await self.h2(request, info)

            idle, stream_idle = self.timeouts
            proto: asyncio.Protocol = H2Protocol(
                client_side=False,
                handler=handle,
                limits=self.limits,
                idle_timeout=idle,
                stream_idle_timeout=stream_idle,
            )
            if self.drain is not None:
                self.drain.h2.add(proto)  # type: ignore[arg-type]
        else:
            reader = asyncio.StreamReader(limit=256 * 1024)
            proto = asyncio.StreamReaderProtocol(reader, self.h1)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(buffer)

    def eof_received(self) -> bool | None:
        if self.transport is not None:
            self.transport.close()
        return None


async def serve_sniffing(
    handler: Callable[[Request, ClientInfo], Awaitable[Response]],
    host: str,
    port: int,
    limits: Limits | None = None,
    tcp: TcpMode | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    upgrade: UpgradeHandler | None = None,
    max_header_bytes: int = 65536,
    raw_headers: bool = False,
    drain: Drain | None = None,
    idle_timeout: float | None = 600.0,
    stream_idle_timeout: float | None = 300.0,
) -> asyncio.Server:
    """A listener serving HTTP/1.1 and HTTP/2 with the same ``handler``, told apart by the HTTP/2
    preface (h2c with prior knowledge in plaintext; over TLS the preface follows ALPN h2); when
    ``tcp()`` returns a connection handler (the upstream is a TCP service), connections go to it as
    they are, unsniffed. ``raw_headers``: HTTP/1.1 requests reach ``handler`` with their hop-by-hop
    headers (an edge that checks and strips them itself, see H1Server). HTTP/2 connections close
    after ``idle_timeout`` seconds without a stream and reset a stream stalled for
    ``stream_idle_timeout`` seconds: the inbound listener's defaults (600 s and 300 s, Envoy's stream
    idle timeout); HTTP/1.1 keeps H1Server's own timeouts."""
    h1 = H1Server(handler, upgrade=upgrade, max_header_bytes=max_header_bytes, raw_headers=raw_headers)
    if drain is not None:
        drain.h1.append(h1)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Sniffer(h1, handler, limits or Limits(), tcp, drain, (idle_timeout, stream_idle_timeout)),
        host,
        port,
        backlog=1024,
        ssl=ssl_context,
        reuse_port=reuse_port or None,
    )
