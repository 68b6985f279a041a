"""The pooled keep-alive HTTP/1.1 client the inbound side uses to reach the local app.

Responses are parsed by httptools (llhttp, the C parser of Node.js; strict: no obs-fold, no bare LF,
no conflicting framing), request heads are written here after one regular-expression check of the
whole head. This is the hottest HTTP/1.1 path of a sidecar: h11 cost ~15% of its CPU here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

from mesh.transport.h1parse import TOKEN, decode_headers, encode_head
from mesh.transport.messages import Headers, Request, Response, strip_hop_by_hop
from shared.http1 import READ_CHUNK, ResponseError, ResponseParse

log = logging.getLogger("meshgate.transport.h1")


#: Methods an HTTP client may repeat on its own (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: A request line we can write: token method, a target without spaces or controls, HTTP/1.1.
_REQUEST_LINE = re.compile(rf"{TOKEN} [\x21-\x7e\x80-\xff]+ HTTP/1\.1", re.ASCII)


class UpstreamError(Exception):
    """The app could not be reached or broke the exchange; ``code`` is an ``x-meshgate-error`` value."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


def request_head(method: str, target: str, headers: Headers) -> bytes:
    """The HTTP/1.1 request head; ValueError when a part cannot be written safely (a space in the
    target, CR/LF/NUL in a value, a name that is not a token, a character beyond Latin-1)."""
    return encode_head(f"{method} {target} HTTP/1.1", _REQUEST_LINE, headers)


class _Parse(ResponseParse):
    """The shared response parser; a broken response is the app's ``upstream_reset``."""

    __slots__ = ()

    def feed(self, data: bytes) -> None:
        try:
            super().feed(data)
        except ResponseError as exc:
            raise UpstreamError("upstream_reset", f"the app's answer: {exc}") from exc


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0


class H1Pool:
    """Keep-alive HTTP/1.1 connections to one app (host, port), reused one request at a time.

    Servers close idle keep-alive connections on their own schedule (uvicorn after 5 s, gunicorn
    after 2 s), and a request can cross the server's FIN on the wire. So an idle connection is not
    reused after ``idle_timeout`` seconds (below those defaults) or once the server closed it, and a
    bodyless idempotent request that meets a reused connection closing before any answer is sent
    again, once, on a new connection (``stats["stale_retries"]``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_idle: int = 64,
        connect_timeout: float = 2.0,
        idle_timeout: float = 1.5,
    ) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._idle: list[_Conn] = []
        self.opened = 0
        self.stats = {"stale_retries": 0, "idle_expired": 0}

    def _checkout(self) -> _Conn | None:
        """The most recently used idle connection that is still worth reusing, or None."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if conn.writer.is_closing() or conn.reader.at_eof() or now - conn.idle_since > self.idle_timeout:
                self.stats["idle_expired"] += 1
                conn.writer.close()
                continue
            return conn
        return None

    async def _connect(self) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=READ_CHUNK * 4), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                "connect_failure",
                f"cannot connect to the app at {self.host}:{self.port}: {exc}",
                retryable=True,
            ) from exc
        self.opened += 1
        return _Conn(reader, writer)

    def _release(self, conn: _Conn, parse: _Parse) -> None:
        if parse.reusable() and len(self._idle) < self.max_idle and not conn.writer.is_closing():
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
            return
        conn.writer.close()

    async def request(self, request: Request) -> Response:
        """Send ``request`` (body streamed) and return the response with its body still streaming.

        The connection goes back to the pool when the body has been read to the end; a response
        abandoned half-read closes it. Raises UpstreamError (``connect_failure`` is retryable;
        ``upstream_reset`` after a reused connection died before answering is retryable too).
        """
        headers = [
            ("host", request.authority or f"{self.host}:{self.port}"),
            *((k, v) for k, v in strip_hop_by_hop(request.headers) if k != "host"),  # h2 clients may send one
        ]
        body = request.body.__aiter__()
        first = b""
        declared = next((v for k, v in headers if k == "content-length"), None)
        if declared is None:
            first = await anext(body, b"")  # peek: an empty body needs no framing at all
            if first:
                headers.append(("transfer-encoding", "chunked"))
        try:
            head = request_head(request.method, request.path, headers)
        except (ValueError, UnicodeEncodeError) as exc:
            raise UpstreamError("upstream_reset", f"cannot forward the request: {exc}") from exc
        length: int | None = None
        if declared is not None:
            if not declared.isdigit() or not declared.isascii():
                raise UpstreamError("upstream_reset", f"cannot forward the request: length {declared!r}")
            length = int(declared)
        repeatable = request.method in IDEMPOTENT_METHODS and not first and declared in (None, "0")
        conn = self._checkout()
        if conn is None:
            return await self._exchange(await self._connect(), False, request, head, length, first, body)
        try:
            return await self._exchange(conn, True, request, head, length, first, body)
        except UpstreamError as exc:
            if not (repeatable and exc.code == "upstream_reset" and exc.retryable):
                raise
            self.stats["stale_retries"] += 1
            log.debug(
                "%s %s: kept-alive connection closed by the app; sending again", request.method, request.path
            )
            return await self._exchange(await self._connect(), False, request, head, length, first, body)

    async def _send(
        self, conn: _Conn, head: bytes, length: int | None, first: bytes, body: AsyncIterator[bytes]
    ) -> None:
        """Write the head and the body: as declared by Content-Length, else chunked (``first`` is the
        first chunk, already taken from ``body``)."""
        writer = conn.writer
        if length is not None:
            sent = 0
            writer.write(head)
            async for chunk in body:
                if chunk:
                    sent += len(chunk)
                    if sent > length:
                        raise ValueError(f"request body longer than its content-length ({length})")
                    writer.write(chunk)
                    await writer.drain()
            if sent != length:
                raise ValueError(f"request body of {sent} bytes, content-length {length}")
        elif first:
            writer.write(b"%s%x\r\n%s\r\n" % (head, len(first), first))
            async for chunk in body:
                if chunk:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(head)
        await writer.drain()

    async def _exchange(
        self,
        conn: _Conn,
        reused: bool,
        request: Request,
        head: bytes,
        length: int | None,
        first: bytes,
        body: AsyncIterator[bytes],
    ) -> Response:
        """One request on ``conn``; ``upstream_reset`` is marked retryable when ``reused`` and the
        connection died before any answer."""
        parse = _Parse(request.method == "HEAD")
        reader = conn.reader
        try:
            await self._send(conn, head, length, first, body)
            while not parse.head_done:
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise UpstreamError(
                        "upstream_reset",
                        "the app closed the connection before answering",
                        retryable=reused and not parse.pending_head,
                    )
                parse.feed(data)
        except UpstreamError:
            conn.writer.close()
            raise
        except ValueError as exc:  # the request body broke its own framing
            conn.writer.close()
            raise UpstreamError("upstream_reset", f"cannot forward the request: {exc}") from exc
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            conn.writer.close()
            raise UpstreamError(
                "upstream_reset",
                f"the app closed the connection: {exc or type(exc).__name__}",
                retryable=reused,
            ) from exc
        except BaseException:  # cancelled (the caller gave up) or the request body failed
            conn.writer.close()
            raise
        headers = strip_hop_by_hop(decode_headers(parse.headers))
        return Response(parse.status, headers, _ResponseBody(self, conn, parse))

    async def close(self) -> None:
        """Close idle connections."""
        for conn in self._idle:
            conn.writer.close()
        self._idle.clear()


class _ResponseBody:
    """The response body as an async iterator: the bytes parsed from each read, joined; the connection
    returns to the pool at the end, and closes when the consumer stops early (``aclose``)."""

    __slots__ = ("_conn", "_done", "_parse", "_pool")

    def __init__(self, pool: H1Pool, conn: _Conn, parse: _Parse) -> None:
        self._pool = pool
        self._conn = conn
        self._parse = parse
        self._done = False

    @property
    def complete(self) -> bool:
        """Every byte of the body has been handed out: the next ``__anext__`` ends the iteration."""
        return self._parse.complete and not self._parse.chunks

    def __aiter__(self) -> _ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        parse = self._parse
        while True:
            if self._done:
                raise StopAsyncIteration
            chunks = parse.chunks
            if chunks:
                chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                return chunk
            if parse.complete:
                self._finish(True)
                raise StopAsyncIteration
            try:
                data = await self._conn.reader.read(READ_CHUNK)
                if not data:
                    if parse.close_delimited():
                        parse.complete = True
                        parse.extra = True  # closed by the app: not reusable
                        continue
                    raise UpstreamError("upstream_reset", "the app closed the connection mid-body")
                parse.feed(data)
            except UpstreamError:
                self._finish(False)
                raise
            except ConnectionError as exc:
                self._finish(False)
                raise UpstreamError("upstream_reset", f"the app broke the response: {exc}") from exc
            except BaseException:
                self._finish(False)
                raise

    def _finish(self, ok: bool) -> None:
        if self._done:
            return
        self._done = True
        if ok:
            self._pool._release(self._conn, self._parse)
        else:
            self._conn.writer.close()

    async def aclose(self) -> None:
        """Stop reading: a response not read to its end closes its connection."""
        self._finish(self._parse.complete and not self._parse.chunks)

    def __del__(self) -> None:
        if not self._done:  # abandoned without aclose: the connection cannot be reused
            self._done = True
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._conn.writer.close()
