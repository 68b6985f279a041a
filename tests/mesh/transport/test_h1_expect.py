"""``Expect: 100-continue`` on the HTTP/1.1 server (RFC 9110 section 10.1.1), over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from mesh.transport.h1 import ClientInfo, H1Server
from mesh.transport.messages import Request, Response, body_of

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def _echo(request: Request, info: ClientInfo) -> Response:
    data = b"".join([chunk async for chunk in request.body])
    headers = [("x-expect", request.header("expect") or "-"), ("content-length", str(len(data)))]
    return Response(200, headers, body_of(data))


async def _refuse(request: Request, info: ClientInfo) -> Response:
    return Response(413, [("content-length", "0")], body_of(b""))


async def _serve(
    handler: Callable[[Request, ClientInfo], Awaitable[Response]], raw: bool = False
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(H1Server(handler, raw_headers=raw), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _exchange(
    handler: Callable[[Request, ClientInfo], Awaitable[Response]],
    head: bytes,
    body: bytes,
    raw: bool = False,
) -> tuple[bytes, bytes]:
    """Send ``head``, read what comes within 0.5 s, then send ``body`` and read to the end."""
    server, port = await _serve(handler, raw)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    first = b""
    with contextlib.suppress(TimeoutError):
        first = await asyncio.wait_for(reader.read(4096), 0.5)
    if body and not first.startswith(b"HTTP/1.1 413"):
        writer.write(body)
    rest = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return first, rest


HEAD = (
    b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
)


def test_100_continue_is_sent_when_the_handler_reads_the_body() -> None:
    first, rest = run(_exchange(_echo, HEAD, b"hello"))
    assert first == CONTINUE
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"hello")
    assert b"x-expect: -" in rest  # answered here: not passed on to the handler (and upstream)


def test_no_100_continue_when_the_handler_answers_without_reading() -> None:
    first, rest = run(_exchange(_refuse, HEAD, b"hello"))
    assert first.startswith(b"HTTP/1.1 413")
    assert CONTINUE not in first + rest


def test_no_100_continue_when_the_body_came_with_the_head() -> None:
    first, rest = run(_exchange(_echo, HEAD + b"hello", b""))
    assert not first.startswith(CONTINUE)
    assert (first + rest).startswith(b"HTTP/1.1 200") and (first + rest).endswith(b"hello")


def test_http_1_0_expectation_is_ignored() -> None:
    head = b"POST /up HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    first, rest = run(_exchange(_echo, head, b"hello"))
    assert first == b""  # nothing until the body came
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"hello")


def test_raw_mode_keeps_the_header_for_the_application() -> None:
    first, rest = run(_exchange(_echo, HEAD, b"hello", raw=True))
    assert first == CONTINUE
    assert b"x-expect: 100-continue" in rest


def test_curl_upload_with_expect_does_not_stall() -> None:
    """curl sends "Expect: 100-continue" for large bodies and waits (1 s by default, 5 s here) for
    the 100 before it sends them."""

    async def go() -> tuple[float, str]:
        server, port = await _serve(_echo)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-s",
            "--expect100-timeout",
            "5",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "x" * 2048,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{port}/up",
            stdout=subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        elapsed = time.monotonic() - started
        server.close()
        await server.wait_closed()
        return elapsed, out.decode()

    elapsed, code = run(go())
    assert code == "200"
    assert elapsed < 3.0, f"curl waited {elapsed:.1f} s for 100 Continue"


def test_no_100_continue_once_the_response_has_started() -> None:
    """A handler that answers first and reads the body afterwards (an ASGI app may): an interim
    100 written then would land inside the response."""

    async def answer_then_read(request: Request, info: ClientInfo) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            yield b"head-first;"
            yield b"".join([chunk async for chunk in request.body])

        return Response(200, [("content-length", str(len("head-first;hello")))], stream())

    first, rest = run(_exchange(answer_then_read, HEAD, b"hello"))
    assert CONTINUE not in first + rest
    assert (first + rest).startswith(b"HTTP/1.1 200") and (first + rest).endswith(b"head-first;hello")
