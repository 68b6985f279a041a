"""``meshgate ca ...``: the operator's commands for the built-in CA.

``init`` makes a CA, ``issue`` signs an SVID (bootstrap and tests), ``bundle`` prints the SPIFFE trust
bundle, ``rotate`` starts (or with ``--finish`` ends) a root rotation, ``inspect`` explains a
certificate. Exit codes: 0 done, 1 the operation failed (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from shared.config.durations import parse_duration

from .bundle import BundleError, TrustBundle
from .ca import DEFAULT_LEAF_TTL, CertificateAuthority
from .certutil import SigningKey, chain_pem, load_signing_key, private_key_pem, write_private
from .errors import CAError
from .spiffeid import InvalidSpiffeId, SpiffeId, validate_trust_domain
from .svid import SvidError, check_ca, check_leaf, describe, verify_chain

__all__ = ["register"]


def _duration(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return value


def _spiffe_id(text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except InvalidSpiffeId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _trust_domain(text: str) -> str:
    try:
        return validate_trust_domain(text)
    except InvalidSpiffeId as exc:
        raise argparse.ArgumentTypeError(f"invalid trust domain {text!r}: {exc.rule}") from None


class _Failed(Exception):
    """An operation failed; the message is printed as one line on stderr."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _Failed(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_cert(path: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError as exc:
        raise _Failed(f"{what} {path} is not a PEM certificate ({exc})") from None


def _read_key(path: str, what: str) -> SigningKey:
    try:
        return load_signing_key(_read(path, what), path)
    except CAError as exc:
        raise _Failed(f"{what}: {exc}") from None


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(command: str, fn: Any, args: argparse.Namespace) -> int:
    try:
        code: int = fn(args)
        return code
    except (_Failed, CAError, BundleError, SvidError, InvalidSpiffeId) as exc:
        print(f"meshgate ca {command}: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        print(f"meshgate ca {command}: error: {exc}", file=sys.stderr)
        return 1


# ----- commands -------------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    if (args.root_cert is None) != (args.root_key is None):
        raise _Failed("--root-cert and --root-key go together")
    root_cert = _read_cert(args.root_cert, "root certificate") if args.root_cert else None
    root_key = _read_key(args.root_key, "root key") if args.root_key else None
    ca = CertificateAuthority.init(args.dir, args.trust_domain, root_cert, root_key, args.ttl)
    cert = ca.signing_cert
    kind = (
        "intermediate under the operator's root" if root_cert is not None else "self-signed ECDSA P-256 root"
    )
    print(
        f"CA for trust domain {ca.trust_domain} in {ca.directory}: {kind}, "
        f"valid until {_when(cert.not_valid_after_utc)}"
    )
    return 0


def _issue(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.dir)
    chain, key = ca.issue(args.id, args.ttl)
    try:
        write_private(Path(args.key), private_key_pem(key))
        Path(args.cert).write_bytes(chain_pem(chain))
    except OSError as exc:
        raise _Failed(f"cannot write {exc.filename}: {exc.strerror}") from None
    print(
        f"issued {args.id} until {_when(chain[0].not_valid_after_utc)}: "
        f"chain in {args.cert}, key in {args.key}"
    )
    return 0


def _bundle(args: argparse.Namespace) -> int:
    print(CertificateAuthority.load(args.dir).bundle().to_json())
    return 0


def _rotate(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.dir)
    if args.finish:
        if args.root_cert or args.root_key:
            raise _Failed("--finish takes no --root-cert/--root-key")
        outlive = ca.leaves_may_outlive()
        bundle = ca.finish_rotation()
        print(f"rotation finished: bundle sequence {bundle.sequence}, {len(bundle.roots)} root(s)")
        if outlive is not None and outlive > datetime.now(UTC):
            print(
                f"warning: leaves signed by the old root may be valid until {_when(outlive)}; "
                "workloads still holding one are now refused",
                file=sys.stderr,
            )
        return 0
    if (args.root_cert is None) != (args.root_key is None):
        raise _Failed("--root-cert and --root-key go together")
    root_cert = _read_cert(args.root_cert, "root certificate") if args.root_cert else None
    root_key = _read_key(args.root_key, "root key") if args.root_key else None
    bundle = ca.rotate(root_cert, root_key, args.ttl)
    print(
        f"rotation started: bundle sequence {bundle.sequence} trusts {len(bundle.roots)} roots; "
        "new leaves are "
        f"signed by {describe(ca.signing_cert)} ({ca.signing_cert.subject.rfc4514_string()}). Distribute the "
        "bundle, let workloads renew, then run 'meshgate ca rotate --finish'"
    )
    return 0


def _load_bundle(path: str, trust_domain: str | None) -> TrustBundle:
    data = _read(path, "bundle")
    if data.lstrip().startswith(b"{"):
        return TrustBundle.from_json(data, trust_domain)
    try:
        roots = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise _Failed(f"bundle {path} is neither SPIFFE bundle JSON nor PEM certificates ({exc})") from None
    return TrustBundle(trust_domain or "unknown", tuple(roots))


def _inspect(args: argparse.Namespace) -> int:
    data = _read(args.file, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            chain = [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise _Failed(f"{args.file} holds no PEM or DER certificate ({exc})") from None
    leaf = chain[0]
    now = datetime.now(UTC)
    left = leaf.not_valid_after_utc - now
    status = "EXPIRED" if left < timedelta(0) else f"expires in {_human(left)}"
    if now < leaf.not_valid_before_utc:
        status = "NOT YET VALID"
    print(f"id:         {describe(leaf)}")
    print(f"subject:    {leaf.subject.rfc4514_string() or '<empty>'}")
    print(f"issuer:     {leaf.issuer.rfc4514_string()}")
    print(f"serial:     {leaf.serial_number:x}")
    print(f"not before: {_when(leaf.not_valid_before_utc)}")
    print(f"not after:  {_when(leaf.not_valid_after_utc)} ({status})")
    ok = True
    try:
        if _is_ca(leaf):
            check_ca(leaf, now=now)
            print("kind:       CA certificate, valid for SPIFFE")
        else:
            check_leaf(leaf, now=now)
            print("kind:       X.509-SVID leaf, follows the SVID rules")
    except SvidError as exc:
        ok = False
        print(f"kind:       {'CA certificate' if _is_ca(leaf) else 'leaf'} BREAKING a rule: {exc}")
    bundle: TrustBundle | None = None
    if args.dir:
        ca = CertificateAuthority.load(args.dir)
        bundle = ca.bundle()
        supply = ca.signing_cert not in bundle.roots and ca.signing_cert not in chain
        if supply and chain[-1].issuer == ca.signing_cert.subject:
            chain.append(ca.signing_cert)  # a bare leaf from an intermediate CA: supply the intermediate
    elif args.bundle:
        bundle = _load_bundle(args.bundle, args.trust_domain)
    if bundle is None:
        print("chains to:  not checked (give --dir or --bundle)")
    else:
        try:
            root = verify_chain(chain, bundle.roots, now=now)
            print(
                f"chains to:  yes, root {root.subject.rfc4514_string()} (bundle sequence {bundle.sequence})"
            )
        except SvidError as exc:
            ok = False
            print(f"chains to:  NO: {exc}")
    return 0 if ok else 1


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    return f"{hours}h{minutes}m" if hours else f"{minutes}m"


# ----- registration ---------------------------------------------------------------------------------------


def _handler(command: str, fn: Any) -> Any:
    def handle(args: argparse.Namespace) -> int:
        return _run(command, fn, args)

    return handle


def register(subparsers: Any) -> None:
    """Add the ``ca`` command group to the ``meshgate`` parser."""
    ca = subparsers.add_parser("ca", help="the built-in certificate authority (SPIFFE X.509-SVIDs)")
    sub = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND")
    sub.required = True

    p = sub.add_parser("init", help="create a CA: a new root, or an intermediate under your root")
    p.add_argument("--dir", required=True, help="directory for the CA's keys and state")
    p.add_argument("--trust-domain", required=True, type=_trust_domain, help="e.g. example.org")
    p.add_argument("--root-cert", help="operator root certificate (PEM): make an intermediate under it")
    p.add_argument("--root-key", help="operator root private key (PEM), used once and not stored")
    p.add_argument("--ttl", type=_duration, default=timedelta(days=3650), help="CA lifetime (default 87600h)")
    p.set_defaults(handler=_handler("init", _init))

    p = sub.add_parser("issue", help="issue an SVID (bootstrap and tests)")
    p.add_argument("--dir", required=True, help="CA directory")
    p.add_argument(
        "--id", required=True, type=_spiffe_id, help="SPIFFE ID, e.g. spiffe://td/ns/default/sa/web"
    )
    p.add_argument("--cert", required=True, help="where to write the certificate chain (PEM)")
    p.add_argument("--key", required=True, help="where to write the private key (PEM, mode 0600)")
    p.add_argument("--ttl", type=_duration, default=DEFAULT_LEAF_TTL, help="lifetime (default 24h)")
    p.set_defaults(handler=_handler("issue", _issue))

    p = sub.add_parser("bundle", help="print the SPIFFE trust bundle (JWKS)")
    p.add_argument("--dir", required=True, help="CA directory")
    p.set_defaults(handler=_handler("bundle", _bundle))

    p = sub.add_parser("rotate", help="start a root rotation (both roots trusted), or --finish it")
    p.add_argument("--dir", required=True, help="CA directory")
    p.add_argument("--finish", action="store_true", help="drop the old root (end of the overlap)")
    p.add_argument("--root-cert", help="intermediate CAs: the operator's new root certificate")
    p.add_argument("--root-key", help="intermediate CAs: the operator's new root key")
    p.add_argument("--ttl", type=_duration, default=None, help="lifetime of the new CA (default: as at init)")
    p.set_defaults(handler=_handler("rotate", _rotate))

    p = sub.add_parser("inspect", help="show a certificate's ID, issuer, validity and whether it chains")
    p.add_argument("file", help="certificate or chain (PEM or DER)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dir", help="check against this CA's bundle")
    where.add_argument("--bundle", help="check against a bundle file (SPIFFE JSON or PEM roots)")
    p.add_argument(
        "--trust-domain", type=_trust_domain, help="trust domain of --bundle when it cannot be told"
    )
    p.set_defaults(handler=_handler("inspect", _inspect))
