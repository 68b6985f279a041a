"""The SPIFFE trust bundle: a trust domain's X.509 roots in the SPIFFE bundle (JWKS) format.

Format (SPIFFE Trust Domain and Bundle standard): ``{"keys": [{"kty", "use": "x509-svid", "x5c": [one
base64 DER], <public key members>}], "spiffe_sequence": N, "spiffe_refresh_hint": S}``; x509-svid
entries carry no ``kid``. ``spiffe_sequence`` grows on every change of the roots.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .spiffeid import InvalidSpiffeId, SpiffeId, validate_trust_domain

__all__ = ["BundleError", "TrustBundle"]

DEFAULT_REFRESH_HINT_S = 300
_CURVES: dict[str, tuple[str, int]] = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}


class BundleError(ValueError):
    """A trust bundle document is malformed; the message says where."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int, length: int | None = None) -> bytes:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


def _public_jwk(cert: x509.Certificate) -> dict[str, str]:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise BundleError(f"root {cert.subject.rfc4514_string()} uses unsupported curve {key.curve.name}")
        crv, size = _CURVES[key.curve.name]
        nums = key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": _b64url(_int_bytes(nums.x, size)),
            "y": _b64url(_int_bytes(nums.y, size)),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rnums = key.public_numbers()
        return {"kty": "RSA", "n": _b64url(_int_bytes(rnums.n)), "e": _b64url(_int_bytes(rnums.e))}
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    raise BundleError(
        f"root {cert.subject.rfc4514_string()} has an unsupported key type {type(key).__name__}"
    )


def _infer_trust_domain(roots: Iterable[x509.Certificate]) -> str:
    found: set[str] = set()
    for cert in roots:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            try:
                found.add(SpiffeId.parse(uri).trust_domain)
            except InvalidSpiffeId:
                continue
    if len(found) != 1:
        raise BundleError(
            "cannot tell the bundle's trust domain from its roots"
            + (f" (they name {sorted(found)})" if found else "")
            + "; pass it explicitly"
        )
    return found.pop()


@dataclass(frozen=True)
class TrustBundle:
    """A trust domain's X.509 roots with the bundle ``sequence`` and ``refresh_hint`` (seconds)."""

    trust_domain: str
    roots: tuple[x509.Certificate, ...]
    sequence: int = 1
    refresh_hint: int = DEFAULT_REFRESH_HINT_S
    _pem: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            validate_trust_domain(self.trust_domain)
        except InvalidSpiffeId as exc:
            raise BundleError(f"bundle trust domain: {exc.rule}") from None
        if self.sequence < 0:
            raise BundleError("spiffe_sequence must not be negative")
        object.__setattr__(self, "roots", tuple(self.roots))
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.roots)
        object.__setattr__(self, "_pem", pem)

    def to_pem(self) -> str:
        """All roots as concatenated PEM (what ``SSLContext.load_verify_locations(cadata=)`` takes)."""
        return self._pem

    def with_roots(self, roots: Iterable[x509.Certificate]) -> TrustBundle:
        """A copy holding ``roots``; the sequence grows when the set of roots changes."""
        new = tuple(roots)
        if {r.fingerprint(hashes.SHA256()) for r in new} == {
            r.fingerprint(hashes.SHA256()) for r in self.roots
        }:
            return self
        return TrustBundle(self.trust_domain, new, self.sequence + 1, self.refresh_hint)

    def to_jwks(self) -> dict[str, Any]:
        """The SPIFFE bundle document as a JSON-ready dict."""
        keys = []
        for cert in self.roots:
            entry: dict[str, Any] = {"use": "x509-svid", **_public_jwk(cert)}
            entry["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]
            keys.append(entry)
        return {"keys": keys, "spiffe_sequence": self.sequence, "spiffe_refresh_hint": self.refresh_hint}

    def to_json(self) -> str:
        """The SPIFFE bundle document as indented JSON text."""
        return json.dumps(self.to_jwks(), indent=2)

    @classmethod
    def from_jwks(cls, doc: Mapping[str, Any], trust_domain: str | None = None) -> TrustBundle:
        """Parse a SPIFFE bundle document; raise BundleError on any malformed part.

        The JWKS does not name its trust domain: pass ``trust_domain``, or leave it None to take it from the
        roots' ``spiffe://<td>`` URI SAN (meshgate roots carry one). Entries with another ``use`` (e.g.
        ``jwt-svid``) are skipped, as the standard says.
        """
        if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
            raise BundleError("bundle must be a JSON object with a 'keys' list")
        sequence = doc.get("spiffe_sequence", 0)
        hint = doc.get("spiffe_refresh_hint", DEFAULT_REFRESH_HINT_S)
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
            raise BundleError("spiffe_sequence must be a non-negative integer")
        if not isinstance(hint, int) or isinstance(hint, bool) or hint < 0:
            raise BundleError("spiffe_refresh_hint must be a non-negative integer")
        roots: list[x509.Certificate] = []
        for index, entry in enumerate(doc["keys"]):
            where = f"keys[{index}]"
            if not isinstance(entry, Mapping):
                raise BundleError(f"{where} must be an object")
            if entry.get("use") != "x509-svid":
                continue
            if "kid" in entry:
                raise BundleError(f"{where}: x509-svid entries must not have a 'kid'")
            x5c = entry.get("x5c")
            if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
                raise BundleError(f"{where}: x5c must hold exactly one base64 DER certificate")
            try:
                cert = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
            except ValueError as exc:
                raise BundleError(f"{where}: x5c is not a DER certificate ({exc})") from None
            jwk = _public_jwk(cert)
            for member, value in jwk.items():
                if member in entry and member != "n" and entry[member] != value:
                    raise BundleError(f"{where}: '{member}' does not match the x5c certificate's key")
            if "n" in entry and _b64url_decode(str(entry["n"])).lstrip(b"\0") != _b64url_decode(jwk["n"]):
                raise BundleError(f"{where}: 'n' does not match the x5c certificate's key")
            roots.append(cert)
        if trust_domain is None:
            trust_domain = _infer_trust_domain(roots)
        return cls(trust_domain, tuple(roots), sequence, hint)

    @classmethod
    def from_json(cls, text: str | bytes, trust_domain: str | None = None) -> TrustBundle:
        """Parse a SPIFFE bundle from JSON text; raise BundleError when it is not valid."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"bundle is not valid JSON: {exc}") from None
        return cls.from_jwks(doc, trust_domain)
