"""The control-plane HTTP/1.1 client against raw loopback servers: framing, keep-alive, bounds, errors."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shared.registry.http import HttpClient, HttpError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


class Server:
    """A loopback server running ``handler`` per connection; counts connections and keeps requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass  # the client went away, or the test ended
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def keep_alive(*responses: bytes, record: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            request = await _head(reader)
            if record is not None:
                record.append(request)
            writer.write(response)
            await writer.drain()
            if b"connection: close" in response:
                return
        await reader.read()

    return handler


OK_JSON = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"a": true}'


def test_json_request_and_response_over_one_kept_alive_connection() -> None:
    seen: list[bytes] = []

    async def go() -> None:
        async with Server(keep_alive(OK_JSON, OK_JSON, record=seen)) as srv:
            async with HttpClient(srv.url) as http:
                first = await http.request("POST", "/v1/register", json={"port": 1})
                second = await http.get("/v1/snapshot")
            assert first.status_code == 200 and first.json() == {"a": True}
            assert second.json() == {"a": True}
            assert srv.connections == 1

    run(go())
    assert seen[0].startswith(b"POST /v1/register HTTP/1.1\r\n")
    assert b"content-type: application/json\r\n" in seen[0] and seen[0].endswith(b'{"port":1}')
    assert b"content-length: 10\r\n" in seen[0]
    assert seen[1].startswith(b"GET /v1/snapshot HTTP/1.1\r\n") and b"content-length" not in seen[1]


def test_chunked_and_close_delimited_bodies() -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"

    async def go() -> None:
        async with Server(keep_alive(chunked, closing)) as srv:
            async with HttpClient(srv.url) as http:
                assert (await http.get("/a")).content == b"abcde"
                assert (await http.get("/b")).content == b"until the end"
                assert (await http.get("/c")).content == b"abcde"  # the closed one is not reused
            assert srv.connections == 2

    run(go())


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    once = b"HTTP/1.1 204 No Content\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _head(reader)
        writer.write(once)
        await writer.drain()  # then close, as a server ending an idle keep-alive connection does

    async def go() -> None:
        async with Server(handler) as srv:
            async with HttpClient(srv.url) as http:
                assert (await http.get("/")).status_code == 204
                await asyncio.sleep(0.05)
                assert (await http.request("POST", "/", json={})).status_code == 204
                assert (await http.request("PUT", "/", json={})).status_code == 204
            assert srv.connections == 3

    run(go())


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 100, "response body over 50 bytes"),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"y" * 70_000 + b"\r\n\r\n", "response head over"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "malformed response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "closed in the middle of a response"),
    ],
)
def test_bad_responses_are_clear_errors(response: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _head(reader)
        writer.write(response)
        await writer.drain()

    async def go() -> None:
        async with Server(handler) as srv, HttpClient(srv.url, max_body=50) as http:
            with pytest.raises(HttpError, match=message):
                await http.get("/")

    run(go())


def test_timeouts_refusals_and_bad_input() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def go() -> None:
        async with Server(silent) as srv:
            async with HttpClient(srv.url, timeout=0.2) as http:
                with pytest.raises(HttpError, match=r"^no response within 0.2s$"):
                    await http.get("/slow")
                with pytest.raises(ValueError, match="line break"):
                    await http.get("/", headers={"x": "a\r\nevil: 1"})
            dead = srv.url
        async with HttpClient(dead) as http:
            with pytest.raises(HttpError, match=r"cannot connect to 127\.0\.0\.1"):
                await http.get("/")
        with pytest.raises(ValueError, match="not an http"):
            HttpClient("ftp://example.org")
        with pytest.raises(ValueError, match="not an HTTP method"):
            await HttpClient("http://127.0.0.1:1").request("GET /x HTTP/1.1\r\nx:", "/")

    run(go())


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "c.pem", tmp / "k.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_the_peer_check_runs_before_anything_is_written(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    client_ctx.check_hostname = False
    received: list[bytes] = []
    checked: list[ssl.SSLObject | None] = []

    async def go() -> None:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.read())
            writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]

        def refuse(ssl_object: ssl.SSLObject | None) -> None:
            checked.append(ssl_object)
            raise PermissionError("not the control plane")

        async with HttpClient(f"https://127.0.0.1:{port}", ssl_context=client_ctx, check_peer=refuse) as http:
            with pytest.raises(PermissionError):
                await http.request("POST", "/v1/sign", headers={"authorization": "Bearer secret"})
        await asyncio.sleep(0.1)
        server.close()
        await server.wait_closed()

    run(go())
    assert checked and checked[0] is not None and checked[0].version() == "TLSv1.3"
    assert b"secret" not in b"".join(received)


def test_bytes_after_a_response_are_not_parsed_into_it_nor_reused() -> None:
    """A 503 followed at once by an unsolicited 200: the answer is the 503, and the connection,
    whose next bytes are not an answer to anything, is dropped."""
    both = b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\n\r\nbusyHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    garbage = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\x00\x01garbage"

    async def go() -> None:
        for response, status in ((both, 503), (garbage, 200)):
            async with Server(keep_alive(response, response)) as srv, HttpClient(srv.url) as http:
                first = await http.get("/")
                assert (first.status_code, len(first.headers)) == (status, 1)
                assert (await http.get("/")).status_code == status
                assert srv.connections == 2

    run(go())


def test_a_head_trickled_byte_by_byte_is_cut_off_at_the_bound() -> None:
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await _head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx-long: ")
        while sent < 10_000_000:
            writer.write(b"a" * 4096)
            sent += 4096
            await writer.drain()

    async def go() -> None:
        async with Server(handler) as srv, HttpClient(srv.url) as http:
            with pytest.raises(HttpError, match="response head over 65536 bytes"):
                await http.get("/")

    run(go())
    assert sent < 10_000_000  # the client hung up long before (kernel buffers hold a few MB)


def test_head_requests_switches_trailers_and_odd_targets() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-trailer: 1\r\n\r\n"
    switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"
    seen: list[bytes] = []

    async def go() -> None:
        async with Server(keep_alive(head, chunked, record=seen)) as srv, HttpClient(srv.url) as http:
            assert (await http.request("HEAD", "/x")).content == b""  # not waiting for 99 bytes
        async with Server(keep_alive(chunked, record=seen)) as srv, HttpClient(srv.url) as http:
            response = await http.get("/a b/\u20ac?q=1&r=%41\r\nx-injected: 1")
            assert response.content == b"a" and ("x-trailer", "1") not in response.headers
        async with Server(keep_alive(switch)) as srv, HttpClient(srv.url) as http:
            with pytest.raises(HttpError, match="switched protocols"):
                await http.get("/")

    run(go())
    assert seen[1].startswith(b"GET /a%20b/%E2%82%AC?q=1&r=%41%0D%0Ax-injected:%201 HTTP/1.1\r\n")
