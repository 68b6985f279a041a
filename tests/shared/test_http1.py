"""ResponseParse (shared/http1.py), sans-IO: the bounds on what httptools may hold between callbacks."""

from __future__ import annotations

import pytest

from shared.http1 import MAX_HEAD_BYTES, READ_CHUNK, ResponseError, ResponseParse

CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("start", "piece"),
    [
        (b"0\r\nx-t: ", b"v" * 4096),  # one endless trailer line after the last chunk
        (b"", b"1;" + b"e" * 4096),  # an endless chunk extension
    ],
    ids=["trailer-line", "chunk-extension"],
)
def test_endless_framing_after_a_large_body_is_cut_off(start: bytes, piece: bytes) -> None:
    parse = ResponseParse(head_only=False)
    parse.feed(CHUNKED)
    for _ in range(256):  # 4 MiB of body first: the bound does not grow with it
        parse.feed(b"4000\r\n" + b"b" * 0x4000 + b"\r\n")
    parse.chunks.clear()
    parse.feed(start)
    fed = 0
    with pytest.raises(ResponseError, match="trailers or chunk framing"):
        while fed < 8 << 20:
            parse.feed(piece)
            fed += len(piece)
    assert fed <= MAX_HEAD_BYTES + READ_CHUNK + len(piece)


def test_a_body_trickled_byte_by_byte_is_fine() -> None:
    parse = ResponseParse(head_only=False)
    parse.feed(CHUNKED + b"30000\r\n")
    for _ in range(0x30000):
        parse.feed(b"c")
    parse.feed(b"\r\n0\r\nx-t: 1\r\n\r\n")
    assert parse.complete and sum(map(len, parse.chunks)) == 0x30000
