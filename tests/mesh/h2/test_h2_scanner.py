"""The frame scanner across chunk boundaries: same outcome however the bytes are split."""

from __future__ import annotations

from h2_frames import POST, REQUEST, Clock, FrameFactory, names, raw_frame

from mesh.h2 import ConnectionEnded, ErrorCode, H2Endpoint, Limits
from mesh.h2.scanner import PREFACE, FrameScanner


def fresh() -> H2Endpoint:
    ep = H2Endpoint(client_side=False, clock=Clock())
    ep.initiate()
    return ep


def conversation() -> bytes:
    ff = FrameFactory()
    block = ff.block([*POST, (b"x-pad", b"p" * 500)])
    return (
        ff.client_start()
        + ff.headers(1, block=block[:100], end_headers=False)
        + ff.continuation(1, block[100:300])
        + ff.continuation(1, block[300:], end_headers=True)
        + ff.data(1, b"a" * 1000)
        + ff.ping()
        + ff.data(1, b"", end_stream=True)
        + ff.headers(3, REQUEST, end_stream=True)
    )


def test_every_split_point_gives_the_same_events() -> None:
    wire = conversation()
    whole = names(fresh().receive(wire))
    assert whole == ["SettingsChanged", "RequestReceived", "DataReceived", "DataReceived", "RequestReceived"]
    for cut in range(1, len(wire)):
        ep = fresh()
        assert names(ep.receive(wire[:cut]) + ep.receive(wire[cut:])) == whole, cut


def test_byte_by_byte_gives_the_same_events() -> None:
    wire = conversation()
    ep = fresh()
    events = []
    for i in range(len(wire)):
        events += ep.receive(wire[i : i + 1])
    assert names(events) == names(fresh().receive(wire))


def test_byte_by_byte_continuation_flood_is_caught() -> None:
    ff = FrameFactory()
    wire = ff.client_start() + ff.headers(1, block=b"\x82", end_headers=False)
    wire += b"".join(ff.continuation(1, b"") for _ in range(40))
    ep = fresh()
    events = []
    for i in range(len(wire)):
        events += ep.receive(wire[i : i + 1])
    assert isinstance(events[-1], ConnectionEnded)
    assert events[-1].error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert sum(isinstance(e, ConnectionEnded) for e in events) == 1


def test_scanner_counts_and_skips_payloads() -> None:
    scanner = FrameScanner(Limits(max_pings=2), server=True)
    ping = raw_frame(0x6, 0, 0, b"\0" * 8)
    big = raw_frame(0x0, 0, 1, b"\x06" * 16384)  # payload bytes that look like PING headers
    settings = raw_frame(0x4, 0, 0, b"")  # RFC 9113 3.4: the preface ends with SETTINGS
    assert scanner.scan(PREFACE + settings + big + ping, 0.0) == (len(PREFACE + settings + big + ping), None)
    assert scanner.scan(ping, 0.0) == (len(ping), None)
    assert scanner.scan(big + ping, 0.0) == (
        len(big),
        (ErrorCode.ENHANCE_YOUR_CALM, "max_pings exceeded (3)"),
    )


def test_counters_reset_after_the_window() -> None:
    scanner = FrameScanner(Limits(max_pings=2, window_seconds=10), server=False)
    ping = raw_frame(0x6, 0, 0, b"\0" * 8)
    for t in (0.0, 5.0, 10.0, 15.0, 20.0):
        assert scanner.scan(ping, t)[1] is None
    assert scanner.scan(ping * 2, 21.0)[1] is not None


def test_single_frame_header_block_over_the_byte_cap() -> None:
    limits = Limits(max_frame_size=65536, max_header_block_bytes=20000)
    scanner = FrameScanner(limits, server=False)
    headers = raw_frame(0x1, 0x4, 1, b"\0" * 30000)
    code, reason = scanner.scan(headers, 0.0)[1] or (0, "")
    assert code == ErrorCode.ENHANCE_YOUR_CALM and "max_header_block_bytes" in reason


def test_the_preface_must_be_followed_by_settings() -> None:
    """RFC 9113 section 3.4; and a SETTINGS ACK carries no payload (section 6.5)."""
    ping = raw_frame(0x6, 0, 0, b"\0" * 8)
    scanner = FrameScanner(Limits(), server=True)
    assert scanner.scan(PREFACE + ping, 0.0) == (
        len(PREFACE),
        (ErrorCode.PROTOCOL_ERROR, "connection preface not followed by SETTINGS"),
    )
    scanner = FrameScanner(Limits(), server=True)
    ack_with_payload = raw_frame(0x4, 0x1, 0, b"\0" * 6)
    assert scanner.scan(PREFACE + raw_frame(0x4, 0, 0, b"") + ack_with_payload, 0.0)[1] == (
        ErrorCode.FRAME_SIZE_ERROR,
        "SETTINGS ACK with a payload",
    )
