"""H1Pool when the app answers before it has read the request body (RFC 9112 section 9.5): a 413 sent
as soon as the head is in, then a close or no more reading, while a body of several MiB is still
streaming. The caller gets the app's answer (not ``upstream_reset``), nothing is raised or logged
from writing to a closed connection, the body stops, and the pool goes on with a new connection.
Each test runs on the standard event loop and on uvloop (the sidecar's loop, which raises
RuntimeError on a write to a closed transport)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from mesh.transport.h1pool import H1Pool
from mesh.transport.messages import Request, body_of

CHUNK = 64 * 1024
MIB = 1024 * 1024
#: The body the app answers early: more than the socket buffers between the pool and the app can
#: hold (the app's receive buffer is fixed below, the pool's send buffer is at most tcp_wmem's 4 MiB
#: by default), so that what the app leaves unread cannot all have gone out.
SIZE = 16 * MIB
TOO_LARGE = b"too large\n"
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Body:
    """A request body of ``size`` bytes streamed in 64 KiB chunks; counts the chunks pulled."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.pulled = 0

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if self.left <= 0:
            raise StopAsyncIteration
        await asyncio.sleep(0.001)  # a body that streams: each chunk arrives on its own
        chunk = b"x" * min(CHUNK, self.left)
        self.left -= len(chunk)
        self.pulled += 1
        return chunk


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> int:
    """Read a request body (Content-Length or chunked) to its end, in bounded pieces; its size."""
    lower = head.lower()
    if b"\r\ntransfer-encoding: chunked\r\n" in lower:
        total = 0
        for _ in range(1 << 20):
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers: the empty line
                return total
            await reader.readexactly(size + 2)
            total += size
        raise AssertionError("too many chunks")
    length = next((int(v) for k, v in _fields(lower) if k == b"content-length"), 0)
    left = length
    while left:
        left -= len(await reader.readexactly(min(CHUNK, left)))
    return length


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines if line)]


class App:
    """By path: ``/close`` answers 413 (Connection: close) once the head is in (or once it has read
    ``?after=`` bytes more) and closes; ``/stop`` answers the same way but keeps the connection and
    stops reading until ``resume`` is set, then reads and drops what comes until the client closes;
    ``/echo`` answers 200 at once, then echoes the body as it reads it; anything else reads the body
    and answers 200 with its size."""

    def __init__(self) -> None:
        self.connections = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.resume = asyncio.Event()
        self.closed_by_client = 0
        self.dropped = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        self.connections += 1
        try:
            for _ in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                target, _, query = head.split(b" ")[1].partition(b"?after=")
                if query:  # a limit checked as the body comes: some of it is read first
                    await reader.readexactly(int(query))
                if target == b"/close":
                    writer.write(
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                        % (len(TOO_LARGE), TOO_LARGE)
                    )
                    await writer.drain()
                    return
                if target == b"/stop":
                    writer.write(
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: %d\r\n\r\n" % len(TOO_LARGE)
                    )
                    writer.write(TOO_LARGE)
                    await writer.drain()
                    await asyncio.wait_for(self.resume.wait(), 5)
                    await self._drop_until_closed(reader)
                    return
                if target == b"/echo":
                    await self._echo(reader, writer, head)
                    continue
                size = await _read_body(reader, head)
                answer = b"%d" % size
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    async def _drop_until_closed(self, reader: asyncio.StreamReader) -> None:
        try:
            async with asyncio.timeout(5):
                for _ in range(1 << 20):
                    data = await reader.read(CHUNK)
                    if not data:
                        break
                    self.dropped += len(data)
            self.closed_by_client += 1
        except ConnectionError:
            self.closed_by_client += 1

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        length = next(int(v) for k, v in _fields(head.lower()) if k == b"content-length")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        left = length
        while left:
            data = await reader.readexactly(min(CHUNK, left))
            left -= len(data)
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _run(loop: str, app: App, test: Callable[[H1Pool], Awaitable[None]]) -> None:
    """Serve ``app`` and run ``test`` with a pool to it on ``loop``; then every connection of the app
    must end, no task may be left (the body's sender included) and the loop must have reported no
    error (an exception nobody retrieved, a failed callback)."""
    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
        for sock in server.sockets:  # inherited by accepted sockets; no autotuning beyond it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
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
        for _ in range(10):
            await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())
    assert reported == []


async def _call(pool: H1Pool, request: Request) -> tuple[int, bytes]:
    response = await pool.request(request)
    return response.status, b"".join([chunk async for chunk in response.body])


def _post(path: str, body: AsyncIterator[bytes], size: int | None) -> Request:
    headers = [] if size is None else [("content-length", str(size))]
    return Request("POST", path, "app", headers=headers, body=body)


BODIES = ["content-length", "chunked", "all-at-once"]
#: The app answers as soon as the head is in, or once it has read 1 MiB of the body.
AFTER = {"at-once": "", "after-1-mib": f"?after={MIB}"}


def _early_body(kind: str, size: int) -> tuple[AsyncIterator[bytes], Body | None, int | None]:
    if kind == "all-at-once":  # in memory already: written without waiting for the app to take it
        return body_of(b"x" * size), None, size
    streamed = Body(size)
    return streamed, streamed, None if kind == "chunked" else size


async def _then_more_requests(pool: H1Pool) -> None:
    """After an early answer: a streamed body the app reads in full, on a new connection, and then
    requests that reuse that connection (a response after the whole body keeps it alive)."""
    assert await _call(pool, _post("/read", Body(4 * MIB), 4 * MIB)) == (200, b"%d" % (4 * MIB))
    assert await _call(pool, _post("/read", Body(3 * MIB), None)) == (200, b"%d" % (3 * MIB))
    assert await _call(pool, Request("GET", "/", "app")) == (200, b"0")
    for size in (1000, None):  # small bodies there at once: written with the head
        assert await _call(pool, _post("/read", body_of(b"x" * 1000), size)) == (200, b"1000")
    assert pool.opened == 2


@pytest.mark.parametrize("after", AFTER)
@pytest.mark.parametrize("body_kind", BODIES)
@pytest.mark.parametrize("loop", LOOPS)
def test_an_answer_before_the_body_then_close_reaches_the_caller(
    loop: str, body_kind: str, after: str
) -> None:
    app = App()

    async def check(pool: H1Pool) -> None:
        body, streamed, size = _early_body(body_kind, SIZE)
        assert await _call(pool, _post("/close" + AFTER[after], body, size)) == (413, TOO_LARGE)
        if streamed is not None:
            assert streamed.pulled < SIZE // CHUNK // 4  # the body stopped with the app's answer
        await _then_more_requests(pool)
        assert app.connections == 2

    _run(loop, app, check)


@pytest.mark.parametrize("after", AFTER)
@pytest.mark.parametrize("body_kind", BODIES)
@pytest.mark.parametrize("loop", LOOPS)
def test_an_answer_before_the_body_from_an_app_that_stops_reading_reaches_the_caller(
    loop: str, body_kind: str, after: str
) -> None:
    app = App()

    async def check(pool: H1Pool) -> None:
        body, streamed, size = _early_body(body_kind, SIZE)
        assert await _call(pool, _post("/stop" + AFTER[after], body, size)) == (413, TOO_LARGE)
        if streamed is not None:
            assert streamed.pulled < SIZE // CHUNK // 4  # the body stopped with the app's answer
        app.resume.set()
        await _then_more_requests(pool)  # not on the connection the body was cut short on
        async with asyncio.timeout(5):
            while not app.closed_by_client:
                await asyncio.sleep(0.01)
        assert app.dropped < SIZE // 2  # the rest of the body never went out
        assert app.connections == 2

    _run(loop, app, check)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_app_that_answers_while_it_reads_gets_the_whole_body(loop: str) -> None:
    """A 200 head sent at once and the body echoed as it is read: the body goes on after the head
    (until the answer is complete), and as all of it went out, the connection is reused."""
    app = App()
    size = 24 * MIB

    async def check(pool: H1Pool) -> None:
        body = Body(size)
        response = await pool.request(_post("/echo", body, size))
        assert response.status == 200
        received = 0
        async for chunk in response.body:
            received += len(chunk)
        assert received == size and body.pulled == size // CHUNK
        assert await _call(pool, Request("GET", "/", "app")) == (200, b"0")
        assert pool.opened == 1 == app.connections

    _run(loop, app, check)
