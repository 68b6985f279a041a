"""What a hostile HTTP/2 client can hold on the server (h2c over loopback, a raw h2 client): the sniffing
listener's idle timeouts, a response the client never lets through (zero window), and the memory
of a request body sent in tiny DATA frames."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.settings

from mesh.h2 import Limits
from mesh.transport.h1 import ClientInfo
from mesh.transport.h2c import Drain, serve_sniffing
from mesh.transport.h2conn import H2Protocol
from mesh.transport.messages import Request, Response, body_of

T = TypeVar("T")
POST = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/up")]
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


def _connect(port: int, **settings: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    values = {getattr(h2.settings.SettingCodes, k.upper()): v for k, v in settings.items()}
    conn.local_settings = h2.settings.Settings(client=True, initial_values=values)
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(conn.data_to_send())
    return sock, conn


def _events_until(
    sock: socket.socket,
    conn: h2.connection.H2Connection,
    done: Callable[[h2.events.Event], bool],
    wait: float,
) -> list[h2.events.Event]:
    """Read (and answer) until an event satisfies ``done`` or ``wait`` seconds pass."""
    events: list[h2.events.Event] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        new = conn.receive_data(data)
        events += new
        sock.sendall(conn.data_to_send())
        if any(done(e) for e in new):
            break
    return events


def _reset(event: h2.events.Event) -> bool:
    return isinstance(event, h2.events.StreamReset)


async def _never(request: Request, info: ClientInfo) -> Response:
    async for _ in request.body:
        pass
    return Response(200, [("content-length", "0")], body_of(b""))


# -- item: the sniffing listener (gateway, sidecar outbound) arms the HTTP/2 timeouts ---------------


def test_sniffing_listener_gives_http2_the_inbound_listener_timeouts() -> None:
    async def go() -> tuple[float | None, float | None, bool]:
        drain = Drain()
        server = await serve_sniffing(_never, "127.0.0.1", 0, drain=drain)
        port = server.sockets[0].getsockname()[1]
        sock, conn = await asyncio.to_thread(_connect, port)
        conn.send_headers(1, POST)
        sock.sendall(conn.data_to_send())
        for _ in range(100):
            if list(drain.h2):
                break
            await asyncio.sleep(0.01)
        (proto,) = list(drain.h2)
        result = (proto.idle_timeout, proto.stream_idle_timeout, proto._timer is not None)
        sock.close()
        server.close()
        await server.wait_closed()
        return result

    assert run(go()) == (600.0, 300.0, True)


def test_sniffing_listener_resets_a_stalled_request_body() -> None:
    async def go() -> list[h2.events.Event]:
        server = await serve_sniffing(_never, "127.0.0.1", 0, stream_idle_timeout=0.3)
        port = server.sockets[0].getsockname()[1]

        def client() -> list[h2.events.Event]:
            sock, conn = _connect(port)
            with sock:
                conn.send_headers(1, POST)  # and the body never comes
                sock.sendall(conn.data_to_send())
                return _events_until(sock, conn, _reset, 5)

        try:
            return await asyncio.to_thread(client)
        finally:
            server.close()
            await server.wait_closed()

    resets = [e for e in run(go()) if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(1, h2.errors.ErrorCodes.CANCEL)]


# -- item: a response held by a zero window times out -----------------------------------------------


def _server_pair(handler: Callable[[Request, H2Protocol], Any], **kwargs: Any) -> Callable[[], Any]:
    async def start() -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: H2Protocol(client_side=False, handler=handler, **kwargs), "127.0.0.1", 0
        )

    return start


def test_a_response_the_client_never_lets_through_is_reset_and_released() -> None:
    async def go() -> tuple[list[h2.events.Event], bool, list[h2.events.Event]]:
        released = asyncio.Event()

        async def big(request: Request, proto: H2Protocol) -> Response:
            if request.path == "/slow":  # an answer that takes longer than the timeout is not cut
                await asyncio.sleep(0.8)
                return Response(200, [("content-length", "2")], body_of(b"ok"))
            response = Response(200, [("content-length", "1000")], body_of(b"x" * 1000))
            response.on_close = released.set
            return response

        server = await _server_pair(big, stream_idle_timeout=0.3)()
        port = server.sockets[0].getsockname()[1]

        def client(path: str) -> list[h2.events.Event]:
            sock, conn = _connect(port, initial_window_size=0)  # and no WINDOW_UPDATE, ever
            with sock:
                conn.send_headers(1, [(k, path if k == ":path" else v) for k, v in GET], end_stream=True)
                sock.sendall(conn.data_to_send())

                def end(e: h2.events.Event) -> bool:
                    return _reset(e) or isinstance(e, h2.events.StreamEnded)

                def head(e: h2.events.Event) -> bool:
                    return _reset(e) or isinstance(e, h2.events.ResponseReceived)

                events = _events_until(sock, conn, end if path == "/" else head, 5)
                if path == "/slow":  # let the small answer through once it begins
                    conn.increment_flow_control_window(10, stream_id=1)
                    sock.sendall(conn.data_to_send())
                    events += _events_until(sock, conn, end, 5)
                return events

        try:
            held = await asyncio.to_thread(client, "/")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), 2)
            was_released = released.is_set()
            slow = await asyncio.to_thread(client, "/slow")
        finally:
            server.close()
            await server.wait_closed()
        return held, was_released, slow

    held, released, slow = run(go())
    assert [
        type(e).__name__ for e in held if isinstance(e, h2.events.ResponseReceived | h2.events.StreamReset)
    ] == [
        "ResponseReceived",
        "StreamReset",
    ]
    assert released
    assert not any(isinstance(e, h2.events.StreamReset) for e in slow)
    assert b"".join(e.data for e in slow if isinstance(e, h2.events.DataReceived)) == b"ok"


# -- item: request-body memory in proportion to bytes, not frames -----------------------------------


def test_tiny_data_frames_are_coalesced_and_their_window_comes_back_when_read() -> None:
    window = 3000

    async def go() -> tuple[int, int, int, int]:
        release = asyncio.Event()
        seen: dict[str, int] = {}
        protos: list[H2Protocol] = []

        async def slow(request: Request, proto: H2Protocol) -> Response:
            protos.append(proto)
            await release.wait()
            data = b"".join([chunk async for chunk in request.body])
            seen["bytes"] = len(data)
            return Response(200, [("content-length", "0")], body_of(b""))

        server = await _server_pair(slow, limits=Limits(initial_window_size=window, max_empty_data=window))()
        port = server.sockets[0].getsockname()[1]
        sock, conn = await asyncio.to_thread(_connect, port)
        await asyncio.to_thread(_events_until, sock, conn, lambda e: False, 0.2)  # the server's SETTINGS
        conn.send_headers(1, POST)
        for i in range(window):  # a third of the window in padding-only frames, the rest 1-byte frames
            conn.send_data(1, b"" if i % 3 == 0 else b"x", pad_length=0 if i % 3 == 0 else None)
        await asyncio.to_thread(sock.sendall, conn.data_to_send())
        await asyncio.to_thread(_events_until, sock, conn, lambda e: False, 0.5)
        (stream,) = protos[0].streams.values()
        queued = len(stream.chunks._items)
        release.set()
        await asyncio.sleep(0.2)
        await asyncio.to_thread(_events_until, sock, conn, lambda e: False, 0.3)  # the WINDOW_UPDATEs
        opened = conn.local_flow_control_window(1)
        conn.end_stream(1)
        await asyncio.to_thread(sock.sendall, conn.data_to_send())
        await asyncio.to_thread(_events_until, sock, conn, lambda e: isinstance(e, h2.events.StreamEnded), 3)
        sock.close()
        server.close()
        await server.wait_closed()
        return queued, opened, seen.get("bytes", -1), window - window // 3

    queued, opened, got, sent = run(go())
    assert queued == 1  # one buffer for 2,000 one-byte frames; padding-only frames queue nothing
    assert got == sent
    assert opened == window  # every byte of window given back once the handler read the body
