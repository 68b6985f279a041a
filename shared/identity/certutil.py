"""Small helpers shared by the CA, the CSR checks and the CLI: key types, hashes, serials, PEM, files."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .errors import CAError

__all__ = [
    "SigningKey",
    "aki_for",
    "chain_pem",
    "key_usage",
    "load_chain_pem",
    "load_signing_key",
    "private_key_pem",
    "public_bytes",
    "random_serial",
    "signature_hash",
    "write_atomic",
    "write_private",
]

#: Key types the CA signs with and workloads may hold.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash to sign with ``key``: none for Ed25519, SHA-384 for P-384 and larger, else SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def random_serial() -> int:
    """A random positive 128-bit serial number."""
    return secrets.randbits(128) or 1


def key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    """A keyUsage value: ``digitalSignature`` for leaves, ``keyCertSign``+``cRLSign`` for CAs."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def load_signing_key(data: bytes, where: str) -> SigningKey:
    """Parse an unencrypted PEM private key usable for signing; raise CAError naming ``where``."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CAError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise CAError(f"{where}: unsupported key type {type(key).__name__} (use ECDSA, RSA or Ed25519)")
    return key


def private_key_pem(key: SigningKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_bytes(key: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a public key (for comparing keys)."""
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def aki_for(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The authorityKeyIdentifier of certificates ``issuer`` signs (its SKI, else from its key)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (write a hidden sibling, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def chain_pem(chain: Sequence[x509.Certificate]) -> bytes:
    """Concatenated PEM of ``chain``."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def load_chain_pem(data: bytes) -> list[x509.Certificate]:
    """Parse concatenated PEM certificates (leaf first); raise CAError when there are none."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CAError(f"not PEM certificates ({exc})") from None
