"""Edge hygiene (STANDARDS "HTTP/1.1 at the edge"), before anything else looks at the request.

Common ASGI servers accept requests without Host, with two Hosts and with 100 KB of headers, and some
pass Content-Length next to Transfer-Encoding: this step refuses those itself. It also removes
hop-by-hop headers (and every header ``Connection`` names, except the ones the gateway itself relies
on) and ``Expect`` (an HTTP/1.1 server in front answers 100-continue), strips identity headers a client might
forge (``x-meshgate-*``, ``x-forwarded-client-cert``), and rebuilds ``X-Forwarded-For/-Proto/-Host``
and ``x-request-id``: a client-sent ``X-Forwarded-For`` counts only through ``trusted_hops`` proxies
in front of the gateway.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from gateway.exchange import Exchange, local_error
from mesh.transport.h1parse import decode_headers
from mesh.transport.messages import HOP_BY_HOP, Headers, Response
from shared.identity.spiffeid import InvalidSpiffeId, SpiffeId
from shared.policy.paths import normalize_path

#: Headers a client could use to impersonate someone, or to pass for the mesh: never taken from outside.
IDENTITY_PREFIXES = ("x-meshgate-",)
IDENTITY_HEADERS = frozenset({"x-forwarded-client-cert", "x-request-id", "forwarded", "x-real-ip"})
#: What ``Connection`` may not remove: the gateway reads these itself.
PROTECTED = frozenset({"host", "content-length", "authorization"})
FORWARDED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() takes '²' too


@dataclass(frozen=True)
class HygieneSettings:
    """Caps and trust, from the command line."""

    max_header_bytes: int = 65536
    max_headers: int = 200
    trusted_hops: int = 0


def _bad(message: str) -> Response:
    response = local_error(400, "bad_request", message)
    response.headers.append(("connection", "close"))
    return response


def _client_address(forwarded_for: list[str], peer: str, trusted_hops: int) -> tuple[str, list[str]]:
    """The client address and the X-Forwarded-For chain to send on. Untrusted chains are dropped."""
    if trusted_hops <= 0:
        return peer, [peer]
    chain = []
    for part in forwarded_for:
        for item in part.split(","):
            item = item.strip()
            try:
                ipaddress.ip_address(item)
            except ValueError:
                continue  # junk is not an address: never a rate-limit key
            chain.append(item)
    chain.append(peer)
    client = chain[-(trusted_hops + 1)] if len(chain) > trusted_hops else chain[0]
    return client, chain


@functools.lru_cache(maxsize=1024)
def spiffe_id_of(pem: str) -> str | None:
    """The SPIFFE ID in a (server-verified) client certificate's URI SAN, or None."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return None
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        return None
    try:
        return str(SpiffeId.parse(spiffe[0]))
    except InvalidSpiffeId:
        return None


def check(scope: Mapping[str, Any], settings: HygieneSettings) -> Exchange | Response:
    """The cleaned exchange, or the answer that refuses the request (400 / 431)."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    if len(raw) > settings.max_headers:
        return local_error(431, "headers_too_large", f"more than {settings.max_headers} header fields")
    size = 0
    for k, v in raw:
        size += len(k) + len(v) + 32  # as HTTP/2 counts a header list (RFC 9113 section 6.5.2)
    if size > settings.max_header_bytes:
        return local_error(431, "headers_too_large", f"header block over {settings.max_header_bytes} bytes")
    headers = decode_headers(raw)
    hosts = [v for k, v in headers if k == "host"]
    if len(hosts) > 1:
        return _bad("more than one Host header")
    host_value = hosts[0].strip() if hosts else ""
    if not host_value:
        return _bad("missing Host header")
    raw_path = scope.get("raw_path")
    target = raw_path.decode("latin-1").split("?", 1)[0] if raw_path else str(scope.get("path") or "/")
    if target[:8].lower().startswith(("http://", "https://")):
        # absolute-form (RFC 9112 section 3.2.2): accepted; its authority replaces the Host field
        parts = urlsplit(target)
        if not parts.netloc:
            return _bad("absolute-form request target without a host")
        host_value, target = parts.netloc, parts.path or "/"
    if any(c in host_value for c in " /\\@\t") or "," in host_value:
        return _bad("malformed Host header")
    lengths = {v.strip() for k, v in headers if k == "content-length"}
    encodings = [v for k, v in headers if k == "transfer-encoding"]
    if encodings and lengths:
        return _bad("Content-Length together with Transfer-Encoding")
    if len(lengths) > 1:
        return _bad("conflicting Content-Length headers")
    if lengths and not _DIGITS.fullmatch(next(iter(lengths))):
        return _bad("malformed Content-Length")
    codings = [e.strip().lower() for e in ",".join(encodings).split(",")] if encodings else []
    if codings and (codings[-1] != "chunked" or codings.count("chunked") > 1):
        return _bad("unsupported Transfer-Encoding")  # RFC 9112 section 6.1: the length is unknown
    if codings and codings != ["chunked"]:
        # RFC 9112 section 6.1: a coding before chunked (gzip, chunked) is not implemented here
        response = local_error(501, "not_implemented", "unsupported Transfer-Encoding")
        response.headers.append(("connection", "close"))
        return response
    named = {
        token.strip().lower()
        for key, value in headers
        if key == "connection"
        for token in value.split(",")
        if token.strip()
    } - PROTECTED
    forwarded_for = [v for k, v in headers if k == "x-forwarded-for"]
    kept: Headers = []
    for key, value in headers:
        if key in HOP_BY_HOP or key in named or key == "host" or key in FORWARDED or key == "expect":
            continue  # Expect: for this hop only (HTTP/1.1: our server sends 100 when the body is read)
        if "_" in key:  # apps that map names CGI-style (x_meshgate_peer -> HTTP_X_MESHGATE_PEER) must
            dashed = key.replace("_", "-")  # not see look-alikes of the identity headers set here
            if dashed in IDENTITY_HEADERS or dashed in FORWARDED or dashed.startswith(IDENTITY_PREFIXES):
                continue
        if key in IDENTITY_HEADERS or key.startswith(IDENTITY_PREFIXES):
            continue
        kept.append((key, value))
    peer = (scope.get("client") or ("", 0))[0] or ""
    client, chain = _client_address(forwarded_for, peer, settings.trusted_hops)
    scheme = str(scope.get("scheme") or "http")
    kept.append(("x-forwarded-for", ", ".join(chain)))
    kept.append(("x-forwarded-proto", scheme))
    kept.append(("x-forwarded-host", host_value))
    kept.append(("x-request-id", uuid.uuid4().hex))
    host = host_value.lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif ":" in host:
        host = host.rsplit(":", 1)[0]
    host = host.rstrip(".")  # api.example.com. is api.example.com
    # one canonical path for routing, policy and the upstream (the policy engine's normalization:
    # percent-decoding once, dot segments, repeated and back slashes); ambiguous paths are refused,
    # so that /%61dmin or /x/../admin cannot reach /admin through another route
    path = normalize_path(target)
    if path is None:
        return _bad("malformed or ambiguous request path")
    version = str(scope.get("http_version") or "1.1")
    has_body = (
        bool(encodings) or (bool(lengths) and next(iter(lengths)) != "0") or not version.startswith("1")
    )
    extensions = scope.get("extensions") or {}
    tls = extensions.get("tls") or {}
    te_trailers = any(k == "te" and "trailers" in v.lower() for k, v in headers)
    chain = tls.get("client_cert_chain") or []
    return Exchange(
        client_spiffe_id=spiffe_id_of(chain[0]) if chain else None,
        has_body=has_body,
        te_trailers=te_trailers,
        trailers_ok="http.response.trailers" in extensions,
        method=str(scope.get("method") or "GET"),  # a WebSocket scope has none: its handshake is a GET
        path=path,
        query=(scope.get("query_string") or b"").decode("latin-1"),
        host=host,
        scheme=scheme,
        headers=kept,
        client_address=client,
        http_version=version,
    )
