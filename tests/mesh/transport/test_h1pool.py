"""H1Pool against a fake app on a real loopback socket that writes exact bytes: response framing
(chunked, close-delimited, HEAD, 1xx), connection reuse, malformed responses, and request heads and
bodies as they reach the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mesh.transport.h1pool import H1Pool, UpstreamError, request_head
from mesh.transport.messages import Headers, Request
from shared.http1 import MAX_HEAD_BYTES

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
#: An answer is written in one write (bytes) or piece by piece (tuple); None closes the connection.
Answer = bytes | tuple[bytes, ...] | None


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"\r\ntransfer-encoding: chunked\r\n" in lower:
        return head + await reader.readuntil(b"\r\n0\r\n\r\n")
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return head + await reader.readexactly(int(line.split(b":")[1]))
    return head


class App:
    """Reads each request (on whatever connection) and writes the next answer; a None after an answer
    closes that connection, and so does a request with no answer left. Between requests it waits
    (an idle kept-alive connection stays open until the client closes it)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.received: list[bytes] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.connections += 1
        try:
            while True:
                self.received.append(await _read_request(reader))
                if not self.answers:
                    break
                answer = self.answers.pop(0)
                parts = answer if isinstance(answer, tuple) else (answer or b"",)
                for part in parts:
                    writer.write(part)
                    await writer.drain()
                    if len(parts) > 1:
                        await asyncio.sleep(0.01)  # separate reads on the client side
                if self.answers and self.answers[0] is None:
                    self.answers.pop(0)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()


def _run(app: App, test: Callable[[H1Pool], Awaitable[None]]) -> None:
    """Serve ``app``, run ``test`` with a pool to it, then close everything and wait for every
    connection of the app to end (a connection the pool leaked would hang here)."""

    async def main() -> None:
        server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
        pool = H1Pool("127.0.0.1", server.sockets[0].getsockname()[1], idle_timeout=30)
        try:
            async with asyncio.timeout(10):
                await test(pool)
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()
            async with asyncio.timeout(5):
                await asyncio.gather(*app.tasks)

    asyncio.run(main())


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _read(pool: H1Pool, request: Request | None = None) -> tuple[int, Headers, bytes]:
    response = await pool.request(request or Request("GET", "/", "app"))
    return response.status, response.headers, b"".join([c async for c in response.body])


def _upstream_reset(caught: pytest.ExceptionInfo[UpstreamError]) -> bool:
    return caught.value.code == "upstream_reset"


# -- response framing and reuse ------------------------------------------------------------------


def test_a_chunked_body_split_across_writes_is_reassembled_and_the_connection_reused() -> None:
    app = App(
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n6\r\n world\r\n",
            b"1\r\n!\r\n0\r\n\r\n",
        ),
        OK,
    )

    async def check(pool: H1Pool) -> None:
        status, headers, body = await _read(pool)
        assert (status, body) == (200, b"hello world!")
        assert ("transfer-encoding", "chunked") not in headers  # hop-by-hop
        assert (await _read(pool))[::2] == (200, b"ok")
        assert pool.opened == 1 and app.connections == 1

    _run(app, check)


def test_a_close_delimited_body_is_read_to_the_end_and_the_connection_not_reused() -> None:
    app = App((b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello ", b"world"), None, OK)

    async def check(pool: H1Pool) -> None:
        assert (await _read(pool))[::2] == (200, b"hello world")
        assert (await _read(pool))[::2] == (200, b"ok")
        assert pool.opened == 2 and app.connections == 2

    _run(app, check)


def test_a_head_response_has_no_body_whatever_its_content_length_says() -> None:
    app = App(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", OK)

    async def check(pool: H1Pool) -> None:
        async with asyncio.timeout(1):
            status, headers, body = await _read(pool, Request("HEAD", "/", "app"))
        assert (status, body) == (200, b"") and ("content-length", "100") in headers
        assert (await _read(pool))[::2] == (200, b"ok")
        assert pool.opened == 1 and app.connections == 1

    _run(app, check)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        (b"HTTP/1.1 100 Continue\r\n\r\n", OK),
        (b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n", OK),
    ],
    ids=["one-write", "two-writes", "early-hints"],
)
def test_interim_responses_are_skipped(answer: Answer) -> None:
    app = App(answer, OK)

    async def check(pool: H1Pool) -> None:
        assert await _read(pool) == (200, [("content-length", "2")], b"ok")
        assert (await _read(pool))[::2] == (200, b"ok")
        assert pool.opened == 1

    _run(app, check)


@pytest.mark.parametrize(
    ("answer", "opened"),
    [
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", 2),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 2),
        (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok", 1),
    ],
    ids=["connection-close", "http-1.0", "http-1.0-keep-alive"],
)
def test_reuse_follows_the_response_keep_alive(answer: bytes, opened: int) -> None:
    app = App(answer, OK)  # the app keeps the connection open either way

    async def check(pool: H1Pool) -> None:
        assert (await _read(pool))[::2] == (200, b"ok")
        assert (await _read(pool))[::2] == (200, b"ok")
        assert pool.opened == opened == app.connections

    _run(app, check)


# -- broken responses ----------------------------------------------------------------------------

CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
MALFORMED: dict[str, Answer] = {
    "bad-header-line": b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nx-a: 1\r\n 2\r\ncontent-length: 2\r\n\r\nok",
    "two-lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
    "length-and-chunked": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\nok",
    "bad-status": b"HTTP/1.1 2xx OK\r\ncontent-length: 2\r\n\r\nok",
    "bad-chunk-size": CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n",
    "bad-chunk-size-later": (CHUNKED + b"5\r\nhello\r\n", b"zz\r\nhello\r\n0\r\n\r\n"),
    "101": b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
}


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_response_is_an_upstream_reset_and_its_connection_dropped(answer: Answer) -> None:
    app = App(answer, OK)

    async def check(pool: H1Pool) -> None:
        with pytest.raises(UpstreamError) as caught:
            await _read(pool)
        assert _upstream_reset(caught) and not caught.value.retryable
        assert (await _read(pool))[::2] == (200, b"ok")
        assert pool.opened == 2 == app.connections

    _run(app, check)


def test_the_app_closing_mid_body_is_an_upstream_reset() -> None:
    app = App(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", None)

    async def check(pool: H1Pool) -> None:
        with pytest.raises(UpstreamError) as caught:
            await _read(pool)
        assert _upstream_reset(caught)

    _run(app, check)


def _head_of(size: int) -> bytes:
    """A 200 response whose head is ``size`` bytes, with a two-byte body."""
    start, end = b"HTTP/1.1 200 OK\r\nx-pad: ", b"\r\ncontent-length: 2\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end + b"ok"


JUST_OVER = _head_of(MAX_HEAD_BYTES + 5000)


@pytest.mark.parametrize(
    "answer",
    [_head_of(4 * MAX_HEAD_BYTES), (JUST_OVER[:60000], JUST_OVER[60000:])],
    ids=["one-write", "just-over-in-two-reads"],
)
def test_a_response_head_over_the_limit_is_refused(answer: Answer) -> None:
    app = App(answer)

    async def check(pool: H1Pool) -> None:
        with pytest.raises(UpstreamError) as caught:
            await _read(pool)
        assert _upstream_reset(caught)

    _run(app, check)


@pytest.mark.parametrize(
    "extra",
    [
        # the parser goes on into the next response in the same feed: it must not replace the first
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\nx-second: 1\r\n\r\nnope",
        b"GARBAGE",
    ],
    ids=["unsolicited-response", "garbage"],
)
def test_bytes_past_the_response_in_the_same_write_stop_reuse(extra: bytes) -> None:
    app = App(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-first: 1\r\n\r\nok" + extra, OK)

    async def check(pool: H1Pool) -> None:
        first = await _read(pool)
        second = await _read(pool)
        assert first == (200, [("content-length", "2"), ("x-first", "1")], b"ok")
        assert second[::2] == (200, b"ok") and pool.opened == 2

    _run(app, check)


def test_bytes_past_the_response_in_a_later_read_stop_reuse() -> None:
    unsolicited = b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope"
    app = App((b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"ok" + unsolicited), OK)

    async def check(pool: H1Pool) -> None:
        assert await _read(pool) == (200, [("content-length", "2")], b"ok")
        assert (await _read(pool))[::2] == (200, b"ok") and pool.opened == 2

    _run(app, check)


@pytest.mark.parametrize(
    ("answer", "opened"),
    [(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", 2), (OK, 1)],
    ids=["stopped-early", "all-received"],
)
def test_a_consumer_closing_the_body_early_closes_the_connection(answer: bytes, opened: int) -> None:
    app = App(answer, OK)

    async def check(pool: H1Pool) -> None:
        response = await pool.request(Request("GET", "/", "app"))
        async for chunk in response.body:
            assert chunk == answer[-len(chunk) :]
            break
        await response.body.aclose()  # type: ignore[attr-defined]
        assert (await _read(pool))[::2] == (200, b"ok")
        assert pool.opened == opened == app.connections

    _run(app, check)


# -- requests ------------------------------------------------------------------------------------


def test_request_head_is_written_exactly() -> None:
    assert request_head("GET", "/x", [("host", "a")]) == b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"
    assert request_head("POST", "/é?q=1", [("x-a", "café"), ("x-b", "")]) == (
        b"POST /\xe9?q=1 HTTP/1.1\r\nx-a: caf\xe9\r\nx-b: \r\n\r\n"
    )


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/x", [("host", "a\r\nx-injected: 1")]),
        ("GET", "/x", [("host", "a\nb")]),
        ("GET", "/x", [("host", "a\x00")]),
        ("GET", "/x y", [("host", "a")]),
        ("GET", "/x\r\n", [("host", "a")]),
        ("GET", "", [("host", "a")]),
        ("GET", "/x", [("bad name", "a")]),
        ("GET", "/x", [("x:y", "a")]),  # would read as name x, value "y: a"
        ("GET", "/x", [("", "a")]),
        ("G T", "/x", [("host", "a")]),
        ("GET", "/€", [("host", "a")]),
        ("GET", "/x", [("host", "a€")]),
    ],
)
def test_request_head_refuses_what_cannot_be_written_safely(
    method: str, target: str, headers: Headers
) -> None:
    with pytest.raises(ValueError):  # UnicodeEncodeError is a ValueError
        request_head(method, target, headers)


@pytest.mark.parametrize(
    "request_",
    [
        Request("GET", "/x", "app", headers=[("x-a", "1\rx")]),
        (Request("GET", "/x", "app", headers=[("x-a", "1\r\nx-b: 2")])),
        Request("GET", "/x y", "app"),
        (Request("GET", "/x", "app\r\nx-b: 2")),
        Request("GET", "/x", "app", headers=[("bad name", "1")]),
        Request("GET", "/x", "app", headers=[("x-a", "€")]),
        Request("POST", "/x", "app", headers=[("x-a", "€")], body=_chunks(b"data")),
        Request("POST", "/x", "app", headers=[("content-length", "two")], body=_chunks(b"ab")),
    ],
    ids=["cr", "crlf", "space-target", "crlf-authority", "bad-name", "non-latin-1", "chunked", "length"],
)
def test_an_unwritable_request_is_an_upstream_error_and_nothing_is_sent(request_: Request) -> None:
    app = App()

    async def check(pool: H1Pool) -> None:
        with pytest.raises(UpstreamError) as caught:
            await _read(pool, request_)
        assert _upstream_reset(caught) and not caught.value.retryable
        assert pool.opened == 0 and app.connections == 0

    _run(app, check)


@pytest.mark.parametrize(
    ("headers", "parts", "wire"),
    [
        ([("content-length", "5")], (b"he", b"llo"), b"content-length: 5\r\n\r\nhello"),
        ([], (b"abc", b"", b"de"), b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        ([], (), b"\r\n"),
        ([], (b"",), b"\r\n"),
        ([("content-length", "0")], (), b"content-length: 0\r\n\r\n"),
    ],
    ids=["content-length", "chunked", "empty", "empty-chunk", "zero-length"],
)
def test_a_request_body_is_sent_as_declared_or_chunked(
    headers: Headers, parts: tuple[bytes, ...], wire: bytes
) -> None:
    app = App(OK)

    async def check(pool: H1Pool) -> None:
        request = Request("POST", "/up", "app", headers=[("x-a", "1"), *headers], body=_chunks(*parts))
        assert (await _read(pool, request))[::2] == (200, b"ok")
        assert app.received == [b"POST /up HTTP/1.1\r\nhost: app\r\nx-a: 1\r\n" + wire]

    _run(app, check)


@pytest.mark.parametrize(
    "parts", [(b"abc", b"de"), (b"abcde",), (b"ab",), ()], ids=["longer", "longer-at-once", "shorter", "none"]
)
def test_a_request_body_breaking_its_content_length_is_an_upstream_error(parts: tuple[bytes, ...]) -> None:
    app = App(OK)

    async def check(pool: H1Pool) -> None:
        request = Request("POST", "/up", "app", headers=[("content-length", "4")], body=_chunks(*parts))
        with pytest.raises(UpstreamError) as caught:
            await _read(pool, request)
        assert _upstream_reset(caught) and not caught.value.retryable
        assert app.received == []  # the app never got a whole request
        assert (await _read(pool))[::2] == (200, b"ok") and pool.opened == 2

    _run(app, check)


def test_response_trailers_are_dropped_and_bounded() -> None:
    """Trailers of a chunked response from the app are not kept; more than MAX_HEAD_BYTES of them
    is a broken response (the body fails), not memory without end."""
    small = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n"
    field = b"x-pad: " + b"a" * 200 + b"\r\n"
    big = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" + field * (
        MAX_HEAD_BYTES // len(field) + 10
    )
    app = App(small, big + b"\r\n")

    async def check(pool: H1Pool) -> None:
        status, headers, body = await _read(pool)
        assert (status, body) == (200, b"ok") and ("x-t", "1") not in headers
        with pytest.raises(UpstreamError) as caught:
            await _read(pool)
        assert _upstream_reset(caught) and "trailers" in str(caught.value)

    _run(app, check)
