"""Two H2Endpoints pumping bytes: request, response, bodies larger than the windows, trailers."""

from __future__ import annotations

from h2_frames import POST, Clock

from mesh.h2 import (
    DataReceived,
    Event,
    H2Endpoint,
    Limits,
    RequestReceived,
    ResponseReceived,
    TrailersReceived,
)

SMALL = Limits(initial_window_size=65535, connection_window_size=65535)


def pair(limits: Limits = SMALL) -> tuple[H2Endpoint, H2Endpoint]:
    c = H2Endpoint(client_side=True, limits=limits, clock=Clock())
    s = H2Endpoint(client_side=False, limits=limits, clock=Clock())
    c.initiate()
    s.initiate()
    s.receive(c.data_to_send())
    c.receive(s.data_to_send())
    s.receive(c.data_to_send())
    return c, s


def deliver(src: H2Endpoint, dst: H2Endpoint, *, consume: bool = True) -> list[Event]:
    """Move src's bytes to dst; the consumer at dst takes every DATA chunk (acks it) if asked."""
    events = dst.receive(src.data_to_send())
    if consume:
        for e in events:
            if isinstance(e, DataReceived):
                dst.ack(e.stream_id, e.flow_controlled_length)
    return events


def test_round_trip_with_bodies_larger_than_the_windows_and_trailers() -> None:
    c, s = pair()
    request_body = bytes(range(256)) * 4096  # 1 MiB
    response_body = b"r" * 300_000
    sid = c.send_request([*POST, (b"content-length", str(len(request_body)).encode())])
    got_request: list[bytes] = []
    got_response: list[bytes] = []
    seen: list[Event] = []
    sent = 0
    responded = False
    r_sent = 0
    for _ in range(10_000):
        if sent < len(request_body):
            sent += c.send_data(sid, request_body[sent:], end_stream=True)
        for e in deliver(c, s):
            seen.append(e)
            if isinstance(e, DataReceived):
                got_request.append(e.data)
        request_done = any(isinstance(e, DataReceived) and e.end_stream for e in seen)
        if not responded and request_done and isinstance(seen[0], RequestReceived):
            s.send_headers(sid, [(b":status", b"200")])
            responded = True
        if responded and r_sent < len(response_body):
            r_sent += s.send_data(sid, response_body[r_sent:])
            if r_sent == len(response_body):
                s.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        at_client = deliver(s, c)
        seen += at_client
        got_response += [e.data for e in at_client if isinstance(e, DataReceived)]
        if any(isinstance(e, TrailersReceived) for e in at_client):
            break
    assert b"".join(got_request) == request_body
    assert b"".join(got_response) == response_body
    assert any(isinstance(e, ResponseReceived) for e in seen)
    assert seen[-1] == TrailersReceived(stream_id=sid, headers=[(b"grpc-status", b"0")])
    deliver(c, s)
    assert c.open_streams == 0 and s.open_streams == 0


def test_a_consumer_that_does_not_ack_stops_the_sender() -> None:
    c, s = pair()
    sid = c.send_request(POST)
    accepted = 0
    buffered = 0
    for _ in range(50):
        accepted += c.send_data(sid, b"x" * 100_000)
        buffered += sum(len(e.data) for e in deliver(c, s, consume=False) if isinstance(e, DataReceived))
        c.receive(s.data_to_send())
    assert accepted == buffered == 65535  # the receiver holds at most one window
    assert c.window(sid) == 0
    s.ack(sid, buffered)
    c.receive(s.data_to_send())
    assert c.window(sid) > 0
