"""Hypothesis: valid client behaviour never breaks the server; garbage never makes receive raise."""

from __future__ import annotations

from h2_frames import POST, REQUEST, Clock, FrameFactory, raw_frame, server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.h2 import (
    ConnectionEnded,
    DataReceived,
    H2Endpoint,
    Limits,
    RequestReceived,
    StreamClosedError,
    StreamLimitReached,
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
        ep.receive(wire[pos : pos + cut])
        pos += cut
    ep.data_to_send()


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
    ep.receive(b"".join(raw_frame(t, flags, sid, payload) for t, flags, sid, payload in frames))
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
