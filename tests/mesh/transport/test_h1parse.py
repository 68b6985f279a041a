"""RequestParser and response_head, sans-IO: request heads and bodies fed as bytes (whole, byte by
byte, pipelined), smuggling shapes and oversized heads, trailers and chunk framing, upgrades."""

from __future__ import annotations

import pytest

from mesh.transport.h1parse import H1ParseError, Message, RequestParser, response_head

GET = b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: v\r\n\r\n"
CHUNKED = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nHost: x\r\n"  # the start of a head
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def _parse(data: bytes, step: int = 0, limit: int = 65536) -> tuple[RequestParser, Message]:
    """``data`` fed whole (step 0) or ``step`` bytes at a time; the first request must be there."""
    parser = RequestParser(limit)
    for i in range(0, len(data), step or len(data)):
        parser.feed(data[i : i + (step or len(data))])
    msg = parser.next()
    assert msg is not None and msg.head is not None
    return parser, msg


def _head(size: int) -> bytes:
    """A complete request head of exactly ``size`` bytes."""
    base = b"GET / HTTP/1.1\r\nX: \r\n\r\n"
    return b"GET / HTTP/1.1\r\nX: " + b"a" * (size - len(base)) + b"\r\n\r\n"


def _status(parser: RequestParser) -> int:
    with pytest.raises(H1ParseError) as info:
        parser.next()
    assert parser.error is info.value
    return info.value.status


def test_simple_get() -> None:
    parser, msg = _parse(GET)
    head = msg.head
    assert head is not None
    assert (head.method, head.target, head.http_version) == (b"GET", b"/a?b", b"1.1")
    assert head.headers == [(b"Host", b"x"), (b"X-A", b"v")]
    assert head.keep_alive and not head.upgrade
    assert head.size == len(b"/a?b") + (4 + 1 + 4) + (3 + 1 + 4)
    assert msg.complete and msg.chunks == [] and msg.leftover == b""
    assert parser.error is None and not parser.upgraded


@pytest.mark.parametrize(
    ("data", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
    ],
)
def test_keep_alive(data: bytes, keep_alive: bool) -> None:
    _, msg = _parse(data)
    assert msg.head is not None and msg.head.keep_alive is keep_alive


@pytest.mark.parametrize(
    "data",
    [GET, POST + b"Content-Length: 5\r\n\r\nhello", CHUNKED + b"2;e=1\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"],
)
def test_byte_at_a_time_gives_the_same_request(data: bytes) -> None:
    _, whole = _parse(data)
    _, dribbled = _parse(data, step=1)
    assert dribbled.head == whole.head
    assert b"".join(dribbled.chunks) == b"".join(whole.chunks)
    assert dribbled.complete and whole.complete


def test_content_length_body() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
    msg = parser.next()
    assert msg is not None and msg.chunks == [b"hello"] and not msg.complete
    parser.feed(b"world")
    assert b"".join(msg.chunks) == b"helloworld" and msg.complete


def test_chunked_body_with_extensions() -> None:
    parser = RequestParser()
    parser.feed(CHUNKED + b'5;a=b;c="d e"\r\nhello\r\n')
    msg = parser.next()
    assert msg is not None and msg.chunks == [b"hello"] and not msg.complete
    parser.feed(b"1;x\r\n!\r\n0\r\n\r\n")
    assert b"".join(msg.chunks) == b"hello!" and msg.complete
    assert msg.head is not None and msg.head.headers[-1] == (b"Transfer-Encoding", b"chunked")


@pytest.mark.parametrize("count", [2, 3])
def test_pipelined_requests_queue_in_order(count: int) -> None:
    reqs = [
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        CHUNKED + b"1\r\nz\r\n0\r\n\r\n",
    ][:count]
    parser = RequestParser()
    parser.feed(b"".join(reqs))
    assert not parser.idle
    for target, body in [(b"/1", b""), (b"/2", b"abc"), (b"/up", b"z")][:count]:
        first = parser.next()
        assert first is not None and first.head is not None and first.head.target == target
        assert parser.next() is first  # stays first until done()
        assert first.complete and b"".join(first.chunks) == body
        parser.done()
    assert parser.next() is None and parser.idle


#: llhttp refuses a Transfer-Encoding not ending in chunked only after on_headers_complete: the head
#: is queued as a Message, feed raises, and next() hands out the refused head instead of raising.
SMUGGLING = [
    pytest.param(POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="cl-te"),
    pytest.param(POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", id="te-cl"),
    pytest.param(POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", id="two-cl"),
    pytest.param(POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", id="two-identical-cl"),
    pytest.param(POST + b"Content-Length: 5, 5\r\n\r\nhello", id="cl-list"),
    pytest.param(POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", id="xchunked"),
    pytest.param(POST + b"Transfer-Encoding: gzip\r\n\r\nhello", id="te-gzip"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\nHost: x\n\n", id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", id="bare-lf-in-fields"),
    pytest.param(b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", id="nul-in-target"),
]


@pytest.mark.parametrize("data", SMUGGLING)
def test_smuggling_shapes_are_400(data: bytes) -> None:
    parser = RequestParser()
    try:
        parser.feed(data)
    except H1ParseError as exc:
        assert exc.status == 400
    assert _status(parser) == 400
    parser.feed(GET)  # nothing more is parsed after an error
    assert _status(parser) == 400


@pytest.mark.parametrize("data", SMUGGLING)
def test_error_in_second_head_waits_for_the_first(data: bytes) -> None:
    parser = RequestParser()
    parser.feed(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" + data)
    assert parser.error is not None and parser.error.status == 400
    first = parser.next()
    assert first is not None and first.head is not None and first.head.target == b"/1"
    assert parser.next() is first
    parser.done()
    assert _status(parser) == 400


@pytest.mark.parametrize("step", [0, 1])
def test_error_in_body_being_read_raises_from_feed(step: int) -> None:
    parser, msg = _parse(CHUNKED + b"5\r\nhello\r\n", step)
    with pytest.raises(H1ParseError) as info:
        parser.feed(b"zz\r\n")
    assert info.value.status == 400 and not msg.complete
    assert _status(parser) == 400  # the broken request left the queue: it is never served


def test_error_in_second_body_waits_for_the_first() -> None:
    parser = RequestParser()
    parser.feed(b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok" + CHUNKED + b"zz\r\n")
    first = parser.next()
    assert first is not None and first.complete and b"".join(first.chunks) == b"ok"
    parser.done()
    assert _status(parser) == 400


@pytest.mark.parametrize("step", [1, 7, 100, 1000])
def test_dribbled_head_over_the_limit_is_431(step: int) -> None:
    parser = RequestParser(1024)
    data = _head(4000)
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
    assert _status(parser) == 431


def test_unfinished_head_over_the_limit_in_one_feed_is_431() -> None:
    parser = RequestParser(1024)
    parser.feed(_head(4000)[:-4])
    assert _status(parser) == 431


def test_whole_head_over_the_limit_in_one_feed_reports_its_size() -> None:
    # a head that arrives whole is queued; the server refuses it with 431 by head.size
    _, msg = _parse(_head(4000), limit=1024)
    assert msg.head is not None and msg.head.size > 1024


@pytest.mark.parametrize("step", [0, 1, 100])
def test_head_just_under_the_limit_passes(step: int) -> None:
    parser, msg = _parse(_head(1024), step, limit=1024)
    assert msg.complete and parser.error is None
    assert msg.head is not None and msg.head.size <= 1024


@pytest.mark.parametrize(
    ("earlier", "data"),
    [
        (b"", b"GET /1 HTTP/1.1\r\n\r\n"),  # after a whole request, in one feed
        (b"POST /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\n", b"abc"),  # after the end of a body
    ],
    ids=["after-head", "after-body"],
)
def test_pipelined_unfinished_head_over_the_limit_is_431(earlier: bytes, data: bytes) -> None:
    parser = RequestParser(1024)
    parser.feed(earlier)
    parser.feed(data + _head(4000)[:-4])
    first = parser.next()
    assert first is not None and first.complete
    parser.done()
    assert _status(parser) == 431


def test_trailers_are_not_headers() -> None:
    _, msg = _parse(CHUNKED + b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nHost: evil\r\n\r\n")
    assert msg.complete and msg.chunks == [b"abc"]
    assert msg.head is not None and msg.head.headers == [(b"Host", b"x"), (b"Transfer-Encoding", b"chunked")]


def test_trailers_over_the_limit_are_431() -> None:
    parser, msg = _parse(CHUNKED + b"3\r\nabc\r\n0\r\n", limit=1024)
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(20))
    with pytest.raises(H1ParseError) as info:
        parser.feed(trailers + b"\r\n")
    assert info.value.status == 431 and not msg.complete


@pytest.mark.parametrize(
    ("start", "piece"),
    [
        (b"", b"1;" + b"e" * 100 + b"\r\na\r\n"),  # 1-byte chunks with long extensions
        (b"1\r\na\r\n0\r\nX-T: ", b"v" * 100),  # an endless trailer value
        (b"0\r\n", b"X-T: " + b"v" * 100 + b"\r\n"),  # endless trailer fields
    ],
)
def test_endless_chunk_framing_is_431(start: bytes, piece: bytes) -> None:
    parser, msg = _parse(CHUNKED + start, limit=1024)
    with pytest.raises(H1ParseError) as info:
        for _ in range(10_000):
            parser.feed(piece)
    assert info.value.status == 431 and parser.error is info.value and not msg.complete


def test_a_trailer_line_after_a_large_body_is_bounded_by_the_head_limit() -> None:
    # httptools holds a field until it ends: after 1 MiB of body, a trailer line must not be allowed
    # to grow to a multiple of the body (the framing allowance), only to about the head limit
    parser, msg = _parse(CHUNKED, limit=1024)
    for _ in range(64):
        parser.feed(b"4000\r\n" + b"b" * 0x4000 + b"\r\n")
    parser.feed(b"0\r\nX-T: ")
    fed = 0
    with pytest.raises(H1ParseError) as info:
        while fed < 1 << 20:
            parser.feed(b"v" * 512)
            fed += 512
    assert info.value.status == 431 and not msg.complete
    assert fed <= 2048, fed


@pytest.mark.parametrize(("limit", "head", "trailer"), [(65536, 40_000, 26_000), (8192, 7_000, 1_500)])
def test_the_head_does_not_count_against_the_trailer_bound(limit: int, head: int, trailer: int) -> None:
    pad = b"X-Pad: " + b"p" * (head - len(CHUNKED) - 9) + b"\r\n"
    parser, msg = _parse(CHUNKED[:-2] + pad + b"\r\n", limit=limit)
    parser.feed(b"0\r\n")
    parser.feed(b"X-T: " + b"v" * trailer)
    parser.feed(b"\r\n\r\n")
    assert parser.error is None and msg.complete


def test_pipelined_requests_before_a_chunked_one_do_not_count_against_its_trailer_bound() -> None:
    gets = GET * (60_000 // len(GET))
    filler = 65536 - len(gets) - len(CHUNKED) - len(b"X-F: \r\n")
    post = CHUNKED[:-2] + b"X-F: " + b"f" * filler + b"\r\n\r\n"
    assert len(gets + post) == 65536  # one full read
    parser = RequestParser(65536)
    parser.feed(gets + post)
    parser.feed(b"5\r\n")
    parser.feed(b"hello\r\n0\r\n\r\n")
    for _ in range(len(gets) // len(GET)):
        msg = parser.next()
        assert msg is not None and msg.complete
        parser.done()
    msg = parser.next()
    assert parser.error is None and msg is not None and msg.complete and msg.chunks == [b"hello"]


def test_a_body_trickled_in_small_pieces_is_not_mistaken_for_trailers() -> None:
    parser, msg = _parse(CHUNKED, limit=1024)
    parser.feed(b"10000\r\n")  # one 64 KiB chunk, fed a byte at a time below
    for _ in range(0x10000):
        parser.feed(b"c")
    parser.feed(b"\r\n0\r\n\r\n")
    assert parser.error is None and msg.complete and sum(map(len, msg.chunks)) == 0x10000


def test_small_chunks_without_extensions_are_fine() -> None:
    parser, msg = _parse(CHUNKED, limit=1024)
    for _ in range(2000):
        parser.feed(b"1\r\na\r\n")
    parser.feed(b"0\r\n\r\n")
    assert parser.error is None and msg.complete and b"".join(msg.chunks) == b"a" * 2000


@pytest.mark.parametrize(
    "data",
    [UPGRADE, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"],
    ids=["websocket", "connect"],
)
def test_upgrade_stops_parsing(data: bytes) -> None:
    parser, msg = _parse(data + b"\x81\x00EXTRA")
    assert msg.head is not None and msg.head.upgrade and msg.complete
    assert msg.leftover == b"\x81\x00EXTRA" and parser.upgraded
    parser.feed(GET)  # ignored: the bytes belong to the new protocol
    parser.done()
    assert parser.next() is None and parser.error is None


def test_upgrade_dribbled_leaves_later_bytes_to_the_caller() -> None:
    parser, msg = _parse(UPGRADE, step=1)
    assert msg.head is not None and msg.head.upgrade and parser.upgraded and msg.leftover == b""


def test_http2_request_line_parses() -> None:
    _, msg = _parse(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
    assert msg.head is not None and msg.head.http_version == b"2.0" and not msg.head.keep_alive


def test_idle() -> None:
    parser = RequestParser()
    assert parser.idle
    parser.feed(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not parser.idle
    parser.done()
    assert parser.idle
    parser.feed(b"G")
    assert not parser.idle and parser.next() is None
    parser.feed(b"ET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    parser.done()
    assert parser.idle


def test_response_head() -> None:
    assert response_head(200, [("content-length", "2")]) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    assert response_head(599, []) == b"HTTP/1.1 599 \r\n\r\n"
    tab = response_head(204, [("x", "a\tb"), ("y", "")])
    assert tab == b"HTTP/1.1 204 No Content\r\nx: a\tb\r\ny: \r\n\r\n"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x", "a\rb"),
        ("x", "a\nb"),
        ("x", "a\x00b"),
        ("x", "v\r\nx: y"),
        ("a b", "v"),
        ("a:b", "v"),
        ("", "v"),
        ("x\r\ny", "v"),
        ("é", "v"),
    ],
)
def test_response_head_refuses_split_fields(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        response_head(200, [("content-length", "0"), (name, value)])


# -- found by the eighth session's review ------------------------------------------------------------
def test_trailing_whitespace_is_not_part_of_a_field_value() -> None:
    """RFC 9110 section 5.5: llhttp trims the leading whitespace only; an HTTP/2 hop refuses a value
    that ends in one (it was a 500 before)."""
    _, msg = _parse(b"POST / HTTP/1.1\r\nHost: x \r\nX-A: b\t\r\nContent-Length: 2 \r\n\r\nhi")
    assert msg.head is not None
    assert msg.head.headers == [(b"Host", b"x"), (b"X-A", b"b"), (b"Content-Length", b"2")]
    assert msg.chunks == [b"hi"] and msg.complete


@pytest.mark.parametrize("codings", [b"gzip, chunked", b"foo, chunked", b"identity, chunked"])
def test_a_transfer_coding_before_chunked_is_501(codings: bytes) -> None:
    """RFC 9112 section 6.1: the app would get the coded bytes with nothing saying so."""
    parser = RequestParser()
    with pytest.raises(H1ParseError) as info:
        parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + codings + b"\r\n\r\n0\r\n\r\n")
        parser.next()
    assert info.value.status == 501


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["chunked-twice", "http-1.0"],
)
def test_faulty_chunked_framing_is_400(data: bytes) -> None:
    parser = RequestParser()
    with pytest.raises(H1ParseError) as info:
        parser.feed(data)
        parser.next()
    assert info.value.status == 400


def test_a_request_target_over_the_head_limit_is_414() -> None:
    parser = RequestParser(1024)
    with pytest.raises(H1ParseError) as info:
        parser.feed(b"GET /" + b"a" * 2000)
        parser.next()
    assert info.value.status == 414


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (
            b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\n",
            b"hello",
        ),
        (
            b"PUT /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
    ],
    ids=["h2c-with-length", "foo-chunked"],
)
@pytest.mark.parametrize("step", [0, 1, 7])
def test_an_upgrade_that_is_not_followed_is_served_with_its_body(head: bytes, body: bytes, step: int) -> None:
    """RFC 9110 section 7.8: a server may ignore Upgrade. llhttp stops after such a head and left the
    body unparsed (the app got an empty body, or a 503); now the body and the next request parse."""
    parser, msg = _parse(head + body + GET, step=step)
    assert msg.head is not None and not msg.head.upgrade and not parser.upgraded
    assert b"".join(msg.chunks) == b"hello" and msg.complete and msg.leftover == b""
    parser.done()
    after = parser.next()
    assert after is not None and after.head is not None and after.head.target == b"/a?b" and after.complete


def test_an_upgrade_without_a_body_that_is_not_followed_leaves_the_next_request_parseable() -> None:
    data = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n" + GET
    parser, msg = _parse(data)
    assert msg.head is not None and not msg.head.upgrade and msg.complete and msg.chunks == []
    parser.done()
    after = parser.next()
    assert after is not None and after.head is not None and after.head.target == b"/a?b"


def test_many_pipelined_declined_upgrades_in_one_read_parse_without_recursion() -> None:
    """Each declined upgrade went one call deeper: ~1,000 of them in one 64 KiB read raised
    RecursionError out of the parser."""
    one = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: a\r\n\r\n"
    parser = RequestParser(1 << 20)
    parser.feed(one * 1500)
    served = 0
    while (msg := parser.next()) is not None:
        assert msg.head is not None and not msg.head.upgrade and msg.complete
        served += 1
        parser.done()
    assert served == 1500
