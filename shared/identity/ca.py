"""The built-in certificate authority: signs workload CSRs into X.509-SVIDs, keeps the trust bundle.

A CA lives in a directory: ``ca.json`` (trust domain, bundle sequence, authorities and rotation state),
one ``<name>.pem`` certificate and one ``<name>.key`` (mode 0600) per signing authority, and for an
intermediate under an operator's root a ``<name>-root.pem`` copy of that root (never its key).

Two modes: a self-signed ECDSA P-256 root that signs leaves directly, or an ECDSA P-256 intermediate
signed by the operator's root (leaves then chain ``leaf -> intermediate -> operator root``).

Root rotation: :meth:`CertificateAuthority.rotate` adds a new authority; both roots are in the bundle and
new leaves are signed by the new one; :meth:`CertificateAuthority.finish_rotation` drops the old one.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .bundle import DEFAULT_REFRESH_HINT_S, TrustBundle
from .spiffeid import InvalidSpiffeId, SpiffeId, validate_trust_domain
from .svid import SvidError, check_ca

__all__ = [
    "DEFAULT_CA_TTL",
    "DEFAULT_LEAF_TTL",
    "CAError",
    "CertificateAuthority",
    "CsrRejected",
    "SigningKey",
    "chain_pem",
    "load_chain_pem",
    "load_signing_key",
    "make_csr",
]

DEFAULT_LEAF_TTL = timedelta(hours=24)
DEFAULT_CA_TTL = timedelta(days=3650)
#: Leaves start a little in the past so that peers with slightly slow clocks accept them at once.
BACKDATE = timedelta(seconds=30)
STATE_FILE = "ca.json"
STATE_VERSION = 1

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_ALLOWED_CURVES = ("secp256r1", "secp384r1")


class CAError(Exception):
    """A CA operation failed; the message is one line an operator can act on."""


class CsrRejected(CAError):
    """The CA refused to sign a CSR; the message says why."""


def _signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _random_serial() -> int:
    """A random positive 128-bit serial number."""
    return secrets.randbits(128) or 1


def load_signing_key(data: bytes, where: str) -> SigningKey:
    """Parse an unencrypted PEM private key usable for signing; raise CAError naming ``where``."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CAError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise CAError(f"{where}: unsupported key type {type(key).__name__} (use ECDSA, RSA or Ed25519)")
    return key


def _public_bytes(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _aki_for(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _check_csr_key(csr: x509.CertificateSigningRequest) -> None:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejected(f"CSR public key cannot be read: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _ALLOWED_CURVES:
            raise CsrRejected(f"CSR key uses curve {key.curve.name}; allowed: P-256, P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CsrRejected(f"CSR key is RSA-{key.key_size}; RSA keys must be at least 2048 bits")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CsrRejected(
            f"CSR key type {type(key).__name__} is not allowed (ECDSA P-256/P-384, RSA>=2048, Ed25519)"
        )


def make_csr(key: SigningKey, spiffe_id: SpiffeId | None = None) -> bytes:
    """A PEM CSR for ``key``, naming ``spiffe_id`` as its URI SAN when given (the workload side)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]), critical=False
        )
    return builder.sign(key, _signature_hash(key)).public_bytes(serialization.Encoding.PEM)


@dataclass
class _Authority:
    """One signing certificate with its key; ``chain`` is what follows a leaf it signs."""

    name: str
    cert: x509.Certificate
    key: SigningKey
    root: x509.Certificate
    state: str  # "active" or "retiring"

    @property
    def chain(self) -> list[x509.Certificate]:
        return [] if self.cert == self.root else [self.cert]


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never readable by others, even briefly) and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class CertificateAuthority:
    """A CA stored in a directory. Build one with :meth:`init` or :meth:`load`."""

    def __init__(
        self,
        directory: Path,
        trust_domain: str,
        authorities: list[_Authority],
        sequence: int,
        refresh_hint: int,
        ca_ttl: timedelta,
        rotated_at: datetime | None,
    ) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self._authorities = authorities
        self._sequence = sequence
        self._refresh_hint = refresh_hint
        self._ca_ttl = ca_ttl
        self.rotated_at = rotated_at
        self._refresh_cache()

    # ----- construction ---------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        trust_domain: str,
        root_cert: x509.Certificate | None = None,
        root_key: SigningKey | None = None,
        ttl: timedelta = DEFAULT_CA_TTL,
    ) -> CertificateAuthority:
        """Create a CA in ``directory``: a new P-256 root, or an intermediate under the operator's root.

        Raises CAError when the directory already holds a CA or the inputs are unusable.
        """
        path = Path(directory)
        try:
            validate_trust_domain(trust_domain)
        except InvalidSpiffeId as exc:
            raise CAError(f"trust domain {trust_domain!r}: {exc.rule}") from None
        if (root_cert is None) != (root_key is None):
            raise CAError("give both the operator's root certificate and its key, or neither")
        if ttl <= timedelta(0):
            raise CAError("CA TTL must be positive")
        if (path / STATE_FILE).exists():
            raise CAError(f"{path} already holds a CA ({STATE_FILE} exists)")
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = cls(path, trust_domain, [], 0, DEFAULT_REFRESH_HINT_S, ttl, None)
        ca._authorities.append(ca._new_authority("ca-1", root_cert, root_key, ttl))
        ca._sequence = 1
        ca._save()
        return ca

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """Load the CA stored in ``directory``; raise CAError naming the file when anything is wrong."""
        path = Path(directory)
        state_path = path / STATE_FILE
        try:
            state = json.loads(state_path.read_text())
        except FileNotFoundError:
            raise CAError(f"{path} holds no CA (no {STATE_FILE}); run 'meshgate ca init' first") from None
        except (OSError, ValueError) as exc:
            raise CAError(f"{state_path}: cannot read CA state ({exc})") from None
        try:
            if state.get("version") != STATE_VERSION:
                raise CAError(f"{state_path}: unsupported state version {state.get('version')!r}")
            authorities = []
            for entry in state["authorities"]:
                cert = cls._read_cert(path / entry["cert"])
                root = cls._read_cert(path / entry["root"])
                key_path = path / entry["key"]
                try:
                    key = load_signing_key(key_path.read_bytes(), str(key_path))
                except OSError as exc:
                    raise CAError(f"{key_path}: cannot read key ({exc.strerror})") from None
                authorities.append(_Authority(entry["name"], cert, key, root, entry["state"]))
            rotated = state.get("rotated_at")
            return cls(
                path,
                str(state["trust_domain"]),
                authorities,
                int(state["sequence"]),
                int(state.get("refresh_hint", DEFAULT_REFRESH_HINT_S)),
                timedelta(seconds=int(state.get("ca_ttl_s", DEFAULT_CA_TTL.total_seconds()))),
                datetime.fromisoformat(rotated) if rotated else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CAError(f"{state_path}: malformed CA state ({exc!r})") from None

    @staticmethod
    def _read_cert(path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except OSError as exc:
            raise CAError(f"{path}: cannot read certificate ({exc.strerror})") from None
        except ValueError as exc:
            raise CAError(f"{path}: not a PEM certificate ({exc})") from None

    def _new_authority(
        self,
        name: str,
        root_cert: x509.Certificate | None,
        root_key: SigningKey | None,
        ttl: timedelta,
    ) -> _Authority:
        now = datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        td_id = SpiffeId(self.trust_domain)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"meshgate {name} {secrets.token_hex(4)}"),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key.public_key())
            .serial_number(_random_serial())
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(td_id))]), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if root_cert is None or root_key is None:
            cert = (
                builder.issuer_name(subject)
                .not_valid_before(now - BACKDATE)
                .not_valid_after(now + ttl)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
                )
                .sign(key, hashes.SHA256())
            )
            self._write_authority_files(name, cert, key, None)
            return _Authority(name, cert, key, cert, "active")
        self._check_operator_root(root_cert, root_key, now)
        not_after = min(now + ttl, root_cert.not_valid_after_utc)
        cert = (
            builder.issuer_name(root_cert.subject)
            .not_valid_before(max(now - BACKDATE, root_cert.not_valid_before_utc))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_aki_for(root_cert), critical=False)
            .sign(root_key, _signature_hash(root_key))
        )
        self._write_authority_files(name, cert, key, root_cert)
        return _Authority(name, cert, key, root_cert, "active")

    @staticmethod
    def _check_operator_root(root_cert: x509.Certificate, root_key: SigningKey, now: datetime) -> None:
        try:
            check_ca(root_cert, now=now)
        except SvidError as exc:
            raise CAError(f"operator root unusable: {exc}") from None
        if _public_bytes(root_cert.public_key()) != _public_bytes(root_key.public_key()):
            raise CAError("operator root key does not match the operator root certificate")
        bc = root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.path_length == 0:
            raise CAError("operator root has pathLenConstraint 0: it cannot sign an intermediate CA")

    def _write_authority_files(
        self, name: str, cert: x509.Certificate, key: SigningKey, root: x509.Certificate | None
    ) -> None:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(self.directory / f"{name}.key", key_pem)
        _write_atomic(self.directory / f"{name}.pem", _pem(cert))
        if root is not None:
            _write_atomic(self.directory / f"{name}-root.pem", _pem(root))

    def _save(self) -> None:
        state = {
            "version": STATE_VERSION,
            "trust_domain": self.trust_domain,
            "sequence": self._sequence,
            "refresh_hint": self._refresh_hint,
            "ca_ttl_s": int(self._ca_ttl.total_seconds()),
            "rotated_at": self.rotated_at.isoformat() if self.rotated_at else None,
            "authorities": [
                {
                    "name": a.name,
                    "cert": f"{a.name}.pem",
                    "key": f"{a.name}.key",
                    "root": f"{a.name}.pem" if a.cert == a.root else f"{a.name}-root.pem",
                    "state": a.state,
                }
                for a in self._authorities
            ],
        }
        _write_atomic(self.directory / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())
        self._refresh_cache()

    def _refresh_cache(self) -> None:
        active = [a for a in self._authorities if a.state == "active"]
        self._active = active[-1] if active else None
        if self._active is not None:
            self._aki = _aki_for(self._active.cert)
            self._hash = _signature_hash(self._active.key)

    # ----- queries --------------------------------------------------------------------------------------

    @property
    def signing_cert(self) -> x509.Certificate:
        """The certificate new leaves are signed by."""
        return self._signing().cert

    @property
    def in_rotation(self) -> bool:
        """True between :meth:`rotate` and :meth:`finish_rotation`."""
        return any(a.state == "retiring" for a in self._authorities)

    def roots(self) -> list[x509.Certificate]:
        """The distinct roots of every authority, the active one first."""
        seen: dict[bytes, x509.Certificate] = {}
        for authority in sorted(self._authorities, key=lambda a: a.state != "active"):
            seen.setdefault(authority.root.fingerprint(hashes.SHA256()), authority.root)
        return list(seen.values())

    def bundle(self) -> TrustBundle:
        """The current trust bundle (every root, with the current sequence)."""
        return TrustBundle(self.trust_domain, tuple(self.roots()), self._sequence, self._refresh_hint)

    def _signing(self) -> _Authority:
        if self._active is None:
            raise CAError(f"{self.directory}: CA has no active signing authority")
        return self._active

    # ----- signing --------------------------------------------------------------------------------------

    def sign_csr(
        self,
        csr_pem: bytes,
        spiffe_id: SpiffeId,
        ttl: timedelta | None = None,
        *,
        now: datetime | None = None,
    ) -> list[x509.Certificate]:
        """Sign ``csr_pem`` as an X.509-SVID for ``spiffe_id``; return ``[leaf, *intermediates]``.

        ``spiffe_id`` is the identity the caller has authenticated: the CSR only contributes its public
        key, and its URI SAN, when present, must equal ``spiffe_id``. Raises CsrRejected for several URI
        SANs, an ID outside the trust domain, a CA request, a weak key or a bad signature. ``now``
        (default: the current time) is when the leaf starts, for tests with a fake clock.
        """
        authority = self._signing()
        if spiffe_id.trust_domain != self.trust_domain:
            raise CsrRejected(f"identity {spiffe_id} is outside trust domain {self.trust_domain!r}")
        if spiffe_id.is_trust_domain_id:
            raise CsrRejected(f"identity {spiffe_id} has no path; workload SVIDs need one")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CsrRejected(f"not a PEM certificate signing request ({exc})") from None
        _check_csr_key(csr)
        try:
            signature_ok = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CsrRejected(f"CSR signature cannot be checked: {exc}") from None
        if not signature_ok:
            raise CsrRejected("CSR signature is invalid (the CSR was altered or not signed by its key)")
        self._check_csr_extensions(csr, spiffe_id)
        now = now if now is not None else datetime.now(UTC)
        lifetime = DEFAULT_LEAF_TTL if ttl is None else ttl
        if lifetime <= timedelta(0):
            raise CAError("certificate TTL must be positive")
        ca_expiry = authority.cert.not_valid_after_utc
        if authority.root.not_valid_after_utc < ca_expiry:
            ca_expiry = authority.root.not_valid_after_utc
        if ca_expiry <= now:
            raise CAError(
                f"CA certificate {authority.name} expired at {ca_expiry:%Y-%m-%dT%H:%M:%SZ}; rotate it"
            )
        public_key = csr.public_key()
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshgate")]))
            .issuer_name(authority.cert.subject)
            .public_key(public_key)
            .serial_number(_random_serial())
            .not_valid_before(max(now - BACKDATE, authority.cert.not_valid_before_utc))
            .not_valid_after(min(now + lifetime, ca_expiry))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(authority.key, self._hash)
        )
        return [leaf, *authority.chain]

    def _check_csr_extensions(self, csr: x509.CertificateSigningRequest, spiffe_id: SpiffeId) -> None:
        try:
            extensions = list(csr.extensions)
        except ValueError as exc:
            raise CsrRejected(f"CSR extensions cannot be parsed: {exc}") from None
        for ext in extensions:
            value = ext.value
            if isinstance(value, x509.BasicConstraints) and value.ca:
                raise CsrRejected(
                    "CSR asks for a CA certificate (basicConstraints cA=true); SVIDs are leaves"
                )
            if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
                raise CsrRejected("CSR asks for keyCertSign/cRLSign; SVIDs are leaves")
            if isinstance(value, x509.SubjectAlternativeName):
                uris = value.get_values_for_type(x509.UniformResourceIdentifier)
                if len(uris) > 1:
                    raise CsrRejected(f"CSR has {len(uris)} URI SANs; an X.509-SVID has exactly one")
                if uris:
                    try:
                        asked = SpiffeId.parse(uris[0])
                    except InvalidSpiffeId as exc:
                        raise CsrRejected(f"CSR URI SAN is not a valid SPIFFE ID: {exc}") from None
                    if asked.trust_domain != self.trust_domain:
                        raise CsrRejected(f"CSR asks for {asked}, outside trust domain {self.trust_domain!r}")
                    if asked != spiffe_id:
                        raise CsrRejected(
                            f"CSR asks for {asked} but the caller was authenticated as {spiffe_id}"
                        )

    def issue(
        self, spiffe_id: SpiffeId, ttl: timedelta | None = None
    ) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey]:
        """Make a P-256 key and an SVID for it (bootstrap and tests); returns ``(chain, key)``."""
        key = ec.generate_private_key(ec.SECP256R1())
        return self.sign_csr(make_csr(key, spiffe_id), spiffe_id, ttl), key

    # ----- rotation -------------------------------------------------------------------------------------

    def rotate(
        self,
        root_cert: x509.Certificate | None = None,
        root_key: SigningKey | None = None,
        ttl: timedelta | None = None,
    ) -> TrustBundle:
        """Start a root rotation: add a new authority (new root, or intermediate under the given new root).

        From now on both roots are in the bundle and new leaves are signed by the new authority. Returns
        the new bundle. Raises CAError when a rotation is already in progress.
        """
        if self.in_rotation:
            raise CAError(
                "a rotation is already in progress; finish it first ('meshgate ca rotate --finish')"
            )
        old = self._signing()
        intermediate_mode = old.cert != old.root
        if intermediate_mode and root_cert is None:
            raise CAError("this CA is an intermediate: rotating needs the operator's new root cert and key")
        if (root_cert is None) != (root_key is None):
            raise CAError("give both the operator's root certificate and its key, or neither")
        used = {a.name for a in self._authorities}
        number = 1 + max(int(n.split("-")[1]) for n in used)
        authority = self._new_authority(f"ca-{number}", root_cert, root_key, ttl or self._ca_ttl)
        before = set(r.fingerprint(hashes.SHA256()) for r in self.roots())
        old.state = "retiring"
        self._authorities.append(authority)
        if set(r.fingerprint(hashes.SHA256()) for r in self.roots()) != before:
            self._sequence += 1
        self.rotated_at = datetime.now(UTC)
        self._save()
        return self.bundle()

    def finish_rotation(self) -> TrustBundle:
        """Finish a rotation: drop the retiring authorities (and their keys); return the new bundle."""
        retiring = [a for a in self._authorities if a.state == "retiring"]
        if not retiring:
            raise CAError("no rotation in progress (run 'meshgate ca rotate' first)")
        before = set(r.fingerprint(hashes.SHA256()) for r in self.roots())
        self._authorities = [a for a in self._authorities if a.state != "retiring"]
        if set(r.fingerprint(hashes.SHA256()) for r in self.roots()) != before:
            self._sequence += 1
        self.rotated_at = None
        self._save()
        for authority in retiring:
            (self.directory / f"{authority.name}.key").unlink(missing_ok=True)
        return self.bundle()

    def leaves_may_outlive(self) -> datetime | None:
        """During a rotation: until when leaves signed before it may still be valid (rotation + 24 h)."""
        if self.rotated_at is None:
            return None
        return self.rotated_at + DEFAULT_LEAF_TTL


def load_chain_pem(data: bytes) -> list[x509.Certificate]:
    """Parse concatenated PEM certificates (leaf first); raise CAError when there are none."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CAError(f"not PEM certificates ({exc})") from None
    return certs


def chain_pem(chain: Sequence[x509.Certificate]) -> bytes:
    """Concatenated PEM of ``chain``."""
    return b"".join(_pem(c) for c in chain)
