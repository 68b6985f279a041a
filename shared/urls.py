"""URL helpers shared by the control plane and the gateway."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_WORDS = ("pass", "secret", "token", "key")


def redacted(url: str) -> str:
    """``url`` with any user name and password replaced by ``***``, for status pages and errors
    (``redis://:secret@host:6379/0`` -> ``redis://***@host:6379/0``), and the values of query
    parameters that name a secret (``?password=``, ``ssl_password``, ...: redis-py reads them too).
    A URL that cannot be parsed is hidden whole."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "***"
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(word in name.lower() for name, _ in pairs for word in _SECRET_WORDS):
            hidden = [(n, "***" if any(w in n.lower() for w in _SECRET_WORDS) else v) for n, v in pairs]
            # by text: urlunsplit drops the empty authority of unix:///path
            url = url.replace("?" + parts.query, "?" + urlencode(hidden, safe="*"), 1)
            parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    address = host or ""
    if ":" in address:  # IPv6
        address = f"[{address}]"
    if port is not None:
        address += f":{port}"
    return urlunsplit(parts._replace(netloc=f"***@{address}"))
