"""One edge request on its way through the gateway's steps (``gateway/middleware/*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.auth.base import EdgeRequest, Identity
from gateway.routing import Match
from mesh.transport.messages import Headers, Response, error_response


@dataclass
class Exchange:
    """What the steps read and fill in; ``response_headers`` are added to whatever answer goes back."""

    method: str
    path: str  # raw path as sent, without the query
    query: str
    host: str  # lower case, without the port
    scheme: str
    headers: Headers  # cleaned by the hygiene step (hop-by-hop, identity headers removed)
    client_address: str
    http_version: str
    client_spiffe_id: str | None = None
    match: Match | None = None
    identity: Identity | None = None
    response_headers: Headers = field(default_factory=list)
    span: Any = None
    body: bytes | None = None  # read ahead only when an auth provider needs it
    has_body: bool = True  # False: HTTP/1.x without Content-Length or Transfer-Encoding (nothing to read)
    te_trailers: bool = False  # the client sent ``te: trailers`` (gRPC): forwarded as such
    trailers_ok: bool = False  # the server carries response trailers (ASGI http.response.trailers)
    attempts: int = 0  # tries the mesh client made upstream (0: none was made)
    upstream_ms: float | None = None  # from sending upstream to the upstream's response head
    _joined: dict[str, str] | None = field(default=None, repr=False)

    @property
    def grpc(self) -> bool:
        """A gRPC call (``content-type: application/grpc``, ``+proto`` etc.; not gRPC-Web)."""
        ctype = self.header("content-type") or ""
        return ctype.startswith("application/grpc") and not ctype.startswith("application/grpc-web")

    @property
    def grpc_web(self) -> bool:
        """A gRPC-Web call (``application/grpc-web``, ``-text``, ``+proto``)."""
        return (self.header("content-type") or "").startswith("application/grpc-web")

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (lower case)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def joined_headers(self) -> dict[str, str]:
        """Headers for matching and policy: repeated ones joined with commas, as the sidecar's policy
        view does, so that every layer reads a repeated header the same way (built once, after the
        hygiene step has fixed ``headers``)."""
        if self._joined is None:
            joined: dict[str, str] = {}
            for key, value in self.headers:
                joined[key] = f"{joined[key]},{value}" if key in joined else value
            self._joined = joined
        return self._joined

    def edge_request(self) -> EdgeRequest:
        """The view authenticators get."""
        return EdgeRequest(
            method=self.method,
            path=self.path,
            query=self.query,
            host=self.host,
            headers=self.headers,
            client_address=self.client_address,
            scheme=self.scheme,
            body=self.body,
            client_spiffe_id=self.client_spiffe_id,
        )


def local_error(status: int, code: str, message: str, headers: Headers | None = None) -> Response:
    """A gateway-made answer: the mesh's ``error_response`` (``x-meshgate-error: code``, a short text
    body) with ``headers`` added."""
    response = error_response(status, code, message)
    response.headers.extend(headers or [])
    return response
