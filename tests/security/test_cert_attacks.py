"""Certificate attacks (issue 10; STANDARDS "SPIFFE X.509-SVID", docs/identity.md "mTLS between peers")
against real listeners over real sockets: the sidecar's inbound mTLS port and the control plane's
HTTPS API, whose ``POST /v1/sign`` renews an SVID for the identity of the client certificate.

Bad certificates are made with ``cryptography`` and, wherever the attack needs a chain that looks
valid, signed with the real mesh CA key (``<control plane data dir>/ca/ca-N.key``, named in
``ca.json``), so that the one flaw under test is the only reason to refuse them; a control test
shows such a forged-but-correct leaf is served. Each refusal is checked for where it happens:

- ``tls``: OpenSSL's chain and purpose checks (validity, issuer, basicConstraints of issuers,
  keyUsage/EKU for a TLS client) fail the handshake. In TLS 1.3 a client finishes its side of the
  handshake before the server has judged its certificate, so the client sees the connection closed on
  its first read; the server sends no alert (asyncio and uvloop drop it, CPython gh-98078).
- ``svid``: the chain verifies, and ``verify_peer`` (the X.509-SVID leaf rules) refuses the peer right
  after the handshake: the sidecar logs ``refusing connection: peer rejected: ...`` with the rule,
  counts it in ``meshgate_sidecar_inbound_connections_refused_total`` and closes before sending a
  byte of HTTP/2; the control plane answers 401 ``bad_certificate`` with the same rule text.

Every attack also asserts that the app saw nothing (or the control plane signed nothing) and that a
well-behaved client with a good SVID on another connection still gets 200.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from security_lib import ATTACKER, TD, Stack, good_get, security_stack

from shared.identity.bundle import TrustBundle
from shared.identity.certutil import (
    SigningKey,
    chain_pem,
    load_chain_pem,
    load_signing_key,
    private_key_pem,
)
from shared.identity.csr import make_csr
from shared.identity.spiffeid import SpiffeId
from shared.identity.svid import SvidRule
from shared.identity.tls import PeerIdentityError, client_context, explain_tls_error, verify_peer

pytestmark = pytest.mark.slow

WEB = f"spiffe://{TD}/ns/default/sa/web"
INTRUDER = f"spiffe://{TD}/ns/default/sa/intruder"  # in the trust domain, not in AccessPolicy web-access
PAYMENTS = f"spiffe://{TD}/ns/default/sa/payments"
EVIL = "spiffe://evil.org/ns/default/sa/attacker"
SVID_EKU = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
WAIT = 5.0  # every network wait


def usage(
    *, sign: bool = True, cert_sign: bool = False, agreement: bool = False, encipherment: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=encipherment,
        data_encipherment=False,
        key_agreement=agreement,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# -- certificates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cred:
    """A certificate chain (leaf first, as presented) and the leaf's key."""

    chain: tuple[x509.Certificate, ...]
    key: SigningKey

    @property
    def cert(self) -> x509.Certificate:
        return self.chain[0]


class Forge:
    """Makes certificates: signed by the real mesh CA (its key read from the control plane's data
    dir), by a self-made CA, or by any :class:`Cred`; and client contexts presenting them."""

    def __init__(self, ca_dir: Path, scratch: Path) -> None:
        state = json.loads((ca_dir / "ca.json").read_text())
        active = [a for a in state["authorities"] if a["state"] == "active"][-1]
        cert = x509.load_pem_x509_certificate((ca_dir / active["cert"]).read_bytes())
        self.ca = Cred((cert,), load_signing_key((ca_dir / active["key"]).read_bytes(), active["key"]))
        self.bundle = TrustBundle(state["trust_domain"], (cert,))
        self.scratch = scratch
        self._files = 0

    def leaf(
        self,
        uris: Sequence[str] = (ATTACKER,),
        *,
        issuer: Cred | None = None,
        dns: Sequence[str] = (),
        ca: bool = False,
        key_usage: x509.KeyUsage | None = None,
        key_usage_critical: bool = True,
        eku: Sequence[x509.ObjectIdentifier] = SVID_EKU,
        valid: tuple[timedelta, timedelta] = (timedelta(minutes=-1), timedelta(hours=1)),
        aki: x509.AuthorityKeyIdentifier | None = None,
    ) -> Cred:
        """A leaf as the mesh CA makes them (profiles.build_leaf), each property overridable; signed by
        ``issuer`` (default: the mesh CA), whose chain follows it."""
        issuer = issuer or self.ca
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "attacker")]))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + valid[0])
            .not_valid_after(now + valid[1])
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(key_usage or usage(), critical=key_usage_critical)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                aki or x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Cred((builder.sign(issuer.key, hashes.SHA256()), *issuer.chain), key)

    def rogue_ca(self, trust_domain: str = TD, *, impersonate: bool = False) -> Cred:
        """A self-made root CA for ``trust_domain``; ``impersonate``: with the mesh CA's own subject and
        subject key identifier, so only the signature tells them apart."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        mesh = self.ca.cert
        subject = (
            mesh.subject
            if impersonate
            else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rogue CA for {trust_domain}")])
        )
        ski = (
            mesh.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            if impersonate
            else x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage(sign=False, cert_sign=True), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return Cred((cert,), key)

    def context(self, cred: Cred | None, *, alpn: str | None = "h2", tls12: bool = False) -> ssl.SSLContext:
        """A client context presenting ``cred`` (None: no certificate), not checking the server."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if alpn is not None:
            ctx.set_alpn_protocols([alpn])
        if cred is not None:
            self._files += 1
            cert, key = self.scratch / f"c{self._files}.pem", self.scratch / f"k{self._files}.pem"
            cert.write_bytes(chain_pem(cred.chain))
            key.write_bytes(private_key_pem(cred.key))
            ctx.load_cert_chain(cert, key)
        return ctx


# -- the stack ---------------------------------------------------------------------------------------


@dataclass
class Env:
    stack: Stack
    forge: Forge
    cp_port: int
    attacker: Cred  # the SVID security_lib issued with `meshgate ca issue`


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cert-attacks")
    with security_stack(tmp) as stack:
        scratch = tmp / "forged"
        scratch.mkdir()
        argv = [str(a) for a in stack.procs.procs["cp"].args]
        cp_port = int(argv[argv.index("--listen") + 1].rsplit(":", 1)[1])
        attacker = Cred(
            tuple(load_chain_pem((tmp / "attacker.pem").read_bytes())),
            load_signing_key((tmp / "attacker.key").read_bytes(), "attacker.key"),
        )
        yield Env(stack, Forge(tmp / "cp" / "ca", scratch), cp_port, attacker)


# -- one HTTP/2 request on a TLS connection ----------------------------------------------------------


@dataclass
class Attempt:
    """What one connection got. ``stage``: ``handshake`` (the client's handshake raised), ``closed``
    (the server closed after the handshake), ``answered`` (a response came)."""

    stage: str
    error: str = ""
    received: int = 0  # application bytes from the server (an HTTP/2 server starts with SETTINGS)
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    resumed: bool = False
    session: ssl.SSLSession | None = None

    @property
    def refused(self) -> bool:
        """Refused before HTTP/2 began: not one application byte came from the server."""
        return self.stage in ("handshake", "closed") and self.received == 0


def h2_attempt(
    port: int, ctx: ssl.SSLContext, *, path: str = "/cert", session: ssl.SSLSession | None = None
) -> Attempt:
    """Connect, handshake, send one GET with the ``h2`` library, read until the answer or the close."""
    with contextlib.ExitStack() as closing:
        raw = closing.enter_context(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
        try:
            tls = closing.enter_context(ctx.wrap_socket(raw, session=session))
        except (ssl.SSLError, OSError) as exc:
            return Attempt("handshake", f"{type(exc).__name__}: {exc}")
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        head = [(":method", "GET"), (":scheme", "https"), (":authority", "web"), (":path", path)]
        conn.send_headers(1, head, end_stream=True)
        got = Attempt("closed", resumed=bool(tls.session_reused))
        try:
            tls.sendall(conn.data_to_send())
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                data = tls.recv(65536)
                if not data:
                    got.error = "EOF"
                    return got
                got.received += len(data)
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        got.headers = {str(k): str(v) for k, v in event.headers}
                        got.status = int(got.headers[":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        got.stage, got.session = "answered", tls.session
                        return got
                tls.sendall(conn.data_to_send())
        except (ssl.SSLError, OSError) as exc:
            got.error = f"{type(exc).__name__}: {exc}"
            return got
        raise AssertionError(f"neither an answer nor a close within {WAIT}s: {got}")


# -- what the sidecar and the control plane did ------------------------------------------------------


def sidecar_log(env: Env) -> str:
    return str(env.stack.procs.log(env.stack.sidecar.name))


def wait_log(env: Env, offset: int, needle: str) -> str:
    """The sidecar log line (written after ``offset``) containing ``needle``; bounded wait."""
    deadline = time.monotonic() + WAIT
    while True:
        for line in sidecar_log(env)[offset:].splitlines():
            if needle in line:
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no sidecar log line with {needle!r}: {sidecar_log(env)[offset:][-2000:]}")
        time.sleep(0.05)


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not exported"
    return float(found.group(1))


def refused_connections(env: Env) -> float:
    url = f"{env.stack.sidecar.admin_url}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        text = response.read().decode()
    return metric(text, "meshgate_sidecar_inbound_connections_refused_total")


def assert_others_served(env: Env, mark: int) -> None:
    """The app saw nothing since ``mark``; a good client on its own connection then gets 200."""
    app = env.stack.app
    assert app.settle(quiet=0.1, timeout=1.0) == mark, [s.path for s in app.since(mark)]
    assert good_get(env.stack.listeners["inbound"]) == 200
    assert [s.path for s in app.since(mark)] == ["/ok"]


# -- the bad client certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad client certificate. ``refused_by``: ``tls`` (OpenSSL fails the handshake) or ``svid``
    (``verify_peer`` refuses it; ``detail`` is the exact text it gives, before ``(rule: ...)``)."""

    make: Callable[[Forge, Cred], Cred]
    refused_by: str
    rule: SvidRule | None = None
    detail: str = ""


def _forged_by_an_svid(forge: Forge, attacker: Cred) -> Cred:
    # a real SVID (cA=false) used as an issuer: a leaf for `web` signed by the attacker's SVID key,
    # presented with the attacker's SVID as its "intermediate"
    return forge.leaf([WEB], issuer=attacker)


def _impersonating_ca(forge: Forge, _attacker: Cred) -> Cred:
    mesh_ski = forge.ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    rogue = forge.rogue_ca(impersonate=True)
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(mesh_ski)
    return forge.leaf(issuer=rogue, aki=aki)


def _rogue(trust_domain: str, uri: str) -> Callable[[Forge, Cred], Cred]:
    def make(forge: Forge, _attacker: Cred) -> Cred:
        rogue = forge.rogue_ca(trust_domain)
        return forge.leaf([uri], issuer=rogue)  # presented with the rogue root in the chain

    return make


def _leaf(**kwargs: object) -> Callable[[Forge, Cred], Cred]:
    return lambda forge, _attacker: forge.leaf(**kwargs)  # type: ignore[arg-type]


HOUR = timedelta(hours=1)
TWO_URIS = f"{ATTACKER}, {WEB}"

CASES: dict[str, Case] = {
    # validity
    # (the OpenSSL verify error each "tls" case gets is in its comment)
    "expired": Case(_leaf(valid=(-2 * HOUR, -HOUR)), "tls"),  # certificate has expired
    "not-yet-valid": Case(_leaf(valid=(HOUR, 2 * HOUR)), "tls"),  # certificate is not yet valid
    # issuer
    "other-ca-same-trust-domain": Case(_rogue(TD, ATTACKER), "tls"),  # self-signed certificate in chain
    "other-ca-impersonating-the-mesh-ca": Case(_impersonating_ca, "tls"),  # certificate signature failure
    "other-trust-domain-own-ca": Case(_rogue("evil.org", EVIL), "tls"),  # self-signed certificate in chain
    "svid-used-as-issuer": Case(_forged_by_an_svid, "tls"),  # invalid CA certificate
    # identity
    "other-trust-domain-signed-by-mesh-ca": Case(
        _leaf(uris=[EVIL]),
        "svid",
        SvidRule.TRUST_DOMAIN,
        f"SPIFFE ID {EVIL} is in trust domain 'evil.org', expected '{TD}'",
    ),
    "two-uri-sans": Case(
        _leaf(uris=[ATTACKER, WEB]), "svid", SvidRule.ONE_URI_SAN, f"certificate has 2 URI SANs: {TWO_URIS}"
    ),
    "no-uri-san-dns-only": Case(
        _leaf(uris=[], dns=["attacker", "web"]),
        "svid",
        SvidRule.ONE_URI_SAN,
        "leaf certificate has no URI SAN",
    ),
    "uri-san-not-spiffe": Case(
        _leaf(uris=["https://attacker.example/"]),
        "svid",
        SvidRule.VALID_ID,
        "invalid SPIFFE ID 'https://attacker.example/': scheme must be 'spiffe://'",
    ),
    "spiffe-id-with-dot-dot": Case(
        _leaf(uris=[f"spiffe://{TD}/ns/default/sa/../sa/web"]),
        "svid",
        SvidRule.VALID_ID,
        f"invalid SPIFFE ID 'spiffe://{TD}/ns/default/sa/../sa/web': path must not contain a '..' segment",
    ),
    "spiffe-id-upper-case-trust-domain": Case(
        _leaf(uris=[ATTACKER.replace(TD, TD.upper())]),
        "svid",
        SvidRule.VALID_ID,
        f"invalid SPIFFE ID '{ATTACKER.replace(TD, TD.upper())}': trust domain must be lower case",
    ),
    "trust-domain-id-without-path": Case(
        _leaf(uris=[f"spiffe://{TD}"]),
        "svid",
        SvidRule.LEAF_PATH,
        f"leaf SPIFFE ID spiffe://{TD} has no path",
    ),
    # CA certificates as leaves
    "ca-cert-as-leaf-with-svid-usages": Case(
        _leaf(ca=True, key_usage=usage(cert_sign=True)),
        "svid",
        SvidRule.LEAF_NOT_CA,
        f"leaf {ATTACKER} has basicConstraints cA=true",
    ),
    # unsuitable certificate purpose (keyUsage without digitalSignature)
    "ca-cert-as-leaf-pure": Case(_leaf(ca=True, key_usage=usage(sign=False, cert_sign=True), eku=()), "tls"),
    # Key usage keyCertSign invalid for non-CA cert (VERIFY_X509_STRICT)
    "leaf-with-keycertsign": Case(_leaf(key_usage=usage(cert_sign=True)), "tls"),
    # key usages
    "eku-without-clientauth": Case(_leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH]), "tls"),  # unsuitable purpose
    "no-eku": Case(_leaf(eku=()), "svid", SvidRule.EKU, f"leaf {ATTACKER} has no extendedKeyUsage extension"),
    # unsuitable certificate purpose
    "keyusage-keyencipherment-only": Case(_leaf(key_usage=usage(sign=False, encipherment=True)), "tls"),
    "keyusage-keyagreement-only": Case(
        _leaf(key_usage=usage(sign=False, agreement=True)),
        "svid",
        SvidRule.DIGITAL_SIGNATURE,
        f"leaf {ATTACKER} keyUsage lacks digitalSignature",
    ),
    "keyusage-not-critical": Case(
        _leaf(key_usage_critical=False),
        "svid",
        SvidRule.KEY_USAGE_CRITICAL,
        f"leaf {ATTACKER} certificate keyUsage is not marked critical",
    ),
}
TLS_CASES = [name for name, case in CASES.items() if case.refused_by == "tls"]


def test_a_forged_but_correct_leaf_is_served(env: Env) -> None:
    """Control: a leaf made here like the CA makes them, signed by the mesh CA key, is accepted, so each
    refusal below is for the one flaw its certificate has."""
    mark = env.stack.app.count()
    got = h2_attempt(env.stack.sidecar.inbound, env.forge.context(env.forge.leaf()), path="/forged-ok")
    assert (got.stage, got.status) == ("answered", 200), got
    seen = env.stack.app.since(mark)
    assert [(s.path, s.headers.get("x-meshgate-peer")) for s in seen] == [("/forged-ok", ATTACKER)]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_client_certificate_is_refused_by_the_inbound_listener(env: Env, name: str) -> None:
    case = CASES[name]
    cred = case.make(env.forge, env.attacker)
    mark, offset, refused = env.stack.app.count(), len(sidecar_log(env)), refused_connections(env)
    got = h2_attempt(env.stack.sidecar.inbound, env.forge.context(cred))
    assert got.refused, got
    # TLS 1.3: the client's side of the handshake completed; the server closed on its first read
    assert got.stage == "closed", got
    if case.refused_by == "svid":
        assert case.rule is not None
        line = wait_log(env, offset, "refusing connection: peer rejected")
        assert f"{case.detail} (rule: {case.rule.value})" in line, line
        assert refused_connections(env) == refused + 1
    else:
        assert "refusing connection" not in sidecar_log(env)[offset:], "refused by OpenSSL, not verify_peer"
    assert_others_served(env, mark)


def test_svid_of_a_service_the_policy_does_not_allow_gets_403(env: Env) -> None:
    """Authentication passes (a valid SVID of this trust domain), authorization refuses: 403
    policy_denied from the sidecar, nothing reaches the app."""
    mark, offset = env.stack.app.count(), len(sidecar_log(env))
    got = h2_attempt(env.stack.sidecar.inbound, env.forge.context(env.forge.leaf([INTRUDER])))
    assert (got.stage, got.status) == ("answered", 403), got
    assert got.headers.get("x-meshgate-error") == "policy_denied", got.headers
    assert "refusing connection" not in sidecar_log(env)[offset:]
    wait_log(env, offset, f"denied GET /cert from {INTRUDER}")
    assert_others_served(env, mark)


def test_no_client_certificate_is_refused(env: Env) -> None:
    mark = env.stack.app.count()
    got = h2_attempt(env.stack.sidecar.inbound, env.forge.context(None))
    assert got.refused and got.stage == "closed", got
    assert_others_served(env, mark)


@pytest.mark.parametrize(
    "data",
    [b"GET /cert HTTP/1.1\r\nHost: web\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
    ids=["http1", "h2c-preface"],
)
def test_plaintext_to_the_tls_port_is_closed_unanswered(env: Env, data: bytes) -> None:
    mark = env.stack.app.count()
    with socket.create_connection(("127.0.0.1", env.stack.sidecar.inbound), timeout=WAIT) as sock:
        sock.sendall(data)
        received = b""
        closed = False
        deadline = time.monotonic() + WAIT
        while not closed and time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                chunk = b""
            received += chunk
            closed = not chunk
    assert closed, "the listener keeps a plaintext connection open"
    assert received == b"", received
    assert_others_served(env, mark)


def test_tls12_only_client_fails_the_handshake(env: Env) -> None:
    mark = env.stack.app.count()
    got = h2_attempt(env.stack.sidecar.inbound, env.forge.context(env.forge.leaf(), tls12=True))
    assert got.stage == "handshake", got
    # no protocol_version alert arrives (CPython gh-98078): OpenSSL sees the close as an EOF
    assert "EOF" in got.error or "protocol version" in got.error, got.error
    assert explain_tls_error(ssl.SSLError(got.error)).startswith(
        ("TLS version refused", "the peer does not speak TLS", "TLS handshake failed")
    )
    assert_others_served(env, mark)


def test_expired_certificate_cannot_come_back_through_session_resumption(env: Env) -> None:
    """TLS 1.3 resumption skips certificate verification; the ticket carries the client certificate
    and ``verify_peer`` still checks its validity: once expired, the resumed connection is refused."""
    cred = env.forge.leaf(valid=(timedelta(minutes=-1), timedelta(seconds=2)))
    ctx = env.forge.context(cred)
    first = h2_attempt(env.stack.sidecar.inbound, ctx, path="/before-expiry")
    assert (first.stage, first.status, first.resumed) == ("answered", 200, False), first
    assert first.session is not None and first.session.has_ticket
    again = h2_attempt(env.stack.sidecar.inbound, ctx, path="/resumed-before-expiry", session=first.session)
    assert (again.stage, again.status, again.resumed) == ("answered", 200, True), again
    time.sleep(max(0.0, (cred.cert.not_valid_after_utc - datetime.now(UTC)).total_seconds()) + 1.1)
    mark, offset = env.stack.app.count(), len(sidecar_log(env))
    late = h2_attempt(env.stack.sidecar.inbound, ctx, path="/resumed-after-expiry", session=first.session)
    assert late.resumed and late.refused and late.stage == "closed", late
    line = wait_log(env, offset, "refusing connection: peer rejected")
    assert f"{ATTACKER} has expired" in line and SvidRule.VALIDITY.value in line, line
    fresh = h2_attempt(env.stack.sidecar.inbound, ctx, path="/full-handshake-after-expiry")
    assert not fresh.resumed and fresh.refused, fresh
    assert_others_served(env, mark)


def test_certificates_refused_in_the_handshake_are_counted(env: Env) -> None:
    """docs/metrics.md: the counter is "inbound connections whose peer certificate or ALPN did not
    verify"; an expired certificate or one from an unknown CA did not verify."""
    before = refused_connections(env)
    names = [*TLS_CASES, "no-certificate"]
    for name in names:
        cred = None if name == "no-certificate" else CASES[name].make(env.forge, env.attacker)
        assert h2_attempt(env.stack.sidecar.inbound, env.forge.context(cred)).refused, name
    deadline = time.monotonic() + 2.0
    while refused_connections(env) < before + len(names) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert refused_connections(env) - before == len(names)


# -- the client side: a caller pins the sidecar's identity ---------------------------------------------


def test_client_refuses_the_sidecar_under_a_wrong_expected_identity(env: Env) -> None:
    """``verify_peer`` on the client side, against the real sidecar: its SVID is ``web``; a caller
    expecting ``payments``, another trust domain, or a predicate the sidecar fails refuses it."""
    mark = env.stack.app.count()
    ctx = client_context(env.attacker.chain, env.attacker.key, env.forge.bundle)
    with (
        socket.create_connection(("127.0.0.1", env.stack.sidecar.inbound), timeout=WAIT) as raw,
        ctx.wrap_socket(raw, server_hostname="web") as tls,
    ):
        assert str(verify_peer(tls, TD, SpiffeId.parse(WEB), alpn="h2")) == WEB
        with pytest.raises(PeerIdentityError) as wrong_id:
            verify_peer(tls, TD, SpiffeId.parse(PAYMENTS))
        with pytest.raises(PeerIdentityError) as wrong_td:
            verify_peer(tls, "evil.org")
        with pytest.raises(PeerIdentityError) as predicate:
            verify_peer(tls, TD, lambda peer: peer.service == "payments")
    assert (wrong_id.value.rule, wrong_id.value.presented) == (SvidRule.IDENTITY, WEB)
    assert str(wrong_id.value).startswith(f"peer rejected: expected {PAYMENTS}, presented {WEB}: ")
    assert wrong_td.value.rule is SvidRule.TRUST_DOMAIN
    assert f"is in trust domain '{TD}', expected 'evil.org'" in str(wrong_td.value)
    assert predicate.value.rule is SvidRule.IDENTITY and "identity not authorized" in str(predicate.value)
    assert_others_served(env, mark)


def test_client_refuses_a_sidecar_outside_its_trust_bundle(env: Env) -> None:
    """A caller whose bundle holds another CA (same trust domain) fails the handshake on the sidecar's
    chain, before any byte is sent."""
    mark = env.stack.app.count()
    rogue = env.forge.rogue_ca()
    ctx = client_context(env.attacker.chain, env.attacker.key, TrustBundle(TD, rogue.chain))
    with (
        socket.create_connection(("127.0.0.1", env.stack.sidecar.inbound), timeout=WAIT) as raw,
        pytest.raises(ssl.SSLCertVerificationError) as failed,
    ):
        ctx.wrap_socket(raw, server_hostname="web").close()
    # the sidecar sends the mesh root after its leaf (OpenSSL completes the chain from its store)
    assert failed.value.verify_message in (
        "self-signed certificate in certificate chain",
        "unable to get local issuer certificate",
    ), failed.value
    assert explain_tls_error(failed.value).startswith(
        f"peer chain does not lead to the trust bundle (rule: {SvidRule.CHAIN.value})"
    )
    assert_others_served(env, mark)


# -- the control plane: renewals are authenticated by the client certificate ---------------------------


@dataclass
class CpAnswer:
    stage: str  # "handshake", "closed" (no HTTP response), "answered"
    status: int = 0
    body: dict[str, object] = field(default_factory=dict)
    error: str = ""


def cp_request(
    env: Env, ctx: ssl.SSLContext, method: str = "POST", path: str = "/v1/sign", body: bytes = b""
) -> CpAnswer:
    """One HTTP/1.1 request (``Connection: close``) on its own TLS connection to the control plane."""
    head = f"{method} {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    with contextlib.ExitStack() as closing:
        raw = closing.enter_context(socket.create_connection(("127.0.0.1", env.cp_port), timeout=WAIT))
        try:
            tls = closing.enter_context(ctx.wrap_socket(raw))
        except (ssl.SSLError, OSError) as exc:
            return CpAnswer("handshake", error=f"{type(exc).__name__}: {exc}")
        data = b""
        try:
            tls.sendall(head.encode() + b"\r\n" + body)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ssl.SSLError, OSError) as exc:
            if not data:
                return CpAnswer("closed", error=f"{type(exc).__name__}: {exc}")
    if not data:
        return CpAnswer("closed", error="EOF")
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return CpAnswer("answered", status, json.loads(payload) if payload.startswith(b"{") else {})


def renewal(env: Env, cred: Cred | None, identity: str = ATTACKER) -> CpAnswer:
    """POST /v1/sign with a new key's CSR for ``identity``, presenting ``cred``."""
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), SpiffeId.parse(identity)).decode()
    return cp_request(env, env.forge.context(cred, alpn=None), body=json.dumps({"csr": csr}).encode())


def cp_signed(env: Env) -> float:
    ctx = env.forge.context(None, alpn=None)
    with urllib.request.urlopen(f"https://127.0.0.1:{env.cp_port}/metrics", timeout=WAIT, context=ctx) as r:
        return metric(r.read().decode(), "meshgate_controlplane_certificates_signed_total")


def assert_renewal_works(env: Env) -> None:
    """A good SVID on another connection still renews."""
    before = cp_signed(env)
    good = renewal(env, env.attacker)
    assert (good.stage, good.status, good.body.get("identity")) == ("answered", 200, ATTACKER), good
    assert cp_signed(env) == before + 1


@pytest.mark.parametrize("name", list(CASES))
def test_renewal_with_a_bad_client_certificate_is_refused(env: Env, name: str) -> None:
    case = CASES[name]
    before = cp_signed(env)
    got = renewal(env, case.make(env.forge, env.attacker))
    if case.refused_by == "tls":
        assert got.stage == "closed", got
    else:
        assert case.rule is not None
        assert (got.stage, got.status, got.body.get("error")) == ("answered", 401, "bad_certificate"), got
        expected = f"client certificate refused: {case.detail} (rule: {case.rule.value})"
        assert got.body.get("message") == expected, got.body
    assert cp_signed(env) == before
    assert_renewal_works(env)


def test_renewal_for_another_identity_is_refused(env: Env) -> None:
    """A valid SVID of ``attacker`` asking for a certificate of ``web``."""
    before = cp_signed(env)
    got = renewal(env, env.attacker, WEB)
    assert (got.stage, got.status, got.body.get("error")) == ("answered", 400, "csr_rejected"), got
    assert got.body.get("message") == f"CSR asks for {WEB} but the caller was authenticated as {ATTACKER}"
    assert cp_signed(env) == before
    assert_renewal_works(env)


def test_renewal_without_a_client_certificate_is_unauthenticated(env: Env) -> None:
    before = cp_signed(env)
    got = renewal(env, None)
    assert (got.stage, got.status, got.body.get("error")) == ("answered", 401, "unauthenticated"), got
    assert cp_signed(env) == before
    assert_renewal_works(env)


def test_renewal_over_tls12_fails_the_handshake(env: Env) -> None:
    before = cp_signed(env)
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), SpiffeId.parse(ATTACKER)).decode()
    ctx = env.forge.context(env.attacker, alpn=None, tls12=True)
    got = cp_request(env, ctx, body=json.dumps({"csr": csr}).encode())
    assert got.stage == "handshake", got
    assert cp_signed(env) == before
    assert_renewal_works(env)
