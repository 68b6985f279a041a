"""Hypothesis: valid client behaviour never breaks the server; garbage never makes receive raise."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.settings import SettingCodes
from h2_frames import POST, REQUEST, Clock, FrameFactory, raw_frame, server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.h2 import (
    ConnectionEnded,
    DataReceived,
    ErrorCode,
    Event,
    H2Endpoint,
    Limits,
    RequestReceived,
    StreamClosedError,
    StreamLimitReached,
    StreamRejected,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=600), st.lists(st.integers(1, 64), max_size=12), st.booleans())
def test_garbage_never_raises(garbage: bytes, cuts: list[int], with_preface: bool) -> None:
    ep = H2Endpoint(client_side=False, clock=Clock())
    ep.initiate()
    wire = (FrameFactory().client_start() if with_preface else b"") + garbage
    pos = 0
    for cut in [*cuts, len(wire)]:
        assert_no_internal_error(ep.receive(wire[pos : pos + cut]))
        pos += cut
    ep.data_to_send()


def assert_no_internal_error(events: list[Event]) -> None:
    """INTERNAL_ERROR would mean an exception inside h2 or the endpoint, caught at the boundary."""
    for event in events:
        assert not (isinstance(event, ConnectionEnded) and event.error_code == ErrorCode.INTERNAL_ERROR), (
            event
        )


frame_types = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10])


@FAST
@given(
    st.lists(
        st.tuples(frame_types, st.integers(0, 255), st.integers(0, 9), st.binary(max_size=40)),
        max_size=25,
    )
)
def test_random_well_framed_frames_never_raise(frames: list[tuple[int, int, int, bytes]]) -> None:
    ep, _ = server()
    assert_no_internal_error(
        ep.receive(b"".join(raw_frame(t, flags, sid, payload) for t, flags, sid, payload in frames))
    )
    ep.data_to_send()


@FAST
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 7)), max_size=40))
def test_random_client_actions_never_break_the_server(actions: list[tuple[int, int]]) -> None:
    limits = Limits(initial_window_size=65535, connection_window_size=65535)
    c = H2Endpoint(client_side=True, limits=limits, clock=Clock())
    s = H2Endpoint(client_side=False, limits=limits, clock=Clock())
    c.initiate()
    s.initiate()
    opened: list[int] = []
    for action, arg in actions:
        try:
            if action == 0:
                opened.append(c.send_request(POST if arg % 2 else REQUEST, end_stream=arg % 2 == 0))
            elif action == 1 and opened:
                c.send_data(opened[arg % len(opened)], b"d" * (arg * 3000), end_stream=arg == 7)
            elif action == 2 and opened:
                c.reset(opened[arg % len(opened)])
            elif action == 3:
                c.ping()
            elif action == 4 and opened:
                c.end_stream(opened[arg % len(opened)])
        except (StreamClosedError, StreamLimitReached):
            pass
        for event in s.receive(c.data_to_send()):
            assert not isinstance(event, ConnectionEnded), event
            if isinstance(event, DataReceived):
                s.ack(event.stream_id, event.flow_controlled_length)
            if isinstance(event, RequestReceived) and arg % 3 == 0:
                s.send_headers(event.stream_id, [(b":status", b"200")], end_stream=True)
        for event in c.receive(s.data_to_send()):
            assert not isinstance(event, ConnectionEnded), event
            if isinstance(event, DataReceived):
                c.ack(event.stream_id, event.flow_controlled_length)
    assert not s.is_closed and not c.is_closed


EXTRA = [(b"te", b"trailers"), (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x-id", b"7"), (b"accept", b"*/*")]


@FAST
@given(
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 1 << 16)), max_size=40),
    st.lists(st.sampled_from(EXTRA), max_size=4),
)
def test_valid_traffic_from_the_reference_h2_client_is_never_refused(
    actions: list[tuple[int, int]], extra: list[tuple[bytes, bytes]]
) -> None:
    """Another implementation's valid behaviour: no StreamRejected, no connection error."""
    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    s = H2Endpoint(client_side=False, clock=Clock())
    s.initiate()
    opened: list[int] = []
    for action, arg in actions:
        if not opened and action in (1, 2, 3, 6, 8):
            continue
        sid = opened[arg % len(opened)] if opened else 0
        try:
            if action == 0:
                new = c.get_next_available_stream_id()
                c.send_headers(new, [*(POST if arg % 2 else REQUEST), *extra], end_stream=arg % 3 == 0)
                opened.append(new)
            elif action == 1:
                size = min(arg, c.local_flow_control_window(sid), c.max_outbound_frame_size)
                c.send_data(sid, b"d" * size)
            elif action == 2:
                c.end_stream(sid)
            elif action == 3:
                c.reset_stream(sid, ErrorCode.CANCEL)
            elif action == 4:
                c.ping(arg.to_bytes(8, "big"))
            elif action == 5:
                c.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: arg})
            elif action == 6:
                c.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            elif action == 7:
                c.increment_flow_control_window(arg + 1)
            elif action == 8:
                c.prioritize(sid, weight=1 + arg % 256)
        except (H2ProtocolError, KeyError):
            if c.state_machine.state is ConnectionState.CLOSED:
                break  # h2 closes itself on an illegal local action: nothing valid follows
        if action == 3:
            opened.remove(sid)
        for event in s.receive(c.data_to_send()):
            assert not isinstance(event, (ConnectionEnded, StreamRejected)), event
            if isinstance(event, DataReceived):
                s.ack(event.stream_id, event.flow_controlled_length)
            if isinstance(event, RequestReceived) and arg % 2:
                s.send_headers(event.stream_id, [(b":status", b"204")], end_stream=True)
        c.receive_data(s.data_to_send())
    assert not s.is_closed
