"""Frame factory for the HTTP/2 core tests: raw frames from hyperframe + an HPACK encoder."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from mesh.h2 import Event, H2Endpoint, Limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/")]
POST = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/up")]
RESPONSE = [(b":status", b"200")]

Headers = list[tuple[bytes, bytes]]


class FrameFactory:
    """Builds wire bytes for one peer; keeps its own HPACK context like a real encoder."""

    def __init__(self) -> None:
        self.encoder = Encoder()

    def block(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        return bytes(self.encoder.encode(list(headers)))

    def settings(self, **values: int) -> bytes:
        f = SettingsFrame(0)
        for name, value in values.items():
            f.settings[getattr(SettingsFrame, name.upper())] = value
        return bytes(f.serialize())

    def client_start(self, **values: int) -> bytes:
        return PREFACE + self.settings(**values)

    def headers(
        self,
        sid: int,
        headers: Headers | None = None,
        *,
        end_stream: bool = False,
        end_headers: bool = True,
        block: bytes | None = None,
    ) -> bytes:
        f = HeadersFrame(sid)
        f.data = self.block(REQUEST if headers is None else headers) if block is None else block
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return bytes(f.serialize())

    def continuation(self, sid: int, block: bytes, *, end_headers: bool = False) -> bytes:
        f = ContinuationFrame(sid, flags=["END_HEADERS"] if end_headers else [])
        f.data = block
        return bytes(f.serialize())

    def data(self, sid: int, data: bytes = b"", *, end_stream: bool = False, pad: int | None = None) -> bytes:
        f = DataFrame(sid, data=data, flags=["END_STREAM"] if end_stream else [])
        if pad is not None:
            f.flags.add("PADDED")
            f.pad_length = pad
        return bytes(f.serialize())

    def rst(self, sid: int, code: int = 8) -> bytes:
        return bytes(RstStreamFrame(sid, error_code=code).serialize())

    def ping(self, data: bytes = b"\0" * 8, *, ack: bool = False) -> bytes:
        return bytes(PingFrame(0, opaque_data=data, flags=["ACK"] if ack else []).serialize())

    def window_update(self, sid: int, increment: int) -> bytes:
        return bytes(WindowUpdateFrame(sid, window_increment=increment).serialize())

    def goaway(self, last: int, code: int = 0, debug: bytes = b"") -> bytes:
        return bytes(GoAwayFrame(0, last_stream_id=last, error_code=code, additional_data=debug).serialize())

    def priority(self, sid: int, depends_on: int = 0) -> bytes:
        return bytes(PriorityFrame(sid, depends_on=depends_on).serialize())


def raw_frame(ftype: int, flags: int, sid: int, payload: bytes, length: int | None = None) -> bytes:
    """Any frame, including invalid ones (the length field may lie)."""
    size = len(payload) if length is None else length
    return size.to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def parse_frames(data: bytes) -> list[Frame]:
    """Parse wire bytes (a client preface is skipped) into hyperframe frames."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    frames: list[Frame] = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


F = TypeVar("F", bound=Frame)


def of_type(frames: list[Frame], kind: type[F]) -> list[F]:
    return [f for f in frames if isinstance(f, kind)]


class Clock:
    """A settable clock for the counter windows."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def server(limits: Limits | None = None, clock: Clock | None = None) -> tuple[H2Endpoint, FrameFactory]:
    """A server endpoint past the connection preface, its output drained."""
    ep = H2Endpoint(client_side=False, limits=limits or Limits(), clock=clock or Clock())
    ep.initiate()
    ff = FrameFactory()
    events = ep.receive(ff.client_start())
    assert [type(e).__name__ for e in events] == ["SettingsChanged"]
    ep.data_to_send()
    return ep, ff


def client(limits: Limits | None = None, **settings: int) -> tuple[H2Endpoint, FrameFactory]:
    """A client endpoint that has seen the server's SETTINGS, its output drained."""
    ep = H2Endpoint(client_side=True, limits=limits or Limits(), clock=Clock())
    ep.initiate()
    ff = FrameFactory()
    ep.receive(ff.settings(**settings))
    ep.data_to_send()
    return ep, ff


def names(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def pump(a: H2Endpoint, b: H2Endpoint) -> tuple[list[Event], list[Event]]:
    """Move bytes both ways until quiet; return (events at a, events at b)."""
    at_a: list[Event] = []
    at_b: list[Event] = []
    for _ in range(100):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            return at_a, at_b
        if out_a:
            at_b += b.receive(out_a)
        if out_b:
            at_a += a.receive(out_b)
    raise AssertionError("endpoints never went quiet")
