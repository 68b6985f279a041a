"""SPIFFE IDs: parsing and validation exactly per the SPIFFE-ID standard.

A SPIFFE ID is ``spiffe://<trust-domain><path>``. The trust domain is lower-case ``[a-z0-9._-]``, at
most 255 bytes, with no port and no userinfo. The path is empty (a trust-domain ID) or ``/``-separated
segments of ``[a-zA-Z0-9._-]``, none empty, ``.`` or ``..``, without a trailing slash, percent-encoding,
query or fragment. Meshgate workloads are named ``spiffe://<td>/ns/<namespace>/sa/<service>``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

__all__ = ["InvalidSpiffeId", "SpiffeId", "validate_trust_domain", "workload_id"]

SCHEME = "spiffe://"
MAX_TRUST_DOMAIN_BYTES = 255
_TD_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


class InvalidSpiffeId(ValueError):
    """A string is not a valid SPIFFE ID; ``rule`` names the rule it breaks."""

    def __init__(self, text: str, rule: str) -> None:
        shown = text if len(text) <= 120 else text[:117] + "..."
        super().__init__(f"invalid SPIFFE ID {shown!r}: {rule}")
        self.text = text
        self.rule = rule


def _trust_domain_problem(td: str) -> str | None:
    """Return the rule ``td`` breaks as a trust domain name, or None when it is valid."""
    if not td:
        return "trust domain is empty"
    if "@" in td:
        return "trust domain must not contain userinfo ('user@')"
    if ":" in td:
        return "trust domain must not contain a port"
    if len(td.encode("utf-8")) > MAX_TRUST_DOMAIN_BYTES:
        return f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
    if "%" in td:
        return "trust domain must not be percent-encoded"
    if any(c.isupper() for c in td):
        return "trust domain must be lower case"
    bad = sorted({c for c in td if c not in _TD_CHARS})
    if bad:
        return f"trust domain has characters outside [a-z0-9._-]: {''.join(bad)!r}"
    return None


def validate_trust_domain(td: str) -> str:
    """Return ``td`` when it is a valid trust domain name; raise InvalidSpiffeId naming the rule otherwise."""
    problem = _trust_domain_problem(td)
    if problem is not None:
        raise InvalidSpiffeId(SCHEME + td, problem)
    return td


def _path_problem(path: str) -> str | None:
    """Return the rule ``path`` (empty or starting with '/') breaks, or None when it is valid."""
    if not path:
        return None
    if "%" in path:
        return "path must not contain percent-encoding"
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment == "":
            if index == len(segments) - 1:
                return "path must not end with a trailing slash"
            return "path must not contain an empty segment ('//')"
        if segment in (".", ".."):
            return f"path must not contain a {segment!r} segment"
        bad = sorted({c for c in segment if c not in _SEGMENT_CHARS})
        if bad:
            return f"path segment {segment!r} has characters outside [a-zA-Z0-9._-]: {''.join(bad)!r}"
    return None


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID: ``trust_domain`` plus ``path`` (``""`` or ``/seg/seg...``)."""

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        problem = _trust_domain_problem(self.trust_domain)
        if problem is None and self.path and not self.path.startswith("/"):
            problem = "path must start with '/'"
        if problem is None:
            problem = _path_problem(self.path)
        if problem is not None:
            raise InvalidSpiffeId(SCHEME + self.trust_domain + self.path, problem)

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``text``; raise InvalidSpiffeId whose message names the broken rule."""
        if not isinstance(text, str):
            raise InvalidSpiffeId(repr(text), "a SPIFFE ID must be a string")
        if not text:
            raise InvalidSpiffeId(text, "empty string")
        if not text.startswith(SCHEME):
            if text.lower().startswith(SCHEME):
                raise InvalidSpiffeId(text, "scheme must be 'spiffe' in lower case")
            raise InvalidSpiffeId(text, "scheme must be 'spiffe://'")
        if "#" in text:
            raise InvalidSpiffeId(text, "must not contain a fragment ('#')")
        if "?" in text:
            raise InvalidSpiffeId(text, "must not contain a query ('?')")
        rest = text[len(SCHEME) :]
        slash = rest.find("/")
        td, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        problem = _trust_domain_problem(td) or _path_problem(path)
        if problem is not None:
            raise InvalidSpiffeId(text, problem)
        return cls(td, path)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def uri(self) -> str:
        """The ID as a URI string (same as ``str(self)``)."""
        return str(self)

    @property
    def is_trust_domain_id(self) -> bool:
        """True for ``spiffe://<td>`` (no path): the ID of the trust domain itself, never a workload."""
        return self.path == ""

    @property
    def trust_domain_id(self) -> SpiffeId:
        """``spiffe://<td>`` for this ID's trust domain."""
        return SpiffeId(self.trust_domain)

    def _workload_parts(self) -> tuple[str, str] | None:
        parts = self.path.split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[2], parts[4]
        return None

    @property
    def namespace(self) -> str | None:
        """The namespace of a ``/ns/<ns>/sa/<service>`` ID, else None."""
        parts = self._workload_parts()
        return parts[0] if parts else None

    @property
    def service(self) -> str | None:
        """The service of a ``/ns/<ns>/sa/<service>`` ID, else None."""
        parts = self._workload_parts()
        return parts[1] if parts else None


def workload_id(trust_domain: str, service: str, namespace: str = "default") -> SpiffeId:
    """Return ``spiffe://<trust_domain>/ns/<namespace>/sa/<service>``; raise InvalidSpiffeId when invalid."""
    for label, value in (("service", service), ("namespace", namespace)):
        if "/" in value:
            raise InvalidSpiffeId(
                f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service}", f"{label} must be one path segment"
            )
    return SpiffeId(trust_domain, f"/ns/{namespace}/sa/{service}")
