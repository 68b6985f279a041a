"""X.509-SVID rule checks on crafted leaves and CA certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from identity_testlib import TD, make_leaf, make_root

from shared.identity.ca import CertificateAuthority
from shared.identity.spiffeid import workload_id
from shared.identity.svid import SvidError, SvidRule, check_ca, check_leaf, verify_chain

WEB = f"spiffe://{TD}/ns/default/sa/web"


def test_issued_leaf_passes(ca: CertificateAuthority) -> None:
    chain, _ = ca.issue(workload_id(TD, "web"))
    assert str(check_leaf(chain[0], TD)) == WEB
    assert verify_chain(chain, ca.roots()) == ca.signing_cert


BAD_LEAVES = [
    ({"uris": [WEB, f"spiffe://{TD}/other"]}, SvidRule.ONE_URI_SAN, "2 URI SANs"),
    ({"uris": []}, SvidRule.ONE_URI_SAN, "no URI SAN"),
    ({"uris": ["https://example.org/x"]}, SvidRule.VALID_ID, "scheme"),
    ({"uris": [f"spiffe://{TD}"]}, SvidRule.LEAF_PATH, "has no path"),
    ({"ca": True}, SvidRule.LEAF_NOT_CA, "cA=true"),
    ({"key_cert_sign": True}, SvidRule.NO_SIGNING_USAGE, "keyCertSign"),
    ({"digital_signature": False}, SvidRule.DIGITAL_SIGNATURE, "lacks digitalSignature"),
    ({"key_usage_critical": False}, SvidRule.KEY_USAGE_CRITICAL, "not marked critical"),
    ({"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, SvidRule.EKU, "lacks clientAuth"),
    ({"eku": []}, SvidRule.EKU, "no extendedKeyUsage"),
    ({"not_before": timedelta(hours=-3), "not_after": timedelta(hours=-1)}, SvidRule.VALIDITY, "expired"),
    ({"not_before": timedelta(hours=1), "not_after": timedelta(hours=3)}, SvidRule.VALIDITY, "not yet valid"),
    ({"uris": ["spiffe://other.org/ns/default/sa/web"]}, SvidRule.TRUST_DOMAIN, "'other.org'"),
]


@pytest.mark.parametrize(("kwargs", "rule", "text"), BAD_LEAVES)
def test_bad_leaf_names_the_rule(
    ca: CertificateAuthority,
    ca_key: ec.EllipticCurvePrivateKey,
    kwargs: dict[str, object],
    rule: SvidRule,
    text: str,
) -> None:
    cert, _ = make_leaf(ca.signing_cert, ca_key, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SvidError) as info:
        check_leaf(cert, TD)
    assert info.value.rule is rule
    assert text in str(info.value) and rule.value in str(info.value)


def test_ca_checks(ca: CertificateAuthority, ca_key: ec.EllipticCurvePrivateKey) -> None:
    assert str(check_ca(ca.signing_cert)) == f"spiffe://{TD}"
    root, _ = make_root()
    assert check_ca(root) is None
    leaf, _ = make_leaf(ca.signing_cert, ca_key)
    with pytest.raises(SvidError) as info:
        check_ca(leaf)
    assert info.value.rule is SvidRule.CA_IS_CA
    no_sign, _ = make_leaf(ca.signing_cert, ca_key, ca=True)
    with pytest.raises(SvidError) as info:
        check_ca(no_sign)
    assert info.value.rule is SvidRule.CA_KEY_CERT_SIGN
    with_path, _ = make_leaf(ca.signing_cert, ca_key, ca=True, key_cert_sign=True)
    with pytest.raises(SvidError) as info:
        check_ca(with_path)
    assert info.value.rule is SvidRule.CA_ID_NO_PATH


def test_chain_to_foreign_root_is_refused(ca: CertificateAuthority) -> None:
    other, other_key = make_root()
    leaf, _ = make_leaf(other, other_key)
    with pytest.raises(SvidError) as info:
        verify_chain([leaf], ca.roots())
    assert info.value.rule is SvidRule.CHAIN and "does not chain" in str(info.value)
    assert verify_chain([leaf], [*ca.roots(), other]) == other


def test_chain_with_forged_issuer_name_is_refused(ca: CertificateAuthority) -> None:
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    leaf, _ = make_leaf(ca.signing_cert, impostor_key)  # issuer name right, signature wrong
    with pytest.raises(SvidError, match="does not chain"):
        verify_chain([leaf], ca.roots())


def test_expired_chain_member_is_refused(
    ca: CertificateAuthority, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf, _ = make_leaf(ca.signing_cert, ca_key, not_before=timedelta(days=-2), not_after=timedelta(days=-1))
    with pytest.raises(SvidError) as info:
        verify_chain([leaf], ca.roots())
    assert info.value.rule is SvidRule.VALIDITY


def test_malformed_extensions_are_a_named_rule_not_a_crash(
    ca: CertificateAuthority, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(ca.signing_cert.subject)
        .issuer_name(ca.signing_cert.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(5)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03bad"), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    for check in (check_leaf, check_ca, lambda c: verify_chain([c], ca.roots())):
        with pytest.raises(SvidError) as info:
            check(cert)
        assert info.value.rule is SvidRule.WELL_FORMED
