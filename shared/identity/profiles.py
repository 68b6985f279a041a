"""What meshgate's certificates look like: the CA certificate and X.509-SVID leaf templates.

Leaves: one URI SAN (the SPIFFE ID), basicConstraints cA=false (critical), keyUsage digitalSignature
(critical), EKU serverAuth+clientAuth, SKI/AKI, a random 128-bit serial. CA certificates: cA=true
(critical), keyUsage keyCertSign+cRLSign (critical), the trust domain's SPIFFE ID (no path), SKI/AKI.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .certutil import SigningKey, aki_for, key_usage, random_serial, signature_hash
from .spiffeid import SpiffeId

__all__ = ["build_ca_cert", "build_leaf"]

_LEAF_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate")])
_SVID_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def build_ca_cert(
    trust_domain: str,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    not_after: datetime,
    issuer: tuple[x509.Certificate, SigningKey] | None = None,
) -> x509.Certificate:
    """A CA certificate for ``key``: self-signed root when ``issuer`` is None, else an intermediate
    (pathLen 0) signed by ``issuer = (cert, key)``."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshgate {name} {secrets.token_hex(4)}"),
        ]
    )
    td_uri = x509.UniformResourceIdentifier(str(SpiffeId(trust_domain)))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([td_uri]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(key_usage(cert_sign=True), critical=True)
    )
    if issuer is None:
        return (
            builder.issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
            )
            .sign(key, signature_hash(key))
        )
    issuer_cert, issuer_key = issuer
    return (
        builder.issuer_name(issuer_cert.subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(aki_for(issuer_cert), critical=False)
        .sign(issuer_key, signature_hash(issuer_key))
    )


def build_leaf(
    spiffe_id: SpiffeId,
    public_key: CertificatePublicKeyTypes,
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    not_before: datetime,
    not_after: datetime,
    aki: x509.AuthorityKeyIdentifier | None = None,
) -> x509.Certificate:
    """An X.509-SVID leaf for ``spiffe_id`` and ``public_key``, signed by ``issuer_cert``/``issuer_key``."""
    return (
        x509.CertificateBuilder()
        .subject_name(_LEAF_SUBJECT)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(_SVID_EKU, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki or aki_for(issuer_cert), critical=False)
        .sign(issuer_key, signature_hash(issuer_key))
    )
