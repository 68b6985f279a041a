"""Header validation rules (RFC 9113 section 8, RFC 8441) on their own."""

from __future__ import annotations

import pytest

from mesh.h2 import MalformedHeadersError
from mesh.h2.headers import check_request, check_response, check_trailers

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/a?b=c")]


@pytest.mark.parametrize(
    "headers",
    [
        GET,
        [*GET, (b"te", b"trailers"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
        [*GET, (b"host", b"SVC")],  # host equal to :authority, case aside
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"svc")],
        [(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":authority", b"s"), (b":path", b"*")],
        [(b":method", b"CONNECT"), (b":authority", b"db:5432")],
        [*GET, (b"x-empty", b""), (b"x-utf8", "é".encode()), (b"x-tab", b"a\tb")],
    ],
)
def test_valid_requests(headers: list[tuple[bytes, bytes]]) -> None:
    check_request(headers, connect_protocol=True)


def test_request_returns_method_and_content_length() -> None:
    assert check_request([*GET, (b"content-length", b"12")], connect_protocol=False) == (b"GET", 12)
    assert check_request(GET, connect_protocol=False) == (b"GET", None)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([*GET, (b":protocol", b"websocket")], "not allowed"),
        ([(b":method", b"CONNECT"), (b":authority", b"s"), (b":scheme", b"https")], "CONNECT"),
        ([(b":method", b"G T"), *GET[1:]], ":method"),
        ([*GET[:3], (b":path", b"*")], "OPTIONS"),
        ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")], "authority"),
        ([*GET, (b"x-a", b"b ")], "whitespace"),
        ([*GET, (b"", b"x")], "invalid header name"),
        ([*GET, (b"content-length", b"-1")], "content-length"),
    ],
)
def test_invalid_requests(headers: list[tuple[bytes, bytes]], reason: str) -> None:
    with pytest.raises(MalformedHeadersError, match=reason) as info:
        check_request(headers, connect_protocol=False)
    assert info.value.error_code == 1


def test_responses() -> None:
    assert check_response([(b":status", b"204")]) == (204, None)
    assert check_response([(b":status", b"200"), (b"content-length", b"3")]) == (200, 3)
    for bad in (b"101", b"099", b"2000", b"abc"):
        with pytest.raises(MalformedHeadersError):
            check_response([(b":status", bad)])
    with pytest.raises(MalformedHeadersError):
        check_response([(b":status", b"200"), (b":status", b"200")])


def test_trailers() -> None:
    check_trailers([(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    with pytest.raises(MalformedHeadersError):
        check_trailers([(b":status", b"200")])
    with pytest.raises(MalformedHeadersError):
        check_trailers([(b"Grpc-Status", b"0")])
