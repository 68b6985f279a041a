"""Header-block validation (RFC 9113 section 8.2-8.3, RFC 8441): malformed blocks raise.

Every check is a C-level bytes operation per field (``translate`` deleting the allowed bytes leaves
only the offending ones); a typical request costs a few microseconds. (A joined-block fast path
was measured: no faster at typical header counts, so the simple scan stays.)
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import MalformedHeadersError

__all__ = ["check_request", "check_response", "check_trailers"]

_LOWER_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN = _LOWER_TOKEN + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALUE_OK = bytes(b for b in range(256) if b not in (0x00, 0x0A, 0x0D))
_PATH_OK = bytes(b for b in range(256) if 0x21 <= b <= 0x7E or b >= 0x80)
_AUTHORITY_OK = bytes(b for b in range(0x21, 0x7F) if b != 0x40)  # no userinfo ('@')
_SCHEME_OK = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."

_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_SPECIAL = _CONNECTION_SPECIFIC | {b"te", b"content-length", b"host"}
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
_REQUEST_PSEUDO_EXT = _REQUEST_PSEUDO | {b":protocol"}
_RESPONSE_PSEUDO = frozenset((b":status",))
_NO_PSEUDO: frozenset[bytes] = frozenset()


def _bad(reason: str) -> MalformedHeadersError:
    return MalformedHeadersError(reason)


def _scan(
    headers: Sequence[tuple[bytes, bytes]], allowed: frozenset[bytes]
) -> tuple[dict[bytes, bytes], int | None, bytes | None]:
    """Check every field, naming the first offence; return (pseudo-headers, content-length, host)."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    content_length: int | None = None
    host: bytes | None = None
    for name, value in headers:
        if value.translate(None, _VALUE_OK):
            raise _bad(f"CR, LF or NUL in the value of {name!r}")
        stripped = value.strip(b" \t")  # the very object when nothing goes (exact bytes)
        if stripped is not value and stripped != value:
            raise _bad(f"leading or trailing whitespace in the value of {name!r}")
        if name[:1] == b":":
            if regular:
                raise _bad(f"pseudo-header {name!r} after a regular header")
            if name not in allowed:
                raise _bad(f"pseudo-header {name!r} not allowed here")
            if name in pseudo:
                raise _bad(f"duplicate pseudo-header {name!r}")
            pseudo[name] = value
            continue
        regular = True
        if not name or name.translate(None, _LOWER_TOKEN):
            raise _bad(f"invalid header name {name!r} (empty, upper case, whitespace or separator)")
        if name in _SPECIAL:
            if name in _CONNECTION_SPECIFIC:
                raise _bad(f"connection-specific header {name.decode()!r}")
            if name == b"te":
                if value.lower() != b"trailers":
                    raise _bad("te other than 'trailers'")
            elif name == b"content-length":
                if content_length is not None:
                    raise _bad("more than one content-length")
                if not (value.isascii() and value.isdigit()) or len(value) > 19:
                    raise _bad("content-length is not a number")
                content_length = int(value)
            else:  # host
                if host is not None:
                    raise _bad("more than one host")
                host = value
    return pseudo, content_length, host


def check_request(
    headers: Sequence[tuple[bytes, bytes]], *, connect_protocol: bool
) -> tuple[bytes, int | None]:
    """Validate a request head; return (method, content-length or None)."""
    pseudo, content_length, host = _scan(
        headers, _REQUEST_PSEUDO_EXT if connect_protocol else _REQUEST_PSEUDO
    )
    method = pseudo.get(b":method")
    if not method or method.translate(None, _TOKEN):
        raise _bad("missing or invalid :method")
    authority = pseudo.get(b":authority")
    if authority is not None and (not authority or authority.translate(None, _AUTHORITY_OK)):
        raise _bad("invalid :authority")
    scheme = pseudo.get(b":scheme")
    path = pseudo.get(b":path")
    protocol = pseudo.get(b":protocol")
    if method == b"CONNECT" and protocol is None:
        if authority is None or scheme is not None or path is not None:
            raise _bad("CONNECT needs :authority and no :scheme or :path")
        return method, content_length
    if protocol is not None:
        if method != b"CONNECT" or not protocol or protocol.translate(None, _TOKEN):
            raise _bad(":protocol only with an extended CONNECT")
        if authority is None:
            raise _bad("extended CONNECT needs :authority")
    if not scheme or scheme.translate(None, _SCHEME_OK):
        raise _bad("missing or invalid :scheme")
    if not path or path.translate(None, _PATH_OK):
        raise _bad("missing, empty or invalid :path")
    if path[0] != 0x2F and not (path == b"*" and method == b"OPTIONS"):
        raise _bad(":path must start with '/' (or be '*' for OPTIONS)")
    if authority is None:
        if host is None:
            raise _bad("neither :authority nor host")
    elif host is not None and host.lower() != authority.lower():
        raise _bad("host differs from :authority")
    return method, content_length


def check_response(headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, int | None]:
    """Validate a response head; return (status, content-length)."""
    pseudo, content_length, _ = _scan(headers, _RESPONSE_PSEUDO)
    status = pseudo.get(b":status")
    if status is None or len(status) != 3 or not status.isdigit() or status[0] == 0x30:
        raise _bad("missing or invalid :status")
    code = int(status)
    if code == 101:
        raise _bad("101 is not allowed in HTTP/2")
    return code, content_length


def check_trailers(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Validate a trailer block (no pseudo-headers, same field rules)."""
    _scan(headers, _NO_PSEUDO)
