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
from mesh.transport.messages import Headers, Request, Response, ready_now, strip_hop_by_hop
from shared.http1 import READ_CHUNK, ResponseError, ResponseParse

log = logging.getLogger("meshgate.transport.h1")


#: Methods an HTTP client may repeat on its own (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: A request line we can write: token method, a target without spaces or controls, HTTP/1.1.
_REQUEST_LINE = re.compile(rf"{TOKEN} [\x21-\x7e\x80-\xff]+ HTTP/1\.1", re.ASCII)


class UpstreamError(Exception):
    """The app could not be reached or broke the exchange; ``code`` is an ``x-meshgate-error`` value.
    ``refused``: nothing was tried (a peer's reconnect backoff answered with its last failure)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.refused = refused


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


def _check_length(sent: int, length: int, ended: bool) -> None:
    """ValueError when a body of ``sent`` bytes so far (all of it when ``ended``) breaks its
    Content-Length."""
    if sent > length:
        raise ValueError(f"request body longer than its content-length ({length})")
    if ended and sent != length:
        raise ValueError(f"request body of {sent} bytes, content-length {length}")


class _Upload:
    """The rest of a request body, written by a task while the response is read. ``whole`` once
    every byte of the request has gone to the connection."""

    __slots__ = ("conn", "task", "whole")

    def __init__(self, conn: _Conn, length: int | None, body: AsyncIterator[bytes]) -> None:
        self.conn = conn
        self.whole = False
        self.task = asyncio.get_running_loop().create_task(self._send(length, body))
        self.task.add_done_callback(self._ended)

    async def _send(self, length: int | None, body: AsyncIterator[bytes]) -> None:
        """As declared by Content-Length, else chunked; each chunk is pulled once the app has taken
        the one before (back-pressure). Stops quietly when the app closed the connection (its answer,
        if any, is read all the same); ValueError when the body breaks its Content-Length."""
        sent = 0
        async for chunk in body:
            if not chunk:
                continue
            if length is None:
                if not await self._put(b"%x\r\n%s\r\n" % (len(chunk), chunk), False):
                    return
                continue
            sent += len(chunk)
            _check_length(sent, length, False)
            if not await self._put(chunk, sent == length):
                return
        if length is None:
            await self._put(b"0\r\n\r\n", True)
        else:
            _check_length(sent, length, True)
            self.whole = True  # (a body declared empty: only its head was written)

    async def _put(self, data: bytes, last: bool) -> bool:
        """Write ``data`` (``last``: the end of the request), then wait until the app takes it. False
        when the app has closed the connection: the body stops there. (uvloop raises RuntimeError on
        writing to a closed transport; asyncio drops the bytes and ``drain`` raises.)"""
        writer = self.conn.writer
        if writer.transport.is_closing():
            return False
        try:
            writer.write(data)
            self.whole = last
            await writer.drain()
        except (OSError, RuntimeError):
            return False
        return True

    def failure(self) -> BaseException | None:
        """What the task failed with: the body broke its Content-Length or failed itself. None while
        it runs, and once it wrote the request, stopped because the app closed, or was cancelled."""
        task = self.task
        if not task.done() or task.cancelled():
            return None
        return task.exception()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self.failure() is not None:  # the exchange fails: the reader waiting for the answer wakes
            self.conn.writer.transport.abort()

    def stop(self) -> bool:
        """Send no more; True when the app has all of the request (the connection can be reused)."""
        self.task.cancel()
        return self.whole and self.failure() is None


def _drop(conn: _Conn, upload: _Upload | None) -> None:
    """Close ``conn`` after a failed exchange; one with a body in flight is aborted: its unsent bytes
    are dropped (an app that stopped reading would otherwise hold it open)."""
    if upload is None:
        conn.writer.close()
        return
    upload.stop()
    conn.writer.transport.abort()


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
        if conn.writer.transport.get_write_buffer_size():  # the app answered before it took all of
            conn.writer.transport.abort()  # the request, and may never take the rest: not reused
            return
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

    async def _start(
        self,
        writer: asyncio.StreamWriter,
        head: bytes,
        length: int | None,
        first: bytes,
        body: AsyncIterator[bytes],
    ) -> bool:
        """Write the head and what of the body needs no waiting: the whole request when there is no
        body or ``ready_now`` holds all of it and it is small (an h2 body in one DATA frame), else the
        head (and ``first``, the first chunk already taken from ``body`` when it goes chunked). True
        when the rest of the body is still to send (by an :class:`_Upload`, while the response is
        read)."""
        if length is None and not first:
            writer.write(head)
            return False
        ready = ready_now(body)
        if ready is None or not ready[1] or len(ready[0]) > READ_CHUNK:
            writer.write(head if length is not None else b"%s%x\r\n%s\r\n" % (head, len(first), first))
            return True
        data = await anext(body, b"") if ready[0] else b""  # ready_now promised these: no waiting
        if length is None:
            more = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
            writer.write(b"%s%x\r\n%s\r\n%s0\r\n\r\n" % (head, len(first), first, more))
            return False
        _check_length(len(data), length, True)
        writer.write(head)
        if data:
            writer.write(data)  # not drained: the app may answer before it reads these
        return False

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
        connection died before any answer.

        A body that has to be waited for is sent by a task while the response is read: an app may
        answer before it has read the body (a 413, a 401; RFC 9112 section 9.5), then close or stop
        reading. Its answer is relayed, and the body stops once that answer is complete (or the app
        closed); a connection that did not carry the whole request is not reused."""
        parse = _Parse(request.method == "HEAD")
        reader = conn.reader
        upload: _Upload | None = None
        try:
            if await self._start(conn.writer, head, length, first, body):
                upload = _Upload(conn, length, body)
            while not parse.head_done:
                data = await reader.read(READ_CHUNK)
                if not data:
                    failed = upload.failure() if upload is not None else None
                    if failed is not None:  # the body failed first (and so closed the connection)
                        raise failed
                    raise UpstreamError(
                        "upstream_reset",
                        "the app closed the connection before answering",
                        retryable=reused and not parse.pending_head,
                    )
                parse.feed(data)
        except UpstreamError:
            _drop(conn, upload)
            raise
        except ValueError as exc:  # the request body broke its own framing
            _drop(conn, upload)
            raise UpstreamError("upstream_reset", f"cannot forward the request: {exc}") from exc
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            _drop(conn, upload)
            raise UpstreamError(
                "upstream_reset",
                f"the app closed the connection: {exc or type(exc).__name__}",
                retryable=reused,
            ) from exc
        except BaseException:  # cancelled (the caller gave up) or the request body failed
            _drop(conn, upload)
            raise
        if upload is not None and parse.complete:
            upload.task.cancel()  # the app has answered in full: nothing more of the body is wanted
        headers = strip_hop_by_hop(decode_headers(parse.headers))
        return Response(parse.status, headers, _ResponseBody(self, conn, parse, upload))

    async def close(self) -> None:
        """Close idle connections."""
        for conn in self._idle:
            conn.writer.close()
        self._idle.clear()


class _ResponseBody:
    """The response body as an async iterator: the bytes parsed from each read, joined; the connection
    returns to the pool at the end, and closes when the consumer stops early (``aclose``)."""

    __slots__ = ("_conn", "_done", "_parse", "_pool", "_upload")

    def __init__(self, pool: H1Pool, conn: _Conn, parse: _Parse, upload: _Upload | None) -> None:
        self._pool = pool
        self._conn = conn
        self._parse = parse
        self._upload = upload  # the request body, still being sent when the app answered early
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
                    failed = self._upload.failure() if self._upload is not None else None
                    if failed is not None:  # and so the connection was closed
                        raise UpstreamError("upstream_reset", f"cannot forward the request: {failed}")
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
        if self._upload is not None and not self._upload.stop():  # the app did not get the whole
            self._conn.writer.transport.abort()  # request: the connection cannot carry another
        elif ok:
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
                _drop(self._conn, self._upload)
