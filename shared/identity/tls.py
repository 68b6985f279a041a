"""TLS contexts for mesh peers, and the SPIFFE ID check that must follow every handshake.

Both sides: TLS 1.3 only, ALPN ``h2``, certificate required and chain-verified by OpenSSL against the
trust bundle's roots. OpenSSL (through Python's ``ssl``) does not look at URI SANs, so right after the
handshake, before reading any application byte, the caller runs :func:`verify_peer`, which applies the
X.509-SVID leaf rules, the trust domain and the expected identity, and raises :class:`PeerIdentityError`
with a message naming the expected and the presented identity and the rule broken.

Session resumption: the server issues TLS 1.3 session tickets (stateless; the ticket carries the peer's
verified certificate, so :func:`verify_peer` still sees it on a resumed connection). Python's asyncio
offers no ``session=`` argument to ``create_connection``, but it builds every TLS connection through
``SSLContext.wrap_bio(..., server_hostname=...)``. The client context returned by
:func:`client_context` is a :class:`MeshClientContext` whose ``wrap_bio``/``wrap_socket`` pass the
session remembered for that ``server_hostname``; after a connection has read from the peer (TLS 1.3
tickets arrive after the handshake) the caller hands it to :meth:`MeshClientContext.remember_session`.
Sessions belong to one context: a new context (new certificate or bundle) starts with an empty cache
and a new server context issues tickets with new keys, so a bundle change always forces full,
re-verified handshakes.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .bundle import TrustBundle
from .certutil import SigningKey
from .spiffeid import SpiffeId
from .svid import SvidError, SvidRule, check_leaf, describe

__all__ = [
    "ALPN_H2",
    "Expected",
    "MeshClientContext",
    "PeerIdentityError",
    "client_context",
    "explain_tls_error",
    "server_context",
    "verify_peer",
]

log = logging.getLogger("meshgate.identity")

ALPN_H2 = "h2"
#: What a caller may expect of its peer: one exact ID, a predicate over IDs, or None (any ID in the domain).
Expected = SpiffeId | Callable[[SpiffeId], bool] | None
SslConnection = ssl.SSLObject | ssl.SSLSocket


class PeerIdentityError(Exception):
    """The peer's certificate or identity is not acceptable; the message names expected vs presented."""

    def __init__(self, message: str, *, presented: str | None, rule: SvidRule | None) -> None:
        super().__init__(message)
        self.presented = presented
        self.rule = rule


def _load_identity(ctx: ssl.SSLContext, chain: Sequence[x509.Certificate], key: SigningKey) -> None:
    """Load ``chain``/``key`` into ``ctx``. Python's ssl only reads files: the key goes to a private
    temporary directory, encrypted with a one-time password, and is removed at once."""
    if not chain:
        raise ValueError("certificate chain is empty")
    password = os.urandom(24).hex().encode()
    directory = tempfile.mkdtemp(prefix="meshgate-tls-")
    try:
        cert_path = Path(directory, "chain.pem")
        key_path = Path(directory, "key.pem")
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(password),
                )
            )
        ctx.load_cert_chain(cert_path, key_path, password=password)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _configure(
    ctx: ssl.SSLContext, chain: Sequence[x509.Certificate], key: SigningKey, bundle: TrustBundle
) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.set_alpn_protocols([ALPN_H2])
    if not bundle.roots:
        raise ValueError(f"trust bundle for {bundle.trust_domain!r} has no roots")
    ctx.load_verify_locations(cadata=bundle.to_pem())
    _load_identity(ctx, chain, key)


def server_context(chain: Sequence[x509.Certificate], key: SigningKey, bundle: TrustBundle) -> ssl.SSLContext:
    """A server context presenting ``chain``/``key``: TLS 1.3, ALPN h2, client certificate required and
    verified against ``bundle``; issues one resumption ticket per handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, chain, key, bundle)
    ctx.num_tickets = 1
    return ctx


class MeshClientContext(ssl.SSLContext):
    """A client ``SSLContext`` that resumes TLS sessions per ``server_hostname`` (see the module doc)."""

    max_sessions = 1024

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        self._sessions: OrderedDict[str, ssl.SSLSession] = OrderedDict()

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """As ``SSLContext.wrap_bio``, resuming the session remembered for ``server_hostname``."""
        if session is None and isinstance(server_hostname, str):
            session = self._sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """As ``SSLContext.wrap_socket``, resuming the session remembered for ``server_hostname``."""
        hostname = kwargs.get("server_hostname")
        if kwargs.get("session") is None and isinstance(hostname, str):
            kwargs["session"] = self._sessions.get(hostname)
        return super().wrap_socket(sock, *args, **kwargs)

    def remember_session(self, conn: SslConnection | None) -> bool:
        """Keep ``conn``'s session for its ``server_hostname`` when it holds a resumption ticket.

        Call it once the connection has read something from the peer (or just before closing it).
        Returns True when a session was stored.
        """
        if conn is None or not isinstance(conn.server_hostname, str):
            return False
        session = conn.session
        if session is None or not session.has_ticket:
            return False
        self._sessions[conn.server_hostname] = session
        self._sessions.move_to_end(conn.server_hostname)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return True

    def forget_sessions(self) -> None:
        """Drop every remembered session (the next handshakes are full ones)."""
        self._sessions.clear()


def client_context(
    chain: Sequence[x509.Certificate], key: SigningKey, bundle: TrustBundle
) -> MeshClientContext:
    """A client context presenting ``chain``/``key``: TLS 1.3, ALPN h2, server verified by chain against
    ``bundle`` (host names are not checked: peers are checked by SPIFFE ID with :func:`verify_peer`)."""
    ctx = MeshClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    _configure(ctx, chain, key, bundle)
    return ctx


def _expected_text(expected: Expected) -> str:
    if expected is None:
        return "any identity in the trust domain"
    if isinstance(expected, SpiffeId):
        return str(expected)
    return "an authorized identity"


def verify_peer(
    conn: SslConnection | None,
    bundle_td: str,
    expected: Expected = None,
    *,
    alpn: str | None = None,
    now: datetime | None = None,
) -> SpiffeId:
    """Check the peer of a completed TLS handshake and return its SPIFFE ID.

    The peer certificate must follow every X.509-SVID leaf rule, be valid now, belong to ``bundle_td``
    and match ``expected`` (an exact ID, or a predicate returning True). With ``alpn`` the negotiated
    protocol must be it. Raises PeerIdentityError (also logged) naming expected and presented identity.
    """
    want = _expected_text(expected)

    def fail(detail: str, presented: str | None, rule: SvidRule | None) -> PeerIdentityError:
        message = f"peer rejected: expected {want}, presented {presented or 'nothing'}: {detail}"
        log.warning(message)
        return PeerIdentityError(message, presented=presented, rule=rule)

    if conn is None:
        raise fail("the connection is not TLS", None, None)
    if conn.version() != "TLSv1.3":
        raise fail(f"protocol {conn.version()} is not TLS 1.3", None, None)
    if alpn is not None and conn.selected_alpn_protocol() != alpn:
        raise fail(f"ALPN {conn.selected_alpn_protocol()!r} is not {alpn!r}", None, None)
    der = conn.getpeercert(binary_form=True)
    if not der:
        raise fail("no certificate", None, None)
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise fail(f"certificate cannot be parsed ({exc})", None, SvidRule.WELL_FORMED) from None
    presented = describe(cert)
    try:
        spiffe_id = check_leaf(cert, bundle_td, now=now)
    except SvidError as exc:
        raise fail(str(exc), presented, exc.rule) from None
    if isinstance(expected, SpiffeId):
        if spiffe_id != expected:
            raise fail(f"identity mismatch (rule: {SvidRule.IDENTITY.value})", presented, SvidRule.IDENTITY)
    elif expected is not None and not expected(spiffe_id):
        raise fail(f"identity not authorized (rule: {SvidRule.IDENTITY.value})", presented, SvidRule.IDENTITY)
    return spiffe_id


_R = SvidRule
#: OpenSSL message fragment -> (what it means, the SVID rule behind it or None).
_TLS_REASONS: tuple[tuple[str, str, SvidRule | None], ...] = (
    ("certificate has expired", "peer certificate has expired", _R.VALIDITY),
    ("certificate is not yet valid", "peer certificate is not yet valid", _R.VALIDITY),
    ("unable to get local issuer", "peer chain does not lead to the trust bundle", _R.CHAIN),
    ("self-signed certificate", "peer chain does not lead to the trust bundle", _R.CHAIN),
    ("certificate signature failure", "peer chain signature is invalid", _R.CHAIN),
    ("keycertsign invalid for non-ca", "peer leaf has keyCertSign", _R.NO_SIGNING_USAGE),
    ("unsupported certificate purpose", "peer certificate EKU does not allow this use", _R.EKU),
    ("invalid ca certificate", "an issuer in the peer chain is not a CA", _R.CA_IS_CA),
    ("alert certificate expired", "the peer refused our certificate as expired", None),
    ("alert unknown ca", "the peer does not trust our certificate's CA (check the trust bundles)", None),
    ("alert bad certificate", "the peer refused our certificate", None),
    ("alert certificate required", "the peer requires a client certificate", None),
    ("protocol version", "TLS version refused: the mesh speaks TLS 1.3 only", None),
    ("unsupported protocol", "TLS version refused: the mesh speaks TLS 1.3 only", None),
    ("no protocols available", "TLS version refused: the mesh speaks TLS 1.3 only", None),
    ("wrong version number", "the peer does not speak TLS (plaintext?)", None),
    ("http request", "the peer sent plaintext HTTP to a TLS port", None),
)


def explain_tls_error(exc: BaseException) -> str:
    """A one-line operator explanation of a TLS handshake failure, naming the SVID rule when known."""
    text = str(exc)
    if not text:
        if isinstance(exc, ConnectionError):
            what = "the peer closed the connection during the handshake (did it refuse our certificate?)"
            return f"{what} [{type(exc).__name__}]"
        text = type(exc).__name__
    lowered = text.lower()
    for needle, meaning, rule in _TLS_REASONS:
        if needle in lowered:
            named = f" (rule: {rule.value})" if rule is not None else ""
            return f"{meaning}{named} [{text}]"
    return f"TLS handshake failed: {text}"
