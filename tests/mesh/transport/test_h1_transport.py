"""HTTP/1.1 server and pooled client (llhttp, on asyncio streams), over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mesh.transport.h1 import ClientInfo, H1Pool, H1Server, UpstreamError
from mesh.transport.messages import Request, Response, body_of, on_finish


async def _echo(request: Request, info: ClientInfo) -> Response:
    data = b"".join([chunk async for chunk in request.body])
    text = f"{request.method} {request.path} {len(data)} {request.header('x-test')}".encode()
    return Response(200, [("content-type", "text/plain")], body_of(text + b"\n" + data))


async def _serve(handler: Callable[[Request, ClientInfo], Awaitable[Response]]) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(H1Server(handler), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_pool_reuses_one_connection_for_sequential_requests() -> None:
    async def go() -> tuple[list[bytes], int]:
        server, port = await _serve(_echo)
        pool = H1Pool("127.0.0.1", port)
        bodies = []
        for i in range(5):
            response = await pool.request(
                Request(
                    "POST", f"/x/{i}", f"127.0.0.1:{port}", headers=[("x-test", "y")], body=body_of(b"a" * i)
                )
            )
            bodies.append(b"".join([c async for c in response.body]))
        opened = pool.opened
        await pool.close()
        server.close()
        await server.wait_closed()
        return bodies, opened

    bodies, opened = run(go())  # type: ignore[misc]
    assert bodies[3] == b"POST /x/3 3 y\naaa"
    assert opened == 1


def test_connect_failure_is_retryable_upstream_error() -> None:
    async def go() -> UpstreamError:
        server, port = await _serve(_echo)
        server.close()
        await server.wait_closed()
        try:
            await H1Pool("127.0.0.1", port, connect_timeout=1).request(Request("GET", "/", "x"))
        except UpstreamError as exc:
            return exc
        raise AssertionError("no error")

    exc = run(go())
    assert isinstance(exc, UpstreamError)
    assert exc.code == "connect_failure" and exc.retryable


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    seen: list[list[tuple[str, str]]] = []

    async def record(request: Request, info: ClientInfo) -> Response:
        seen.append(request.headers)
        return Response(204)

    async def go() -> None:
        server, port = await _serve(record)
        pool = H1Pool("127.0.0.1", port)
        response = await pool.request(
            Request(
                "GET",
                "/",
                "h",
                headers=[("connection", "x-secret"), ("x-secret", "1"), ("keep-alive", "5"), ("x-kept", "2")],
            )
        )
        assert [c async for c in response.body] == []
        await pool.close()
        server.close()
        await server.wait_closed()

    run(go())
    assert seen == [[("x-kept", "2")]]


def test_real_curl_through_h1_server() -> None:
    async def go() -> str:
        server, port = await _serve(_echo)
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-s",
            "-H",
            "x-test: curl",
            "--data-binary",
            "hello",
            f"http://127.0.0.1:{port}/curl",
            stdout=subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        server.close()
        await server.wait_closed()
        return out.decode()

    assert run(go()) == "POST /curl 5 curl\nhello"


def test_malformed_request_gets_400_and_close() -> None:
    async def go() -> bytes:
        server, port = await _serve(_echo)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return data

    data = run(go())
    assert isinstance(data, bytes) and data.startswith(b"HTTP/1.1 400")


def test_a_header_block_dribbled_slower_than_the_header_timeout_is_cut_off() -> None:
    async def go() -> tuple[bytes, float]:
        server = await asyncio.start_server(H1Server(_echo, header_timeout=0.3), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = asyncio.get_running_loop().time()
        writer.write(b"GET / HTTP/1.1\r\n")
        for _ in range(20):  # one header line every 0.1 s: never a complete head within 0.3 s
            await asyncio.sleep(0.1)
            if writer.is_closing() or reader.at_eof():
                break
            writer.write(b"x-slow: 1\r\n")
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:  # cut off while our next line was in flight: the kernel sent RST
            data = b""
        elapsed = asyncio.get_running_loop().time() - started
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return data, elapsed

    data, elapsed = run(go())  # type: ignore[misc]
    assert elapsed < 1.5
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_a_body_broken_while_the_handler_reads_it_gets_its_status_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that reads the whole body (as the mesh client does for a replayable request) and
    fails because the client framed it wrongly: the client gets the parser's answer (431 for an
    endless trailer line), and the server logs no error."""

    async def go() -> bytes:
        server, port = await _serve(_echo)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"3\r\nabc\r\n0\r\nX-T: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(b"v" * 4096)
                await writer.drain()
        data = await reader.read()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return data

    with caplog.at_level(logging.DEBUG, logger="meshgate.transport.h1"):
        data = run(go())
    assert isinstance(data, bytes) and data.startswith(b"HTTP/1.1 431"), data[:80]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _exchange_raw(server: asyncio.Server, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it (at most ``wait`` s)."""
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        out = await asyncio.wait_for(reader.read(), wait)
    except TimeoutError:
        out = b"(still open)"
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return out


def test_curl_offering_h2c_with_a_body_is_served_with_its_body() -> None:
    """``curl --http2`` on http:// sends ``Upgrade: h2c`` with its POST; the upgrade is declined
    (RFC 9110 section 7.8) and the body reaches the handler (it was lost: a 503 or an empty body)."""

    async def go() -> str:
        server, port = await _serve(_echo)
        proc = await asyncio.create_subprocess_exec(
            "curl", "-s", "--http2", "-H", "x-test: curl", "--data-binary", "hello",
            f"http://127.0.0.1:{port}/up", stdout=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        server.close()
        await server.wait_closed()
        return out.decode()

    assert run(go()) == "POST /up 5 curl\nhello"


@pytest.mark.parametrize(
    ("target", "status"),
    [(b"GET *", b"400"), (b"GET example.com:80", b"400"), (b"OPTIONS *", b"200")],
)
def test_a_request_target_of_the_wrong_form_is_400_not_500(
    target: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> bytes:
        server, _ = await _serve(_echo)
        out = await _exchange_raw(server, target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        server.close()
        await server.wait_closed()
        return out

    with caplog.at_level(logging.DEBUG, logger="meshgate.transport.h1"):
        out = run(go())
    assert isinstance(out, bytes) and out.startswith(b"HTTP/1.1 " + status), out[:60]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_body_that_stops_coming_gets_408_and_close(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> bytes:
        server = await asyncio.start_server(H1Server(_echo, idle_timeout=0.3), "127.0.0.1", 0)
        out = await _exchange_raw(server, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        server.close()
        await server.wait_closed()
        return out

    with caplog.at_level(logging.DEBUG, logger="meshgate.transport.h1"):
        out = run(go())
    assert isinstance(out, bytes) and out.startswith(b"HTTP/1.1 408"), out[:60]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_handler_answer_with_connection_close_closes_the_connection() -> None:
    """The gateway (a raw_headers server) refuses a request with ``connection: close``; a pipelined
    request behind it must not be served (it was: the header was dropped as hop-by-hop)."""
    seen: list[str] = []

    async def handler(request: Request, info: ClientInfo) -> Response:
        seen.append(request.path)
        if request.path == "/bad":
            return Response(400, [("connection", "close"), ("content-length", "0")], body_of(b""))
        return await _echo(request, info)

    async def go() -> bytes:
        server = await asyncio.start_server(H1Server(handler, raw_headers=True), "127.0.0.1", 0)
        out = await _exchange_raw(
            server, b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        server.close()
        await server.wait_closed()
        return out

    out = run(go())
    assert isinstance(out, bytes) and out.startswith(b"HTTP/1.1 400") and b"connection: close" in out
    assert seen == ["/bad"]


@pytest.mark.parametrize("host", [b"evil@orders", b"orders,billing", b"a b", b"orders/x", b"orders:80:80"])
def test_an_invalid_host_value_is_400(host: bytes) -> None:
    """RFC 9112 section 3.2 (the outbound listener routed ``evil@orders`` to ``orders``)."""
    seen: list[str] = []

    async def handler(request: Request, info: ClientInfo) -> Response:
        seen.append(request.authority)
        return await _echo(request, info)

    async def go() -> bytes:
        server, _ = await _serve(handler)
        out = await _exchange_raw(server, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        server.close()
        await server.wait_closed()
        return out

    out = run(go())
    assert isinstance(out, bytes) and out.startswith(b"HTTP/1.1 400"), out[:60]
    assert seen == []


@pytest.mark.parametrize("host", [b"orders", b"orders.mesh:8080", b"127.0.0.1:80", b"[::1]:8080", b"my_svc"])
def test_valid_host_values_are_served(host: bytes) -> None:
    async def go() -> bytes:
        server, _ = await _serve(_echo)
        out = await _exchange_raw(
            server, b"GET / HTTP/1.1\r\nConnection: close\r\nHost: " + host + b"\r\n\r\n"
        )
        server.close()
        await server.wait_closed()
        return out

    out = run(go())
    assert isinstance(out, bytes) and out.startswith(b"HTTP/1.1 200"), out[:60]


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"400", b"bad_request"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"400",
            b"bad_request",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"501",
            b"not_implemented",
        ),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"505", b"http_version_not_supported"),
    ],
)
def test_refusals_say_why_in_x_meshgate_error(request_bytes: bytes, status: bytes, code: bytes) -> None:
    async def go() -> bytes:
        server, _ = await _serve(_echo)
        out = await _exchange_raw(server, request_bytes)
        server.close()
        await server.wait_closed()
        return out

    out = run(go())
    assert isinstance(out, bytes) and out.startswith(b"HTTP/1.1 " + status), out[:60]
    assert b"\r\nx-meshgate-error: " + code + b"\r\n" in out


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_client_leaving_mid_response_closes_the_upstream_stream_at_once(how: str) -> None:
    """A client that hangs up while the upstream body stalls: the response is closed now (stream
    reset, breaker slot released), not whenever the upstream ends (up to the 300 s stream timeout).
    A client that half-closes after its request, before the answer, is still served."""
    import socket
    import struct

    async def go() -> tuple[list[str], bytes]:
        finished: list[str] = []
        stall = asyncio.Event()

        async def stalled() -> Any:
            try:
                yield b"first"
                await stall.wait()  # the upstream says nothing more
                yield b"never"
            finally:
                finished.append("body closed")

        async def handler(request: Request, info: ClientInfo) -> Response:
            if request.path == "/quick":
                return Response(200, [("content-length", "2")], body_of(b"ok"))
            response = Response(200, [("content-length", "100")], stalled())
            on_finish(response, lambda: finished.append("released"))
            return response

        server, port = await _serve(handler)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            got = b""
            while b"first" not in got:
                got += await asyncio.wait_for(reader.read(1024), 5)
            if how == "rst":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
            else:
                writer.write_eof()
            for _ in range(100):
                if len(finished) == 2:
                    break
                await asyncio.sleep(0.01)
            if how == "fin":
                writer.close()
            # half-closed right after the request: still answered
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n")
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return finished, answer
        finally:
            stall.set()
            server.close()
            await server.wait_closed()

    finished, answer = asyncio.run(asyncio.wait_for(go(), 15))
    assert sorted(finished) == ["body closed", "released"]
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")


def test_a_pipelining_client_that_half_closes_gets_every_answer_whole() -> None:
    """Two pipelined requests, then the client shuts its write side while the first answer still
    streams: both answers arrive whole (only a client with nothing left to be served has left)."""

    async def go() -> bytes:
        async def slow() -> Any:
            yield b"part1"
            await asyncio.sleep(0.2)
            yield b"part2"

        async def handler(request: Request, info: ClientInfo) -> Response:
            return Response(200, [], slow())  # chunked: streamed

        server, port = await _serve(handler)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
            await asyncio.sleep(0.05)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer
        finally:
            server.close()
            await server.wait_closed()

    answer = asyncio.run(asyncio.wait_for(go(), 15))
    assert answer.count(b"HTTP/1.1 200") == 2 and answer.count(b"part2") == 2, answer
    assert answer.endswith(b"0\r\n\r\n")
