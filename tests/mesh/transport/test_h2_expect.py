"""``Expect: 100-continue`` on the HTTP/2 server (RFC 9110 section 10.1.1, RFC 9113 section 8.1): an
interim 100 when the handler first needs body bytes that have not arrived; over real loopback
sockets (h2c with prior knowledge), with curl and with a raw h2 client."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events

from mesh.transport.h1 import ClientInfo
from mesh.transport.h2c import serve_sniffing
from mesh.transport.messages import Request, Response, body_of

T = TypeVar("T")
Handler = Callable[[Request, ClientInfo], Awaitable[Response]]


async def _echo(request: Request, info: ClientInfo) -> Response:
    data = b"".join([chunk async for chunk in request.body])
    headers = [("x-expect", request.header("expect") or "-"), ("content-length", str(len(data)))]
    return Response(200, headers, body_of(data))


async def _refuse(request: Request, info: ClientInfo) -> Response:
    return Response(413, [("content-length", "0")], body_of(b""))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


def _raw_exchange(port: int, headers: list[tuple[str, str]], body: bytes | None) -> list[h2.events.Event]:
    """A blocking h2 client: the request head (and ``body`` after 0.3 s, if any); every event until
    the stream ends."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    events: list[h2.events.Event] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        conn.initiate_connection()
        conn.send_headers(1, headers)
        sock.sendall(conn.data_to_send())
        sent_body = body is None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            sock.settimeout(0.3)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = b""
                if not sent_body:
                    conn.send_data(1, body or b"", end_stream=True)
                    sock.sendall(conn.data_to_send())
                    sent_body = True
                continue
            if not data:
                break
            for event in conn.receive_data(data):
                events.append(event)
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return events
            sock.sendall(conn.data_to_send())
    return events


HEAD = [
    (":method", "POST"),
    (":scheme", "http"),
    (":authority", "a"),
    (":path", "/up"),
    ("content-length", "5"),
    ("expect", "100-continue"),
]


def _statuses(events: list[h2.events.Event]) -> list[str]:
    out = []
    for event in events:
        if isinstance(event, h2.events.InformationalResponseReceived | h2.events.ResponseReceived):
            out.append(dict(event.headers)[":status"])
    return out


def _with_server(handler: Handler, client: Callable[[int], T]) -> T:
    async def go() -> T:
        server = await serve_sniffing(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(client, port)
        finally:
            server.close()
            await server.wait_closed()

    return run(go())


def test_100_is_sent_when_the_handler_reads_the_body_and_the_header_is_not_forwarded() -> None:
    events = _with_server(_echo, lambda port: _raw_exchange(port, HEAD, b"hello"))
    assert _statuses(events) == ["100", "200"]
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert ("x-expect", "-") in response.headers
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"hello"


def test_no_100_when_the_handler_answers_without_reading() -> None:
    events = _with_server(_refuse, lambda port: _raw_exchange(port, HEAD, None))
    assert _statuses(events) == ["413"]


def test_no_100_without_a_body() -> None:
    head = [(k, v) for k, v in HEAD if k != "content-length"]

    def client(port: int) -> list[h2.events.Event]:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        events: list[h2.events.Event] = []
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            conn.initiate_connection()
            conn.send_headers(1, head, end_stream=True)
            sock.sendall(conn.data_to_send())
            while not any(isinstance(e, h2.events.StreamEnded) for e in events):
                data = sock.recv(65536)
                if not data:
                    break
                events += conn.receive_data(data)
                sock.sendall(conn.data_to_send())
        return events

    assert _statuses(_with_server(_echo, client)) == ["200"]


def test_curl_over_http2_with_expect_does_not_stall() -> None:
    """curl waits for the 100 (5 s here) before it sends a body it announced with Expect."""

    def client(port: int) -> tuple[float, str]:
        started = time.monotonic()
        out = subprocess.run(
            [
                "curl",
                "-s",
                "--http2-prior-knowledge",
                "--expect100-timeout",
                "5",
                "-H",
                "Expect: 100-continue",
                "--data-binary",
                "x" * 2048,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                f"http://127.0.0.1:{port}/up",
            ],
            capture_output=True,
            text=True,
            timeout=15,
        ).stdout
        return time.monotonic() - started, out

    elapsed, out = _with_server(_echo, client)
    assert out == "200 2"
    assert elapsed < 3, elapsed
