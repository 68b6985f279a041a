"""HTTP/1.1 on asyncio streams with h11: the server apps talk to (outbound listener, gateway, admin
ports). The pooled client the inbound side uses to reach the local app is ``h1pool.H1Pool``, re-exported
here with its ``UpstreamError``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus

import h11

from mesh.transport.h1pool import IDEMPOTENT_METHODS, H1Pool, UpstreamError
from mesh.transport.messages import Headers, Request, Response, error_response, strip_hop_by_hop

log = logging.getLogger("meshgate.transport.h1")

__all__ = ["IDEMPOTENT_METHODS", "ClientInfo", "H1Pool", "H1Server", "UpstreamError", "client_info"]

READ_CHUNK = 65536


@dataclass(frozen=True)
class ClientInfo:
    """Who is on the other end of a connection; over TLS, the client's certificate (DER, verified by
    the server's context) and the negotiated protocol."""

    address: str
    port: int
    peer_cert: bytes | None = None
    tls: bool = False
    protocol: str = "1.1"  # "1.1" or "2"


def client_info(transport_like: object, protocol: str = "1.1") -> ClientInfo:
    """The ClientInfo of a transport or StreamWriter (anything with ``get_extra_info``)."""
    get = transport_like.get_extra_info  # type: ignore[attr-defined]
    peer = get("peername") or ("", 0)
    ssl_object = get("ssl_object")
    cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return ClientInfo(str(peer[0]), int(peer[1]), cert or None, ssl_object is not None, protocol)


H1Handler = Callable[[Request, ClientInfo], Awaitable[Response]]
#: Takes over a connection whose request asked for a WebSocket (request, reader, writer, bytes already
#: read past the request, client).
UpgradeHandler = Callable[
    [h11.Request, asyncio.StreamReader, asyncio.StreamWriter, bytes, ClientInfo], Awaitable[None]
]


def _wants_websocket(headers: Headers) -> bool:
    upgrade = any(k == "upgrade" and "websocket" in v.lower() for k, v in headers)
    connection = any(k == "connection" and "upgrade" in v.lower() for k, v in headers)
    return upgrade and connection


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _decode(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers]


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float | None) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if timeout:
            async with asyncio.timeout(timeout):  # no task per read, unlike asyncio.wait_for
                data = await reader.read(READ_CHUNK)
        else:
            data = await reader.read(READ_CHUNK)
        conn.receive_data(data)


LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024


async def _linger(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
    """Stop sending, then read and drop what the client still sends, bounded in time and bytes."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        drained = 0
        async with asyncio.timeout(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    return
                drained += len(chunk)


class H1Server:
    """Serves HTTP/1.1 keep-alive connections, one request at a time each, by calling ``handler``."""

    def __init__(
        self,
        handler: H1Handler,
        *,
        max_header_bytes: int = 65536,
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        upgrade: UpgradeHandler | None = None,
        raw_headers: bool = False,
    ) -> None:
        self.handler = handler
        self.upgrade = upgrade
        #: Hand requests over with their hop-by-hop headers (Connection, Transfer-Encoding, ...) as
        #: received: for the gateway, whose hygiene step judges them (a chunked body is a body, and
        #: ``Connection`` must not strip the headers it protects). The sidecar strips them here.
        self.raw_headers = raw_headers
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[asyncio.Task[None]] = set()
        self.draining = False
        self._idle: set[asyncio.StreamWriter] = set()

    def drain(self) -> None:
        """From now on every response says ``Connection: close`` and ends its connection; connections
        waiting for their next request are closed now."""
        self.draining = True
        for writer in list(self._idle):
            writer.close()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until either side closes it."""
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        info = client_info(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        try:
            while True:
                try:
                    event = await self._request_head(conn, reader, writer)
                except (h11.RemoteProtocolError, TimeoutError) as exc:
                    await self._refuse(conn, writer, exc, reader)
                    return
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    return
                if not await self._exchange(conn, reader, writer, event, info):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if task is not None:
                self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _request_head(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> object:
        """The next request head: up to ``idle_timeout`` for its first bytes, then ``header_timeout`` for
        the rest of it (a client dribbling a header block out byte by byte is cut off: slowloris). While
        no byte of it has come, a drain may close the connection (see :meth:`drain`)."""
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if self.draining and conn.their_state is h11.IDLE:
            return h11.ConnectionClosed()
        self._idle.add(writer)
        try:
            async with asyncio.timeout(self.idle_timeout):
                conn.receive_data(await reader.read(READ_CHUNK))
        finally:
            self._idle.discard(writer)
        async with asyncio.timeout(self.header_timeout):
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_CHUNK))
        return event

    async def _refuse(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        exc: Exception,
        reader: asyncio.StreamReader | None = None,
        method: bytes | None = None,
    ) -> None:
        """Answer a request we will not serve, then close. With ``reader``, the client's unread bytes are
        drained for a moment first (a lingering close, RFC 9112 section 9.6): closing with data unread
        makes the kernel send a reset, and the client would see that instead of our answer."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = 408 if isinstance(exc, TimeoutError) else getattr(exc, "error_status_hint", 400)
        if status == 501:  # h11's hint for an unknown or repeated Transfer-Encoding: a framing error
            status = 400
        if isinstance(exc, TimeoutError) and conn.their_state is h11.IDLE:
            return  # idle keep-alive connection: just close
        body = f"{'request timeout' if status == 408 else 'bad request'}\n".encode()
        with contextlib.suppress(Exception):
            out = conn.send(
                h11.Response(
                    status_code=status,
                    reason=_reason(status),
                    headers=[("content-length", str(len(body))), ("connection", "close")],
                )
            )
            if method != b"HEAD":  # an answer to HEAD has no body
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            writer.write(out)
            await writer.drain()
        if reader is not None:
            await _linger(writer, reader)

    async def _exchange(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        event: h11.Request,
        info: ClientInfo,
    ) -> bool:
        headers = _decode(event.headers)
        head_bytes = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers.raw_items())
        if head_bytes > self.max_header_bytes:  # h11 caps only a head that arrives in pieces
            await self._refuse(
                conn, writer, h11.RemoteProtocolError("header block too large", 431), reader, event.method
            )
            return False
        if not event.http_version.startswith(b"1."):  # h11 parses "HTTP/2.0" request lines too
            await self._refuse(
                conn, writer, h11.RemoteProtocolError("HTTP version not supported", 505), reader, event.method
            )
            return False
        hosts = [v for k, v in headers if k == "host"]
        if len(hosts) > 1:  # RFC 9112 section 3.2: 400 for more than one Host (h11 lets it pass)
            await self._refuse(
                conn, writer, h11.RemoteProtocolError("more than one Host header", 400), reader, event.method
            )
            return False
        if self.upgrade is not None and event.method == b"GET" and _wants_websocket(headers):
            # RFC 6455: the connection leaves HTTP; the upgrade handler owns it from here. A handshake
            # has no body: one that announces a body is refused (never waited for)
            if any(
                k == "transfer-encoding" or (k == "content-length" and v.strip() != "0") for k, v in headers
            ):
                await self._refuse(
                    conn, writer, h11.RemoteProtocolError("a WebSocket handshake with a body", 400), reader
                )
                return False
            while conn.their_state is h11.SEND_BODY:
                if not isinstance(conn.next_event(), h11.EndOfMessage | h11.Data):
                    await self._refuse(
                        conn, writer, h11.RemoteProtocolError("bad WebSocket handshake", 400), reader
                    )
                    return False
            leftover, _ = conn.trailing_data
            await self.upgrade(event, reader, writer, bytes(leftover), info)
            return False
        names = {k for k, _ in headers}
        if "content-length" in names and "transfer-encoding" in names:
            # RFC 9112 section 6.1: a smuggling attempt (h11 would go by Transfer-Encoding and read the
            # rest as the next request): refuse and close
            await self._refuse(
                conn,
                writer,
                h11.RemoteProtocolError("Content-Length with Transfer-Encoding", 400),
                reader,
                event.method,
            )
            return False
        authority = hosts[0] if hosts else ""
        target = event.target.decode("latin-1")
        done = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    item = await _next_event(conn, reader, self.idle_timeout)
                    if isinstance(item, h11.Data):
                        yield bytes(item.data)
                    elif isinstance(item, h11.EndOfMessage):
                        return
                    else:
                        raise ConnectionError("client closed the connection mid-body")
            finally:
                done.set()

        request = Request(
            method=event.method.decode("ascii"),
            path=target,
            authority=authority,
            headers=[
                (k, v) for k, v in (headers if self.raw_headers else strip_hop_by_hop(headers)) if k != "host"
            ],
            body=body(),
        )
        try:
            response = await self.handler(request, info)
        except Exception:
            log.exception("handler failed for %s %s", request.method, target)
            response = error_response(500, "internal_error", "internal error in the sidecar")
        out_headers = strip_hop_by_hop(response.headers)
        if self.draining:  # the client opens a new connection (to another instance) for its next request
            out_headers.append(("connection", "close"))
        try:
            head = h11.Response(
                status_code=response.status, headers=_encode(out_headers), reason=_reason(response.status)
            )
            # the head waits for the first chunk if that is ready in this loop iteration (one write,
            # one segment); a body that is slow to start gets its head sent on its own first
            pending = [conn.send(head)]

            def send_head() -> None:
                if pending:
                    writer.write(pending.pop())

            asyncio.get_running_loop().call_soon(send_head)
            async for chunk in response.body:
                if chunk:
                    data = conn.send(h11.Data(data=chunk))
                    writer.write(pending.pop() + data if pending else data)
                    await writer.drain()
            writer.write((pending.pop() if pending else b"") + conn.send(h11.EndOfMessage()))
            await writer.drain()
        except (h11.LocalProtocolError, ConnectionError) as exc:
            log.debug("response to %s aborted: %s", info, exc)
            return False
        finally:
            if response.on_close is not None:
                response.on_close()
        # a handler that did not read the request body: what is already buffered may finish it (a GET
        # has nothing to read but its end); otherwise the connection is unusable and closes
        while conn.their_state is h11.SEND_BODY:
            try:
                rest = conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if not isinstance(rest, h11.Data | h11.EndOfMessage):
                break  # NEED_DATA: the rest is not here yet
        return conn.their_state is not h11.SEND_BODY
