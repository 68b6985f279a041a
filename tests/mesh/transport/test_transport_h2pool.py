"""H2Pool and H2Protocol over real mTLS sockets: reuse, MAX_CONCURRENT_STREAMS, GOAWAY, resets, identity."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from meshrig_testlib import drain_body, mesh, ok_app, read_all, run, spiffe, traffic

from mesh.h2 import Limits
from mesh.outbound.endpoints import Endpoint
from mesh.transport.h1 import ClientInfo, UpstreamError
from mesh.transport.h2conn import StreamError
from mesh.transport.messages import Request, Response, body_of


def endpoint(port: int, identity: str = spiffe("orders"), eid: str = "orders-1") -> Endpoint:
    return Endpoint(eid, "127.0.0.1", port, identity)


def gated_app(gate: asyncio.Event, active: list[int], peak: list[int]):  # type: ignore[no-untyped-def]
    async def app(request: Request, info: ClientInfo) -> Response:
        await drain_body(request)
        if request.path == "/warm":
            return Response(200, [("content-length", "2")], body_of(b"ok"))
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            await asyncio.wait_for(gate.wait(), 5)
        finally:
            active[0] -= 1
        return Response(200, [("content-length", "2")], body_of(b"ok"))

    return app


def test_sequential_requests_reuse_one_connection(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            rig.update({"orders": [up.endpoint()]})
            for _ in range(10):
                assert (await rig.call("/"))[0].status == 200
            assert rig.pool.opened == 1 and len(up.inbound.connections) == 1

    run(go())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_peer_max_concurrent_streams_opens_more_connections(tmp_path: Path, method: str) -> None:
    async def go() -> None:
        gate = asyncio.Event()
        active, peak = [0], [0]
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(gated_app(gate, active, peak), limits=Limits(max_concurrent_streams=2))
            rig.update({"orders": [up.endpoint()]})
            # the first request learns the peer's SETTINGS
            assert (await rig.call("/warm", method=method, body=b"x"))[0].status == 200
            calls = [asyncio.create_task(rig.call(f"/{i}", method=method, body=b"x")) for i in range(5)]
            for _ in range(300):
                if active[0] == 5:
                    break
                await asyncio.sleep(0.01)
            assert active[0] == 5  # all five are being served at once
            gate.set()
            results = await asyncio.gather(*calls)
            assert [r.status for r, _ in results] == [200] * 5
            assert rig.pool.opened == 3
            assert rig.client.upstream("orders").stats["retries"] == 0

    run(go())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_concurrent_first_requests_respect_the_stream_limit(tmp_path: Path, method: str) -> None:
    async def go() -> None:
        gate = asyncio.Event()
        active, peak = [0], [0]
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(gated_app(gate, active, peak), limits=Limits(max_concurrent_streams=2))
            rig.update({"orders": [up.endpoint()]})
            calls = [asyncio.create_task(rig.call(f"/{i}", method=method, body=b"x")) for i in range(5)]
            for _ in range(300):
                if active[0] == 5:
                    break
                await asyncio.sleep(0.01)
            gate.set()
            results = await asyncio.gather(*calls)
            assert [(r.status, b) for r, b in results] == [(200, b"ok")] * 5, results
            assert len(up.seen) == 5

    run(go())


def test_goaway_lets_in_flight_finish_and_new_requests_use_a_new_connection(tmp_path: Path) -> None:
    async def go() -> None:
        gate = asyncio.Event()
        active, peak = [0], [0]
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(gated_app(gate, active, peak))
            rig.update({"orders": [up.endpoint()]})
            in_flight = [asyncio.create_task(rig.call(f"/{i}")) for i in range(2)]
            while active[0] < 2:
                await asyncio.sleep(0.01)
            (server_conn,) = up.inbound.connections
            server_conn.endpoint.goaway(0)  # what InboundServer.drain sends, without closing the listener
            server_conn._flush()
            (client_conn,) = rig.pool._conns[rig.client.endpoints.get("orders")[0].peer]
            for _ in range(100):
                if client_conn.draining:
                    break
                await asyncio.sleep(0.01)
            assert client_conn.draining and not client_conn.available
            gate.set()
            fresh = await rig.call("/new")
            assert fresh[0].status == 200
            assert [r.status for r, _ in await asyncio.gather(*in_flight)] == [200, 200]
            assert rig.pool.opened == 2
            await asyncio.wait_for(client_conn.closed, 2)  # the old one closes once its streams are done
            assert rig.client.upstream("orders").stats["retries"] == 0

    run(go())


def test_concurrent_callers_share_one_connection_being_opened(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            ep = endpoint(up.port)
            conns = await asyncio.gather(*(rig.pool.connection(ep) for _ in range(5)))
            assert len({id(c) for c in conns}) == 1 and rig.pool.opened == 1
            assert str(conns[0].peer) == spiffe("orders")

    run(go())


def test_pool_refuses_a_peer_with_the_wrong_identity(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            with pytest.raises(UpstreamError) as caught:
                await rig.pool.connection(endpoint(up.port, identity=spiffe("billing")))
            assert caught.value.code == "tls_identity_mismatch" and not caught.value.retryable
            assert "billing" in str(caught.value) and "orders" in str(caught.value)
            assert rig.pool.opened == 0 and not rig.pool._conns
            assert up.handler.stats["requests"] == 0

    run(go())


def test_pool_connect_failure_is_retryable(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            port = up.port
            await up.close()
            rig.upstreams.remove(up)
            with pytest.raises(UpstreamError) as caught:
                await rig.pool.connection(endpoint(port))
            assert caught.value.code == "connect_failure" and caught.value.retryable

    run(go())


def test_a_request_abandoned_by_a_timeout_resets_its_stream(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            gate = asyncio.Event()
            active, peak = [0], [0]
            up = await rig.upstream(gated_app(gate, active, peak))
            conn = await rig.pool.connection(endpoint(up.port))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.request(Request("GET", "/slow", "orders")), 0.2)
            assert conn.streams == {} and conn.endpoint.open_streams == 0
            (server_conn,) = up.inbound.connections
            for _ in range(100):
                if not server_conn.streams:
                    break
                await asyncio.sleep(0.01)
            assert server_conn.streams == {}  # the server stopped working on it
            gate.set()
            # the connection is still good
            response = await conn.request(Request("GET", "/", "orders"))
            assert response.status == 200 and await read_all(response) == b"ok"

    run(go())


def test_an_abandoned_response_body_resets_the_stream(tmp_path: Path) -> None:
    async def big(request: Request, info: ClientInfo) -> Response:
        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(400):
                yield b"b" * 65536

        return Response(200, [], chunks())

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(big)
            conn = await rig.pool.connection(endpoint(up.port))
            response = await conn.request(Request("GET", "/big", "orders"))
            body = response.body
            assert await anext(body)
            await body.aclose()  # type: ignore[attr-defined]
            assert conn.streams == {} and conn.endpoint.open_streams == 0
            (server_conn,) = up.inbound.connections
            for _ in range(200):
                if not server_conn.streams:
                    break
                await asyncio.sleep(0.01)
            assert server_conn.streams == {}
            again = await conn.request(Request("GET", "/big", "orders"))
            assert len(await read_all(again)) == 400 * 65536

    run(go())


def test_connection_lost_fails_the_open_streams(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            gate = asyncio.Event()
            active, peak = [0], [0]
            up = await rig.upstream(gated_app(gate, active, peak))
            conn = await rig.pool.connection(endpoint(up.port))
            pending = asyncio.create_task(conn.request(Request("GET", "/", "orders")))
            while active[0] < 1:
                await asyncio.sleep(0.01)
            for server_conn in list(up.inbound.connections):
                server_conn.transport.abort()  # type: ignore[union-attr]
            with pytest.raises(StreamError) as caught:
                await asyncio.wait_for(pending, 2)
            assert caught.value.code == "upstream_reset"
            await asyncio.wait_for(conn.closed, 2)
            assert not rig.pool._conns.get(endpoint(up.port).peer)
            for _ in range(100):  # the inbound side gave up on the app request too
                if active[0] == 0:
                    break
                await asyncio.sleep(0.01)

    run(go())


def test_mesh_client_retries_a_get_when_the_connection_drops(tmp_path: Path) -> None:
    async def go() -> None:
        calls = [0]

        async def app(request: Request, info: ClientInfo) -> Response:
            calls[0] += 1
            if calls[0] == 1:
                for conn in list(up.inbound.connections):
                    conn.transport.abort()  # type: ignore[union-attr]
                await asyncio.sleep(1)
            return Response(200, [("content-length", "2")], body_of(b"ok"))

        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic()})
            response, body = await rig.call("/")
            assert (response.status, body) == (200, b"ok")
            assert rig.pool.opened == 2

    run(go())
