"""The inbound side: mTLS listener (peer SPIFFE ID), policy decision per request, x-meshgate-peer."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

from meshrig_testlib import (
    POLICIES,
    TD,
    drain_body,
    engine_from,
    mesh,
    ok_app,
    run,
    spiffe,
)

from mesh.inbound.handler import InboundHandler, policy_request
from mesh.transport.h1 import ClientInfo, H1Pool
from mesh.transport.messages import Request, Response, body_of
from shared.identity.ca import CertificateAuthority
from shared.identity.spiffeid import workload_id
from shared.identity.tls import client_context


def test_request_reaches_the_app_with_the_callers_id(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app(b"hello"))
            rig.update({"orders": [up.endpoint()]})
            response, body = await rig.call("/orders/7", headers=[("x-trace", "t1")])
            assert (response.status, body) == (200, b"hello")
            (seen,) = up.seen
            assert (seen.method, seen.path) == ("GET", "/orders/7")
            assert seen.header("x-meshgate-peer") == rig.caller_id == spiffe("web")
            assert seen.header("x-trace") == "t1"
            assert len(up.inbound.connections) == 1
            assert str(next(iter(up.inbound.connections)).peer) == spiffe("web")

    run(go())


def test_forged_mesh_headers_are_replaced(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            rig.update({"orders": [up.endpoint()]})
            forged = [
                ("x-meshgate-peer", spiffe("billing")),
                ("x-meshgate-peer", "spiffe://evil.example/ns/x/sa/y"),
                ("x-meshgate-principal", "admin"),
            ]
            response, _ = await rig.call("/", headers=forged)
            assert response.status == 200
            (seen,) = up.seen
            assert [v for k, v in seen.headers if k == "x-meshgate-peer"] == [spiffe("web")]
            assert seen.header("x-meshgate-principal") is None

    run(go())


def test_policy_denial_is_a_403_and_the_app_never_sees_it(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            rig.update({"orders": [up.endpoint()]})
            response, body = await rig.call("/admin/users", method="POST", body=b"x" * 10_000)
            assert response.status == 403
            assert response.header("x-meshgate-error") == "policy_denied"
            assert body == f"{spiffe('web')} may not POST /admin/users\n".encode()
            assert up.seen == []
            assert up.handler.stats["denied"] == 1
            # the connection is still good for the next request
            response, _ = await rig.call("/fine")
            assert response.status == 200 and len(up.seen) == 1

    run(go())


def test_a_caller_no_policy_allows_is_denied(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path, caller="billing") as rig:
            up = await rig.upstream(ok_app())
            rig.update({"orders": [up.endpoint()]})
            response, _ = await rig.call("/orders")
            assert response.status == 403 and response.header("x-meshgate-error") == "policy_denied"
            assert up.seen == []

    run(go())


def test_audit_rules_only_log(tmp_path: Path) -> None:
    audit = (
        POLICIES
        + """---
apiVersion: meshgate/v1
kind: AccessPolicy
name: shadow
target: {service: orders}
mode: audit
rules:
  - action: deny
    to: {methods: [DELETE]}
"""
    )

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app(), engine=engine_from(tmp_path / "audit", audit))
            rig.update({"orders": [up.endpoint()]})
            response, _ = await rig.call("/orders/1", method="DELETE")
            assert response.status == 200 and len(up.seen) == 1
            assert up.handler.stats["audit_denied"] == 1 and up.handler.stats["denied"] == 0

    run(go())


def test_app_down_is_a_503_connect_failure(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            up.app_server.close()
            await up.app_server.wait_closed()
            rig.update({"orders": [up.endpoint()]}, {})
            response, body = await rig.call("/", method="POST", body=b"x")
            assert response.status == 503 and response.header("x-meshgate-error") == "connect_failure"
            assert b"cannot connect to the app" in body
            assert up.handler.stats["app_errors"] == 1

    run(go())


def test_handler_without_configuration_answers_503() -> None:
    async def go() -> Response:
        handler = InboundHandler("orders", H1Pool("127.0.0.1", 9), lambda: None)
        return await handler(Request("GET", "/", "orders", body=body_of(b"")), spiffe("web"))

    response = run(go())
    assert response.status == 503 and response.header("x-meshgate-error") == "no_configuration"


def test_policy_request_joins_repeated_headers() -> None:
    request = Request("GET", "/p?q=1", "orders", headers=[("x-a", "1"), ("x-b", "2"), ("x-a", "3")])
    view = policy_request(request)
    assert (view.method, view.path, dict(view.headers)) == ("GET", "/p?q=1", {"x-a": "1,3", "x-b": "2"})


async def _refused(port: int, ctx: ssl.SSLContext | None) -> bool:
    """True when the inbound port gives nothing back to this client (handshake failure, reset or EOF)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="orders" if ctx else None),
            3,
        )
    except (OSError, ssl.SSLError):
        return True
    try:
        writer.write(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if ctx else b"GET / HTTP/1.1\r\nhost: orders\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(1024), 3)
        return data == b""
    except (OSError, ssl.SSLError):
        return True
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def test_plaintext_and_certificate_less_clients_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            assert await _refused(up.port, None)

            no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            no_cert.check_hostname = False
            no_cert.load_verify_locations(cadata=rig.pki.ca.bundle().to_pem())
            no_cert.set_alpn_protocols(["h2"])
            assert await _refused(up.port, no_cert)

            other = CertificateAuthority.init(tmp_path / "other-ca", TD)
            chain, key = other.issue(workload_id(TD, "web"))
            stranger = client_context(chain, key, rig.pki.ca.bundle())
            assert await _refused(up.port, stranger)  # same trust domain name, CA the server does not trust

            assert up.handler.stats["requests"] == 0 and up.seen == []
            assert not up.inbound.connections

    run(go())


def test_a_peer_without_alpn_h2_is_refused_after_the_handshake(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            chain, key = rig.pki.ca.issue(workload_id(TD, "web"))
            ctx = client_context(chain, key, rig.pki.ca.bundle())
            ctx.set_alpn_protocols(["http/1.1"])
            assert await _refused(up.port, ctx)
            assert up.inbound.refused == 1 and not up.inbound.connections
            assert up.handler.stats["requests"] == 0

    run(go())


def test_drain_lets_in_flight_requests_finish_and_stops_accepting(tmp_path: Path) -> None:
    async def go() -> None:
        gate = asyncio.Event()

        async def slow(request: Request, info: ClientInfo) -> Response:
            await drain_body(request)
            await asyncio.wait_for(gate.wait(), 5)
            return Response(200, [("content-length", "4")], body_of(b"done"))

        async with mesh(tmp_path) as rig:
            up = await rig.upstream(slow)
            rig.update({"orders": [up.endpoint()]})
            in_flight = [asyncio.create_task(rig.call(f"/{i}")) for i in range(3)]
            while len(up.seen) < 3:
                await asyncio.sleep(0.01)
            drain = asyncio.create_task(up.inbound.drain(5))
            await asyncio.sleep(0.1)
            assert not drain.done()
            gate.set()
            results = await asyncio.gather(*in_flight)
            assert [(r.status, b) for r, b in results] == [(200, b"done")] * 3
            await asyncio.wait_for(drain, 2)  # returned once the streams finished, well before 5 s
            response, _ = await rig.call("/after")
            assert response.status == 503 and response.header("x-meshgate-error") == "connect_failure"
            assert len(up.seen) == 3

    run(go())


TCP_POLICIES = (
    POLICIES
    + """\
---
apiVersion: meshgate/v1
kind: Service
name: db
protocol: tcp
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: db-access
target: {service: db}
rules:
  - action: allow
    from: {services: [web]}
"""
)


def test_tunnels_only_into_tcp_services_and_only_tunnels_there(tmp_path: Path) -> None:
    """A plain CONNECT into an HTTP service would be a raw pipe to its app: requests no policy saw,
    with forged x-meshgate-peer headers. It gets 405 and the app is never connected to; a TCP service
    gets tunnels only; extended CONNECT only for websocket."""

    async def go() -> None:
        accepted: list[int] = []

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            writer.close()

        server = await asyncio.start_server(app, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        engine = engine_from(tmp_path / "p", TCP_POLICIES)
        try:
            for service, method, extra, status in (
                ("orders", "CONNECT", [], 405),
                ("orders", "CONNECT", [(":protocol", "bytes")], 501),
                ("db", "CONNECT", [(":protocol", "bytes")], 501),
                ("db", "GET", [], 405),
            ):
                handler = InboundHandler(service, H1Pool("127.0.0.1", port), lambda: engine)
                request = Request(method, "/", service, headers=list(extra), body=body_of(b""))
                response = await handler(request, spiffe("web"))
                assert (service, method, response.status) == (service, method, status)
                code = "method_not_allowed" if status == 405 else "not_implemented"
                assert response.header("x-meshgate-error") == code
            assert accepted == []
            handler = InboundHandler("db", H1Pool("127.0.0.1", port), lambda: engine)
            response = await handler(Request("CONNECT", "/", "db", body=body_of(b"")), spiffe("web"))
            assert response.status == 200
            assert response.on_close is not None
            response.on_close()
            await asyncio.sleep(0.05)
            assert accepted == [1]
        finally:
            server.close()
            await server.wait_closed()

    run(go())
