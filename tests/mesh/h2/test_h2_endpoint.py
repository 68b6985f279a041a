"""Playbooks for H2Endpoint: bytes in, events and frames out (server and client side)."""

from __future__ import annotations

import dataclasses

import pytest
from h2_frames import POST, REQUEST, RESPONSE, Clock, client, names, of_type, parse_frames, pump, server
from hpack import Decoder
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from mesh.h2 import (
    ConnectionClosedError,
    ConnectionEnded,
    DataReceived,
    ErrorCode,
    H2Endpoint,
    InformationalReceived,
    Limits,
    MalformedHeadersError,
    PingAcked,
    RequestReceived,
    ResponseReceived,
    StreamClosedError,
    StreamLimitReached,
    StreamReset,
    TrailersReceived,
)


def test_initiate_advertises_limits_and_opens_the_connection_window() -> None:
    ep = H2Endpoint(client_side=False, limits=Limits(max_concurrent_streams=7))
    ep.initiate()
    settings, update = parse_frames(ep.data_to_send())
    assert isinstance(settings, SettingsFrame) and isinstance(update, WindowUpdateFrame)
    assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 7
    assert settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 1 << 20
    assert settings.settings[SettingsFrame.MAX_FRAME_SIZE] == 16384
    assert settings.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 65536
    assert settings.settings[SettingsFrame.ENABLE_CONNECT_PROTOCOL] == 1
    assert (update.stream_id, update.window_increment) == (0, (1 << 24) - 65535)


def test_client_initiate_sends_the_preface() -> None:
    ep = H2Endpoint(client_side=True)
    ep.initiate()
    assert ep.data_to_send().startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


def test_server_request_response_playbook() -> None:
    ep, ff = server()
    events = ep.receive(ff.headers(1, POST) + ff.data(1, b"hello", end_stream=True))
    assert events == [
        RequestReceived(stream_id=1, headers=POST, end_stream=False),
        DataReceived(stream_id=1, data=b"hello", flow_controlled_length=5, end_stream=True),
    ]
    ep.ack(1, 5)
    ep.send_headers(1, RESPONSE)
    assert ep.send_data(1, b"world", end_stream=True) == 5
    head, data = parse_frames(ep.data_to_send())
    assert isinstance(head, HeadersFrame) and isinstance(data, DataFrame)
    assert data.data == b"world" and "END_STREAM" in data.flags
    assert ep.open_streams == 0
    with pytest.raises(StreamClosedError):
        ep.send_data(1, b"late")


def test_send_data_is_chunked_to_the_peer_frame_size() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, end_stream=True))
    ep.send_headers(1, RESPONSE)
    assert ep.send_data(1, b"x" * 40_000, end_stream=True) == 40_000
    data = of_type(parse_frames(ep.data_to_send()), DataFrame)
    assert [len(f.data) for f in data] == [16384, 16384, 7232]
    assert ["END_STREAM" in f.flags for f in data] == [False, False, True]


def test_send_data_end_stream_only_when_everything_fitted() -> None:
    ep, ff = server()
    ep.receive(ff.settings(initial_window_size=10) + ff.headers(1, end_stream=True))
    ep.send_headers(1, RESPONSE)
    assert ep.window(1) == 10
    assert ep.send_data(1, b"x" * 25, end_stream=True) == 10
    assert ep.open_streams == 1
    assert names(ep.receive(ff.window_update(1, 100))) == ["WindowOpened"]
    assert ep.send_data(1, b"x" * 15, end_stream=True) == 15
    assert ep.open_streams == 0


def test_outbound_headers_are_validated_before_touching_hpack() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, end_stream=True) + ff.headers(3, end_stream=True))
    with pytest.raises(MalformedHeadersError):
        ep.send_headers(1, [(b":status", b"200"), (b"connection", b"close")])
    with pytest.raises(MalformedHeadersError):
        ep.send_headers(1, [(b":status", b"200"), (b"x-a", b"a\r\nb")])
    assert ep.data_to_send() == b""
    ep.send_headers(1, RESPONSE, end_stream=True)
    assert isinstance(parse_frames(ep.data_to_send())[0], HeadersFrame)


def test_informational_then_final_response_then_trailers() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, POST, end_stream=True))
    ep.send_headers(1, [(b":status", b"103"), (b"link", b"</a>")])
    ep.send_headers(1, RESPONSE)
    with pytest.raises(MalformedHeadersError):
        ep.send_headers(1, [(b"grpc-status", b"0")])  # trailers must end the stream
    ep.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    assert len(of_type(parse_frames(ep.data_to_send()), HeadersFrame)) == 3
    assert ep.open_streams == 0


def test_peer_reset_is_reported() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, POST))
    events = ep.receive(ff.rst(1, ErrorCode.CANCEL))
    assert events == [StreamReset(stream_id=1, error_code=ErrorCode.CANCEL, remote=True)]
    assert ep.open_streams == 0
    with pytest.raises(StreamClosedError):
        ep.send_headers(1, RESPONSE)


def test_local_reset_sends_rst_and_forgets_the_stream() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, POST))
    ep.reset(1)
    ep.reset(1)  # already gone: ignored
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, ErrorCode.CANCEL)]
    assert ep.receive(ff.data(1, b"in flight")) == []


def test_ack_gives_the_window_back() -> None:
    ep, ff = server(Limits(initial_window_size=1000))
    ep.receive(ff.headers(1, POST) + ff.data(1, b"x" * 600))
    ep.ack(1, 600)
    updates = of_type(parse_frames(ep.data_to_send()), WindowUpdateFrame)
    assert [(f.stream_id, f.window_increment) for f in updates] == [(1, 600)]
    ep.ack(99, 10)  # unknown streams are ignored


def test_graceful_goaway_finishes_in_flight_streams_and_refuses_new_ones() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, POST))
    ep.goaway()
    goaway = of_type(parse_frames(ep.data_to_send()), GoAwayFrame)
    assert [(f.last_stream_id, f.error_code) for f in goaway] == [(1, 0)]
    assert not ep.is_closed
    assert ep.receive(ff.headers(3, REQUEST, end_stream=True)) == []
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(3, ErrorCode.REFUSED_STREAM)]
    assert names(ep.receive(ff.data(1, b"body", end_stream=True))) == ["DataReceived"]
    ep.send_headers(1, RESPONSE, end_stream=True)
    assert ep.is_closed


def test_abortive_goaway_stops_everything() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, POST))
    ep.goaway(ErrorCode.INTERNAL_ERROR, "bye")
    goaway = of_type(parse_frames(ep.data_to_send()), GoAwayFrame)
    assert [(f.last_stream_id, f.error_code, f.additional_data) for f in goaway] == [(1, 2, b"bye")]
    assert ep.is_closed and ep.receive(ff.data(1, b"x")) == []
    with pytest.raises(ConnectionClosedError):
        ep.send_headers(1, RESPONSE)


def test_extended_connect_and_plain_connect_are_accepted() -> None:
    ep, ff = server()
    ws = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":authority", b"svc"),
        (b":path", b"/chat"),
    ]
    tcp = [(b":method", b"CONNECT"), (b":authority", b"db:5432")]
    assert names(ep.receive(ff.headers(1, ws) + ff.headers(3, tcp))) == ["RequestReceived"] * 2


def test_extended_connect_refused_when_disabled() -> None:
    ep, ff = server(Limits(enable_connect_protocol=False))
    ws = [
        (b":method", b"CONNECT"),
        (b":protocol", b"ws"),
        (b":scheme", b"https"),
        (b":authority", b"s"),
        (b":path", b"/"),
    ]
    assert names(ep.receive(ff.headers(1, ws))) == ["StreamRejected"]


# -- client side ----------------------------------------------------------------------------------


def test_client_respects_peer_max_concurrent_streams() -> None:
    ep, ff = client(max_concurrent_streams=2)
    assert ep.available_streams == 2
    first = ep.send_request(REQUEST, end_stream=True)
    ep.send_request(REQUEST, end_stream=True)
    assert ep.available_streams == 0
    with pytest.raises(StreamLimitReached) as info:
        ep.send_request(REQUEST)
    assert info.value.error_code == ErrorCode.REFUSED_STREAM
    events = ep.receive(ff.headers(first, RESPONSE, end_stream=True))
    assert events == [ResponseReceived(stream_id=first, headers=RESPONSE, end_stream=True)]
    assert ep.available_streams == 1


def test_client_sees_refused_stream() -> None:
    ep, ff = client()
    sid = ep.send_request(REQUEST, end_stream=True)
    events = ep.receive(ff.rst(sid, ErrorCode.REFUSED_STREAM))
    assert events == [StreamReset(stream_id=sid, error_code=ErrorCode.REFUSED_STREAM, remote=True)]


def test_client_goaway_reports_unprocessed_streams_and_finishes_the_rest() -> None:
    ep, ff = client()
    sids = [ep.send_request(REQUEST, end_stream=True) for _ in range(3)]
    events = ep.receive(ff.goaway(sids[0], 0, b"draining"))
    assert events == [
        ConnectionEnded(error_code=0, reason="draining", last_stream_id=sids[0], remote=True),
        StreamReset(stream_id=sids[1], error_code=ErrorCode.REFUSED_STREAM, remote=True),
        StreamReset(stream_id=sids[2], error_code=ErrorCode.REFUSED_STREAM, remote=True),
    ]
    with pytest.raises(ConnectionClosedError):
        ep.send_request(REQUEST)
    assert ep.available_streams == 0 and not ep.is_closed
    events = ep.receive(ff.headers(sids[0], RESPONSE) + ff.data(sids[0], b"ok", end_stream=True))
    assert names(events) == ["ResponseReceived", "DataReceived"]
    assert ep.is_closed


def test_client_informational_then_final() -> None:
    ep, ff = client()
    sid = ep.send_request(REQUEST, end_stream=True)
    events = ep.receive(ff.headers(sid, [(b":status", b"100")]) + ff.headers(sid, RESPONSE, end_stream=True))
    assert events == [
        InformationalReceived(stream_id=sid, headers=[(b":status", b"100")]),
        ResponseReceived(stream_id=sid, headers=RESPONSE, end_stream=True),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"1")],
        [(b":status", b"20")],
        [(b":status", b"2x0")],
        [(b":status", b"200"), (b"X-Upper", b"1")],
        [(b":status", b"200"), (b":path", b"/")],
        [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
    ],
)
def test_client_malformed_response_resets_the_stream(headers: list[tuple[bytes, bytes]]) -> None:
    ep, ff = client()
    sid = ep.send_request(REQUEST, end_stream=True)
    events = ep.receive(ff.headers(sid, headers))
    assert events == [StreamReset(stream_id=sid, error_code=ErrorCode.PROTOCOL_ERROR, remote=False)]
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(sid, ErrorCode.PROTOCOL_ERROR)]


def test_client_response_content_length_checked_except_for_head() -> None:
    ep, ff = client()
    get = ep.send_request(REQUEST, end_stream=True)
    head = ep.send_request([(b":method", b"HEAD"), *REQUEST[1:]], end_stream=True)
    sized = [(b":status", b"200"), (b"content-length", b"10")]
    events = ep.receive(ff.headers(get, sized) + ff.data(get, b"short", end_stream=True))
    assert names(events) == ["ResponseReceived", "StreamReset"]
    events = ep.receive(ff.headers(head, sized, end_stream=True))
    assert names(events) == ["ResponseReceived"]


def test_client_trailers() -> None:
    ep, ff = client()
    sid = ep.send_request(REQUEST, end_stream=True)
    trailers = [(b"grpc-status", b"0")]
    events = ep.receive(ff.headers(sid, RESPONSE) + ff.headers(sid, trailers, end_stream=True))
    assert events[-1] == TrailersReceived(stream_id=sid, headers=trailers)
    assert ep.open_streams == 0


def test_client_refuses_to_send_malformed_requests() -> None:
    ep, _ = client()
    with pytest.raises(MalformedHeadersError):
        ep.send_request([*REQUEST, (b"connection", b"keep-alive")])
    assert ep.open_streams == 0 and ep.data_to_send() == b""


def test_ping_round_trip() -> None:
    c = H2Endpoint(client_side=True, clock=Clock())
    s = H2Endpoint(client_side=False, clock=Clock())
    c.initiate()
    s.initiate()
    pump(c, s)
    c.ping()
    c.ping(b"12345678")
    at_c, _ = pump(c, s)
    assert at_c == [PingAcked(data=(1).to_bytes(8, "big")), PingAcked(data=b"12345678")]


def test_events_are_frozen_and_keyword_only() -> None:
    event = StreamReset(stream_id=1, error_code=0, remote=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.stream_id = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        StreamReset(1, 0, True)  # type: ignore[call-arg]


def test_server_cannot_send_requests() -> None:
    ep, _ = server()
    with pytest.raises(Exception, match="client side"):
        ep.send_request(REQUEST)


def test_connect_tunnel_ignores_content_length_both_ways() -> None:
    ep, ff = client()
    sid = ep.send_request([(b":method", b"CONNECT"), (b":authority", b"db:5432")])
    head = [(b":status", b"200"), (b"content-length", b"0")]
    events = ep.receive(ff.headers(sid, head) + ff.data(sid, b"tunnel bytes"))
    assert names(events) == ["ResponseReceived", "DataReceived"]
    srv, sff = server()
    tcp = [(b":method", b"CONNECT"), (b":authority", b"db:5432"), (b"content-length", b"1")]
    events = srv.receive(sff.headers(1, tcp) + sff.data(1, b"more than one byte"))
    assert names(events) == ["RequestReceived", "DataReceived"]


def test_padded_data_reports_the_flow_controlled_length() -> None:
    ep, ff = server(Limits(initial_window_size=1000))
    events = ep.receive(ff.headers(1, POST) + ff.data(1, b"abc", pad=10))
    assert events[-1] == DataReceived(stream_id=1, data=b"abc", flow_controlled_length=14, end_stream=False)
    ep.ack(1, 14)
    ep.receive(ff.data(1, b"x" * 600))
    ep.ack(1, 600)
    updates = of_type(parse_frames(ep.data_to_send()), WindowUpdateFrame)
    assert sum(u.window_increment for u in updates if u.stream_id == 1) == 614


def test_push_promise_is_refused_because_push_is_disabled() -> None:
    ep, ff = client()
    sid = ep.send_request(REQUEST, end_stream=True)
    block = ff.block(REQUEST)
    promise = (4 + len(block)).to_bytes(3, "big") + bytes((0x5, 0x4)) + sid.to_bytes(4, "big")
    events = ep.receive(promise + (2).to_bytes(4, "big") + block)
    assert isinstance(events[-1], ConnectionEnded)
    assert events[-1].error_code == ErrorCode.PROTOCOL_ERROR


def test_output_bound_reopens_once_drained() -> None:
    ep, ff = server(Limits(max_pending_output=50_000))
    ep.receive(ff.headers(1, REQUEST, end_stream=True))
    ep.send_headers(1, RESPONSE)
    assert ep.send_data(1, b"x" * 80_000) < 50_000
    assert ep.window(1) == 0 and ep.send_data(1, b"x") == 0
    ep.data_to_send()
    assert ep.window(1) > 0 and ep.send_data(1, b"x") == 1


def test_credentials_are_never_indexed() -> None:
    ep, _ = client()
    ep.send_request([*REQUEST, (b"authorization", b"Bearer abc"), (b"x-id", b"1")], end_stream=True)
    (head,) = of_type(parse_frames(ep.data_to_send()), HeadersFrame)
    decoded = Decoder().decode(head.data, raw=True)
    assert [type(h).__name__ for h in decoded if h[0] == b"authorization"] == ["NeverIndexedHeaderTuple"]
    assert [type(h).__name__ for h in decoded if h[0] == b"x-id"] == ["HeaderTuple"]
