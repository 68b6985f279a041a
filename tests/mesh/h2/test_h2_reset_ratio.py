"""Rapid-reset detection counts resets against streams opened: a client that resets most of what it
opens is stopped after ``max_resets``; a busy client that cancels a minority of its requests is not."""

from __future__ import annotations

from h2_frames import POST, raw_frame, server

from mesh.h2 import ConnectionEnded, Limits, RequestReceived
from mesh.h2.scanner import FrameScanner

HEADERS, RST_STREAM = 0x1, 0x3
END_HEADERS = 0x4
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _feed(scanner: FrameScanner, opened: int, every: int) -> object:
    """Open ``opened`` streams and reset every ``every``-th one, interleaved as real traffic is."""
    data = bytearray(PREFACE) + raw_frame(0x4, 0, 0, b"")  # the preface ends with SETTINGS
    for i in range(opened):
        sid = 2 * i + 1
        data += raw_frame(HEADERS, END_HEADERS, sid, b"\x82")
        if i % every == 0:
            data += raw_frame(RST_STREAM, 0, sid, b"\x00\x00\x00\x08")
    _, violation = scanner.scan(bytes(data), now=0.0)
    return violation


def test_resetting_every_stream_trips_after_max_resets() -> None:
    violation = _feed(FrameScanner(Limits(max_resets=50), server=True), opened=60, every=1)
    assert violation is not None and "max_resets" in str(violation)


def test_cancelling_a_minority_of_many_streams_does_not_trip() -> None:
    assert _feed(FrameScanner(Limits(max_resets=50), server=True), opened=800, every=4) is None  # 200 resets


def test_trailers_do_not_count_as_opened_streams() -> None:
    """A request head plus a trailers HEADERS per stream, each stream reset: 100% resets, so it trips
    (counting both HEADERS frames as opened halved the ratio and never tripped)."""
    scanner = FrameScanner(Limits(max_resets=50), server=True)
    data = bytearray(PREFACE) + raw_frame(0x4, 0, 0, b"")
    for i in range(200):
        sid = 2 * i + 1
        data += raw_frame(HEADERS, END_HEADERS, sid, b"\x83")
        data += raw_frame(HEADERS, END_HEADERS | 0x1, sid, b"\x40\x01x\x011")  # trailers, END_STREAM
        data += raw_frame(RST_STREAM, 0, sid, b"\x00\x00\x00\x08")
    _, violation = scanner.scan(bytes(data), now=0.0)
    assert violation is not None and "max_resets" in str(violation)


def test_requests_with_trailers_reset_after_delivery_get_goaway() -> None:
    """The same through the endpoint, one read per frame group: each request is delivered (head and
    trailers), then reset; GOAWAY within max_resets + 1 streams."""
    ep, ff = server(Limits(max_resets=20))
    delivered = 0
    for sid in range(1, 2 * 200, 2):
        events = ep.receive(ff.headers(sid, POST) + ff.headers(sid, [(b"x-t", b"1")], end_stream=True))
        delivered += sum(isinstance(e, RequestReceived) for e in events)
        events = ep.receive(ff.rst(sid))
        if any(isinstance(e, ConnectionEnded) for e in events):
            break
    assert isinstance(events[-1], ConnectionEnded) and "max_resets" in events[-1].reason
    assert delivered <= 21
