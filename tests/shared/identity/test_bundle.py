"""The SPIFFE trust bundle (JWKS) format."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from identity_testlib import TD, make_root
from spiffe import TrustDomain, X509Bundle

from shared.identity.bundle import BundleError, TrustBundle
from shared.identity.ca import CertificateAuthority


def _b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def test_jwks_has_exactly_the_spiffe_members(ca: CertificateAuthority) -> None:
    doc = ca.bundle().to_jwks()
    assert set(doc) == {"keys", "spiffe_sequence", "spiffe_refresh_hint"}
    assert doc["spiffe_sequence"] == 1 and isinstance(doc["spiffe_refresh_hint"], int)
    [entry] = doc["keys"]
    assert set(entry) == {"kty", "crv", "x", "y", "use", "x5c"}  # no kid on x509-svid entries
    assert (entry["kty"], entry["crv"], entry["use"]) == ("EC", "P-256", "x509-svid")
    assert len(entry["x5c"]) == 1
    der = base64.b64decode(entry["x5c"][0], validate=True)
    cert = x509.load_der_x509_certificate(der)
    assert cert == ca.signing_cert
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert (_b64url_int(entry["x"]), _b64url_int(entry["y"])) == (
        key.public_numbers().x,
        key.public_numbers().y,
    )
    assert len(entry["x"]) == len(entry["y"]) == 43  # 32 bytes, unpadded base64url


def test_json_round_trip_and_trust_domain_inferred(ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    again = TrustBundle.from_json(bundle.to_json())
    assert again == bundle and again.trust_domain == TD
    assert TrustBundle.from_jwks(json.loads(bundle.to_json()), TD) == bundle


def test_spiffe_package_reads_the_same_roots(ca: CertificateAuthority) -> None:
    theirs = X509Bundle.parse(TrustDomain(TD), ca.bundle().to_pem().encode())
    assert {c.fingerprint(hashes.SHA256()) for c in theirs.x509_authorities} == {
        c.fingerprint(hashes.SHA256()) for c in ca.roots()
    }


def test_sequence_grows_only_when_roots_change() -> None:
    a, _ = make_root("a")
    b, _ = make_root("b")
    one = TrustBundle(TD, (a,), 7)
    assert one.with_roots([a]) is one
    two = one.with_roots([a, b])
    assert two.sequence == 8 and two.roots == (a, b)
    assert two.with_roots([b]).sequence == 9


def test_rsa_root_is_published_with_n_and_e() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, _ = make_root("rsa")
    # re-sign a root with an RSA key
    cert = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    [entry] = TrustBundle(TD, (cert,)).to_jwks()["keys"]
    assert entry["kty"] == "RSA" and _b64url_int(entry["n"]) == key.public_key().public_numbers().n
    assert _b64url_int(entry["e"]) == 65537
    assert TrustBundle.from_jwks({"keys": [entry]}, TD).roots == (cert,)


def _doc(ca: CertificateAuthority) -> dict[str, object]:
    return ca.bundle().to_jwks()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["keys"][0].__setitem__("kid", "x"), "must not have a 'kid'"),
        (lambda d: d["keys"][0]["x5c"].append(d["keys"][0]["x5c"][0]), "exactly one"),
        (lambda d: d["keys"][0].__setitem__("x5c", ["!!!"]), "x5c"),
        (lambda d: d["keys"][0].__setitem__("x", "AAAA"), "'x' does not match"),
        (lambda d: d.__setitem__("spiffe_sequence", -1), "spiffe_sequence"),
        (lambda d: d.__setitem__("keys", "nope"), "'keys' list"),
    ],
)
def test_malformed_bundles_are_refused(ca: CertificateAuthority, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(ca)
    mutate(doc)
    with pytest.raises(BundleError, match=message):
        TrustBundle.from_jwks(doc, TD)


def test_jwt_entries_are_skipped_and_bad_json_refused(ca: CertificateAuthority) -> None:
    doc = _doc(ca)
    doc["keys"].append({"kty": "EC", "use": "jwt-svid", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"})  # type: ignore[attr-defined]
    assert len(TrustBundle.from_jwks(doc, TD).roots) == 1
    with pytest.raises(BundleError, match="not valid JSON"):
        TrustBundle.from_json("{", TD)


def test_trust_domain_cannot_be_guessed_without_spiffe_roots() -> None:
    cert, _ = make_root()
    doc = TrustBundle(TD, (cert,)).to_jwks()
    with pytest.raises(BundleError, match="pass it explicitly"):
        TrustBundle.from_jwks(doc)


def test_pem_form_loads_every_root(ca: CertificateAuthority) -> None:
    extra, _ = make_root()
    bundle = ca.bundle().with_roots([*ca.roots(), extra])
    assert x509.load_pem_x509_certificates(bundle.to_pem().encode()) == [*ca.roots(), extra]
    assert bundle.to_pem().encode() == b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in bundle.roots
    )
