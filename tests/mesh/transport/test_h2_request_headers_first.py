"""The HTTP/2 client opens a request's stream without waiting for its body: a gRPC bidi client may say
nothing until the server's first message. A body known at once still leaves with the HEADERS (one
write), and a body known to be empty ends the stream on HEADERS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from h2pair_testlib import close_pair, open_pair

from mesh.transport.h2conn import H2Protocol
from mesh.transport.messages import Request, Response, body_of, ready_now

T = TypeVar("T")
Handler = Callable[[Request, H2Protocol], Awaitable[Response]]


async def _with_pair(handler: Handler, client_side: Callable[[H2Protocol], Awaitable[T]]) -> T:
    listener, client, servers = await open_pair(handler)
    try:
        return await client_side(client)
    finally:
        await close_pair(listener, client, servers)


def _run(coro: Awaitable[T]) -> T:
    async def go() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(go())


async def _server_first(request: Request, proto: H2Protocol) -> Response:
    """Greets before reading anything, then echoes what the client sends."""

    async def body() -> AsyncIterator[bytes]:
        yield b"hello"
        async for chunk in request.body:
            yield chunk

    return Response(200, [("content-type", "application/grpc")], body())


def test_a_request_whose_body_waits_for_the_server_still_opens_its_stream() -> None:
    async def client_side(client: H2Protocol) -> tuple[bytes, bytes]:
        greeted = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:  # nothing to say until the server spoke
            await greeted.wait()
            yield b"ping"

        request = Request(
            "POST",
            "/echo.Echo/ServerFirst",
            "svc",
            headers=[("content-type", "application/grpc")],
            body=body(),
        )
        response = await asyncio.wait_for(client.request(request), 2)
        chunks = response.body.__aiter__()
        first = await asyncio.wait_for(anext(chunks), 2)
        greeted.set()
        second = await asyncio.wait_for(anext(chunks), 2)
        async for _ in chunks:
            pass
        return first, second

    assert _run(_with_pair(_server_first, client_side)) == (b"hello", b"ping")


def _recorder(seen: list[Any]) -> Handler:
    async def handler(request: Request, proto: H2Protocol) -> Response:
        seen.append(ready_now(request.body))  # what had arrived when the request began
        data = b"".join([chunk async for chunk in request.body])
        return Response(200, [("content-length", str(len(data)))], body_of(data))

    return handler


def _exchange(request: Request) -> tuple[list[Any], int, bytes]:
    """What the server had at once, how many writes the client made for the request, the echo."""
    seen: list[Any] = []

    async def client_side(client: H2Protocol) -> tuple[int, bytes]:
        await asyncio.sleep(0.05)  # SETTINGS and their ACKs are done
        assert client.transport is not None
        transport = client.transport
        writes: list[bytes] = []
        write = transport.write

        def counting(data: Any) -> None:
            writes.append(bytes(data))
            write(data)

        transport.write = counting  # type: ignore[method-assign]
        response = await asyncio.wait_for(client.request(request), 5)
        count = len(writes)
        data = b"".join([chunk async for chunk in response.body])
        return count, data

    count, data = _run(_with_pair(_recorder(seen), client_side))
    return seen, count, data


def test_a_body_known_at_once_leaves_with_the_headers_in_one_write() -> None:
    seen, writes, data = _exchange(
        Request("POST", "/", "svc", headers=[("content-length", "5")], body=body_of(b"hello"))
    )
    assert data == b"hello"
    assert seen == [(b"hello", True)]
    assert writes == 1


def test_a_known_empty_body_ends_the_stream_on_headers() -> None:
    seen, writes, data = _exchange(Request("GET", "/", "svc"))
    assert data == b""
    assert seen == [(b"", True)]
    assert writes == 1


def test_a_body_that_turns_out_empty_ends_the_stream_with_empty_data() -> None:
    async def nothing() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.01)
        return
        yield b""

    seen, _, data = _exchange(Request("POST", "/", "svc", body=nothing()))
    assert data == b""
    assert seen == [None]  # the stream was open before its body's end was known


def test_content_length_zero_ends_the_stream_on_headers_whatever_the_body() -> None:
    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    seen, _, data = _exchange(Request("POST", "/", "svc", headers=[("content-length", "0")], body=nothing()))
    assert data == b""
    assert seen == [(b"", True)]
