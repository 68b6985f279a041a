"""HTTP/1.1 on asyncio streams: the server apps talk to (outbound listener, gateway, admin
ports). The pooled client the inbound side uses to reach the local app is ``h1pool.H1Pool``, re-exported
here with its ``UpstreamError``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from mesh.transport.h1parse import (
    H1ParseError,
    Message,
    RequestHead,
    RequestParser,
    decode_headers,
    response_head,
)
from mesh.transport.h1pool import IDEMPOTENT_METHODS, H1Pool, UpstreamError
from mesh.transport.messages import Headers, Request, Response, error_response, strip_hop_by_hop
from shared.http1 import READ_CHUNK

log = logging.getLogger("meshgate.transport.h1")

__all__ = [
    "IDEMPOTENT_METHODS",
    "ClientInfo",
    "H1Pool",
    "H1Server",
    "RequestBodyError",
    "RequestHead",
    "UpgradeHandler",
    "UpstreamError",
    "client_info",
]


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
#: Takes over a connection whose request asked for a WebSocket (request head, reader, writer, bytes
#: already read past the head, client).
UpgradeHandler = Callable[
    [RequestHead, asyncio.StreamReader, asyncio.StreamWriter, bytes, ClientInfo], Awaitable[None]
]


def _target_fits(method: bytes, target: str) -> bool:
    """The request target's form suits the method (RFC 9112 section 3.2)."""
    if target.startswith("/"):
        return True
    if target == "*":
        return method == b"OPTIONS"
    if method == b"CONNECT":
        return True
    return target[:8].lower().startswith(("http://", "https://"))


def _wants_websocket(headers: Headers) -> bool:
    upgrade = any(k == "upgrade" and "websocket" in v.lower() for k, v in headers)
    connection = any(k == "connection" and "upgrade" in v.lower() for k, v in headers)
    return upgrade and connection


LINGER_SECONDS = 1.0
#: A Host value: a reg-name (unreserved and percent-encoded characters; no sub-delims, so no lists),
#: an IPv4 address or an IP literal, and an optional port.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%]+)(?::[0-9]{0,5})?", re.ASCII)
_STATUSES = frozenset(s.value for s in HTTPStatus)
#: ``x-meshgate-error`` of a refused request, by status (the gateway's codes for the same answers).
_REFUSAL_CODES = {
    408: "request_timeout",
    413: "body_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
    501: "not_implemented",
    505: "http_version_not_supported",
}
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
    """Serves HTTP/1.1 keep-alive connections, one request at a time each, by calling ``handler``.

    Requests are parsed by :class:`mesh.transport.h1parse.RequestParser` (llhttp); responses are
    framed here: Content-Length as the handler gave it (a body that breaks it closes the connection),
    else chunked for HTTP/1.1 and close-delimited for HTTP/1.0; no body for HEAD, 1xx, 204 and 304.
    """

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
        parser = RequestParser(self.max_header_bytes)
        hangup = _Hangup(reader, lambda: parser.more)
        try:
            while True:
                try:
                    msg = await self._request_head(parser, reader, writer)
                except H1ParseError as exc:
                    await self._refuse(writer, exc.status, str(exc), reader)
                    return
                except TimeoutError:
                    # idle, or a head that did not arrive in time (slowloris): close, spend nothing more
                    return
                if msg is None:
                    return
                if not await self._exchange(parser, msg, reader, writer, info, hangup):
                    return
                parser.done()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            if not hangup.cancelled or task is None:
                raise
            task.uncancel()  # our own: the client left while its response was streaming
            log.debug("client %s left while its response streamed: upstream stream closed", info)
            return
        finally:
            if task is not None:
                self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _request_head(
        self, parser: RequestParser, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Message | None:
        """The next request: up to ``idle_timeout`` for its first bytes, then ``header_timeout`` for
        the rest of its head (a client dribbling a header block out byte by byte is cut off:
        slowloris). While no byte of it has come, a drain may close the connection (see
        :meth:`drain`). None when the client closed the connection."""
        msg = parser.next()
        if msg is not None:
            return msg
        if parser.upgraded:
            return None
        if parser.idle:
            if self.draining:
                return None
            self._idle.add(writer)
            try:
                async with asyncio.timeout(self.idle_timeout):
                    data = await reader.read(READ_CHUNK)
            finally:
                self._idle.discard(writer)
            if not data:
                return None
            parser.feed(data)
            msg = parser.next()
            if msg is not None:  # the usual case: the whole head in one read, no second timer
                return msg
        async with asyncio.timeout(self.header_timeout):
            while (msg := parser.next()) is None:
                data = await reader.read(READ_CHUNK)
                if not data:  # the client ended its side inside a head: it still gets an answer
                    raise H1ParseError("connection closed inside a request head", 400)
                parser.feed(data)
        return msg

    async def _refuse(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        reason: str,
        reader: asyncio.StreamReader | None = None,
        method: bytes | None = None,
    ) -> None:
        """Answer a request we will not serve, then close. With ``reader``, the client's unread bytes are
        drained for a moment first (a lingering close, RFC 9112 section 9.6): closing with data unread
        makes the kernel send a reset, and the client would see that instead of our answer."""
        log.debug("refusing an HTTP/1.1 request with %d: %s", status, reason)
        body = (
            (HTTPStatus(status).phrase.lower() + "\n").encode() if status in _STATUSES else b"bad request\n"
        )
        code = _REFUSAL_CODES.get(status, "bad_request")
        with contextlib.suppress(Exception):
            fields = [("content-length", str(len(body))), ("x-meshgate-error", code), ("connection", "close")]
            out = response_head(status, fields)
            writer.write(out if method == b"HEAD" else out + body)  # an answer to HEAD has no body
            await writer.drain()
        if reader is not None:
            await _linger(writer, reader)

    async def _exchange(
        self,
        parser: RequestParser,
        msg: Message,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: ClientInfo,
        hangup: _Hangup | None = None,
    ) -> bool:
        """Serve one request; True when the connection may carry the next one."""
        event = msg.head
        assert event is not None
        headers = decode_headers(event.headers)
        if event.size > self.max_header_bytes:  # a head that arrived whole in one read
            await self._refuse(writer, 431, "header block too large", reader, event.method)
            return False
        if event.http_version not in (b"1.1", b"1.0"):  # llhttp parses "HTTP/2.0" request lines too
            await self._refuse(writer, 505, "HTTP version not supported", reader, event.method)
            return False
        hosts = [v for k, v in headers if k == "host"]
        if len(hosts) > 1 or (not hosts and event.http_version == b"1.1"):
            # RFC 9112 section 3.2: 400 for an HTTP/1.1 request with no Host or more than one
            await self._refuse(writer, 400, "missing or repeated Host header", reader, event.method)
            return False
        authority = hosts[0] if hosts else ""
        if authority and not _HOST.fullmatch(authority):
            # RFC 9112 section 3.2: 400 for an invalid Host value (uri-host [":" port]: no userinfo,
            # spaces, slashes or lists)
            await self._refuse(writer, 400, "malformed Host header", reader, event.method)
            return False
        target = event.target.decode("latin-1")
        if not _target_fits(event.method, target):
            # RFC 9112 section 3.2: origin-form or absolute-form; "*" only for OPTIONS; authority-form
            # only for CONNECT (which llhttp hands over as an upgrade)
            await self._refuse(
                writer, 400, f"request target {target[:64]!r} not allowed", reader, event.method
            )
            return False
        if self.upgrade is not None and event.method == b"GET" and _wants_websocket(headers):
            # RFC 6455: the connection leaves HTTP; the upgrade handler owns it from here. A handshake
            # has no body: one that announces a body is refused (never waited for)
            if any(
                k == "transfer-encoding" or (k == "content-length" and v.strip() != "0") for k, v in headers
            ):
                await self._refuse(writer, 400, "a WebSocket handshake with a body", reader)
                return False
            await self.upgrade(event, reader, writer, msg.leftover, info)
            return False
        idle_timeout = self.idle_timeout
        # RFC 9110 section 10.1.1: a client that sent "Expect: 100-continue" waits (curl: 1 s) for
        # "100 Continue" before its body; it goes out when the handler first needs bytes of the body
        # that have not arrived, so a request refused without reading its body never sends one
        expect = event.http_version == b"1.1" and any(
            k == "expect" and v.strip().lower() == "100-continue" for k, v in headers
        )

        body = _RequestBody(msg, parser, reader, writer, idle_timeout, expect)
        request = Request(
            method=event.method.decode("ascii"),
            path=target,
            authority=authority,
            headers=[
                (k, v)
                for k, v in (headers if self.raw_headers else strip_hop_by_hop(headers))
                if k != "host" and not (expect and k == "expect" and not self.raw_headers)  # answered here
            ],
            body=body,
        )
        try:
            response = await self.handler(request, info)
        except Exception:
            if body.error is not None:  # the client's fault, not ours: its answer, then close
                await self._refuse(writer, body.error.status, str(body.error), reader, event.method)
                return False
            log.exception("handler failed for %s %s", request.method, target)
            response = error_response(500, "internal_error", "internal error in the sidecar")
        if body.error is not None:  # the handler answered a broken body (ASGI: a disconnect): ours wins
            if response.on_close is not None:
                response.on_close()
            await self._refuse(writer, body.error.status, str(body.error), reader, event.method)
            return False
        # the parser stops at an upgrade it was not asked to follow: answer, then close
        keep = event.keep_alive and not event.upgrade and not self.draining
        body.responding = True
        if hangup is not None:
            hangup.watch()
        try:
            keep = await self._respond(writer, event, response, keep)
        except ConnectionError as exc:
            log.debug("response to %s aborted: %s", info, exc)
            return False
        finally:
            if hangup is not None:
                hangup.unwatch()
            if response.on_close is not None:
                response.on_close()
        # a handler that did not read the request body: what is already parsed may finish it (a GET
        # has nothing to read but its end); otherwise the connection is unusable and closes
        return keep and msg.complete

    async def _respond(
        self, writer: asyncio.StreamWriter, event: RequestHead, response: Response, keep: bool
    ) -> bool:
        """Write ``response``; True when it was framed whole and the connection may stay open."""
        status = response.status
        if self.raw_headers and any(k == "connection" and "close" in v.lower() for k, v in response.headers):
            keep = False  # the handler asks for the close (the gateway after a request it refused)
        out_headers = strip_hop_by_hop(response.headers)
        bodyless = event.method == b"HEAD" or status in (204, 304) or status < 200
        declared: int | None = None
        chunked = False
        if status == 204 or status < 200:
            out_headers = [(k, v) for k, v in out_headers if k != "content-length"]
        elif not bodyless:
            values = [v for k, v in out_headers if k == "content-length"]
            if values and len(set(values)) == 1 and values[0].isascii() and values[0].isdigit():
                declared = int(values[0])
            else:
                out_headers = [(k, v) for k, v in out_headers if k != "content-length"]
                if event.http_version == b"1.1":
                    out_headers.append(("transfer-encoding", "chunked"))
                    chunked = True
                else:
                    keep = False  # HTTP/1.0: the body ends with the connection
        if not keep:
            # the client opens a new connection (to another instance, when draining) for its next request
            out_headers.append(("connection", "close"))
        try:
            head = response_head(status, out_headers)
        except (ValueError, UnicodeEncodeError) as exc:
            log.warning("cannot write the response to %s %s: %s", event.method, event.target, exc)
            async for _ in response.body:  # the upstream's stream still ends properly
                pass
            head = response_head(502, [("content-length", "0"), ("connection", "close")])
            writer.write(head)
            await writer.drain()
            return False
        # the head waits for the first chunk if that is ready in this loop iteration (one write,
        # one segment); a body that is slow to start gets its head sent on its own first
        pending = [head]

        def send_head() -> None:
            if pending:
                writer.write(pending.pop())

        asyncio.get_running_loop().call_soon(send_head)
        sent = 0
        async for chunk in response.body:
            if not chunk or bodyless:
                continue
            sent += len(chunk)
            if declared is not None and sent > declared:
                log.warning("response body longer than its content-length (%d): closing", declared)
                if pending:
                    writer.write(pending.pop())
                return False
            data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
            writer.write(pending.pop() + data if pending else data)
            await writer.drain()
        end = b"0\r\n\r\n" if chunked else b""
        if pending or end:
            writer.write((pending.pop() if pending else b"") + end)
        await writer.drain()
        if declared is not None and sent != declared:
            log.warning("response body of %d bytes, content-length %d: closing", sent, declared)
            return False
        return keep


class _Hangup:
    """Cancels the connection's task when the client's side ends while a response streams: the
    upstream stream is then closed (RST_STREAM CANCEL) and its breaker slot released at once, instead
    of when a stalled upstream body finally ends (nginx aborts the same way, "499"). A reset always
    counts; an EOF only when nothing the client sent is left to serve (like nginx's peek): a client
    that pipelines requests and then half-closes, or half-closes before its answer begins, is served."""

    __slots__ = ("_ended", "_task", "cancelled")

    def __init__(self, reader: asyncio.StreamReader, more: Callable[[], bool]) -> None:
        self._ended = False
        self._task: asyncio.Task[object] | None = None
        self.cancelled = False
        feed_eof, set_exception = reader.feed_eof, reader.set_exception

        def eof() -> None:
            feed_eof()
            if reader.at_eof() and not more():  # at_eof: no unread byte buffered either
                self._end()
            else:
                self._ended = True  # answered as usual; the connection closes after the last one

        def failed(exc: Exception) -> None:
            set_exception(exc)
            self._end()

        reader.feed_eof = eof  # type: ignore[method-assign]
        reader.set_exception = failed  # type: ignore[method-assign]

    def watch(self) -> None:
        if not self._ended:
            self._task = asyncio.current_task()

    def unwatch(self) -> None:
        self._task = None

    def _end(self) -> None:
        self._ended = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            self.cancelled = True
            task.cancel()


class RequestBodyError(ConnectionError):
    """The request body broke while a handler read it: the client closed, or framed it wrongly;
    ``status`` is the answer (400, 408, 413, 431, 501) when no response has begun."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _RequestBody:
    """The body of a request, read from the connection as the handler pulls it. With ``expect`` (the
    client sent ``Expect: 100-continue``) the first read that needs bytes not yet arrived sends
    ``100 Continue`` first, unless the response has begun (``responding``): an interim response
    then would land inside it."""

    __slots__ = ("_expect", "_msg", "_parser", "_reader", "_timeout", "_writer", "error", "responding")

    def __init__(
        self,
        msg: Message,
        parser: RequestParser,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float,
        expect: bool,
    ) -> None:
        self._msg = msg
        self._parser = parser
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._expect = expect
        self.responding = False
        self.error: RequestBodyError | None = None  # why the body broke, once it did

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        msg = self._msg
        while True:
            chunks = msg.chunks
            if chunks:
                chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                return chunk
            if msg.complete:
                raise StopAsyncIteration
            if self._expect:
                self._expect = False
                if not self.responding:
                    self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                async with asyncio.timeout(self._timeout):
                    data = await self._reader.read(READ_CHUNK)
            except TimeoutError:
                raise self._broken(f"no request body bytes for {self._timeout:g}s", 408) from None
            if not data:
                raise self._broken("client closed the connection mid-body", 400)
            parser = self._parser
            try:
                parser.feed(data)
            except H1ParseError as exc:
                raise self._broken(f"malformed request body: {exc}", exc.status) from exc
            if parser.error is not None and not msg.complete:  # never more bytes for this body
                raise self._broken(f"malformed request: {parser.error}", parser.error.status)

    def _broken(self, message: str, status: int) -> RequestBodyError:
        self.error = RequestBodyError(message, status)
        return self.error
