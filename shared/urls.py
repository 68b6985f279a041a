"""URL helpers shared by the control plane and the gateway."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redacted(url: str) -> str:
    """``url`` with any user name and password replaced by ``***``, for status pages and errors
    (``redis://:secret@host:6379/0`` -> ``redis://***@host:6379/0``). A URL that cannot be parsed is
    hidden whole."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    address = host or ""
    if ":" in address:  # IPv6
        address = f"[{address}]"
    if port is not None:
        address += f":{port}"
    return urlunsplit(parts._replace(netloc=f"***@{address}"))
