"""The dashboard's login: the admin token once, then a signed session cookie.

The cookie holds an expiry time and an HMAC-SHA256 of it under a key derived from the admin token, so
changing the admin token ends every session. It is HttpOnly, Secure (the control plane serves HTTPS
only), SameSite=Strict and scoped to ``/ui``. The dashboard is read-only: no state-changing request
besides login and logout exists, so SameSite=Strict is the CSRF defence.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

COOKIE = "meshgate_ui"
_HEX64 = re.compile(r"[0-9a-f]{64}")
LIFETIME = 8 * 3600


def _key(admin_token: str) -> bytes:
    return hashlib.sha256(b"meshgate-ui-session\0" + admin_token.encode()).digest()


def token_matches(admin_token: str | None, offered: str) -> bool:
    """Constant-time comparison of the offered token with the admin token."""
    return admin_token is not None and hmac.compare_digest(admin_token.encode(), offered.strip().encode())


def new_session(admin_token: str, now: float | None = None, lifetime: int = LIFETIME) -> str:
    """A cookie value valid for ``lifetime`` seconds."""
    expires = int((time.time() if now is None else now) + lifetime)
    mac = hmac.new(_key(admin_token), str(expires).encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def session_valid(admin_token: str | None, value: str | None, now: float | None = None) -> bool:
    """True for an unexpired cookie signed under ``admin_token``."""
    if admin_token is None or not value or value.count(".") != 1:
        return False
    expires, mac = value.split(".")
    if not (expires.isascii() and expires.isdigit()) or not _HEX64.fullmatch(mac):
        return False
    wanted = hmac.new(_key(admin_token), expires.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(wanted.encode(), mac.encode()) and int(expires) > (
        time.time() if now is None else now
    )


def cookie_header(value: str, max_age: int = LIFETIME) -> str:
    """The ``Set-Cookie`` value for a session (``max_age`` 0 clears it)."""
    return f"{COOKIE}={value}; Max-Age={max_age}; Path=/ui; HttpOnly; Secure; SameSite=Strict"
