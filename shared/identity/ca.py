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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .bundle import DEFAULT_REFRESH_HINT_S, TrustBundle
from .certutil import (
    SigningKey,
    aki_for,
    chain_pem,
    load_chain_pem,
    load_signing_key,
    private_key_pem,
    public_bytes,
    write_atomic,
    write_private,
)
from .csr import check_csr, make_csr
from .errors import CAError, CsrRejected
from .profiles import build_ca_cert, build_leaf
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
        leftovers = sorted(p.name for p in path.glob("ca-*")) if path.is_dir() else []
        if leftovers:
            # keys without their state file: never overwrite them (every SVID they signed would stop
            # verifying); the operator restores ca.json or moves the files away
            raise CAError(
                f"{path} holds CA files ({', '.join(leftovers)}) but no {STATE_FILE}: restore it from a "
                "backup, or move the directory away to start a new CA"
            )
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
        if root_cert is None or root_key is None:
            cert = build_ca_cert(self.trust_domain, name, key, now - BACKDATE, now + ttl)
            self._write_authority_files(name, cert, key, None)
            return _Authority(name, cert, key, cert, "active")
        self._check_operator_root(root_cert, root_key, now)
        not_before = max(now - BACKDATE, root_cert.not_valid_before_utc)
        not_after = min(now + ttl, root_cert.not_valid_after_utc)
        cert = build_ca_cert(self.trust_domain, name, key, not_before, not_after, (root_cert, root_key))
        self._write_authority_files(name, cert, key, root_cert)
        return _Authority(name, cert, key, root_cert, "active")

    @staticmethod
    def _check_operator_root(root_cert: x509.Certificate, root_key: SigningKey, now: datetime) -> None:
        try:
            check_ca(root_cert, now=now)
        except SvidError as exc:
            raise CAError(f"operator root unusable: {exc}") from None
        if public_bytes(root_cert.public_key()) != public_bytes(root_key.public_key()):
            raise CAError("operator root key does not match the operator root certificate")
        bc = root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.path_length == 0:
            raise CAError("operator root has pathLenConstraint 0: it cannot sign an intermediate CA")

    def _write_authority_files(
        self, name: str, cert: x509.Certificate, key: SigningKey, root: x509.Certificate | None
    ) -> None:
        write_private(self.directory / f"{name}.key", private_key_pem(key))
        write_atomic(self.directory / f"{name}.pem", chain_pem([cert]))
        if root is not None:
            write_atomic(self.directory / f"{name}-root.pem", chain_pem([root]))

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
        write_atomic(self.directory / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())
        self._refresh_cache()

    def _refresh_cache(self) -> None:
        active = [a for a in self._authorities if a.state == "active"]
        self._active = active[-1] if active else None
        if self._active is not None:
            self._aki = aki_for(self._active.cert)

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
        retiring: bool = False,
    ) -> list[x509.Certificate]:
        """Sign ``csr_pem`` as an X.509-SVID for ``spiffe_id``; return ``[leaf, *intermediates]``.

        ``spiffe_id`` is the identity the caller has authenticated: the CSR only contributes its public
        key, and its URI SAN, when present, must equal ``spiffe_id``. Raises CsrRejected for several URI
        SANs, an ID outside the trust domain, a CA request, a weak key or a bad signature. ``now``
        (default: the current time) is when the leaf starts, for tests with a fake clock. ``retiring``:
        during a rotation, sign with the retiring authority (the control plane's own serving certificate,
        so that workloads still holding only the old bundle can verify it); otherwise the active one.
        """
        authority = self._signing()
        aki = self._aki
        if retiring:
            old = [a for a in self._authorities if a.state == "retiring"]
            if old:
                authority = old[0]
                aki = aki_for(authority.cert)
        if spiffe_id.trust_domain != self.trust_domain:
            raise CsrRejected(f"identity {spiffe_id} is outside trust domain {self.trust_domain!r}")
        if spiffe_id.is_trust_domain_id:
            raise CsrRejected(f"identity {spiffe_id} has no path; workload SVIDs need one")
        public_key = check_csr(csr_pem, spiffe_id)
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
        not_before = max(now - BACKDATE, authority.cert.not_valid_before_utc)
        not_after = ca_expiry if lifetime >= ca_expiry - now else now + lifetime  # no overflow
        leaf = build_leaf(spiffe_id, public_key, authority.cert, authority.key, not_before, not_after, aki)
        return [leaf, *authority.chain]

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
