"""Pins the h2 internals ``mesh/h2/connection.py`` hooks into, so an h2 upgrade fails here first."""

from __future__ import annotations

import inspect

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.stream import H2Stream
from h2_frames import POST, REQUEST, client, names, of_type, parse_frames, server
from hyperframe.frame import DataFrame, GoAwayFrame, RstStreamFrame

from mesh.h2 import ErrorCode, Limits
from mesh.h2.connection import HookedConnection


def test_h2_still_has_the_hooked_methods() -> None:
    for name in ("_receive_frame", "_receive_goaway_frame", "_begin_new_stream", "_terminate_connection"):
        assert callable(getattr(H2Connection, name)), name
    for name in ("_initialize_content_length", "_track_content_length"):
        assert callable(getattr(H2Stream, name)), name
    assert "self._receive_frame(frame)" in inspect.getsource(H2Connection.receive_data)
    assert "_terminate_connection" in inspect.getsource(H2Connection.receive_data)
    # HookedConnection._receive_frame replicates h2's (minus a trace-log repr): same branches.
    source = inspect.getsource(H2Connection._receive_frame)
    for piece in (
        "self._frame_dispatch_table[frame.__class__](frame)",
        "except StreamClosedError as e:",
        "except StreamIDTooLowError as e:",
        "self._stream_is_closed_by_reset(e.stream_id)",
        "self._stream_is_closed_by_end(e.stream_id)",
        "events = e._events",
        "self._prepare_for_sending(frames)",
    ):
        assert piece in source, piece
    assert source.count("except") == 2
    assert "size_limit=self.MAX_CLOSED_STREAMS" in inspect.getsource(H2Connection.__init__)
    conn = HookedConnection(H2Configuration(client_side=True))
    assert isinstance(conn._data_to_send, bytearray) and conn.pending == 0


def test_data_frames_are_not_hex_dumped_on_receipt(monkeypatch: pytest.MonkeyPatch) -> None:
    """h2 formats repr(frame) for a trace log on every frame; the hook skips it."""
    ep, ff = server()
    ep.receive(ff.headers(1, POST))
    calls: list[object] = []

    def counting(self: DataFrame) -> str:
        calls.append(self)
        return "DataFrame"

    monkeypatch.setattr(DataFrame, "__repr__", counting)
    assert names(ep.receive(ff.data(1, b"x" * 16000))) == ["DataReceived"]
    assert calls == []


def test_events_before_a_connection_error_in_the_same_read_are_kept_until_the_error() -> None:
    ep, ff = client()
    sid = ep.send_request(REQUEST, end_stream=True)
    events = ep.receive(ff.headers(sid, [(b":status", b"200")]) + ff.data(99, b"x"))  # DATA on idle stream
    assert names(events) == ["ResponseReceived", "ConnectionEnded"]
    assert events[-1].error_code == ErrorCode.PROTOCOL_ERROR  # type: ignore[attr-defined]


def test_only_one_goaway_is_sent_on_a_protocol_error() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, REQUEST, end_stream=True))
    events = ep.receive(ff.headers(2, POST))  # even stream id from a client
    assert names(events) == ["ConnectionEnded"]
    goaways = of_type(parse_frames(ep.data_to_send()), GoAwayFrame)
    assert [(g.last_stream_id, g.error_code) for g in goaways] == [(1, ErrorCode.PROTOCOL_ERROR)]


def test_requests_of_the_failing_read_are_withdrawn_and_goaway_says_so() -> None:
    ep, ff = server()
    events = ep.receive(ff.headers(1, REQUEST, end_stream=True) + ff.headers(2, POST))
    assert names(events) == ["ConnectionEnded"]
    goaways = of_type(parse_frames(ep.data_to_send()), GoAwayFrame)
    assert [(g.last_stream_id, g.error_code) for g in goaways] == [(0, ErrorCode.PROTOCOL_ERROR)]


def test_h2_content_length_checks_are_replaced_by_stream_errors() -> None:
    ep, ff = server()
    wire = ff.headers(1, [*POST, (b"content-length", b"abc")]) + ff.headers(3, REQUEST, end_stream=True)
    assert names(ep.receive(wire)) == ["StreamRejected", "RequestReceived"]
    assert not ep.is_closed


def test_remote_graceful_goaway_does_not_close_h2s_state_machine() -> None:
    ep, ff = client()
    sid = ep.send_request(POST)
    ep.receive(ff.goaway(sid))
    assert ep.send_data(sid, b"still flowing", end_stream=True) == 13
    events = ep.receive(ff.headers(sid, [(b":status", b"200")], end_stream=True))
    assert names(events) == ["ResponseReceived"] and ep.is_closed


def test_limits_are_checked() -> None:
    for bad in ({"max_frame_size": 100}, {"initial_window_size": 0}, {"connection_window_size": 1}):
        try:
            Limits(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(bad)


def _served(ep: object, ff: object, sid: int) -> None:
    """One request on ``sid`` answered and closed at both ends."""
    ep.receive(ff.headers(sid, REQUEST, end_stream=True))  # type: ignore[attr-defined]
    ep.send_headers(sid, [(b":status", b"204")], end_stream=True)  # type: ignore[attr-defined]
    ep.data_to_send()  # type: ignore[attr-defined]


def test_closed_streams_are_remembered_within_a_bound() -> None:
    """h2 keeps 65,536 closed streams per connection (~8.5 MiB); the hook keeps MAX_CLOSED_STREAMS."""
    ep, ff = server()
    last = 0
    for n in range(HookedConnection.MAX_CLOSED_STREAMS + 300):
        last = 2 * n + 1
        _served(ep, ff, last)
    assert len(ep._h2._closed_streams) == HookedConnection.MAX_CLOSED_STREAMS  # type: ignore[attr-defined]
    assert not ep.is_closed


def test_data_on_a_remembered_closed_stream_resets_that_stream() -> None:
    ep, ff = server()
    for sid in (1, 3, 5):
        _served(ep, ff, sid)
    assert ep.receive(ff.data(3, b"late")) == []
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(3, ErrorCode.STREAM_CLOSED)]
    assert not ep.is_closed


def test_data_on_a_forgotten_stream_resets_that_stream_only() -> None:
    """A frame on a stream closed longer ago than the connection remembers gets RST_STREAM
    (STREAM_CLOSED), as on one it remembers; the connection, with its other streams, lives on."""
    ep, ff = server()
    for n in range(HookedConnection.MAX_CLOSED_STREAMS + 10):
        _served(ep, ff, 2 * n + 1)
    open_sid = 2 * (HookedConnection.MAX_CLOSED_STREAMS + 10) + 1
    ep.receive(ff.headers(open_sid, POST))
    ep.data_to_send()
    ep.receive(ff.data(1, b"very late"))
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, ErrorCode.STREAM_CLOSED)]
    assert not ep.is_closed
    (event,) = ep.receive(ff.data(open_sid, b"body", end_stream=True))
    assert (event.stream_id, event.data, event.end_stream) == (open_sid, b"body", True)  # type: ignore[attr-defined]


def test_hpack_debug_logging_is_dropped_and_hpack_logs_nothing_else() -> None:
    import inspect
    import re

    import hpack.hpack
    import hpack.table

    import mesh.h2.connection  # noqa: F401 - installs the replacement

    for module in (hpack.hpack, hpack.table):
        assert type(module.log).__name__ == "_NoDebugLog"
        assert module.log.debug("Decoded %s", ("authorization", "secret")) is None
        # the replacement has debug() only: hpack must call nothing else on its logger
        assert set(re.findall(r"\blog\.(\w+)\(", inspect.getsource(module))) == {"debug"}
