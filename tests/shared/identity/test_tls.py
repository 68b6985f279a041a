"""Real mTLS over asyncio on 127.0.0.1: good peers, crafted bad certificates on either side, refused
plaintext and TLS 1.2 clients, identity pinning and TLS 1.3 session resumption."""

from __future__ import annotations

import asyncio
import ssl
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from identity_testlib import TD, MeshServer, call, make_leaf, make_root

from shared.identity.bundle import TrustBundle
from shared.identity.ca import CertificateAuthority
from shared.identity.spiffeid import SpiffeId, workload_id
from shared.identity.svid import SvidRule
from shared.identity.tls import (
    MeshClientContext,
    PeerIdentityError,
    client_context,
    explain_tls_error,
    server_context,
    verify_peer,
)

ORDERS = workload_id(TD, "orders")
WEB = workload_id(TD, "web")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_good_peers_talk_h2_over_tls13(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    server = MeshServer(lambda: server_context(*ca.issue(ORDERS), bundle), expected=WEB)

    async def go() -> tuple[SpiffeId, list[bytes]]:
        port = await server.start()
        try:
            ctx = client_context(*ca.issue(WEB), bundle)
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            conn = writer.get_extra_info("ssl_object")
            assert conn.version() == "TLSv1.3" and conn.selected_alpn_protocol() == "h2"
            writer.close()
            server_id, replies, _ = await call(port, ctx, ORDERS, requests=2)
            return server_id, replies
        finally:
            await server.close()

    server_id, replies = run(go())
    assert server_id == ORDERS
    assert replies == [f"ok {WEB} ping 0\n".encode(), f"ok {WEB} ping 1\n".encode()]
    assert server.errors == []


def _bad_certs(ca: CertificateAuthority, ca_key: ec.EllipticCurvePrivateKey) -> dict[str, tuple[Any, str]]:
    other_root, other_key = make_root("not the mesh CA")
    signer = ca.signing_cert
    uri = [str(WEB)]
    return {
        "expired": (
            make_leaf(signer, ca_key, uri, not_before=timedelta(hours=-2), not_after=timedelta(hours=-1)),
            "expired",
        ),
        "not-yet-valid": (
            make_leaf(signer, ca_key, uri, not_before=timedelta(hours=1), not_after=timedelta(hours=2)),
            "not yet valid",
        ),
        "wrong CA": (make_leaf(other_root, other_key, uri), SvidRule.CHAIN.value),
        "leaf cA=true": (make_leaf(signer, ca_key, uri, ca=True), "cA=true"),
        "leaf keyCertSign": (make_leaf(signer, ca_key, uri, key_cert_sign=True), "keyCertSign"),
        "two URI SANs": (make_leaf(signer, ca_key, [*uri, f"spiffe://{TD}/x"]), SvidRule.ONE_URI_SAN.value),
        "no URI SAN": (make_leaf(signer, ca_key, []), "no URI SAN"),
        "wrong trust domain": (
            make_leaf(signer, ca_key, ["spiffe://evil.org/ns/default/sa/web"]),
            SvidRule.TRUST_DOMAIN.value,
        ),
    }


BAD = [
    "expired",
    "not-yet-valid",
    "wrong CA",
    "leaf cA=true",
    "leaf keyCertSign",
    "two URI SANs",
    "no URI SAN",
    "wrong trust domain",
]


@pytest.mark.parametrize("case", BAD)
def test_server_refuses_bad_client_certificate(
    ca: CertificateAuthority, ca_key: ec.EllipticCurvePrivateKey, case: str
) -> None:
    (cert, key), rule_text = _bad_certs(ca, ca_key)[case]
    bundle = ca.bundle()
    server = MeshServer(lambda: server_context(*ca.issue(ORDERS), bundle))

    async def go() -> BaseException | None:
        port = await server.start()
        try:
            await call(port, client_context([cert], key, bundle))
        except (ssl.SSLError, ConnectionError, PeerIdentityError) as exc:
            return exc
        finally:
            for _ in range(50):
                if server.errors:
                    break
                await asyncio.sleep(0.01)
            await server.close()
        return None

    client_error = run(go())
    assert client_error is not None, "the client with a bad certificate got an answer"
    assert server.served == 0
    assert len(server.errors) == 1 and rule_text in server.errors[0], server.errors


@pytest.mark.parametrize("case", BAD)
def test_client_refuses_bad_server_certificate(
    ca: CertificateAuthority, ca_key: ec.EllipticCurvePrivateKey, case: str
) -> None:
    (cert, key), rule_text = _bad_certs(ca, ca_key)[case]
    bundle = ca.bundle()
    server = MeshServer(lambda: server_context([cert], key, bundle))

    async def go() -> str:
        port = await server.start()
        try:
            await call(port, client_context(*ca.issue(ORDERS), bundle))
        except PeerIdentityError as exc:
            return str(exc)
        except (ssl.SSLError, ConnectionError) as exc:
            return explain_tls_error(exc)
        finally:
            await server.close()
        return "accepted"

    message = run(go())
    assert rule_text in message
    assert server.served == 0


def test_wrong_service_identity_fails_authorization(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    server = MeshServer(
        lambda: server_context(*ca.issue(ORDERS), bundle),
        expected=lambda peer: peer.service in ("web", "gateway"),
    )

    async def go() -> tuple[str, str]:
        port = await server.start()
        try:
            # the server only admits web/gateway: billing is refused after the handshake
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await call(port, client_context(*ca.issue(workload_id(TD, "billing")), bundle))
            # the client pins the server to "payments" but reached "orders"
            with pytest.raises(PeerIdentityError) as info:
                await call(port, client_context(*ca.issue(WEB), bundle), workload_id(TD, "payments"))
            return server.errors[0], str(info.value)
        finally:
            await server.close()

    server_error, client_error = run(go())
    assert "presented spiffe://example.org/ns/default/sa/billing" in server_error
    assert SvidRule.IDENTITY.value in server_error
    assert "expected spiffe://example.org/ns/default/sa/payments" in client_error
    assert f"presented {ORDERS}" in client_error


def test_plaintext_client_is_refused(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    server = MeshServer(lambda: server_context(*ca.issue(ORDERS), bundle))

    async def go() -> bytes:
        port = await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data
        finally:
            await server.close()

    data = run(go())
    assert b"HTTP" not in data and server.served == 0
    assert len(server.errors) == 1 and "plaintext" in server.errors[0]


def test_tls12_client_is_refused(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    server = MeshServer(lambda: server_context(*ca.issue(ORDERS), bundle))
    chain, key = ca.issue(WEB)
    old = client_context(chain, key, bundle)
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2

    async def go() -> None:
        port = await server.start()
        try:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await call(port, old)
        finally:
            await server.close()

    run(go())
    assert server.served == 0
    assert len(server.errors) == 1 and "TLS 1.3 only" in server.errors[0]


def test_client_without_certificate_is_refused(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    server = MeshServer(lambda: server_context(*ca.issue(ORDERS), bundle))
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=bundle.to_pem())

    async def go() -> None:
        port = await server.start()
        try:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await call(port, anonymous)
        finally:
            await server.close()

    run(go())
    assert server.served == 0 and server.errors


def test_session_resumption_and_identity_on_resumed_connections(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    server_ctx = server_context(*ca.issue(ORDERS), bundle)
    server = MeshServer(lambda: server_ctx, expected=WEB)
    client = client_context(*ca.issue(WEB), bundle)

    async def go() -> list[bool]:
        port = await server.start()
        try:
            flags = []
            for _ in range(4):
                server_id, _, resumed = await call(port, client, ORDERS)
                assert server_id == ORDERS
                flags.append(resumed)
            # a resumed connection still presents (and is checked against) the server's identity
            with pytest.raises(
                PeerIdentityError, match=r"expected spiffe://example\.org/ns/default/sa/payments"
            ):
                await call(port, client, workload_id(TD, "payments"))
            # another peer name has no session: full handshake
            assert (await call(port, client, ORDERS, server_hostname="other"))[2] is False
            return flags
        finally:
            await server.close()

    assert run(go()) == [False, True, True, True]
    assert server.resumed >= 3 and not [e for e in server.errors if "payments" not in e]


def test_new_server_context_forces_full_handshake(ca: CertificateAuthority) -> None:
    """Tickets are bound to the server context: after a bundle change (new contexts) the next handshake is
    full and verified against the new bundle."""
    bundle = ca.bundle()
    contexts = [server_context(*ca.issue(ORDERS), bundle)]
    server = MeshServer(lambda: contexts[-1])
    client = client_context(*ca.issue(WEB), bundle)

    async def go() -> list[bool]:
        port = await server.start()
        try:
            flags = [(await call(port, client))[2], (await call(port, client))[2]]
            contexts.append(server_context(*ca.issue(ORDERS), bundle))
            flags.append((await call(port, client))[2])
            return flags
        finally:
            await server.close()

    assert run(go()) == [False, True, False]


def test_remember_session_ignores_connections_without_ticket(ca: CertificateAuthority) -> None:
    ctx = client_context(*ca.issue(WEB), ca.bundle())
    assert isinstance(ctx, MeshClientContext)
    assert ctx.remember_session(None) is False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    assert ctx.remember_session(ctx.wrap_bio(incoming, outgoing, server_hostname="x")) is False
    ctx.forget_sessions()


def test_context_needs_roots_and_chain(ca: CertificateAuthority) -> None:
    chain, key = ca.issue(WEB)
    with pytest.raises(ValueError, match="no roots"):
        server_context(chain, key, TrustBundle(TD, ()))
    with pytest.raises(ValueError, match="empty"):
        client_context([], key, ca.bundle())


def test_explain_tls_error_fallbacks() -> None:
    assert "closed the connection" in explain_tls_error(ConnectionResetError())
    assert explain_tls_error(ssl.SSLError("weird")).startswith("TLS handshake failed")


def test_mtls_with_intermediate_ca_under_operator_root(tmp_path: Any) -> None:
    root, root_key = make_root("operator root")
    ica = CertificateAuthority.init(tmp_path / "ica", TD, root_cert=root, root_key=root_key)
    bundle = ica.bundle()
    assert bundle.roots == (root,)
    server = MeshServer(lambda: server_context(*ica.issue(ORDERS), bundle), expected=WEB)

    async def go() -> SpiffeId:
        port = await server.start()
        try:
            return (await call(port, client_context(*ica.issue(WEB), bundle), ORDERS))[0]
        finally:
            await server.close()

    assert run(go()) == ORDERS and server.errors == []


def test_alpn_can_be_required(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    server_ctx = server_context(*ca.issue(ORDERS), bundle)
    client = client_context(*ca.issue(WEB), bundle)
    client.set_alpn_protocols(["http/1.1"])

    async def go() -> str:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            conn = writer.get_extra_info("ssl_object")
            writer.close()
            with pytest.raises(PeerIdentityError) as info:
                verify_peer(conn, TD, ORDERS, alpn="h2")
            assert verify_peer(conn, TD, ORDERS) == ORDERS
            return str(info.value)
        finally:
            server.close()
            await server.wait_closed()

    assert "ALPN None is not 'h2'" in run(go())


def test_verify_peer_without_tls() -> None:
    with pytest.raises(PeerIdentityError, match="not TLS"):
        verify_peer(None, TD)
