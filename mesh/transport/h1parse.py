"""HTTP/1.1 requests off one connection, sans-IO, with httptools (llhttp, Node.js's C parser).

llhttp is strict where request smuggling lives: it refuses Content-Length with Transfer-Encoding, two
Content-Length fields, a Transfer-Encoding that does not end in ``chunked``, whitespace before a colon,
obs-fold, bare LF and control characters in the target. This parser adds: 501 for a transfer coding
before the final ``chunked`` (RFC 9112 section 6.1: ``gzip, chunked`` would reach the app as gzip bytes
with nothing saying so), 400 for ``chunked`` twice, 400 for Transfer-Encoding in HTTP/1.0, 414 for a
request target over the head limit, and trailing whitespace trimmed from field values (RFC 9110 section
5.5; llhttp trims only the leading). What it accepts and HTTP/1.1 servers must still refuse (two Host
fields, versions other than 1.0 and 1.1, oversized heads) the server checks.

Upgrades: llhttp stops parsing after any head with ``Upgrade`` and ``Connection: upgrade`` (its body
left unparsed) and after CONNECT. Only CONNECT and a WebSocket handshake (GET) are followed (the
server decides what to do with them); any other ``Upgrade`` (``h2c`` from ``curl --http2``, an
unknown protocol) is ignored, as RFC 9110 section 7.8 allows: the request, with its body, is parsed
on by a fresh llhttp parser and served like any other.

Requests are parsed in order into :class:`Message` objects; pipelined requests queue up behind the
current one (bounded: the server reads only while the current request is incomplete).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

__all__ = [
    "TOKEN",
    "H1ParseError",
    "Message",
    "RequestHead",
    "RequestParser",
    "decode_headers",
    "encode_head",
    "response_head",
]

TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELDS = re.compile(rf"(?:{TOKEN}:[^\r\n\x00]*\r\n)*\r\n", re.ASCII)
_NAMES = re.compile(rf"(?:{TOKEN}\n)*", re.ASCII)
_STATUS_LINE = re.compile(r"HTTP/1\.1 \d{3} [^\r\n\x00]*", re.ASCII)


class H1ParseError(Exception):
    """The client broke HTTP/1.1; ``status`` is the answer (400, 431, 505) before closing."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class RequestHead:
    """A request line and header fields, as received (names in their original case)."""

    method: bytes
    target: bytes
    http_version: bytes  # b"1.1" or b"1.0"
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool  # HTTP/1.1 without ``Connection: close``
    upgrade: bool = False  # llhttp stopped after the head (``Upgrade`` with ``Connection: upgrade``, CONNECT)
    size: int = 0  # bytes of the target and header fields


@dataclass(slots=True)
class Message:
    """One request: its head once complete, body bytes not yet taken, whether it ended."""

    head: RequestHead | None = None
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    leftover: bytes = b""  # after an upgrade: the bytes past the head (the new protocol's)


class RequestParser:
    """Feed bytes; complete requests come out of :meth:`next` in order.

    A parse error is kept and raised by :meth:`next` once the requests before it are taken, and by
    :meth:`feed` when it falls inside the request being read (``current``)."""

    def __init__(self, max_header_bytes: int = 65536) -> None:
        self.max_header_bytes = max_header_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[Message] = collections.deque()
        self._building: Message | None = None
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._codings: list[bytes] = []  # the current head's Transfer-Encoding codings, in order
        self._size = 0
        self._pending_head = 0  # bytes fed since a head began and before it ended
        self._overhead = 0  # bytes fed into the current body that were not body: framing, trailers
        self._body = 0
        self._body_total = 0  # body bytes over the connection's life (for the head bound above)
        self._since_body = 0  # bytes fed inside a body since a feed last delivered body bytes
        self._began = False
        self.error: H1ParseError | None = None
        self.upgraded = False  # llhttp paused at an upgrade: nothing more is parsed
        self._priming = False  # a fresh llhttp parser is reading the synthetic head of a declined upgrade

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._priming:
            return
        self._began = True
        self._building = Message()
        self._url = []
        self._headers = []
        self._codings = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        if self._priming:
            return
        self._url.append(url)
        self._size += len(url)
        if self._size > self.max_header_bytes:
            raise H1ParseError("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._priming:
            return
        value = value.rstrip(b" \t")
        self._size += len(name) + len(value) + 4
        if self._building is not None and self._building.head is not None:
            # a trailer field of a chunked body: counted, dropped (as h11 and most servers do)
            if self._size > self.max_header_bytes:
                raise H1ParseError("trailer fields too large", 431)
            return
        self._headers.append((name, value))
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            self._codings.extend(c.strip().lower() for c in value.split(b","))

    def on_headers_complete(self) -> None:
        if self._priming:
            self._priming = False
            return
        parser = self._parser
        msg = self._building
        assert msg is not None
        version = parser.get_http_version().encode("ascii")
        codings = self._codings
        if codings and version == b"1.0":
            raise H1ParseError("Transfer-Encoding in an HTTP/1.0 request", 400)
        if codings and (codings[-1] != b"chunked" or codings.count(b"chunked") > 1):
            raise H1ParseError("Transfer-Encoding does not end in one chunked", 400)  # RFC 9112 6.1
        if codings and codings != [b"chunked"]:
            raise H1ParseError(f"transfer coding not supported: {b', '.join(codings).decode('latin-1')}", 501)
        msg.head = RequestHead(
            method=parser.get_method(),
            target=b"".join(self._url),
            http_version=version,
            headers=self._headers,
            keep_alive=version == b"1.1" and parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
            size=self._size,
        )
        self._queue.append(msg)
        self._pending_head = 0
        self._size = 0
        self._overhead = self._body = self._since_body = 0

    def on_body(self, body: bytes) -> None:
        if self._building is not None:
            self._building.chunks.append(body)
            self._body += len(body)
            self._body_total += len(body)
            self._overhead -= len(body)

    def on_message_complete(self) -> None:
        if self._building is not None:
            self._building.complete = True
            self._building = None

    # -----------------------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No request queued and no byte of the next one received."""
        return not self._queue and self._building is None and not self._pending_head

    @property
    def more(self) -> bool:
        """Bytes of a request after the one being served have arrived (a pipelining client)."""
        return len(self._queue) > 1 or self._pending_head > 0

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises H1ParseError when the error falls in the request being read."""
        while data:  # a loop, not recursion: every declined upgrade hands back the bytes after it
            data = self._feed(data)

    def _feed(self, data: bytes) -> bytes:
        """Parse ``data``; the bytes still to parse after a declined upgrade, else b""."""
        if self.error is not None or self.upgraded or not data:
            return b""
        building = self._building
        started_in = building
        in_body = building is not None and building.head is not None  # this feed begins in its body
        if not in_body:
            self._pending_head += len(data)
        else:
            self._overhead += len(data)
        self._began = False
        body_before = self._body_total
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            error = exc.__context__
            if not isinstance(error, H1ParseError):  # pragma: no cover - our callbacks raise nothing else
                error = H1ParseError(f"malformed request: {exc}", 400)
            self._fail(error)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            if self._queue and not _followed(self._queue[-1]):
                return self._decline_upgrade(self._queue[-1], bytes(data[offset:]))
            self.upgraded = True
            if self._queue:
                self._queue[-1].leftover = bytes(data[offset:])
        except httptools.HttpParserInvalidMethodError as exc:
            self._fail(H1ParseError(f"invalid method: {exc}", 400))
        except httptools.HttpParserInvalidURLError as exc:
            self._fail(H1ParseError(f"invalid request target: {exc}", 400))
        except httptools.HttpParserError as exc:
            self._fail(H1ParseError(f"malformed request: {exc}", 400))
        building = self._building
        if self._began and building is not None and building.head is None:
            # a head began inside this feed, after the end of an earlier request: its bytes are at
            # most what this feed held beyond the body bytes it delivered (an upper bound)
            self._pending_head = max(self._pending_head, len(data) - (self._body_total - body_before))
        if self.error is None and self._pending_head > self.max_header_bytes:
            self._fail(H1ParseError("header block too large", 431))
        building = self._building
        if self.error is None and building is not None and building.head is not None:
            # chunk framing and trailers are bounded too. In all: by the head limit plus 8 bytes per
            # body byte (1-byte chunks); and since the last body byte, by the head limit (to within a
            # read), because httptools holds a trailer field until it ends: a trailer line after a
            # large body must not grow to a multiple of that body. Only feeds that began inside this
            # request's body count (not the bytes of its head, nor of requests before it).
            if in_body and building is started_in:
                self._since_body = 0 if self._body_total > body_before else self._since_body + len(data)
            if (
                self._overhead > self.max_header_bytes + 8 * self._body
                or self._since_body > self.max_header_bytes
            ):
                self._fail(H1ParseError("chunk framing or trailer fields too large", 431))
        return b""

    def _decline_upgrade(self, msg: Message, rest: bytes) -> bytes:
        """Go on parsing after an upgrade that is not followed (see the module docstring): a fresh
        llhttp parser, first fed a synthetic head with the request's own framing so that the bytes
        after the head are read as its body, then the requests after it."""
        head = msg.head
        assert head is not None
        head.upgrade = False
        self._parser = httptools.HttpRequestParser(self)
        names = {k.lower(): v for k, v in head.headers}
        if b"transfer-encoding" in names:
            framing = b"transfer-encoding: chunked"
        elif names.get(b"content-length", b"0").strip() not in (b"", b"0"):
            framing = b"content-length: " + names[b"content-length"].strip()
        else:
            framing = b""
        if framing:  # llhttp skipped the body and called it complete: it is not
            msg.complete = False
            self._building = msg
            self._priming = True
            try:
                self._parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
            except httptools.HttpParserError as exc:  # pragma: no cover - llhttp accepted this framing
                self._fail(H1ParseError(f"malformed request: {exc}", 400))
                return b""
        return rest

    def _fail(self, error: H1ParseError) -> None:
        """Keep ``error`` for :meth:`next`. A request whose head was queued but whose head or body
        then failed (llhttp judges Transfer-Encoding after the head) leaves the queue: it is never
        served. Raises at once only when that request is the first in line (being read now)."""
        self.error = error
        building = self._building
        if building is not None and building.head is not None and not building.complete:
            first = bool(self._queue) and self._queue[0] is building
            if self._queue and self._queue[-1] is building:
                self._queue.pop()
            self._building = None
            if first:
                raise error

    def next(self) -> Message | None:
        """The next request whose head is complete (it stays first until :meth:`done`), or None
        while more bytes are needed; raises the parse error that stands next in line."""
        if self._queue:
            return self._queue[0]
        if self.error is not None:
            raise self.error
        return None

    def done(self) -> None:
        """The first request has been answered."""
        if self._queue:
            self._queue.popleft()


def _followed(msg: Message) -> bool:
    """An upgrade llhttp stopped at that the server may take: CONNECT, or a WebSocket handshake."""
    head = msg.head
    if head is None or head.method == b"CONNECT":
        return True
    return head.method == b"GET" and any(
        k.lower() == b"upgrade" and b"websocket" in v.lower() for k, v in head.headers
    )


def decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Header fields as the data path carries them: lower-case ``str`` names, Latin-1 values."""
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]


def encode_head(start_line: str, start_ok: re.Pattern[str], headers: list[tuple[str, str]]) -> bytes:
    """``start_line`` and ``headers`` as an HTTP/1.1 head; ValueError when ``start_ok`` refuses the
    start line, a name is not a token or a value holds CR, LF or NUL (never written: they would split
    the message). Three C-speed checks instead of one per field: the fields joined have the shape of
    header lines, the names joined alone are tokens (no colon hiding in one), and there is exactly
    one CR and one LF per line (no value carries a line break that would pass as a line of its own)."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    lines = len(headers) + 1
    if (
        start_ok.fullmatch(start_line) is None
        or _FIELDS.fullmatch(fields) is None
        or _NAMES.fullmatch("".join(f"{k}\n" for k, _ in headers)) is None
        or fields.count("\n") != lines
        or fields.count("\r") != lines
    ):
        raise ValueError(f"{start_line[:40]!r}...: head is not valid HTTP/1.1")
    return (start_line + "\r\n" + fields).encode("latin-1")


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 status line and header fields (:func:`encode_head`'s checks)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return encode_head(f"HTTP/1.1 {status} {reason}", _STATUS_LINE, headers)
