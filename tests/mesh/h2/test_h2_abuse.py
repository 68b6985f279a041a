"""One test per HTTP/2 abuse in STANDARDS.md: bytes in, events and frames out."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from h2_frames import POST, REQUEST, Clock, FrameFactory, names, of_type, parse_frames, raw_frame, server
from hyperframe.frame import GoAwayFrame, PingFrame, RstStreamFrame, SettingsFrame

from mesh.h2 import (
    ConnectionEnded,
    ErrorCode,
    H2Endpoint,
    Limits,
    RequestReceived,
    StreamRejected,
    StreamReset,
)


def goaway_of(out: bytes) -> GoAwayFrame:
    frames = of_type(parse_frames(out), GoAwayFrame)
    assert len(frames) == 1, frames
    return frames[0]


def ended(events: Sequence[object]) -> ConnectionEnded:
    last = events[-1]
    assert isinstance(last, ConnectionEnded), events
    assert not last.remote
    return last


def assert_calm(ep_events: Sequence[object], out: bytes, limit: str) -> None:
    end = ended(ep_events)
    assert end.error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert limit in end.reason
    assert goaway_of(out).error_code == ErrorCode.ENHANCE_YOUR_CALM


# -- rapid reset (CVE-2023-44487) ------------------------------------------------------------------


def test_rapid_reset_in_one_read_gets_goaway_and_the_upstream_sees_nothing() -> None:
    ep, ff = server()
    burst = b"".join(ff.headers(sid) + ff.rst(sid) for sid in range(1, 2 * 1000, 2))
    events = ep.receive(burst)
    assert not any(isinstance(e, RequestReceived) for e in events)
    assert_calm(events, ep.data_to_send(), "max_resets")
    assert ep.is_closed
    assert ep.receive(ff.headers(5001)) == []


def test_rapid_reset_across_reads_stops_within_max_resets_streams() -> None:
    ep, ff = server(Limits(max_resets=20))
    seen = 0
    for sid in range(1, 2 * 100, 2):
        events = ep.receive(ff.headers(sid))
        seen += sum(isinstance(e, RequestReceived) for e in events)
        events = ep.receive(ff.rst(sid))
        if events and isinstance(events[-1], ConnectionEnded):
            assert_calm(events, ep.data_to_send(), "max_resets")
            break
        assert events == [StreamReset(stream_id=sid, error_code=ErrorCode.CANCEL, remote=True)]
    assert seen == 21  # bounded: max_resets + the one whose reset tripped the limit


def test_provoked_resets_count_too() -> None:
    """MadeYouReset (CVE-2025-8671): the peer makes *us* reset streams, sending no RST_STREAM."""
    ep, ff = server(Limits(max_resets=20))
    overflow = (1 << 31) - 1
    burst = b"".join(ff.headers(sid, POST) + ff.window_update(sid, overflow) for sid in range(1, 200, 2))
    events = ep.receive(burst)
    assert_calm(events, ep.data_to_send(), "max_resets")
    assert not any(isinstance(e, RequestReceived) for e in events)


def test_resets_spread_over_windows_are_fine() -> None:
    clock = Clock()
    ep, ff = server(Limits(max_resets=10), clock)
    sid = 1
    for _ in range(5):
        for _ in range(10):
            events = ep.receive(ff.headers(sid) + ff.rst(sid))
            assert not any(isinstance(e, ConnectionEnded) for e in events)
            sid += 2
        clock.now += 10.0
    assert not ep.is_closed


# -- CONTINUATION flood (CVE-2024-27316 family) --------------------------------------------------


def test_continuation_flood_frames_capped() -> None:
    ep, ff = server()
    block = ff.block(REQUEST)
    flood = ff.headers(1, block=block[:1], end_headers=False)
    flood += b"".join(ff.continuation(1, b"") for _ in range(100))
    events = ep.receive(flood)
    assert names(events) == ["ConnectionEnded"]
    assert_calm(events, ep.data_to_send(), "max_continuation_frames")


def test_continuation_flood_bytes_capped() -> None:
    ep, ff = server()
    junk = b"\x00" * 16000  # never decoded: the block is refused on size first
    flood = ff.headers(1, block=junk, end_headers=False)
    flood += b"".join(ff.continuation(1, junk) for _ in range(10))
    events = ep.receive(flood)
    assert_calm(events, ep.data_to_send(), "max_header_block_bytes")


def test_header_block_within_limits_split_over_continuations_is_fine() -> None:
    ep, ff = server()
    block = ff.block([*REQUEST, (b"x-pad", b"v" * 3000)])
    parts = [block[i : i + 200] for i in range(0, len(block), 200)]
    wire = ff.headers(1, block=parts[0], end_headers=False, end_stream=True)
    wire += b"".join(
        ff.continuation(1, p, end_headers=i == len(parts) - 1) for i, p in enumerate(parts[1:], 1)
    )
    assert len(parts) - 1 <= 32
    assert names(ep.receive(wire)) == ["RequestReceived"]


# -- HPACK bomb ---------------------------------------------------------------------------------


def test_hpack_bomb_is_a_connection_error() -> None:
    ep, ff = server()
    # One 4 KB entry in the dynamic table, then a block of 1-byte references to it.
    first = ff.block([*REQUEST, (b"x-big", b"a" * 4000)])
    assert names(ep.receive(ff.headers(1, block=first, end_stream=True))) == ["RequestReceived"]
    ep.data_to_send()
    bomb = ff.block(REQUEST) + b"\xbe" * 40  # index 62 = newest dynamic entry; ~160 KB decoded
    events = ep.receive(ff.headers(3, block=bomb, end_stream=True))
    end = ended(events)
    assert end.error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert goaway_of(ep.data_to_send()).error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert not any(isinstance(e, RequestReceived) for e in events)


def test_hpack_garbage_is_compression_error() -> None:
    ep, ff = server()
    events = ep.receive(ff.headers(1, block=b"\xff\xff\xff\xff\xff\xff"))
    assert ended(events).error_code == ErrorCode.COMPRESSION_ERROR
    assert goaway_of(ep.data_to_send()).error_code == ErrorCode.COMPRESSION_ERROR


# -- SETTINGS / PING / empty DATA / WINDOW_UPDATE floods ----------------------------------------


def test_settings_flood() -> None:
    ep, ff = server()
    events = ep.receive(b"".join(ff.settings(initial_window_size=1000 + i) for i in range(150)))
    out = ep.data_to_send()
    assert_calm(events, out, "max_settings")
    acks = [f for f in of_type(parse_frames(out), SettingsFrame) if "ACK" in f.flags]
    assert len(acks) == 99  # the first SETTINGS (the preface's) already counted


def test_ping_flood() -> None:
    ep, ff = server()
    events = ep.receive(b"".join(ff.ping(i.to_bytes(8, "big")) for i in range(500)))
    out = ep.data_to_send()
    assert_calm(events, out, "max_pings")
    assert len(of_type(parse_frames(out), PingFrame)) == 100


def test_empty_data_flood() -> None:
    ep, ff = server()
    assert names(ep.receive(ff.headers(1, POST))) == ["RequestReceived"]
    events = ep.receive(b"".join(ff.data(1) for _ in range(500)))
    assert_calm(events, ep.data_to_send(), "max_empty_data")


def test_padding_only_data_flood() -> None:
    """DATA frames carrying only padding have no data bytes: they count as empty DATA."""
    ep, ff = server()
    assert names(ep.receive(ff.headers(1, POST))) == ["RequestReceived"]
    events = ep.receive(b"".join(ff.data(1, pad=0) for _ in range(500)))
    assert_calm(events, ep.data_to_send(), "max_empty_data")


def test_padded_empty_data_ending_the_stream_is_not_counted() -> None:
    ep, ff = server(Limits(max_empty_data=2))
    wire = b"".join(ff.headers(sid, POST) + ff.data(sid, pad=3, end_stream=True) for sid in range(1, 12, 2))
    assert names(ep.receive(wire)) == ["RequestReceived", "DataReceived"] * 6


def test_settings_ack_flood() -> None:
    """Unsolicited SETTINGS ACKs count as SETTINGS (we send only a few)."""
    ep, _ = server()
    ack = raw_frame(0x4, 0x1, 0, b"")
    assert_calm(ep.receive(ack * 150), ep.data_to_send(), "max_settings")


@pytest.mark.parametrize(
    "frame",
    [raw_frame(0x2, 0, 3, bytes(5)), raw_frame(0xFA, 0, 0, b"x"), raw_frame(0xFA, 0, 1, b"")],
    ids=["priority-idle-stream", "unknown-type", "unknown-type-on-a-stream"],
)
def test_frames_that_do_nothing_are_capped(frame: bytes) -> None:
    """PRIORITY on idle streams and unknown frame types cost work and do nothing (RFC 9113 5.5 says
    ignore unknown types, not ignore them without end)."""
    ep, _ = server(Limits(max_idle_frames=50))
    assert_calm(ep.receive(frame * 60), ep.data_to_send(), "max_idle_frames")


def test_priority_per_stream_within_the_allowance_is_fine() -> None:
    """A browser that sends a PRIORITY frame or a few per stream is not cut off."""
    ep, ff = server(Limits(max_idle_frames=10))
    wire = b"".join(ff.headers(sid, REQUEST) + ff.priority(sid) * 3 for sid in range(1, 101, 2))
    assert names(ep.receive(wire)) == ["RequestReceived"] * 50


def test_window_update_flood() -> None:
    ep, ff = server(Limits(max_window_updates=50))
    events = ep.receive(b"".join(ff.window_update(0, 1) for _ in range(60)))
    assert names(events)[:-1] == ["WindowOpened"] * 50
    assert_calm(events, ep.data_to_send(), "max_window_updates")


# -- stream exhaustion ---------------------------------------------------------------------------


def test_streams_over_the_cap_are_refused_and_others_continue() -> None:
    ep, ff = server(Limits(max_concurrent_streams=3))
    events = ep.receive(b"".join(ff.headers(sid, POST) for sid in (1, 3, 5, 7)))
    assert names(events) == ["RequestReceived"] * 3 + ["StreamRejected"]
    assert events[-1] == StreamRejected(
        stream_id=7, error_code=ErrorCode.REFUSED_STREAM, reason="max_concurrent_streams (3) reached"
    )
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(7, ErrorCode.REFUSED_STREAM)]
    assert ep.open_streams == 3
    ep.send_headers(1, [(b":status", b"200")], end_stream=True)
    assert names(ep.receive(ff.data(1, b"x", end_stream=True))) == ["DataReceived"]
    assert names(ep.receive(ff.headers(9, POST))) == ["RequestReceived"]


def test_too_many_refusals_end_the_connection() -> None:
    ep, ff = server(Limits(max_concurrent_streams=1, max_refused=5))
    events = ep.receive(b"".join(ff.headers(sid, POST) for sid in range(1, 20, 2)))
    # The accepted stream 1 arrived in the same read: withdrawn, GOAWAY says nothing was processed.
    assert names(events) == ["StreamRejected"] * 9 + ["ConnectionEnded"]
    assert ended(events).last_stream_id == 0
    assert_calm(events, ep.data_to_send(), "max_refused")


def test_idle_streams_are_reported() -> None:
    clock = Clock()
    ep, ff = server(clock=clock)
    ep.receive(ff.headers(1, POST))
    clock.now += 5
    ep.receive(ff.headers(3, POST))
    clock.now += 26
    assert ep.idle_streams(30.0) == [1]
    ep.reset(1)
    assert ep.idle_streams(30.0) == []


def test_a_response_held_by_a_shut_window_is_idle_but_a_slow_answer_is_not() -> None:
    """With ``waiting_only``: a complete request whose response cannot move (the peer's window is 0)
    counts once nothing was received or sent for ``max_idle``; one still waiting for its answer does
    not; sending resets the idle time."""
    clock = Clock()
    ep = H2Endpoint(client_side=False, clock=clock)
    ep.initiate()
    ff = FrameFactory()
    ep.receive(ff.client_start(initial_window_size=0) + ff.headers(1, end_stream=True))
    ep.receive(ff.headers(3, end_stream=True))
    clock.now += 20
    ep.send_headers(1, [(b":status", b"200")])
    assert ep.send_data(1, b"x" * 100) == 0
    clock.now += 29
    assert ep.idle_streams(30.0, waiting_only=True) == []
    clock.now += 1
    assert ep.idle_streams(30.0, waiting_only=True) == [1]
    ep.receive(ff.window_update(1, 10))
    assert ep.send_data(1, b"x" * 100) == 10
    assert ep.idle_streams(30.0, waiting_only=True) == []
    clock.now += 100
    ep.receive(ff.window_update(3, 1000))
    assert ep.idle_streams(30.0, waiting_only=True) == [1]  # stream 3 waits for its answer: not counted


# -- flow-control abuse: exact RFC 9113 codes ----------------------------------------------------


def test_data_beyond_the_stream_window_is_flow_control_error() -> None:
    ep, ff = server(Limits(initial_window_size=100))
    events = ep.receive(ff.headers(1, POST) + ff.data(1, b"x" * 101))
    assert ended(events).error_code == ErrorCode.FLOW_CONTROL_ERROR
    assert goaway_of(ep.data_to_send()).error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_connection_window_overflow_is_flow_control_error() -> None:
    ep, ff = server()
    events = ep.receive(ff.window_update(0, (1 << 31) - 1))
    assert ended(events).error_code == ErrorCode.FLOW_CONTROL_ERROR
    assert goaway_of(ep.data_to_send()).error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_stream_window_overflow_is_a_stream_error() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, POST))
    events = ep.receive(ff.window_update(1, (1 << 31) - 1))
    assert events == [StreamReset(stream_id=1, error_code=ErrorCode.FLOW_CONTROL_ERROR, remote=False)]
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, ErrorCode.FLOW_CONTROL_ERROR)]
    assert not ep.is_closed


def test_settings_pushing_a_stream_window_past_the_max_is_flow_control_error() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, POST) + ff.window_update(1, (1 << 31) - 1 - 65535))
    events = ep.receive(ff.settings(initial_window_size=65536))
    assert ended(events).error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_data_after_end_stream_is_stream_closed() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, REQUEST, end_stream=True))
    events = ep.receive(ff.data(1, b"late"))
    assert events == [StreamReset(stream_id=1, error_code=ErrorCode.STREAM_CLOSED, remote=False)]
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, ErrorCode.STREAM_CLOSED)]
    assert not ep.is_closed


def test_zero_window_increment_is_protocol_error() -> None:
    ep, _ = server()
    events = ep.receive(raw_frame(0x8, 0, 0, b"\x00\x00\x00\x00"))
    assert ended(events).error_code == ErrorCode.PROTOCOL_ERROR


def test_initial_window_size_setting_too_large_is_flow_control_error() -> None:
    ep, ff = server()
    events = ep.receive(ff.settings(initial_window_size=1 << 31))
    assert ended(events).error_code == ErrorCode.FLOW_CONTROL_ERROR
    assert goaway_of(ep.data_to_send()).error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_oversized_frame_is_refused_on_its_header() -> None:
    ep, _ = server()
    events = ep.receive(raw_frame(0x0, 0, 1, b"", length=20000))  # no payload needed
    assert ended(events).error_code == ErrorCode.FRAME_SIZE_ERROR
    assert goaway_of(ep.data_to_send()).error_code == ErrorCode.FRAME_SIZE_ERROR


# -- zero-window reader: bounded memory ----------------------------------------------------------


def test_zero_window_reader_gets_nothing_queued() -> None:
    ep = server_with_peer_window(0)
    assert ep.window(1) == 0
    assert ep.send_data(1, b"x" * 100_000) == 0
    assert ep.pending_output < 100


def server_with_peer_window(window: int) -> H2Endpoint:
    ep, ff = server()
    ep.receive(ff.settings(initial_window_size=window) + ff.headers(1, REQUEST, end_stream=True))
    ep.send_headers(1, [(b":status", b"200")])
    ep.data_to_send()
    return ep


def test_non_reading_peer_bounds_pending_output() -> None:
    limits = Limits(max_pending_output=200_000)
    ep, ff = server(limits)
    ep.receive(ff.settings(initial_window_size=(1 << 31) - 1) + ff.window_update(0, (1 << 31) - 1 - 65535))
    ep.receive(ff.headers(1, REQUEST, end_stream=True))
    ep.send_headers(1, [(b":status", b"200")])
    chunk = b"x" * 65536
    total = 0
    for _ in range(100):  # the caller never flushes: the socket is not writable
        accepted = ep.send_data(1, chunk)
        total += accepted
        if not accepted:
            break
    assert total < 200_000 and ep.pending_output <= 200_000 + 100
    assert ep.window(1) == 0


def test_non_reading_peer_that_keeps_pinging_is_cut_off() -> None:
    limits = Limits(max_pending_output=1000, max_control_backlog=1000, max_pings=10_000)
    ep, ff = server(limits)
    events = ep.receive(b"".join(ff.ping() for _ in range(200)))
    assert_calm(events, ep.data_to_send(), "max_pending_output")


def test_unknown_frame_types_and_priority_are_ignored() -> None:
    ep, ff = server()
    wire = raw_frame(0xFA, 0, 0, b"hello") + ff.priority(1) + ff.headers(1, end_stream=True)
    assert names(ep.receive(wire)) == ["RequestReceived"]


def test_server_ignores_client_preface_errors_gracefully() -> None:
    ep, _ = server_raw()
    events = ep.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ended(events).error_code == ErrorCode.PROTOCOL_ERROR


def server_raw() -> tuple[H2Endpoint, FrameFactory]:
    ep = H2Endpoint(client_side=False)
    ep.initiate()
    return ep, FrameFactory()
