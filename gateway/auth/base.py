"""What every authenticator takes and gives: the edge request it sees, and its verdict.

A route lists providers (any-of): the gateway asks each in turn. A provider that finds none of its
credentials says ``Verdict.absent()`` and the next is asked; one that finds credentials and refuses
them says ``Verdict.reject(...)`` (the gateway answers 401 unless a later provider accepts);
``Verdict.deny(...)`` is a final answer relayed as it is (ext_authz's status, headers and body);
``Verdict.accept(identity)`` ends the search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Headers = list[tuple[str, str]]  # lower-case names, in order, repeats kept


@dataclass
class EdgeRequest:
    """The client's request as authenticators see it (headers already cleaned by the gateway)."""

    method: str
    path: str  # the path as the client sent it, without the query
    query: str  # the raw query string, without '?'
    host: str
    headers: Headers
    client_address: str
    scheme: str = "https"
    body: bytes | None = None  # only when a provider asked for it (ext_authz includeBody)
    client_spiffe_id: str | None = None  # a verified client certificate at the edge

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Identity:
    """Who the caller is: ``principal`` goes upstream as ``x-meshgate-principal`` and to the policy
    engine as the request principal; ``claims`` are what AccessPolicy claim matches see."""

    principal: str
    provider: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    upstream_headers: Sequence[tuple[str, str]] = ()  # to set on the upstream request (overwrite)
    remove_headers: Sequence[str] = ()  # to remove from the upstream request
    remove_query: Sequence[str] = ()  # query parameters to remove from the upstream request (credentials)


@dataclass(frozen=True)
class Denial:
    """A final answer to the client."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Verdict:
    """One provider's answer; see the module docstring."""

    identity: Identity | None = None
    denial: Denial | None = None
    reason: str | None = None  # why credentials were refused (logged; short form in the 401 body)

    @staticmethod
    def absent() -> Verdict:
        """No credentials of this provider's kind: ask the next provider."""
        return Verdict()

    @staticmethod
    def accept(identity: Identity) -> Verdict:
        """Authenticated."""
        return Verdict(identity=identity)

    @staticmethod
    def reject(reason: str) -> Verdict:
        """Credentials present but not valid."""
        return Verdict(reason=reason)

    @staticmethod
    def deny(denial: Denial, reason: str) -> Verdict:
        """A final answer (relayed as it is)."""
        return Verdict(denial=denial, reason=reason)


class Authenticator(Protocol):
    """One configured AuthProvider."""

    name: str
    #: Headers this provider sets upstream when it accepts (claims to headers, ext_authz's allowed
    #: upstream headers): removed from the client's request whichever provider of the route accepts.
    owned_headers: frozenset[str]

    async def authenticate(self, request: EdgeRequest) -> Verdict:
        """Judge ``request``; never raises for bad input or a dead dependency (that is a verdict)."""
        ...

    async def close(self) -> None:
        """Stop background work (JWKS refresh) and close clients."""
        ...
