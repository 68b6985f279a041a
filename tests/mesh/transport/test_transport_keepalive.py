"""Connection keepalive and idle timeout of the HTTP/2 glue, over plain loopback sockets."""

from __future__ import annotations

import asyncio

from mesh.transport.h2conn import H2Protocol
from mesh.transport.messages import Request, Response, body_of


async def _ok(request: Request, proto: H2Protocol) -> Response:
    return Response(200, [("content-length", "2")], body_of(b"ok"))


async def _close(server: asyncio.Server, client: H2Protocol, servers: list[H2Protocol]) -> None:
    client.close()
    for proto in servers:
        if proto.transport is not None:
            proto.transport.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)  # let the transports finish closing


async def _pair(
    *, keepalive: float | None, idle: float | None, server_idle: float | None = None
) -> tuple[asyncio.Server, H2Protocol, list[H2Protocol]]:
    loop = asyncio.get_running_loop()
    servers: list[H2Protocol] = []

    def make() -> H2Protocol:
        proto = H2Protocol(client_side=False, handler=_ok, idle_timeout=server_idle)
        servers.append(proto)
        return proto

    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(
        lambda: H2Protocol(client_side=True, keepalive=keepalive, idle_timeout=idle), "127.0.0.1", port
    )
    await asyncio.wait_for(client.ready, 5)
    return server, client, servers


def test_a_quiet_connection_is_kept_alive_by_pings_the_peer_answers() -> None:
    async def go() -> bool:
        server, client, servers = await _pair(keepalive=0.1, idle=None)
        await asyncio.sleep(0.8)  # several keepalive periods without a request
        alive = client.transport is not None and not client.transport.is_closing()
        response = await client.request(Request("GET", "/", "x"))
        assert response.status == 200 and b"".join([c async for c in response.body]) == b"ok"
        await _close(server, client, servers)
        return alive

    assert asyncio.run(asyncio.wait_for(go(), 10))


def test_a_peer_that_stops_answering_pings_is_dropped() -> None:
    async def go() -> bool:
        server, client, servers = await _pair(keepalive=0.1, idle=None)
        assert servers[0].transport is not None
        servers[0].transport.pause_reading()  # the peer hangs: no PING ACK will come
        await asyncio.wait_for(client.closed, 3)
        await _close(server, client, servers)
        return True

    assert asyncio.run(asyncio.wait_for(go(), 10))


def test_an_idle_connection_is_closed_and_a_busy_one_is_not() -> None:
    async def go() -> tuple[bool, bool]:
        server, client, servers = await _pair(keepalive=None, idle=0.3)
        busy = asyncio.ensure_future(client.request(Request("GET", "/", "x")))
        response = await busy
        async for _ in response.body:
            pass
        await asyncio.sleep(0.1)
        open_after_use = client.transport is not None and not client.transport.is_closing()
        await asyncio.wait_for(client.closed, 3)  # then idle for longer than 0.3 s: closed
        await _close(server, client, servers)
        return open_after_use, client.closed.done()

    assert asyncio.run(asyncio.wait_for(go(), 10)) == (True, True)


def test_a_request_whose_body_stalls_is_reset_and_its_handler_released() -> None:
    async def go() -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[str] = loop.create_future()

        async def reader(request: Request, proto: H2Protocol) -> Response:
            try:
                async for _ in request.body:
                    pass
            except BaseException as exc:  # the stalled request is failed and its handler cancelled
                outcome.set_result(type(exc).__name__)
                raise
            outcome.set_result("finished")
            return Response(200)

        servers: list[H2Protocol] = []

        def make() -> H2Protocol:
            proto = H2Protocol(client_side=False, handler=reader, stream_idle_timeout=0.3)
            servers.append(proto)
            return proto

        server = await loop.create_server(make, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, client = await loop.create_connection(lambda: H2Protocol(client_side=True), "127.0.0.1", port)
        await asyncio.wait_for(client.ready, 5)
        stall = asyncio.Event()

        async def body():  # type: ignore[no-untyped-def]
            yield b"start"
            await stall.wait()  # and then nothing

        request = asyncio.ensure_future(client.request(Request("POST", "/", "x", body=body())))
        result = await asyncio.wait_for(outcome, 5)
        try:
            await asyncio.wait_for(request, 5)
            reset = False
        except Exception:
            reset = True
        stall.set()
        await _close(server, client, servers)
        return reset, result

    reset, result = asyncio.run(asyncio.wait_for(go(), 15))
    assert reset and result in ("StreamError", "CancelledError")
