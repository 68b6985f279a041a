"""X.509-SVID rules (SPIFFE X509-SVID standard) checked on leaf and CA certificates.

Every failure raises :class:`SvidError` whose ``rule`` is one of :class:`SvidRule` and whose message says
what the certificate has instead, so an operator can tell which rule a peer broke.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from .spiffeid import InvalidSpiffeId, SpiffeId

__all__ = [
    "SvidError",
    "SvidRule",
    "check_ca",
    "check_leaf",
    "check_validity",
    "describe",
    "uri_sans",
    "verify_chain",
]


class SvidRule(enum.Enum):
    """The rules an X.509-SVID (or a CA certificate, or a chain) can break; values are their names."""

    ONE_URI_SAN = "an X.509-SVID has exactly one URI SAN"
    VALID_ID = "the URI SAN is a valid SPIFFE ID"
    LEAF_PATH = "a leaf SPIFFE ID has a non-root path"
    LEAF_NOT_CA = "a leaf has basicConstraints cA=false"
    KEY_USAGE_CRITICAL = "keyUsage is present and critical"
    DIGITAL_SIGNATURE = "a leaf keyUsage includes digitalSignature"
    NO_SIGNING_USAGE = "a leaf keyUsage excludes keyCertSign and cRLSign"
    EKU = "a leaf EKU includes serverAuth and clientAuth"
    VALIDITY = "the certificate is within its validity period"
    TRUST_DOMAIN = "the SPIFFE ID belongs to the expected trust domain"
    IDENTITY = "the peer SPIFFE ID is the one expected"
    CA_IS_CA = "a CA certificate has basicConstraints cA=true"
    CA_KEY_CERT_SIGN = "a CA certificate keyUsage includes keyCertSign"
    CA_ID_NO_PATH = "a CA certificate SPIFFE ID has no path"
    CHAIN = "the chain leads to a root in the trust bundle"
    WELL_FORMED = "the certificate's extensions can be parsed"


class SvidError(ValueError):
    """A certificate breaks an SVID rule; ``rule`` says which, the message says what was found."""

    def __init__(self, rule: SvidRule, detail: str) -> None:
        super().__init__(f"{detail} (rule: {rule.value})")
        self.rule = rule
        self.detail = detail


def uri_sans(cert: x509.Certificate) -> list[str]:
    """All URI SANs of ``cert`` (empty when it has no SAN extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def describe(cert: x509.Certificate) -> str:
    """A short name for ``cert`` in messages: its URI SAN(s), else its subject."""
    try:
        uris = uri_sans(cert)
    except ValueError:
        uris = []
    if uris:
        return ", ".join(uris)
    return cert.subject.rfc4514_string() or "<empty subject>"


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _ts(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_validity(cert: x509.Certificate, now: datetime | None = None) -> None:
    """Raise SvidError(VALIDITY) when ``cert`` is expired or not yet valid at ``now`` (default: now)."""
    at = _now(now)
    if at < cert.not_valid_before_utc:
        raise SvidError(
            SvidRule.VALIDITY,
            f"certificate {describe(cert)} is not yet valid (notBefore {_ts(cert.not_valid_before_utc)})",
        )
    if at > cert.not_valid_after_utc:
        raise SvidError(
            SvidRule.VALIDITY,
            f"certificate {describe(cert)} has expired (notAfter {_ts(cert.not_valid_after_utc)})",
        )


def _spiffe_id_of(cert: x509.Certificate, *, leaf: bool) -> SpiffeId | None:
    uris = uri_sans(cert)
    if not uris:
        if leaf:
            raise SvidError(SvidRule.ONE_URI_SAN, "leaf certificate has no URI SAN")
        return None
    if len(uris) > 1:
        raise SvidError(SvidRule.ONE_URI_SAN, f"certificate has {len(uris)} URI SANs: {', '.join(uris)}")
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise SvidError(SvidRule.VALID_ID, str(exc)) from None


def _key_usage(cert: x509.Certificate, who: str) -> x509.KeyUsage:
    try:
        ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise SvidError(SvidRule.KEY_USAGE_CRITICAL, f"{who} certificate has no keyUsage extension") from None
    if not ext.critical:
        raise SvidError(SvidRule.KEY_USAGE_CRITICAL, f"{who} certificate keyUsage is not marked critical")
    return ext.value


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _parsed(cert: x509.Certificate) -> None:
    try:
        cert.extensions  # noqa: B018 - parsing is the check
    except ValueError as exc:
        raise SvidError(SvidRule.WELL_FORMED, f"certificate extensions are malformed ({exc})") from None


def check_leaf(
    cert: x509.Certificate, trust_domain: str | None = None, *, now: datetime | None = None
) -> SpiffeId:
    """Check ``cert`` against every leaf X.509-SVID rule and return its SPIFFE ID.

    When ``trust_domain`` is given the ID must belong to it. Validity is checked at ``now`` (default: the
    current time). Raises SvidError naming the first rule broken.
    """
    _parsed(cert)
    spiffe_id = _spiffe_id_of(cert, leaf=True)
    assert spiffe_id is not None
    if spiffe_id.is_trust_domain_id:
        raise SvidError(SvidRule.LEAF_PATH, f"leaf SPIFFE ID {spiffe_id} has no path")
    bc = _basic_constraints(cert)
    if bc is None:
        raise SvidError(SvidRule.LEAF_NOT_CA, f"leaf {spiffe_id} has no basicConstraints extension")
    if bc.ca:
        raise SvidError(SvidRule.LEAF_NOT_CA, f"leaf {spiffe_id} has basicConstraints cA=true")
    usage = _key_usage(cert, f"leaf {spiffe_id}")
    if not usage.digital_signature:
        raise SvidError(SvidRule.DIGITAL_SIGNATURE, f"leaf {spiffe_id} keyUsage lacks digitalSignature")
    if usage.key_cert_sign or usage.crl_sign:
        which = "keyCertSign" if usage.key_cert_sign else "cRLSign"
        raise SvidError(SvidRule.NO_SIGNING_USAGE, f"leaf {spiffe_id} keyUsage has {which}")
    try:
        ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        raise SvidError(SvidRule.EKU, f"leaf {spiffe_id} has no extendedKeyUsage extension") from None
    missing = [
        name
        for name, oid in (
            ("serverAuth", ExtendedKeyUsageOID.SERVER_AUTH),
            ("clientAuth", ExtendedKeyUsageOID.CLIENT_AUTH),
        )
        if oid not in ekus
    ]
    if missing:
        raise SvidError(SvidRule.EKU, f"leaf {spiffe_id} extendedKeyUsage lacks {' and '.join(missing)}")
    check_validity(cert, now)
    if trust_domain is not None and spiffe_id.trust_domain != trust_domain:
        raise SvidError(
            SvidRule.TRUST_DOMAIN,
            f"SPIFFE ID {spiffe_id} is in trust domain {spiffe_id.trust_domain!r}, expected {trust_domain!r}",
        )
    return spiffe_id


def check_ca(cert: x509.Certificate, *, now: datetime | None = None) -> SpiffeId | None:
    """Check ``cert`` is usable as a SPIFFE CA (cA=true, keyCertSign, ID without path, valid now).

    Returns its trust-domain SPIFFE ID when it carries one. Raises SvidError naming the rule broken.
    """
    _parsed(cert)
    who = describe(cert)
    bc = _basic_constraints(cert)
    if bc is None or not bc.ca:
        raise SvidError(SvidRule.CA_IS_CA, f"CA certificate {who} does not have basicConstraints cA=true")
    usage = _key_usage(cert, f"CA {who}")
    if not usage.key_cert_sign:
        raise SvidError(SvidRule.CA_KEY_CERT_SIGN, f"CA certificate {who} keyUsage lacks keyCertSign")
    spiffe_id = _spiffe_id_of(cert, leaf=False)
    if spiffe_id is not None and not spiffe_id.is_trust_domain_id:
        raise SvidError(SvidRule.CA_ID_NO_PATH, f"CA certificate SPIFFE ID {spiffe_id} has a path")
    check_validity(cert, now)
    return spiffe_id


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    chain: Sequence[x509.Certificate], roots: Iterable[x509.Certificate], *, now: datetime | None = None
) -> x509.Certificate:
    """Verify ``chain`` (leaf first, then intermediates) up to one of ``roots``; return that root.

    Each link must be signed by the next certificate, every issuer must pass :func:`check_ca`, and every
    certificate must be valid at ``now``. Raises SvidError naming the rule broken.
    """
    if not chain:
        raise SvidError(SvidRule.CHAIN, "empty certificate chain")
    root_list = list(roots)
    for cert in chain:
        check_validity(cert, now)
    for cert in chain:
        _parsed(cert)
    for child, parent in itertools.pairwise(chain):
        if not _issued_by(child, parent):
            raise SvidError(
                SvidRule.CHAIN, f"{describe(child)} is not signed by the next certificate {describe(parent)}"
            )
        check_ca(parent, now=now)
    top = chain[-1]
    for root in root_list:
        if root == top or _issued_by(top, root):
            if root != top:
                check_ca(root, now=now)
            return root
    raise SvidError(
        SvidRule.CHAIN,
        f"{describe(top)} (issuer {top.issuer.rfc4514_string()}) does not chain to any of the "
        f"{len(root_list)} root(s) in the trust bundle",
    )
