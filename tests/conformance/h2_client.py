"""A small raw-socket HTTP/2 frame client for the conformance suite (hyperframe + hpack).

It sends whatever bytes a case needs (valid or not) and reads what the server answers, frame by
frame, with every read bounded by a deadline. Header blocks the server sends are decoded in order,
so the client's HPACK context stays in step with the server's. Nothing here validates what the
client sends: that is the point.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Headers = list[tuple[bytes, bytes]]
F = TypeVar("F", bound=Frame)

# frame types and flags (RFC 9113 section 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4


def raw_frame(ftype: int, flags: int, sid: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """Any frame, including invalid ones: the length field may lie, the stream id may be anything
    up to 2**32-1 (the reserved bit included)."""
    size = len(payload) if length is None else length
    return size.to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


@dataclass(frozen=True)
class Target:
    """One listener under test: where it is, how to reach it, and how a request for ``token``
    looks on the wire (``path``) and at the upstream app (``upstream_path``)."""

    name: str
    port: int
    scheme: bytes
    authority: bytes
    prefix: str  # the route prefix the listener strips before the app sees the path
    tls: ssl.SSLContext | None = None
    host: str = "127.0.0.1"

    def path(self, token: str) -> bytes:
        return f"{self.prefix}/{token}".encode()

    def upstream_path(self, token: str) -> str:
        return f"/{token}"

    def request(self, token: str, method: bytes = b"GET", extra: Headers | None = None) -> Headers:
        """A well-formed request head for ``token``."""
        return [
            (b":method", method),
            (b":scheme", self.scheme),
            (b":authority", self.authority),
            (b":path", self.path(token)),
            *(extra or []),
        ]


@dataclass(frozen=True)
class Outcome:
    """What became of a stream: ``kind`` is goaway, rst, response or closed (None: nothing in time)."""

    kind: str
    code: int | None = None  # error code (goaway/rst) or :status (response)
    frame: Frame | None = None

    def __str__(self) -> str:
        extra = ""
        if isinstance(self.frame, GoAwayFrame):
            extra = f" last_stream_id={self.frame.last_stream_id} debug={self.frame.additional_data!r}"
        return f"{self.kind}({self.code}{extra})"


class H2Conn:
    """One client connection. ``start()`` exchanges prefaces; ``send`` writes raw bytes; ``wait_for``
    reads frames until one matches. Every frame read is kept in ``frames``."""

    def __init__(self, target: Target, timeout: float = 5.0) -> None:
        self.target = target
        self.timeout = timeout
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.frames: list[Frame] = []
        self.headers: dict[int, list[Headers]] = {}  # decoded header blocks per stream, in order
        self.server_settings: dict[int, int] = {}
        self.closed = False  # the server ended the connection (EOF or reset) as seen by reads
        self.reset_by_peer = False
        self.write_failed = False  # a write found the connection gone (frames may still be readable)
        self._buffer = b""
        self._block: tuple[int, bytes] | None = None  # a header block awaiting CONTINUATION
        self._next_ping = 0
        raw = socket.create_connection((target.host, target.port), timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.tls is not None:
                sock: socket.socket = target.tls.wrap_socket(raw, server_hostname=target.host)
                if sock.selected_alpn_protocol() != "h2":  # pragma: no cover - the listener's choice
                    sock.close()
                    raise AssertionError(f"{target.name}: ALPN {sock.selected_alpn_protocol()!r}, not h2")
            else:
                sock = raw
        except BaseException:
            raw.close()
            raise
        self.sock = sock

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> H2Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def start(self, settings: dict[int, int] | None = None, *, preface: bytes = PREFACE) -> H2Conn:
        """Send the client preface and SETTINGS; wait for the server's SETTINGS and acknowledge it."""
        self.send(preface + self.settings(settings or {}))
        first = self.next_frame(self.timeout)
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags, (
            f"{self.target.name}: the server's first frame is {first!r}, not SETTINGS (RFC 9113 3.4)"
        )
        self.server_settings = dict(first.settings)
        self.send(self.settings_ack())
        return self

    # -- frames to send ---------------------------------------------------------------------------

    def send(self, *chunks: bytes) -> bool:
        """Write ``chunks`` in one call; False when the server already closed (what it sent before
        closing stays readable)."""
        if self.write_failed:
            return False
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(b"".join(chunks))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.write_failed = True
            return False
        return True

    def block(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        return bytes(self.encoder.encode(list(headers)))

    def headers_frame(
        self,
        sid: int,
        headers: Headers | None = None,
        *,
        end_stream: bool = False,
        end_headers: bool = True,
        block: bytes | None = None,
    ) -> bytes:
        f = HeadersFrame(sid)
        f.data = self.block(headers or []) if block is None else block
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return bytes(f.serialize())

    @staticmethod
    def continuation(sid: int, block: bytes, *, end_headers: bool = False) -> bytes:
        f = ContinuationFrame(sid, flags=["END_HEADERS"] if end_headers else [])
        f.data = block
        return bytes(f.serialize())

    @staticmethod
    def data(sid: int, payload: bytes = b"", *, end_stream: bool = False) -> bytes:
        return bytes(DataFrame(sid, data=payload, flags=["END_STREAM"] if end_stream else []).serialize())

    @staticmethod
    def settings(values: dict[int, int]) -> bytes:
        """SETTINGS with any values (no range checks: hyperframe does not validate on the way out)."""
        payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items())
        return raw_frame(SETTINGS, 0, 0, payload)

    @staticmethod
    def settings_ack() -> bytes:
        return raw_frame(SETTINGS, ACK, 0)

    @staticmethod
    def rst(sid: int, code: int = 8) -> bytes:
        return bytes(RstStreamFrame(sid, error_code=code).serialize())

    @staticmethod
    def window_update(sid: int, increment: int) -> bytes:
        return raw_frame(WINDOW_UPDATE, 0, sid, increment.to_bytes(4, "big"))

    @staticmethod
    def goaway_frame(last: int, code: int = 0, sid: int = 0) -> bytes:
        return raw_frame(GOAWAY, 0, sid, last.to_bytes(4, "big") + code.to_bytes(4, "big"))

    def ping_frame(self, data: bytes | None = None, *, ack: bool = False) -> bytes:
        if data is None:
            self._next_ping += 1
            data = b"conf" + self._next_ping.to_bytes(4, "big")
        return raw_frame(PING, ACK if ack else 0, 0, data)

    # -- frames received --------------------------------------------------------------------------

    def _recv(self, deadline: float) -> bool:
        """Read once before ``deadline``; False on timeout or when the connection is gone."""
        if self.closed:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return False
        except ConnectionResetError:
            self.closed = self.reset_by_peer = True
            return False
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.closed = True
            return False
        except ssl.SSLError:
            self.closed = self.reset_by_peer = True
            return False
        if not chunk:
            self.closed = True
            return False
        self._buffer += chunk
        return True

    def _parse_one(self) -> Frame | None:
        if len(self._buffer) < 9:
            return None
        frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
        if len(self._buffer) < 9 + length:
            return None
        frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
        self._buffer = self._buffer[9 + length :]
        self._on_frame(frame)
        return frame

    def _on_frame(self, frame: Frame) -> None:
        """Keep the HPACK context in step: decode every header block as it completes."""
        if isinstance(frame, HeadersFrame | ContinuationFrame):
            if isinstance(frame, HeadersFrame):
                self._block = (frame.stream_id, bytes(frame.data))
            elif self._block is not None:
                self._block = (self._block[0], self._block[1] + bytes(frame.data))
            if "END_HEADERS" in frame.flags and self._block is not None:
                sid, block = self._block
                self._block = None
                decoded = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(block, raw=True)]
                self.headers.setdefault(sid, []).append(decoded)
        self.frames.append(frame)

    def next_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame within ``timeout`` seconds; None on timeout or when the connection closed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self._parse_one()
            if frame is not None:
                return frame
            if not self._recv(deadline):
                return None

    def mark(self) -> int:
        """A cursor for ``since``: later waits ignore the frames read before it."""
        return len(self.frames)

    def wait_for(
        self, match: Callable[[Frame], bool], timeout: float | None = None, since: int = 0
    ) -> Frame | None:
        """Read until a frame matches (returned) or ``timeout`` passes / the connection ends (None);
        frames already read (from index ``since`` on) are looked at first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for frame in self.frames[since:]:
            if match(frame):
                return frame
        while True:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            if match(frame):
                return frame

    def of_type(self, kind: type[F]) -> list[F]:
        return [f for f in self.frames if isinstance(f, kind)]

    def goaway(self, timeout: float | None = None) -> GoAwayFrame | None:
        frame = self.wait_for(lambda f: isinstance(f, GoAwayFrame), timeout)
        return frame if isinstance(frame, GoAwayFrame) else None

    def drain(self, timeout: float = 3.0) -> bytes:
        """Raw bytes until the server closes the connection or ``timeout`` passes (for answers that may
        not be HTTP/2 at all, such as an HTTP/1.1 error after a bad preface); nothing is parsed."""
        deadline = time.monotonic() + timeout
        while self._recv(deadline):
            pass
        data, self._buffer = self._buffer, b""
        return data

    def wait_closed(self, timeout: float = 3.0) -> bool:
        """Read (and keep) frames until the server closes the connection; False if it stays open."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.next_frame(max(0.0, deadline - time.monotonic()))
        return self.closed

    def ping(self, timeout: float | None = None) -> bool:
        """A PING round trip: True when its ACK (same payload) came back. Frames that arrive first
        were processed first, which makes this a barrier: the server has read everything before it."""
        payload = self.ping_frame()
        since = self.mark()
        if not self.send(payload):
            return False
        data = payload[9:]
        frame = self.wait_for(
            lambda f: isinstance(f, PingFrame) and "ACK" in f.flags and bytes(f.opaque_data) == data,
            timeout,
            since,
        )
        return frame is not None

    def outcome(self, sid: int, timeout: float | None = None, since: int = 0) -> Outcome:
        """The first thing that settles stream ``sid`` (among frames from index ``since`` on): a
        GOAWAY, its RST_STREAM, its response head, or the connection closing."""

        def settles(f: Frame) -> bool:
            return isinstance(f, GoAwayFrame) or (
                f.stream_id == sid and isinstance(f, RstStreamFrame | HeadersFrame | ContinuationFrame)
            )

        frame = self.wait_for(lambda f: settles(f) and self._complete(f, sid), timeout, since)
        if isinstance(frame, GoAwayFrame):
            return Outcome("goaway", frame.error_code, frame)
        if isinstance(frame, RstStreamFrame):
            return Outcome("rst", frame.error_code, frame)
        if frame is not None:
            return Outcome("response", self.status(sid), frame)
        return Outcome("closed" if self.closed else "timeout")

    def _complete(self, frame: Frame, sid: int) -> bool:
        if isinstance(frame, HeadersFrame | ContinuationFrame):
            return "END_HEADERS" in frame.flags and bool(self.headers.get(sid))
        return True

    def status(self, sid: int) -> int | None:
        for block in self.headers.get(sid, []):
            for name, value in block:
                if name == b":status":
                    return int(value)
        return None

    def body(self, sid: int, timeout: float | None = None) -> bytes | None:
        """The response body of ``sid`` (None unless END_STREAM arrived in time); its DATA frames
        are acknowledged with WINDOW_UPDATE so a larger body never stalls."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)

        def ended(f: Frame) -> bool:
            return f.stream_id == sid and "END_STREAM" in f.flags

        if self.wait_for(ended, max(0.0, deadline - time.monotonic())) is None:
            return None
        return b"".join(bytes(f.data) for f in self.of_type(DataFrame) if f.stream_id == sid)

    def get(self, sid: int, token: str, timeout: float | None = None) -> int | None:
        """A well-formed GET for ``token`` on stream ``sid``; its :status (None if none came)."""
        since = self.mark()
        self.send(self.headers_frame(sid, self.target.request(token), end_stream=True))
        result = self.outcome(sid, timeout, since)
        return result.code if result.kind == "response" else None


def new_token(label: str) -> str:
    """A path segment nobody else uses (to find a request at the upstream app, or its absence)."""
    return f"conf-{label}-{os.urandom(4).hex()}"


def parse_frames(data: bytes) -> list[Frame]:
    """Every complete frame in ``data`` (server bytes: no preface)."""
    frames: list[Frame] = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames
