"""HTTP/2 connections on asyncio: the glue between sockets and the sans-IO :class:`mesh.h2.H2Endpoint`.

One :class:`H2Protocol` per connection, server or client side. Request and response bodies are
pulled by their consumer: the receive window of a stream is given back (``ack``) only after the
consumer took the bytes, so a slow reader slows its peer instead of growing a buffer. Sending
waits for the peer's flow-control window and for the socket (``pause_writing``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from mesh.h2 import (
    ConnectionClosedError,
    ConnectionEnded,
    DataReceived,
    ErrorCode,
    H2Endpoint,
    H2Error,
    HeaderListTooLarge,
    InformationalReceived,
    Limits,
    RequestReceived,
    ResponseReceived,
    SettingsChanged,
    StreamLimitReached,
    StreamRejected,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)
from mesh.transport.messages import Headers, Request, Response, ready_now, strip_hop_by_hop

log = logging.getLogger("meshgate.transport.h2")

_END = object()


#: Seconds a peer may go on sending a request body nobody reads before RST_STREAM(NO_ERROR).
ABANDON_GRACE = 0.5
#: A request body still sending after its response ended is reset (CANCEL) once it has sent nothing
#: for this long (the peer neither reads it nor asks to stop with RST_STREAM NO_ERROR, or its source
#: stalls or failed).
SENDER_GRACE = 1.0
#: Keepalive (client side): seconds a PING may go unanswered before the connection is dropped.
PING_TIMEOUT = 10.0
#: ... seconds of silence while requests wait before a PING is sent (instead of the keepalive period).
WAITING_QUIET = 5.0
#: ... seconds a PING may be outstanding before new requests avoid the connection.
PING_STALE = 2.5


class StreamError(Exception):
    """A stream ended abnormally; ``error_code`` is the HTTP/2 code, ``code`` an x-meshgate-error."""

    def __init__(
        self, message: str, error_code: int, code: str = "upstream_reset", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.code = code
        self.retryable = retryable


class _Inbox:
    """What a stream received, for one consumer: a deque and at most one waiting future (an
    ``asyncio.Queue`` costs several times more per stream and per item on this path)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def put_data(self, data: bytes, flow: int) -> None:
        """Queue body bytes with their flow-controlled length as ``[data, flow]``; bytes that follow
        bytes not yet taken join them in one buffer: memory in proportion to bytes, not frames."""
        items = self._items
        if items and type(last := items[-1]) is list:
            buf = last[0]
            if type(buf) is bytes:
                buf = last[0] = bytearray(buf)
            buf += data
            last[1] += flow
        else:
            self.put_nowait([data, flow])

    def empty(self) -> bool:
        return not self._items

    def peek(self, index: int = 0) -> Any:
        """The item at ``index`` without taking it, or None when there are not that many."""
        items = self._items
        return items[index] if index < len(items) else None

    def get_nowait(self) -> Any:
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._items.popleft()


@dataclass
class _Stream:
    stream_id: int
    chunks: _Inbox = field(default_factory=_Inbox)
    response: asyncio.Future[tuple[int, Headers]] | None = None
    trailers: asyncio.Future[Headers] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    window: asyncio.Event = field(default_factory=asyncio.Event)
    error: StreamError | None = None
    task: asyncio.Task[None] | None = None
    headers_only: bool = False  # the peer ended the stream on its HEADERS (e.g. gRPC Trailers-Only)
    body_done: bool = False  # the consumer read the body to its end
    expect: bool = False  # server side: the client waits for "100" before its body (Expect: 100-continue)
    sent: int = 0  # body bytes handed to the core so far (the sender's progress)
    answered: bool = False  # client side: the response was read to its end (or dropped)
    body_failed: bool = False  # client side: the request body's source failed


def _text(headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], Headers]:
    pseudo: dict[str, str] = {}
    regular: Headers = []
    for k, v in headers:
        key = k.decode("latin-1")
        if key.startswith(":"):
            pseudo[key] = v.decode("latin-1")
        else:
            regular.append((key, v.decode("latin-1")))
    return pseudo, regular


def _raw(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


RequestHandler = Callable[[Request, "H2Protocol"], Awaitable[Response]]


class _StreamBody:
    """A stream's body as the consumer pulls it. A response body (``done`` given) that is abandoned
    (closed, failed or dropped before its end) resets its stream with CANCEL; ``done`` runs once."""

    __slots__ = ("_conn", "_done", "_ended", "_stream")

    def __init__(self, conn: H2Protocol, stream: _Stream, done: Callable[[], None] | None = None) -> None:
        self._conn = conn
        self._stream = stream
        self._done = done
        self._ended = False

    def __aiter__(self) -> _StreamBody:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            data = await self._conn._next_chunk(self._stream)
        except BaseException:
            self._end(finished=False)
            raise
        if data is None:
            self._end(finished=True)
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        self._end(finished=False)

    def ready_now(self) -> tuple[bytes, bool] | None:
        """What arrived and is not taken yet, as :func:`mesh.transport.messages.ready_now` describes:
        ``(bytes, ended)``, or None when nothing is queued (or an error is, which ``__anext__`` raises)."""
        if self._ended:
            return b"", True
        chunks = self._stream.chunks
        item = chunks.peek()
        if item is _END:
            return b"", True
        if type(item) is not list:
            return None
        data = item[0]
        return (data if type(data) is bytes else bytes(data)), chunks.peek(1) is _END

    def _end(self, *, finished: bool) -> None:
        if self._ended:
            return
        self._ended = True
        if self._done is None:
            return
        sid = self._stream.stream_id
        if not finished and sid in self._conn.streams:
            self._conn._reset(sid, ErrorCode.CANCEL)
        self._done()

    def __del__(self) -> None:
        if not self._ended and self._done is not None:
            with contextlib.suppress(Exception):
                self._end(finished=False)


class H2Protocol(asyncio.Protocol):
    """An HTTP/2 connection. Server side: calls ``handler`` per request. Client side: :meth:`request`."""

    def __init__(
        self,
        *,
        client_side: bool,
        handler: RequestHandler | None = None,
        limits: Limits | None = None,
        on_open: Callable[[H2Protocol], None] | None = None,
        on_close: Callable[[H2Protocol], None] | None = None,
        keepalive: float | None = None,
        idle_timeout: float | None = None,
        stream_idle_timeout: float | None = None,
    ) -> None:
        self.client_side = client_side
        self.stream_idle_timeout = stream_idle_timeout
        self._tunnels: set[int] = set()
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._ping_deadline: float | None = None
        self._ping_sent: float | None = None
        #: with keepalive: a PING unanswered this long means the peer is gone (it may be black-holed:
        #: no FIN, no RST; TCP alone takes minutes to notice)
        self.ping_timeout = min(keepalive, PING_TIMEOUT) if keepalive else None
        self.handler = handler
        self.endpoint = H2Endpoint(client_side=client_side, limits=limits or Limits())
        self.on_open = on_open
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.draining = False
        self.session_saved = False  # client side: TLS session kept for resumption after the first response
        self.peer: Any = None  # set by on_open (e.g. the verified SPIFFE ID)
        self._writable = asyncio.Event()
        self._writable.set()
        self._flush_pending = False
        self.last_active = asyncio.get_running_loop().time()  # last time a stream was open or used
        self.last_received = self.last_active

    # ----- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Verify the peer (``on_open`` may raise to refuse it), then send our preface."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        try:
            if self.on_open is not None:
                self.on_open(self)
        except Exception as exc:
            log.warning("refusing connection: %s", exc)
            if not self.ready.done():
                self.ready.set_exception(exc)
                self.ready.exception()  # the opener re-raises it; never "exception was never retrieved"
            self.transport.abort()
            return
        self.endpoint.initiate()
        self._flush()
        self._arm()
        if not self.client_side and not self.ready.done():
            self.ready.set_result(None)  # client side: ready once the peer's SETTINGS (its limits) arrived

    # ----- keepalive and idle timeout (one timer per connection, no task) ------------------------------

    def _arm(self) -> None:
        periods = [p for p in (self.keepalive, self.idle_timeout, self.stream_idle_timeout) if p]
        if self.ping_timeout:
            periods += [self.ping_timeout, WAITING_QUIET]
        if periods:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(min(periods) / 2, self._tick)

    def _tick(self) -> None:
        """Close an idle connection; PING a quiet one; give up on a peer that does not answer the PING."""
        if self.transport is None or self.transport.is_closing():
            return
        now = asyncio.get_running_loop().time()
        if self.streams:
            self.last_active = now
        quiet = now - self.last_received
        if self._ping_deadline is not None and now >= self._ping_deadline:
            log.warning("peer did not answer a keepalive PING within %.1fs: closing", self.ping_timeout or 0)
            self.transport.abort()
            return
        if self.stream_idle_timeout and not self.client_side:
            for sid in self.endpoint.idle_streams(self.stream_idle_timeout, waiting_only=True):
                if sid in self._tunnels:
                    continue  # a tunnel may be quiet for as long as its protocol likes
                log.info("stream %d made no progress for %.0fs: reset", sid, self.stream_idle_timeout)
                stream = self.streams.get(sid)
                if stream is not None:  # a stalled request body, or a response the peer does not read
                    self._fail(stream, StreamError("stream stalled", ErrorCode.CANCEL))
                    if stream.task is not None:
                        stream.task.cancel()
                self._reset(sid, ErrorCode.CANCEL)
        if self.idle_timeout and not self.streams and now - self.last_active >= self.idle_timeout:
            log.debug("closing a connection idle for %.0fs", now - self.last_active)
            self.close()
            return
        # PING a connection quiet for the keepalive period, and sooner one whose requests are waiting
        # with nothing heard for WAITING_QUIET: a dead peer is found in seconds, not after 30 + 30 s
        waiting = self.client_side and bool(self.streams) and quiet >= WAITING_QUIET
        if self.ping_timeout and self._ping_deadline is None and (waiting or quiet >= (self.keepalive or 0)):
            self.endpoint.ping()
            self._flush()
            self._ping_sent = now
            self._ping_deadline = now + self.ping_timeout
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Feed the core and act on its events."""
        now = asyncio.get_running_loop().time()
        self.last_received = now
        self._ping_deadline = self._ping_sent = None  # any byte from the peer proves it alive
        if self.streams:
            self.last_active = now
        for event in self.endpoint.receive(data):
            self._dispatch(event)
        self._flush()

    def pause_writing(self) -> None:
        """The socket buffer is full: senders wait."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """The socket drained: senders go on."""
        self._writable.set()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every open stream; tell the owner."""
        if self._timer is not None:
            self._timer.cancel()
        error = StreamError(f"connection lost: {exc or 'closed'}", ErrorCode.CANCEL, "upstream_reset")
        for stream in list(self.streams.values()):
            self._fail(stream, error)
            if stream.task is not None and not self.client_side:
                stream.task.cancel()  # nobody is left to answer
        self.streams.clear()
        self._writable.set()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(str(exc or "closed during handshake")))
            self.ready.exception()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            self.on_close(self)

    # ----- plumbing -------------------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        """Write what the core has to send at the end of this loop iteration, unless a ``_flush`` comes
        first: a response's HEADERS and DATA leave in one TLS record and one system call. Used only
        between steps of one stream's sending, which then ends with ``_flush``, so that streams of a
        batch do not wait for one another (a whole-batch deferral made the two sidecars take turns)."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_deferred)

    def _flush_deferred(self) -> None:
        if self._flush_pending:
            self._flush()

    def _flush(self) -> None:
        """Write what the core has to send now."""
        self._flush_pending = False
        if not self._writable.is_set() and not self.endpoint.is_closed:
            return  # the socket is backed up: bytes stay in the core, whose bounds then apply
        data = self.endpoint.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        if self.endpoint.is_closed and self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _fail(self, stream: _Stream, error: StreamError) -> None:
        stream.error = error
        if stream.response is not None and not stream.response.done():
            stream.response.set_exception(error)
        if not stream.trailers.done():
            stream.trailers.set_result([])
        stream.chunks.put_nowait(error)
        stream.window.set()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.endpoint.ack(event.stream_id, event.flow_controlled_length)
                return
            if event.data:
                stream.chunks.put_data(event.data, event.flow_controlled_length)
            elif event.flow_controlled_length:  # padding only: nothing to queue, window back now
                self.endpoint.ack(event.stream_id, event.flow_controlled_length)
            if event.end_stream:
                if not stream.trailers.done():
                    stream.trailers.set_result([])
                stream.chunks.put_nowait(_END)
        elif isinstance(event, RequestReceived):
            self._start_request(event)
        elif isinstance(event, ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.response is not None and not stream.response.done():
                pseudo, headers = _text(event.headers)
                stream.response.set_result((int(pseudo.get(":status", "502")), headers))
                if event.end_stream:
                    stream.headers_only = True
                    if not stream.trailers.done():
                        stream.trailers.set_result([])
                    stream.chunks.put_nowait(_END)
        elif isinstance(event, TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                if not stream.trailers.done():
                    stream.trailers.set_result(_text(event.headers)[1])
                stream.chunks.put_nowait(_END)
        elif isinstance(event, WindowOpened):
            if event.stream_id is None:
                for stream in self.streams.values():
                    stream.window.set()
            elif (stream := self.streams.get(event.stream_id)) is not None:
                stream.window.set()
        elif isinstance(event, StreamReset | StreamRejected):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                refused = event.error_code == ErrorCode.REFUSED_STREAM
                code = "upstream_reset"
                self._fail(
                    stream, StreamError(f"stream reset ({event.error_code})", event.error_code, code, refused)
                )
                if stream.task is not None and not self.client_side:
                    stream.task.cancel()
        elif isinstance(event, ConnectionEnded):
            self.draining = True
            last = event.last_stream_id
            for sid, stream in list(self.streams.items()):
                if self.client_side and last is not None and sid > last:
                    self.streams.pop(sid)
                    self._fail(
                        stream, StreamError("connection going away", event.error_code, "upstream_reset", True)
                    )
        elif isinstance(event, SettingsChanged):
            if not self.ready.done():
                self.ready.set_result(None)
            for stream in self.streams.values():  # a new initial window size moves every send window
                stream.window.set()
        elif isinstance(event, InformationalReceived):
            pass

    def _body(self, stream: _Stream) -> AsyncIterator[bytes]:
        return _StreamBody(self, stream)

    async def _next_chunk(self, stream: _Stream) -> bytes | None:
        """The next bytes of ``stream``'s body (acknowledged for flow control), None at its end;
        raises the StreamError that ended it."""
        chunks = stream.chunks
        if stream.expect:  # the body is wanted and none has come: the client may send it now
            stream.expect = False
            if chunks.empty() and stream.stream_id in self.streams:
                with contextlib.suppress(H2Error):
                    self.endpoint.send_headers(stream.stream_id, [(b":status", b"100")])
                self._flush()
        while True:
            item = chunks.get_nowait() if not chunks.empty() else await chunks.get()
            if item is _END:
                stream.body_done = True
                return None
            if isinstance(item, StreamError):
                raise item
            data, flow = item
            if flow:
                self.endpoint.ack(stream.stream_id, flow)
                self._flush_soon()
            if data:
                return data if type(data) is bytes else bytes(data)

    async def _send_body(
        self,
        stream: _Stream,
        body: AsyncIterator[bytes],
        trailers: Headers | None,
        later: asyncio.Future[Headers] | None = None,
    ) -> None:
        """Send ``body`` with flow control, then ``trailers`` (or those ``later`` resolves to, once the
        body has ended: a proxied response's trailers arrive after its body), else END_STREAM."""
        sid = stream.stream_id
        endpoint = self.endpoint
        # A body that says it is complete (the app pool's, once the app's response has fully arrived)
        # lets its last chunk carry END_STREAM: one frame and one state change fewer per response.
        may_end = trailers is None and later is None and hasattr(body, "complete")
        ended = False
        async for chunk in body:
            data: bytes | memoryview = chunk
            while data:
                if stream.error is not None:
                    raise stream.error
                if not self._writable.is_set():
                    await self._writable.wait()
                stream.window.clear()
                last = may_end and body.complete  # type: ignore[attr-defined]
                sent = endpoint.send_data(sid, bytes(data), end_stream=last)
                if last and sent == len(data):
                    ended = True
                    break
                self._flush_soon()
                stream.sent += sent
                data = memoryview(data)[sent:]
                if data:
                    await stream.window.wait()
        if ended:
            self._flush()
            return
        if stream.error is not None:
            raise stream.error
        if later is not None and trailers is None:
            trailers = await later
        if trailers:
            endpoint.send_headers(sid, _raw(trailers), end_stream=True)
        else:
            endpoint.end_stream(sid)
        self._flush()

    # ----- server side ----------------------------------------------------------------------------------

    def _start_request(self, event: RequestReceived) -> None:
        pseudo, headers = _text(event.headers)
        stream = _Stream(event.stream_id)
        self.streams[event.stream_id] = stream
        if event.end_stream:
            stream.chunks.put_nowait(_END)
            if not stream.trailers.done():  # no body, so no trailers: nobody may wait for them
                stream.trailers.set_result([])
        elif any(k == "expect" and v.strip().lower() == "100-continue" for k, v in headers):
            # RFC 9110 section 10.1.1: answered here with an interim 100 when the handler first needs
            # body bytes that have not arrived (never when it answers without reading); not forwarded
            stream.expect = True
            headers = [(k, v) for k, v in headers if k != "expect"]
        request = Request(
            method=pseudo.get(":method", "GET"),
            path=pseudo.get(":path", "/"),
            authority=pseudo.get(":authority", ""),
            scheme=pseudo.get(":scheme", "https"),
            headers=headers,
            body=self._body(stream),
            trailers=stream.trailers,
        )
        if request.method == "CONNECT":
            self._tunnels.add(event.stream_id)
        if pseudo.get(":protocol"):
            request.headers.append((":protocol", pseudo[":protocol"]))
        stream.task = asyncio.get_running_loop().create_task(self._serve(stream, request))

    async def _serve(self, stream: _Stream, request: Request) -> None:
        assert self.handler is not None
        sid = stream.stream_id
        try:
            response = await self.handler(request, self)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("handler failed for stream %d", sid)
            self._reset(sid, ErrorCode.INTERNAL_ERROR)
            return
        try:
            stream.expect = False  # no interim response once the final one begins
            head = [(":status", str(response.status)), *strip_hop_by_hop(response.headers)]
            if response.headers_only:  # one HEADERS frame with END_STREAM (gRPC Trailers-Only)
                self.endpoint.send_headers(sid, _raw(head), end_stream=True)
                self._flush()
                return
            self.endpoint.send_headers(sid, _raw(head))
            self._flush_soon()
            await self._send_body(stream, response.body, None, response.trailers)
        except asyncio.CancelledError:
            self._reset(sid, ErrorCode.CANCEL)
        except StreamError:
            pass
        except Exception as exc:
            log.warning("response on stream %d aborted: %s", sid, exc)
            self._reset(sid, ErrorCode.INTERNAL_ERROR)
        finally:
            if response.on_close is not None:
                response.on_close()
            self._abandon_request_body(stream)
            self.streams.pop(sid, None)
            self._tunnels.discard(sid)

    def _abandon_request_body(self, stream: _Stream) -> None:
        """The response is complete but the request body was not read to its end (a denial, an early
        answer): give its flow-control window back and ask the peer to stop (RST_STREAM NO_ERROR,
        RFC 9113 section 8.1), so that a connection's window is never lost to unread bodies; a reader
        still waiting for the body gets a StreamError."""
        ended = False
        dropped = False
        last: object = None  # the first end marker: what a reader would have met first
        while not stream.chunks.empty():
            item = stream.chunks.get_nowait()
            if item is _END or isinstance(item, StreamError):
                if not ended:
                    last = item
                ended = True
            else:
                dropped = True
                self.endpoint.ack(stream.stream_id, item[1])
        if not stream.body_done:
            # whoever still reads the body (a relay's request pump: another connection's task) learns
            # now how it ends: the stream leaves the table, nothing else would ever reach it
            if ended and not dropped:
                stream.chunks.put_nowait(last)  # nothing lost: its end (or error) as it came
            else:
                stream.chunks.put_nowait(
                    StreamError("request body abandoned: the response is complete", ErrorCode.CANCEL)
                )
        if not ended and stream.error is None and not stream.body_done:
            # a moment's grace first: a short body is usually on its way, and some clients (curl 7.88)
            # report an error for RST_STREAM that arrives while they are still sending, even after a
            # complete response. What arrives meanwhile is acknowledged and dropped; a stream the peer
            # finished in time is gone from the core and the reset is then a no-op.
            sid = stream.stream_id

            def stop() -> None:
                with contextlib.suppress(Exception):
                    self.endpoint.reset(sid, ErrorCode.NO_ERROR)
                self._flush()

            asyncio.get_running_loop().call_later(ABANDON_GRACE, stop)
        self._flush()

    def _body_failed(self, stream: _Stream, exc: Exception) -> None:
        """A request body's source failed while it was being sent: before the answer, the stream is
        reset and the wait for the answer fails; after it, the stream is left to
        :meth:`_watch_sender` (a reset per early answer would trip a peer's rapid-reset guard)."""
        log.debug("request body on stream %d failed: %s", stream.stream_id, exc)
        stream.body_failed = True
        if stream.answered:
            return
        failed = StreamError(f"request body failed: {exc}", ErrorCode.CANCEL, "request_body_failed")
        # reset first (it empties the inbox), then fail: a reader of the response body already
        # waiting must find the error, or it waits for ever on a stream nothing reaches any more
        self._reset(stream.stream_id, ErrorCode.CANCEL)
        self._fail(stream, failed)

    def _sender_ended(self, stream: _Stream) -> None:
        """The body sender of an answered stream ended: the stream leaves the table, unless its body
        failed (the stream is still open: :meth:`_watch_sender` resets it)."""
        if not stream.body_failed and self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]

    def _watch_sender(self, stream: _Stream) -> None:
        """Reset ``stream`` (CANCEL) once its body sender has sent nothing for SENDER_GRACE, checked
        every SENDER_GRACE / 2 while the stream is in the table."""
        loop = asyncio.get_running_loop()
        progress = [stream.sent, loop.time()]  # bytes sent at the last change, and when

        def check() -> None:
            if self.streams.get(stream.stream_id) is not stream:
                return  # gone: ended, reset by the peer, or the connection closed
            now = loop.time()
            if stream.sent != progress[0]:
                progress[0], progress[1] = stream.sent, now
            elif now - progress[1] >= SENDER_GRACE:
                self._stop_sender(stream)
                self._reset(stream.stream_id, ErrorCode.CANCEL)
                return
            loop.call_later(SENDER_GRACE / 2, check)

        loop.call_later(SENDER_GRACE / 2, check)

    def _stop_sender(self, stream: _Stream) -> None:
        """Wake the task sending ``stream``'s body with an error: the stream is going away."""
        if stream.error is None:
            stream.error = StreamError("stream closed locally", ErrorCode.CANCEL)
        stream.window.set()

    def _reset(self, sid: int, code: int) -> None:
        """Reset a stream and give back the flow-control window of what it received but nobody read
        (an abandoned response): otherwise each one shrinks the connection's window for good. A body
        sender of the stream waiting for window is woken and stops."""
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self._stop_sender(stream)
        with contextlib.suppress(Exception):
            self.endpoint.reset(sid, code)
        while stream is not None and not stream.chunks.empty():
            item = stream.chunks.get_nowait()
            if isinstance(item, list) and item[1]:
                with contextlib.suppress(Exception):
                    self.endpoint.ack(sid, item[1])
        with contextlib.suppress(Exception):
            self._flush()

    # ----- client side ----------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True when a new stream may be opened on this connection now."""
        return (
            not self.draining
            and self.transport is not None
            and not self.transport.is_closing()
            and self.endpoint.available_streams > 0
            # a PING unanswered for a while: probably dead, send new requests elsewhere meanwhile
            and (self._ping_sent is None or asyncio.get_running_loop().time() - self._ping_sent < PING_STALE)
        )

    async def request(self, request: Request, *, trailers: Headers | None = None) -> Response:
        """Send ``request`` and return the response once its headers arrive (body still streaming).

        Raises StreamError (``retryable`` for REFUSED_STREAM and GOAWAY before processing).
        """
        tunnel = request.method == "CONNECT"
        protocol = request.header(":protocol") if tunnel else None
        if protocol:  # extended CONNECT (RFC 8441): a WebSocket carried on this stream
            head = [
                (":method", "CONNECT"),
                (":protocol", protocol),
                (":scheme", request.scheme or "https"),
                (":authority", request.authority),
                (":path", request.path),
            ]
        elif tunnel:  # RFC 9113 section 8.5: only :method and :authority
            head = [(":method", "CONNECT"), (":authority", request.authority)]
        else:
            head = [
                (":method", request.method),
                (":scheme", request.scheme or "https"),
                (":authority", request.authority),
                (":path", request.path),
            ]
        head += [(k, v) for k, v in strip_hop_by_hop(request.headers) if not k.startswith(":")]
        if request.header("te") == "trailers" or any(k == "te" for k, _ in request.headers):
            head.append(("te", "trailers"))
        body = request.body.__aiter__()
        later = request.trailers
        if later is not None and later.done() and not later.cancelled() and not later.exception():
            if not later.result():
                later = None  # the request's trailers are known to be none (an HTTP/2 body that ended)
        # Never wait for the body before HEADERS: a gRPC bidi client may send nothing until the server
        # speaks first, and a tunnel's server may speak first. What the body holds already decides
        # END_STREAM on HEADERS (a known-empty body) and leaves with the HEADERS (one write).
        ready = None if tunnel else ready_now(body)
        if ready is None and not tunnel and request.header("content-length") == "0":
            ready = (b"", True)
        first, ended = ready if ready is not None else (b"", False)
        last = later is None and not trailers  # the body's end is the stream's end
        try:
            sid = self.endpoint.send_request(_raw(head), end_stream=ended and not first and last)
        except (StreamLimitReached, ConnectionClosedError) as exc:  # nothing was sent: safe to retry
            raise StreamError(
                f"no stream available: {exc}", ErrorCode.REFUSED_STREAM, retryable=True
            ) from exc
        except HeaderListTooLarge as exc:  # refused here: sent, it would end the whole connection
            raise StreamError(str(exc), ErrorCode.REFUSED_STREAM, code="headers_too_large") from exc
        loop = asyncio.get_running_loop()
        stream = _Stream(sid, response=loop.create_future())
        self.streams[sid] = stream
        rest = b""
        if first:
            try:
                first = await anext(body, b"")  # ready_now promised these bytes: no waiting here
            except BaseException:
                self._reset(sid, ErrorCode.CANCEL)
                raise
            sent = self.endpoint.send_data(sid, first, end_stream=ended and last)
            rest = first[sent:]
        self._flush()
        self.last_active = loop.time()
        if not ended or rest or not last:

            async def remaining() -> AsyncIterator[bytes]:
                if rest:
                    yield rest
                if not ended:
                    async for chunk in body:
                        yield chunk

            async def pump() -> None:
                try:
                    # request trailers (if any) are awaited after the body: never buffer a stream
                    await self._send_body(stream, remaining(), trailers, later)
                except StreamError as exc:
                    if exc is not stream.error:  # not this stream's own end: its body's source failed
                        self._body_failed(stream, exc)
                except Exception as exc:
                    self._body_failed(stream, exc)

            stream.task = loop.create_task(pump())
        assert stream.response is not None
        try:
            status, headers = await stream.response
        except BaseException:
            # failed, timed out or cancelled before the head arrived: the stream is abandoned
            if sid in self.streams:
                self._reset(sid, ErrorCode.CANCEL)
            if stream.task is not None:
                stream.task.cancel()
            raise

        def done() -> None:
            if stream.answered:  # once (the body's end, then its on_close)
                return
            stream.answered = True
            task = stream.task
            if task is None or task.done():
                self.streams.pop(sid, None)
                return
            # the response ended while the request body still streams: the stream stays in the table
            # until the sender ends, so that the peer's WINDOW_UPDATE (it reads on) or RST_STREAM
            # NO_ERROR (it asks us to stop, RFC 9113 section 8.1) reach the sender; one that sends
            # nothing for SENDER_GRACE (no window, its source stalled or failed) is reset with CANCEL.
            # No reset at once: one per early answer would trip a peer's rapid-reset guard.
            task.add_done_callback(lambda _: self._sender_ended(stream))
            self._watch_sender(stream)

        response = Response(status, headers, self._client_body(stream, done), stream.trailers)
        response.headers_only = stream.headers_only

        def closed() -> None:  # the body may never be iterated (Trailers-Only, replaced responses)
            if stream.stream_id in self.streams and not stream.body_done and not stream.headers_only:
                self._reset(stream.stream_id, ErrorCode.CANCEL)
            done()

        response.on_close = closed
        return response

    def _client_body(self, stream: _Stream, done: Callable[[], None]) -> AsyncIterator[bytes]:
        return _StreamBody(self, stream, done)

    def goaway(self, error_code: int = 0) -> None:
        """GOAWAY now: no new streams from the peer; streams in flight finish."""
        with contextlib.suppress(Exception):
            self.endpoint.goaway(error_code)
            self._flush()

    def close(self, error_code: int = 0) -> None:
        """GOAWAY and close once flushed."""
        with contextlib.suppress(Exception):
            self.endpoint.goaway(error_code)
            self._flush()
        if self.transport is not None:
            self.transport.close()
