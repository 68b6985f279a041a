"""``--server meshgate``: the ASGI bridge on the mesh transport, with real clients (curl over HTTP/1.1,
h2c and TLS with a client certificate)."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from gateway_testlib import edge, run

from gateway.server import AsgiBridge, Lifespan, serve, tls_context
from shared.identity.ca import CertificateAuthority, chain_pem
from shared.identity.spiffeid import workload_id

# These tests stop their servers with connections possibly still open (asyncio.Server.close leaves
# accepted connections alone, and a TLS handshake refused by design leaves asyncio's transport to the
# garbage collector): whatever they leave is collected here, inside this module, where ResourceWarning
# about it is expected, instead of surfacing in whichever test runs next.
pytestmark = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(autouse=True)
def _collect_leftovers() -> Iterator[None]:
    yield
    gc.collect()


ROUTES = """\
apiVersion: meshgate/v1
kind: Route
name: orders-api
match: {path: {prefix: /api/orders}}
backends: [{service: orders}]
---
apiVersion: meshgate/v1
kind: Route
name: partners
match: {path: {prefix: /partners}}
backends: [{service: orders}]
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: partners-by-certificate
target: {route: partners}
rules:
  - action: allow
    from: {principals: ["spiffe://partners.test/ns/default/sa/acme"]}
"""


async def curl(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    body, _, code = out.decode().rpartition("\n")
    return int(code or 0), body


def test_http11_and_h2c_through_the_bridge(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, ROUTES) as gw:
            server = await serve(gw.http._transport.app, "127.0.0.1", 0)  # type: ignore[attr-defined]
            port = server.sockets[0].getsockname()[1]
            try:
                for extra in ((), ("--http2-prior-knowledge",)):
                    code, body = await curl(*extra, f"http://127.0.0.1:{port}/api/orders/1?x=2")
                    assert code == 200, body
                    seen = json.loads(body)
                    assert seen["path"] == "/api/orders/1?x=2"
                code, _ = await curl(f"http://127.0.0.1:{port}/partners")
                assert code == 403  # no certificate: the route's policy wants one
            finally:
                server.close()

    run(go())


def _pki(tmp: Path) -> dict[str, Path]:
    files = {}
    server_ca = CertificateAuthority.init(tmp / "edge-ca", "edge.test")
    partner_ca = CertificateAuthority.init(tmp / "partner-ca", "partners.test")
    for name, ca, td in (
        ("server", server_ca, "edge.test"),
        ("acme", partner_ca, "partners.test"),
        ("other", partner_ca, "partners.test"),
    ):
        chain, key = ca.issue(workload_id(td, name))
        files[f"{name}.pem"] = tmp / f"{name}.pem"
        files[f"{name}.key"] = tmp / f"{name}.key"
        files[f"{name}.pem"].write_bytes(chain_pem(chain))
        files[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    files["partners-root.pem"] = tmp / "partners-root.pem"
    files["partners-root.pem"].write_text(partner_ca.bundle().to_pem())
    return files


def test_client_certificate_identity_reaches_the_route_policy(tmp_path: Path) -> None:
    files = _pki(tmp_path / "pki")

    async def go() -> None:
        async with edge(tmp_path, ROUTES) as gw:
            ctx = tls_context(
                str(files["server.pem"]),
                str(files["server.key"]),
                str(files["partners-root.pem"]),
                require_client_cert=False,
            )
            server = await serve(gw.http._transport.app, "127.0.0.1", 0, ssl_context=ctx)  # type: ignore[attr-defined]
            port = server.sockets[0].getsockname()[1]
            url = f"https://127.0.0.1:{port}/partners/x"
            try:
                for proto in ("--http1.1", "--http2"):
                    code, body = await curl(
                        "-k", proto, "--cert", str(files["acme.pem"]), "--key", str(files["acme.key"]), url
                    )
                    assert code == 200, body
                    code, _ = await curl(
                        "-k", proto, "--cert", str(files["other.pem"]), "--key", str(files["other.key"]), url
                    )
                    assert code == 403
                    code, _ = await curl("-k", proto, url)  # optional: no certificate, no identity
                    assert code == 403
            finally:
                server.close()

    run(go())


def test_a_required_client_certificate_is_enforced_by_tls(tmp_path: Path) -> None:
    files = _pki(tmp_path / "pki")

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def go() -> None:
        ctx = tls_context(str(files["server.pem"]), str(files["server.key"]), str(files["partners-root.pem"]))
        server = await serve(app, "127.0.0.1", 0, ssl_context=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            code, _ = await curl("-k", f"https://127.0.0.1:{port}/")
            assert code == 0  # handshake refused
            code, _ = await curl(
                "-k",
                "--cert",
                str(files["acme.pem"]),
                "--key",
                str(files["acme.key"]),
                f"https://127.0.0.1:{port}/",
            )
            assert code == 204
        finally:
            server.close()

    run(go())


def test_trailers_and_streaming_through_the_bridge() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        assert "http.response.trailers" in scope["extensions"]
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")], "trailers": True}
        )
        for part in (b"one ", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send(
            {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}
        )

    async def go() -> None:
        from mesh.transport.h1 import ClientInfo
        from mesh.transport.messages import Request

        bridge = AsgiBridge(app, server=("127.0.0.1", 1))
        response = await bridge(
            Request("GET", "/", "h", headers=[]), ClientInfo("127.0.0.1", 5, protocol="2")
        )
        assert response.status == 200 and response.header("x-a") == "1"
        assert b"".join([c async for c in response.body]) == b"one two"
        assert response.trailers is not None and await response.trailers == [("grpc-status", "0")]

    run(go())


def test_lifespan_failure_is_reported() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "no control plane"})

    async def go() -> str:
        try:
            await Lifespan(app).startup()
        except RuntimeError as exc:
            return str(exc)
        return ""

    assert run(go()) == "no control plane"


def test_grpc_over_tls_with_alpn_h2_and_trailers(tmp_path: Path) -> None:
    """A grpcio client over TLS (ALPN h2) to our server: messages, status and trailers arrive."""
    import grpc

    cert_file, key_file = _localhost_cert(tmp_path)

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = body[5:].upper()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/grpc")],
                "trailers": True,
            }
        )
        await send(
            {"type": "http.response.body", "body": b"\x00" + len(payload).to_bytes(4, "big") + payload}
        )
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"0"), (b"x-extra-bin", b"AAH/")],
            }
        )

    async def go() -> tuple[bytes, dict[str, object]]:
        ctx = tls_context(str(cert_file), str(key_file))
        server = await serve(app, "127.0.0.1", 0, ssl_context=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
            options = (("grpc.ssl_target_name_override", "localhost"),)

            def call() -> tuple[bytes, dict[str, object]]:
                with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
                    reply, call_ = channel.unary_unary("/echo.Echo/Say").with_call(b"tls", timeout=10)
                    return reply, dict(call_.trailing_metadata())

            return await asyncio.get_running_loop().run_in_executor(None, call)
        finally:
            server.close()

    reply, trailers = run(go())
    assert reply == b"TLS"
    assert trailers["x-extra-bin"] == b"\x00\x01\xff"


def _localhost_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for DNS name ``localhost`` (what grpcio checks)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "localhost.pem", tmp / "localhost.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def _h2c_post(port: int, *, reset_after: float | None = None) -> None:
    """A raw h2c client: a POST head whose body never comes; RST_STREAM(CANCEL) after ``reset_after``."""
    import socket
    import time

    import h2.config
    import h2.connection

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "gw"), (":path", "/up")])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        if reset_after is not None:
            time.sleep(reset_after)  # the app now waits for body bytes
            conn.reset_stream(1)
            sock.sendall(conn.data_to_send())
        time.sleep(0.3)


async def _reads_then_answers(scope, receive, send):  # type: ignore[no-untyped-def]
    """Reads the body; answers 400 on a disconnect, as gateway/app.py does."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"client went away"})
            return
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_h2_connections_get_the_idle_and_stream_idle_timeouts() -> None:
    from mesh.transport.h2c import Drain

    async def go() -> tuple[float | None, float | None, bool]:
        drain = Drain()
        server = await serve(_reads_then_answers, "127.0.0.1", 0, drain=drain)
        port = server.sockets[0].getsockname()[1]
        client = asyncio.ensure_future(asyncio.to_thread(_h2c_post, port))
        for _ in range(100):
            if list(drain.h2):
                break
            await asyncio.sleep(0.01)
        (proto,) = list(drain.h2)
        result = (proto.idle_timeout, proto.stream_idle_timeout, proto._timer is not None)
        await client
        server.close()
        return result

    assert run(go()) == (600.0, 300.0, True)


def test_a_client_reset_mid_body_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        server = await serve(_reads_then_answers, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await asyncio.to_thread(_h2c_post, port, reset_after=0.3)
        await asyncio.sleep(0.1)
        server.close()

    with caplog.at_level("DEBUG"):
        run(go())
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40 or r.exc_info] == []
