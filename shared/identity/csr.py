"""Certificate signing requests: made by workloads (:func:`make_csr`), checked by the CA (:func:`check_csr`).

The CA takes only the public key from a CSR; everything else in the leaf is decided by the CA from the
identity the caller authenticated. A CSR is refused (:class:`CsrRejected`) when it is not a valid PEM
CSR, its signature does not verify, its key is weak, it asks for a CA certificate, or its URI SAN is
not exactly the authenticated identity.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from .certutil import SigningKey, signature_hash
from .errors import CsrRejected
from .spiffeid import InvalidSpiffeId, SpiffeId

__all__ = ["ALLOWED_CURVES", "MIN_RSA_BITS", "check_csr", "make_csr"]

ALLOWED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 2048


def make_csr(key: SigningKey, spiffe_id: SpiffeId | None = None) -> bytes:
    """A PEM CSR for ``key``, naming ``spiffe_id`` as its URI SAN when given (the workload side)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]), critical=False
        )
    return builder.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.PEM)


def _check_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejected(f"CSR public key cannot be read: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise CsrRejected(f"CSR key uses curve {key.curve.name}; allowed: P-256, P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrRejected(f"CSR key is RSA-{key.key_size}; RSA keys must be at least {MIN_RSA_BITS} bits")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CsrRejected(
            f"CSR key type {type(key).__name__} is not allowed (ECDSA P-256/P-384, RSA>=2048, Ed25519)"
        )
    return key


def _check_extensions(csr: x509.CertificateSigningRequest, spiffe_id: SpiffeId) -> None:
    try:
        extensions = list(csr.extensions)
    except ValueError as exc:
        raise CsrRejected(f"CSR extensions cannot be parsed: {exc}") from None
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise CsrRejected("CSR asks for a CA certificate (basicConstraints cA=true); SVIDs are leaves")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise CsrRejected("CSR asks for keyCertSign/cRLSign; SVIDs are leaves")
        if not isinstance(value, x509.SubjectAlternativeName):
            continue
        uris = value.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) > 1:
            raise CsrRejected(f"CSR has {len(uris)} URI SANs; an X.509-SVID has exactly one")
        if not uris:
            continue
        try:
            asked = SpiffeId.parse(uris[0])
        except InvalidSpiffeId as exc:
            raise CsrRejected(f"CSR URI SAN is not a valid SPIFFE ID: {exc}") from None
        if asked.trust_domain != spiffe_id.trust_domain:
            raise CsrRejected(f"CSR asks for {asked}, outside trust domain {spiffe_id.trust_domain!r}")
        if asked != spiffe_id:
            raise CsrRejected(f"CSR asks for {asked} but the caller was authenticated as {spiffe_id}")


def check_csr(csr_pem: bytes, spiffe_id: SpiffeId) -> CertificatePublicKeyTypes:
    """Check ``csr_pem`` for the authenticated ``spiffe_id``; return its public key or raise CsrRejected."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CsrRejected(f"not a PEM certificate signing request ({exc})") from None
    key = _check_key(csr)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejected(f"CSR signature cannot be checked: {exc}") from None
    if not signature_ok:
        raise CsrRejected("CSR signature is invalid (the CSR was altered or not signed by its key)")
    _check_extensions(csr, spiffe_id)
    return key
