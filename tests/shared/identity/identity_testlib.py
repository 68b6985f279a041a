"""Helpers for the identity tests: crafted certificates and a small real mTLS server/client on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.identity.ca import SigningKey
from shared.identity.certutil import key_usage
from shared.identity.spiffeid import SpiffeId
from shared.identity.svid import check_leaf
from shared.identity.tls import Expected, MeshClientContext, PeerIdentityError, explain_tls_error, verify_peer

TD = "example.org"


def pem(chain: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_root(
    name: str = "test root", ttl: timedelta = timedelta(days=30)
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An independent self-signed CA (an operator's root, or a CA the mesh does not trust)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=True, digital_signature=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    uris: Sequence[str] = (f"spiffe://{TD}/ns/default/sa/web",),
    *,
    ca: bool = False,
    key_cert_sign: bool = False,
    digital_signature: bool = True,
    key_usage_critical: bool = True,
    eku: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    not_before: timedelta = timedelta(minutes=-1),
    not_after: timedelta = timedelta(hours=1),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf signed by ``issuer`` with every SVID property controllable (for crafting bad ones)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + not_before)
        .not_valid_after(now + not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            key_usage(cert_sign=key_cert_sign, digital_signature=digital_signature),
            critical=key_usage_critical,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def assert_accepted_independently(
    chain: Sequence[x509.Certificate], key: SigningKey, roots: Sequence[x509.Certificate], tmp: Path
) -> None:
    """The spiffe package parses the SVID (and its ID) and ``openssl verify`` accepts the chain."""
    kp = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    svid = spiffe.X509Svid.parse(pem(chain), kp)
    assert str(svid.spiffe_id) == check_leaf(chain[0]).uri
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "root.pem").write_bytes(pem(roots))
    (tmp / "leaf.pem").write_bytes(pem(chain[:1]))
    cmd = ["openssl", "verify", "-x509_strict", "-CAfile", str(tmp / "root.pem")]
    if len(chain) > 1:
        (tmp / "inter.pem").write_bytes(pem(chain[1:]))
        cmd += ["-untrusted", str(tmp / "inter.pem")]
    for purpose in ("sslclient", "sslserver"):
        args = [*cmd, "-purpose", purpose, str(tmp / "leaf.pem")]
        done = subprocess.run(args, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr


@dataclass
class MeshServer:
    """A real asyncio mTLS server on 127.0.0.1: plain accept, ``start_tls``, :func:`verify_peer`, then
    echo ``ok <peer id>`` per line. Handshake and identity failures are recorded in ``errors``."""

    context: Callable[[], ssl.SSLContext]
    trust_domain: str = TD
    expected: Expected = None
    errors: list[str] = field(default_factory=list)
    served: int = 0
    resumed: int = 0
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.context(), ssl_handshake_timeout=5)
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            self.errors.append(explain_tls_error(exc))
            return
        conn = writer.get_extra_info("ssl_object")
        try:
            peer = verify_peer(conn, self.trust_domain, self.expected)
        except PeerIdentityError as exc:
            self.errors.append(str(exc))
            return
        if conn.session_reused:
            self.resumed += 1
        try:
            while line := await reader.readline():
                self.served += 1
                writer.write(b"ok " + str(peer).encode() + b" " + line)
                await writer.drain()
        except (ssl.SSLError, ConnectionError):
            return

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await self._server.wait_closed()


async def call(
    port: int,
    ctx: ssl.SSLContext,
    expected: Expected = None,
    *,
    trust_domain: str = TD,
    server_hostname: str = "peer",
    requests: int = 1,
) -> tuple[SpiffeId, list[bytes], bool]:
    """Connect with mTLS, verify the server's identity, send ``requests`` lines; returns (server id,
    replies, resumed). Raises ssl.SSLError / ConnectionError / PeerIdentityError on failure."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname), 5
    )
    try:
        conn = writer.get_extra_info("ssl_object")
        server_id = verify_peer(conn, trust_domain, expected)
        replies = []
        for i in range(requests):
            writer.write(b"ping %d\n" % i)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 5)
            if not line:
                raise ConnectionResetError("server closed the connection")
            replies.append(line)
        if isinstance(ctx, MeshClientContext):
            ctx.remember_session(conn)
        return server_id, replies, bool(conn.session_reused)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
