"""Path normalization before matching, so no encoding trick slips past a deny rule.

Decodes percent-escapes once (``%2F`` included), turns ``\\`` into ``/``, merges repeated slashes and
resolves ``.`` and ``..`` segments (clamped at the root, as RFC 3986 section 5.2.4). The class of
Istio's CVE-2021-31920 (``/admin%2F..``, ``//admin``, ``/./admin``) is closed by matching the result.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SUSPECT = re.compile(r"[%\\\x00-\x1f\x7f]|//|/\.")
#: After one decoding pass these would be read differently by a second one (double encoding such as
#: ``%2561`` -> ``%61`` -> ``a``, or an encoded ``?``/``#`` that becomes a query or fragment).
_AMBIGUOUS = re.compile(r"%[0-9A-Fa-f]{2}|[?#]")


def normalize_path(raw: str) -> str | None:
    """The canonical form of a request path, without query or fragment; None if it cannot be trusted.

    None means: not origin-form, invalid UTF-8 after decoding, control characters, or text that a
    second decoding would change (double percent-encoding, encoded ``?`` or ``#``). Callers deny
    such requests. The result is a fixed point: ``normalize_path(result) == result``.
    """
    path = raw
    if "?" in path:
        path = path[: path.index("?")]
    if "#" in path:
        path = path[: path.index("#")]
    if not path.startswith("/"):
        return None
    if _SUSPECT.search(path) is None:
        return path
    if "%" in path:
        try:
            path = unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _AMBIGUOUS.search(path):
            return None
    if _CONTROL.search(path):
        return None
    path = path.replace("\\", "/")
    segments: list[str] = []
    parts = path.split("/")
    for part in parts[1:]:
        if part in ("", "."):
            continue
        if part == "..":
            if segments:
                segments.pop()
            continue
        segments.append(part)
    last = parts[-1]
    trailing = last in ("", ".", "..")
    if not segments:
        return "/"
    return "/" + "/".join(segments) + ("/" if trailing else "")
