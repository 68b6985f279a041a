"""Connection keepalive and idle timeout of the HTTP/2 glue, over plain loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from h2pair_testlib import close_pair, open_pair

from mesh.transport.h2conn import H2Protocol
from mesh.transport.messages import Request, Response, body_of


async def _ok(request: Request, proto: H2Protocol) -> Response:
    return Response(200, [("content-length", "2")], body_of(b"ok"))


async def _pair(
    *, keepalive: float | None, idle: float | None, server_idle: float | None = None
) -> tuple[asyncio.Server, H2Protocol, list[H2Protocol]]:
    return await open_pair(
        _ok, server={"idle_timeout": server_idle}, client={"keepalive": keepalive, "idle_timeout": idle}
    )


def test_a_quiet_connection_is_kept_alive_by_pings_the_peer_answers() -> None:
    async def go() -> bool:
        server, client, servers = await _pair(keepalive=0.1, idle=None)
        await asyncio.sleep(0.8)  # several keepalive periods without a request
        alive = client.transport is not None and not client.transport.is_closing()
        response = await client.request(Request("GET", "/", "x"))
        assert response.status == 200 and b"".join([c async for c in response.body]) == b"ok"
        await close_pair(server, client, servers)
        return alive

    assert asyncio.run(asyncio.wait_for(go(), 10))


def test_a_peer_that_stops_answering_pings_is_dropped() -> None:
    async def go() -> bool:
        server, client, servers = await _pair(keepalive=0.1, idle=None)
        assert servers[0].transport is not None
        servers[0].transport.pause_reading()  # the peer hangs: no PING ACK will come
        await asyncio.wait_for(client.closed, 3)
        await close_pair(server, client, servers)
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
        await close_pair(server, client, servers)
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

        server, client, servers = await open_pair(reader, server={"stream_idle_timeout": 0.3})
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
        await close_pair(server, client, servers)
        return reset, result

    reset, result = asyncio.run(asyncio.wait_for(go(), 15))
    assert reset and result in ("StreamError", "CancelledError")


def test_a_peer_gone_silent_under_waiting_requests_is_found_in_seconds(monkeypatch: Any) -> None:
    """A black-holed peer (no FIN, no RST) while a request waits: the client PINGs after
    WAITING_QUIET of silence, not after the 30 s keepalive period, stops sending new requests there once
    that PING is PING_STALE old, and drops the connection after PING_TIMEOUT (times scaled down)."""
    from mesh.transport import h2conn

    monkeypatch.setattr(h2conn, "WAITING_QUIET", 0.2)
    monkeypatch.setattr(h2conn, "PING_TIMEOUT", 0.6)
    monkeypatch.setattr(h2conn, "PING_STALE", 0.1)

    async def go() -> None:
        arrived = asyncio.Event()

        async def hang(request: Request, proto: H2Protocol) -> Response:
            assert proto.transport is not None
            proto.transport.pause_reading()  # from now on the peer hears nothing: no PING ACK
            arrived.set()
            await asyncio.sleep(30)
            return Response(200)

        server, client, servers = await open_pair(hang, client={"keepalive": 30.0})
        waiting = asyncio.ensure_future(client.request(Request("GET", "/", "x")))
        await asyncio.wait_for(arrived.wait(), 3)
        assert client.available
        await asyncio.sleep(0.45)  # a PING went out after 0.2 s of silence and is not answered
        assert not client.available
        await asyncio.wait_for(client.closed, 3)
        with contextlib.suppress(Exception):  # the waiting request fails with the connection (retried)
            await asyncio.wait_for(waiting, 3)
        await close_pair(server, client, servers)

    asyncio.run(asyncio.wait_for(go(), 15))
