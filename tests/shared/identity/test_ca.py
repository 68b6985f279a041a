"""The built-in CA: storage, signing from CSRs, CSR rejections, intermediate mode and root rotation.

Every SVID issued here is cross-checked by the independent ``spiffe`` package and by ``openssl verify``.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from identity_testlib import TD, assert_accepted_independently, key_pem, make_root

from shared.identity.ca import CAError, CertificateAuthority, CsrRejected, SigningKey, make_csr
from shared.identity.spiffeid import SpiffeId, workload_id
from shared.identity.svid import check_leaf, verify_chain

ORDERS = workload_id(TD, "orders")


def test_init_writes_private_keys_and_state(ca: CertificateAuthority) -> None:
    d = ca.directory
    assert stat.S_IMODE((d / "ca-1.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert (d / "ca.json").exists()
    root = ca.signing_cert
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    years = (root.not_valid_after_utc - root.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1


def test_init_refuses_existing_ca_and_bad_trust_domain(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(CAError, match="already holds a CA"):
        CertificateAuthority.init(ca.directory, TD)
    with pytest.raises(CAError, match="lower case"):
        CertificateAuthority.init(tmp_path / "x", "Example.org")


def test_init_refuses_a_directory_with_keys_but_no_state(ca: CertificateAuthority) -> None:
    """A lost ca.json must not make a new root over the old key (every SVID would stop verifying)."""
    key = (ca.directory / "ca-1.key").read_bytes()
    (ca.directory / "ca.json").unlink()
    with pytest.raises(CAError, match=r"holds CA files \(ca-1.key, ca-1.pem\) but no ca.json"):
        CertificateAuthority.init(ca.directory, TD)
    assert (ca.directory / "ca-1.key").read_bytes() == key


def test_load_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    again = CertificateAuthority.load(ca.directory)
    assert again.bundle() == ca.bundle() and again.signing_cert == ca.signing_cert
    chain, _ = again.issue(ORDERS)
    verify_chain(chain, ca.roots())
    with pytest.raises(CAError, match="run 'meshgate ca init' first"):
        CertificateAuthority.load(tmp_path / "nothing")
    (ca.directory / "ca.json").write_text("{")
    with pytest.raises(CAError, match="cannot read CA state"):
        CertificateAuthority.load(ca.directory)


def test_leaf_follows_the_svid_rules(ca: CertificateAuthority, tmp_path: Path) -> None:
    before = datetime.now(UTC)
    chain, key = ca.issue(ORDERS)
    assert len(chain) == 1
    leaf = chain[0]
    assert check_leaf(leaf, TD) == ORDERS
    ext = leaf.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign and not ku.value.crl_sign
    assert set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    ca_ski = ca.signing_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert 0 < leaf.serial_number < 2**128
    lifetime = leaf.not_valid_after_utc - before
    assert timedelta(hours=23, minutes=59) < lifetime <= timedelta(hours=24, seconds=1)
    assert_accepted_independently(chain, key, ca.roots(), tmp_path)


def test_serials_are_random(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, ORDERS)
    serials = {ca.sign_csr(csr, ORDERS)[0].serial_number for _ in range(20)}
    assert len(serials) == 20 and max(serials).bit_length() > 100


def test_ttl_is_capped_by_ca_expiry(tmp_path: Path) -> None:
    short = CertificateAuthority.init(tmp_path / "short", TD, ttl=timedelta(hours=2))
    chain, _ = short.issue(ORDERS, ttl=timedelta(hours=24))
    assert chain[0].not_valid_after_utc == short.signing_cert.not_valid_after_utc
    chain, _ = short.issue(ORDERS, ttl=timedelta(minutes=5))
    assert chain[0].not_valid_after_utc < short.signing_cert.not_valid_after_utc
    with pytest.raises(CAError, match="TTL must be positive"):
        short.issue(ORDERS, ttl=timedelta(0))


def test_csr_without_san_gets_the_callers_identity(ca: CertificateAuthority, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ca.sign_csr(make_csr(key), ORDERS)
    assert check_leaf(chain[0]) == ORDERS
    assert_accepted_independently(chain, key, ca.roots(), tmp_path)


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["p384", "rsa2048", "ed25519"],
)
def test_allowed_key_types(ca: CertificateAuthority, key: SigningKey, tmp_path: Path) -> None:
    chain = ca.sign_csr(make_csr(key, ORDERS), ORDERS)
    assert chain[0].public_key() == key.public_key()
    assert_accepted_independently(chain, key, ca.roots(), tmp_path)


def _csr(key: SigningKey, uris: Sequence[str] = (), extensions: Sequence[x509.ExtensionType] = ()) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _tampered_signature() -> bytes:
    csr = x509.load_pem_x509_csr(make_csr(_p256(), ORDERS))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s: still parses, no longer verifies
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def _swapped_key() -> bytes:
    """A CSR whose public key was replaced after signing (signature made by another key)."""
    first = x509.load_pem_x509_csr(make_csr(_p256(), ORDERS)).public_bytes(serialization.Encoding.DER)
    other_key = _p256()
    spki_first = (
        x509.load_der_x509_csr(first)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    spki_other = other_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = first.replace(spki_first, spki_other)
    return x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM)


CSR_REJECTIONS = [
    ("two URI SANs", lambda: _csr(_p256(), [str(ORDERS), f"spiffe://{TD}/x"]), "2 URI SANs"),
    (
        "foreign trust domain",
        lambda: _csr(_p256(), ["spiffe://evil.org/ns/default/sa/orders"]),
        "outside trust",
    ),
    ("other identity", lambda: _csr(_p256(), [f"spiffe://{TD}/ns/default/sa/admin"]), "authenticated as"),
    ("invalid SAN", lambda: _csr(_p256(), [f"spiffe://{TD}/a/../b"]), "not a valid SPIFFE ID"),
    (
        "CA request",
        lambda: _csr(_p256(), [str(ORDERS)], [x509.BasicConstraints(ca=True, path_length=None)]),
        "cA=true",
    ),
    (
        "keyCertSign request",
        lambda: _csr(
            _p256(),
            [],
            [x509.KeyUsage(True, False, False, False, False, True, False, False, False)],
        ),
        "keyCertSign",
    ),
    (
        "RSA-1024",
        lambda: _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "at least 2048",
    ),
    ("P-521", lambda: _csr(ec.generate_private_key(ec.SECP521R1())), "curve secp521r1"),
    ("secp256k1", lambda: _csr(ec.generate_private_key(ec.SECP256K1())), "curve secp256k1"),
    ("bad signature", _tampered_signature, "signature is invalid"),
    ("swapped key", _swapped_key, "signature is invalid"),
    (
        "not a CSR",
        lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "not a PEM",
    ),
    ("garbage", lambda: b"hello", "not a PEM"),
]


@pytest.mark.parametrize(("case", "make", "message"), CSR_REJECTIONS, ids=[c[0] for c in CSR_REJECTIONS])
def test_csr_rejections(ca: CertificateAuthority, case: str, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CsrRejected, match=message):
        ca.sign_csr(make(), ORDERS)


def test_caller_identity_must_be_in_trust_domain_and_have_a_path(ca: CertificateAuthority) -> None:
    csr = make_csr(_p256())
    with pytest.raises(CsrRejected, match="outside trust domain"):
        ca.sign_csr(csr, SpiffeId.parse("spiffe://evil.org/ns/default/sa/orders"))
    with pytest.raises(CsrRejected, match="has no path"):
        ca.sign_csr(csr, SpiffeId(TD))


def _operator_root(
    tmp_path: Path, pathlen: int | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert, key = make_root("operator root", ttl=timedelta(days=365))
    if pathlen is None:
        return cert, key
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def test_intermediate_under_operator_root(tmp_path: Path) -> None:
    root, root_key = _operator_root(tmp_path)
    ica = CertificateAuthority.init(tmp_path / "ica", TD, root_cert=root, root_key=root_key)
    assert ica.roots() == [root]
    assert not (tmp_path / "ica" / "root.key").exists()
    assert ica.signing_cert.not_valid_after_utc <= root.not_valid_after_utc  # capped by the root
    chain, key = ica.issue(ORDERS)
    assert len(chain) == 2 and chain[1] == ica.signing_cert
    assert verify_chain(chain, ica.bundle().roots) == root
    assert_accepted_independently(chain, key, [root], tmp_path / "check")
    loaded = CertificateAuthority.load(tmp_path / "ica")
    assert loaded.bundle() == ica.bundle()


def test_operator_root_problems_are_explained(tmp_path: Path) -> None:
    root, root_key = _operator_root(tmp_path, pathlen=0)
    with pytest.raises(CAError, match="pathLenConstraint 0"):
        CertificateAuthority.init(tmp_path / "a", TD, root_cert=root, root_key=root_key)
    good_root, _ = _operator_root(tmp_path)
    with pytest.raises(CAError, match="does not match"):
        CertificateAuthority.init(tmp_path / "b", TD, root_cert=good_root, root_key=_p256())
    with pytest.raises(CAError, match="both"):
        CertificateAuthority.init(tmp_path / "c", TD, root_cert=good_root)


def test_rotation_overlap_then_finish(ca: CertificateAuthority, tmp_path: Path) -> None:
    old_root = ca.signing_cert
    old_chain, old_key = ca.issue(ORDERS)
    seq = ca.bundle().sequence
    bundle = ca.rotate()
    assert ca.in_rotation and bundle.sequence == seq + 1
    assert len(bundle.roots) == 2 and old_root in bundle.roots
    new_root = ca.signing_cert
    assert new_root != old_root and bundle.roots[0] == new_root
    new_chain, new_key = ca.issue(ORDERS)
    assert verify_chain(new_chain, bundle.roots) == new_root  # new leaves: new root
    assert verify_chain(old_chain, bundle.roots) == old_root  # old leaves still verify during the overlap
    assert_accepted_independently(old_chain, old_key, bundle.roots, tmp_path / "old")
    assert_accepted_independently(new_chain, new_key, bundle.roots, tmp_path / "new")
    with pytest.raises(CAError, match="already in progress"):
        ca.rotate()
    assert CertificateAuthority.load(ca.directory).bundle() == bundle  # persisted
    final = ca.finish_rotation()
    assert final.roots == (new_root,) and final.sequence == seq + 2 and not ca.in_rotation
    assert not (ca.directory / "ca-1.key").exists()
    with pytest.raises(Exception, match="does not chain"):
        verify_chain(old_chain, final.roots)
    with pytest.raises(CAError, match="no rotation in progress"):
        ca.finish_rotation()
    assert CertificateAuthority.load(ca.directory).bundle() == final


def test_intermediate_rotation_needs_new_operator_root(tmp_path: Path) -> None:
    root, root_key = _operator_root(tmp_path)
    ica = CertificateAuthority.init(tmp_path / "ica", TD, root_cert=root, root_key=root_key)
    with pytest.raises(CAError, match="operator's new root"):
        ica.rotate()
    new_root, new_key = _operator_root(tmp_path)
    bundle = ica.rotate(new_root, new_key)
    assert set(bundle.roots) == {root, new_root}
    chain, key = ica.issue(ORDERS)
    assert verify_chain(chain, bundle.roots) == new_root
    assert_accepted_independently(chain, key, [new_root], tmp_path / "check")


def test_key_pem_helper_roundtrip() -> None:
    key = _p256()
    assert serialization.load_pem_private_key(key_pem(key), None).public_key() == key.public_key()
