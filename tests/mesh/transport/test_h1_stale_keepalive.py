"""The app closes a kept-alive connection while the next request is on its way (uvicorn does so after
5 s idle): a bodyless idempotent request is sent again on a new connection; one with a body is not;
an idle connection older than the pool's idle timeout is not reused at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mesh.transport.h1 import H1Pool, UpstreamError
from mesh.transport.messages import Request

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


class App:
    """Answers the first request of each connection; reads the second and closes without answering."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await _read_request(reader)
            self.requests += 1
            writer.write(OK)
            await writer.drain()
            await _read_request(reader)  # the request that crossed our FIN
            self.requests += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _with_app(test: Callable[[App, int], Awaitable[None]]) -> None:
    async def main() -> None:
        handler = App()
        server = await asyncio.start_server(handler.handle, "127.0.0.1", 0)
        try:
            await test(handler, server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def _read(pool: H1Pool, request: Request) -> tuple[int, bytes]:
    response = await pool.request(request)
    return response.status, b"".join([c async for c in response.body])


def test_a_get_meeting_a_closing_connection_is_sent_again() -> None:
    async def check(handler: App, port: int) -> None:
        pool = H1Pool("127.0.0.1", port, idle_timeout=30)
        assert await _read(pool, Request("GET", "/a", "app")) == (200, b"ok")
        assert await _read(pool, Request("GET", "/b", "app")) == (200, b"ok")
        assert pool.stats["stale_retries"] == 1 and handler.connections == 2
        await pool.close()

    _with_app(check)


def test_a_post_with_a_body_is_not_sent_twice() -> None:
    async def check(handler: App, port: int) -> None:
        pool = H1Pool("127.0.0.1", port, idle_timeout=30)
        assert await _read(pool, Request("GET", "/a", "app")) == (200, b"ok")
        with pytest.raises(UpstreamError) as caught:
            await _read(
                pool, Request("POST", "/orders", "app", "http", [("content-length", "2")], _body(b"{}"))
            )
        assert caught.value.code == "upstream_reset" and caught.value.retryable
        assert pool.stats["stale_retries"] == 0 and handler.connections == 1
        await pool.close()

    _with_app(check)


def test_an_idle_connection_past_the_idle_timeout_is_not_reused() -> None:
    async def check(handler: App, port: int) -> None:
        pool = H1Pool("127.0.0.1", port, idle_timeout=0.05)
        assert await _read(pool, Request("GET", "/a", "app")) == (200, b"ok")
        await asyncio.sleep(0.1)
        assert await _read(
            pool, Request("POST", "/b", "app", "http", [("content-length", "2")], _body(b"{}"))
        ) == (
            200,
            b"ok",
        )
        assert pool.stats == {"stale_retries": 0, "idle_expired": 1} and handler.connections == 2
        await pool.close()

    _with_app(check)
