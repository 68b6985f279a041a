"""Rapid-reset detection counts resets against streams opened: a client that resets most of what it
opens is stopped after ``max_resets``; a busy client that cancels a minority of its requests is not."""

from __future__ import annotations

from h2_frames import raw_frame

from mesh.h2 import Limits
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
