"""Parsing one HTTP/1.1 response with httptools (llhttp, the C parser of Node.js; strict: no obs-fold,
no bare LF, no conflicting framing). Shared by the sidecar's app pool (``mesh/transport/h1pool.py``)
and the control-plane client (``shared/registry/http.py``)."""

from __future__ import annotations

import httptools

__all__ = ["MAX_HEAD_BYTES", "READ_CHUNK", "ResponseError", "ResponseParse"]

#: The size of one socket read; a head is cut off once this much past MAX_HEAD_BYTES has been fed.
READ_CHUNK = 65536
#: A response head (or its trailers) larger than this is refused, as h11's default did at 16 KiB.
MAX_HEAD_BYTES = 65536


class ResponseError(Exception):
    """The response is broken: malformed, oversized head or trailers, or an unasked protocol switch."""


class ResponseParse:
    """httptools callbacks for one response; ``feed`` raises ResponseError on a broken response.

    Handles what a plain ``should_keep_alive()`` after parsing gets wrong or forgets: llhttp resets
    keep-alive once a message ends, 1xx heads end messages of their own, bytes after the response
    must not be parsed into it, a header line is gathered whole before its callback (so a head is
    also bounded by the bytes fed), trailers are dropped and bounded, and an answer to HEAD has no
    body whatever its head says."""

    __slots__ = (
        "chunks",
        "complete",
        "extra",
        "head_bytes",
        "head_done",
        "head_only",
        "headers",
        "keep_alive",
        "parser",
        "pending_head",
        "since_body",
        "status",
        "trailer_bytes",
    )

    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only  # a response to HEAD: no body whatever its headers say
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.extra = False  # bytes past the response: the connection is not reused
        self.head_bytes = 0
        self.trailer_bytes = 0
        self.pending_head = 0
        self.since_body = 0  # bytes fed after the head since a feed last delivered body bytes
        self.status = 0
        self.keep_alive = False

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a message after the response: dropped, and the connection with it
            self.extra = True
            return
        self.headers = []
        self.head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        if self.head_done:  # a trailer of a chunked body: dropped (trailers of apps come over h2c),
            self.trailer_bytes += len(name) + len(value) + 4  # and bounded like the head
            if self.trailer_bytes > MAX_HEAD_BYTES:
                raise ResponseError(f"response trailers over {MAX_HEAD_BYTES} bytes")
            return
        self.head_bytes += len(name) + len(value) + 4
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        if self.head_bytes > MAX_HEAD_BYTES:
            raise ResponseError(f"response head over {MAX_HEAD_BYTES} bytes")
        status = self.parser.get_status_code()
        if status == 101:
            raise ResponseError("switched protocols (101) unasked")
        if status >= 200:
            self.status = status
            self.head_done = True
            if self.head_only:
                self.complete = True
                self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a body for HEAD, or one after the response
            self.extra = True
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status:  # a final response (1xx heads end their own message and are dropped)
            if not self.complete:
                self.keep_alive = self.parser.should_keep_alive()  # reset once the message ends
            self.complete = True

    # -------------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse ``data``; bytes past a complete response only mark the connection unusable."""
        if not self.head_done:
            self.pending_head += len(data)  # a head that never ends is cut off, however it arrives
            if self.pending_head > MAX_HEAD_BYTES + READ_CHUNK:
                raise ResponseError(f"response head over {MAX_HEAD_BYTES} bytes")
        in_body = self.head_done and not self.complete
        chunks = len(self.chunks)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, ResponseError):
                raise exc.__context__ from None
            raise ResponseError(f"broken response: {exc}") from exc
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:
                self.extra = True
                return
            raise ResponseError(f"malformed response: {exc}") from exc
        if in_body and not self.complete:
            # httptools holds a trailer field (or chunk framing junk) until it ends: bounded like a
            # head, counted from the last feed that delivered body bytes
            self.since_body = 0 if len(self.chunks) > chunks else self.since_body + len(data)
            if self.since_body > MAX_HEAD_BYTES + READ_CHUNK:
                bound = MAX_HEAD_BYTES + READ_CHUNK
                raise ResponseError(f"response trailers or chunk framing: over {bound} bytes without body")

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.extra

    def close_delimited(self) -> bool:
        """No Content-Length and not chunked: the body ends when the app closes (RFC 9112 6.3)."""
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                return False
        return True
