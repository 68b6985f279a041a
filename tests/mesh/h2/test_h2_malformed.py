"""Malformed requests (STANDARDS: HTTP/2 abuse): a stream error, never an upstream request."""

from __future__ import annotations

import pytest
from h2_frames import POST, REQUEST, names, of_type, parse_frames, server
from hyperframe.frame import RstStreamFrame

from mesh.h2 import ErrorCode, Limits, StreamReset

BASE = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/p")]
MALFORMED = {
    "upper-case name": [*BASE, (b"X-Foo", b"1")],
    "CR in value": [*BASE, (b"x-foo", b"a\rb")],
    "LF in value": [*BASE, (b"x-foo", b"a\nb")],
    "NUL in value": [*BASE, (b"x-foo", b"a\x00b")],
    "leading space in value": [*BASE, (b"x-foo", b" a")],
    "space in name": [*BASE, (b"x foo", b"1")],
    "colon in regular name": [*BASE, (b"x:foo", b"1")],
    "connection": [*BASE, (b"connection", b"close")],
    "keep-alive": [*BASE, (b"keep-alive", b"5")],
    "proxy-connection": [*BASE, (b"proxy-connection", b"x")],
    "transfer-encoding": [*BASE, (b"transfer-encoding", b"chunked")],
    "upgrade": [*BASE, (b"upgrade", b"websocket")],
    "te gzip": [*BASE, (b"te", b"gzip")],
    "missing :method": BASE[1:],
    "missing :scheme": [BASE[0], *BASE[2:]],
    "missing :path": BASE[:3],
    "empty :path": [*BASE[:3], (b":path", b"")],
    "relative :path": [*BASE[:3], (b":path", b"p")],
    "space in :path": [*BASE[:3], (b":path", b"/a b")],
    "duplicate :path": [*BASE, (b":path", b"/q")],
    "unknown pseudo": [*BASE, (b":foo", b"1")],
    "response pseudo": [*BASE, (b":status", b"200")],
    "pseudo after regular": [*BASE[:3], (b"x-a", b"1"), BASE[3]],
    "content-length not digits": [*BASE, (b"content-length", b"1x")],
    "two content-lengths": [*BASE, (b"content-length", b"1"), (b"content-length", b"1")],
    "two hosts": [*BASE, (b"host", b"svc"), (b"host", b"svc")],
    "host differs from :authority": [*BASE, (b"host", b"other")],
    "userinfo in :authority": [*BASE[:2], (b":authority", b"u@svc"), BASE[3]],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"svc:1"), (b":path", b"/")],
    ":protocol without CONNECT": [*BASE, (b":protocol", b"websocket")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_a_stream_error(case: str) -> None:
    ep, ff = server()
    events = ep.receive(ff.headers(1, MALFORMED[case]) + ff.headers(3, REQUEST, end_stream=True))
    assert names(events) == ["StreamRejected", "RequestReceived"]
    assert events[0].error_code == ErrorCode.PROTOCOL_ERROR  # type: ignore[attr-defined]
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, ErrorCode.PROTOCOL_ERROR)]


def test_content_length_with_end_stream_on_headers() -> None:
    ep, ff = server()
    events = ep.receive(ff.headers(1, [*POST, (b"content-length", b"5")], end_stream=True))
    assert names(events) == ["StreamRejected"]


def test_content_length_short_body_in_one_read_is_never_delivered() -> None:
    ep, ff = server()
    wire = ff.headers(1, [*POST, (b"content-length", b"5")]) + ff.data(1, b"abc", end_stream=True)
    events = ep.receive(wire)
    assert names(events) == ["StreamRejected"]
    assert ep.open_streams == 0


def test_content_length_short_body_after_delivery_resets_the_stream() -> None:
    ep, ff = server()
    assert names(ep.receive(ff.headers(1, [*POST, (b"content-length", b"5")]))) == ["RequestReceived"]
    assert names(ep.receive(ff.data(1, b"ab"))) == ["DataReceived"]
    events = ep.receive(ff.data(1, b"c", end_stream=True))
    assert events == [StreamReset(stream_id=1, error_code=ErrorCode.PROTOCOL_ERROR, remote=False)]
    rst = of_type(parse_frames(ep.data_to_send()), RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, ErrorCode.PROTOCOL_ERROR)]


def test_content_length_exceeded_is_caught_before_end_stream() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, [*POST, (b"content-length", b"2")]))
    events = ep.receive(ff.data(1, b"abc"))
    assert events == [StreamReset(stream_id=1, error_code=ErrorCode.PROTOCOL_ERROR, remote=False)]


def test_content_length_matching_body_is_fine() -> None:
    ep, ff = server()
    wire = (
        ff.headers(1, [*POST, (b"content-length", b"3")])
        + ff.data(1, b"ab")
        + ff.data(1, b"c", end_stream=True)
    )
    assert names(ep.receive(wire)) == ["RequestReceived", "DataReceived", "DataReceived"]


def test_trailers_with_pseudo_header_reset_the_stream() -> None:
    ep, ff = server()
    ep.receive(ff.headers(1, POST))
    events = ep.receive(ff.headers(1, [(b":path", b"/x")], end_stream=True))
    assert events == [StreamReset(stream_id=1, error_code=ErrorCode.PROTOCOL_ERROR, remote=False)]


def test_data_after_refusal_credits_the_connection_window() -> None:
    ep, ff = server(Limits(connection_window_size=65535))
    wire = ff.headers(1, [*POST, (b"te", b"gzip")]) + ff.data(1, b"x" * 16_000) * 4
    assert names(ep.receive(wire)) == ["StreamRejected"]
    ep.data_to_send()
    # The peer keeps sending on the refused stream (in flight): never a connection error.
    for _ in range(100):  # 1.6 MB > the connection window: credited back each time
        assert ep.receive(ff.data(1, b"x" * 16_000)) == []
    assert not ep.is_closed
    assert names(ep.receive(ff.headers(3, REQUEST, end_stream=True))) == ["RequestReceived"]
