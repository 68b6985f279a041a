"""Regressions found in review: unread request bodies must not eat a connection's flow-control window;
responses closed unread (Trailers-Only) must release breaker, load and stream counts; an HTTP/2
request's own ``host`` header must not become a second Host towards the app."""

from __future__ import annotations

import asyncio

from h2pair_testlib import close_pair, open_pair

from mesh.outbound.client import MeshClient
from mesh.transport.h1 import H1Pool
from mesh.transport.h2conn import H2Protocol
from mesh.transport.messages import Request, Response, body_of, error_response, grpc_error


def test_answers_that_leave_the_request_body_unread_do_not_exhaust_the_connection_window() -> None:
    async def deny(request: Request, proto: H2Protocol) -> Response:
        return error_response(403, "policy_denied", "no")  # the body is never read, as a denial

    async def go() -> int:
        server, client, servers = await open_pair(deny)
        payload = b"x" * (256 * 1024)
        done = 0
        for _ in range(150):  # 37 MiB in all: far past a 16 MiB connection window if none came back
            response = await asyncio.wait_for(
                client.request(
                    Request(
                        "POST",
                        "/",
                        "svc",
                        headers=[("content-length", str(len(payload)))],
                        body=body_of(payload),
                    )
                ),
                5,
            )
            async for _ in response.body:
                pass
            done += response.status == 403
        await close_pair(server, client, servers)
        return done

    assert asyncio.run(asyncio.wait_for(go(), 60)) == 150


class _OnePool:
    backing_off = False

    def __init__(self, conn: H2Protocol) -> None:
        self.conn = conn

    def ready(self, endpoint: object, may_open: object = None) -> H2Protocol:
        return self.conn

    async def connection(self, endpoint: object, may_open: object = None, **kwargs: object) -> H2Protocol:
        return self.conn

    def remember_session(self, conn: object) -> None:
        pass


def test_trailers_only_responses_closed_unread_release_every_count() -> None:
    async def grpc_fail(request: Request, proto: H2Protocol) -> Response:
        return grpc_error("policy_denied", "no")

    async def go() -> tuple[int, list[int], int]:
        server, client, servers = await open_pair(grpc_fail)
        mesh = MeshClient(_OnePool(client))  # type: ignore[arg-type]
        port = server.sockets[0].getsockname()[1]
        mesh.update(
            {
                "svc": [
                    {
                        "id": "a",
                        "address": "127.0.0.1",
                        "port": port,
                        "identity": "spiffe://td/ns/default/sa/svc",
                    }
                ]
            },
            {},
        )
        for _ in range(5):
            response = await mesh.request(
                "svc", Request("POST", "/pkg.S/M", "svc", headers=[("content-type", "application/grpc")])
            )
            assert response.headers_only
            assert response.on_close is not None
            response.on_close()  # what H2Protocol._serve and H1Server do when they are done
        counts = (
            mesh.upstream("svc").breaker.active,
            [e.active for e in mesh.endpoints.get("svc")],
            len(client.streams),
        )
        await close_pair(server, client, servers)
        return counts

    assert asyncio.run(asyncio.wait_for(go(), 20)) == (0, [0], 0)


def test_an_h2_requests_host_header_does_not_become_a_second_host() -> None:
    async def go() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(app, "127.0.0.1", 0)
        pool = H1Pool("127.0.0.1", server.sockets[0].getsockname()[1])
        response = await pool.request(Request("GET", "/", "orders", headers=[("host", "orders")]))
        async for _ in response.body:
            pass
        head = await got
        await pool.close()
        server.close()
        await server.wait_closed()
        return head

    head = asyncio.run(asyncio.wait_for(go(), 10)).lower()
    assert head.count(b"\r\nhost:") == 1
