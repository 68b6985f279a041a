"""JWT bearer tokens verified against the issuer's JWKS (an ``AuthProvider`` of type ``jwt``).

What is checked, in order: the token is at most 16 KiB and three base64url segments; the header is
a JSON object without ``crit``; ``alg`` is not ``none`` nor HS* (never: with a public key as the
HMAC secret anyone could sign) and is one of ``settings.algorithms``; the JWKS holds a key for the
``kid`` whose type fits ``alg`` (RSA for RS*/PS*, EC P-256/P-384 for ES256/ES384, Ed25519 for
EdDSA); the signature (PyJWT, with that key object and that single algorithm); ``exp`` present and
``nbf``/``iat`` honoured with ``leeway``; ``iss`` equal to ``settings.issuer``; ``aud`` (string or
list) meeting ``settings.audiences`` when some are configured; a non-empty string principal claim.

Reject reasons are short fixed phrases, never token contents. Headers named in
``claims_to_headers`` whose claim is absent or unusable (CR, LF, NUL or another control character)
are listed in ``Identity.remove_headers``, so a client cannot supply them itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import jwt as pyjwt

from gateway.auth.base import EdgeRequest, Identity, Verdict
from gateway.auth.jwks import JwksCache, StaticJwks
from shared.config.model.edge import JwtSettings

log = logging.getLogger("meshgate.gateway.auth.jwt")

MAX_TOKEN_BYTES = 16 * 1024
MIN_REFRESH_INTERVAL = 1.0  # a refreshInterval of 0s must not hammer the issuer
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # empty signature: alg none
_UNSAFE_HEADER_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (pyjwt.ExpiredSignatureError, "token expired"),
    (pyjwt.ImmatureSignatureError, "token not yet valid"),
    (pyjwt.InvalidIssuerError, "wrong issuer"),
    (pyjwt.InvalidAudienceError, "wrong audience"),
    (pyjwt.InvalidSignatureError, "bad signature"),
    (pyjwt.InvalidAlgorithmError, "algorithm not allowed"),
    (pyjwt.InvalidKeyError, "unusable signing key"),
    (pyjwt.InvalidIssuedAtError, "bad iat claim"),
    (pyjwt.DecodeError, "malformed token"),
)


class JwtAuthenticator:
    """Verifies JWTs from ``settings.header``. A JWKS cache passed in is shared: it is started here
    when needed but closed by its owner; one made here is closed by :meth:`close`."""

    def __init__(self, name: str, settings: JwtSettings, *, jwks: JwksCache | None = None) -> None:
        self.name = name
        self.owned_headers = frozenset(m.header.lower() for m in settings.claims_to_headers)
        self.settings = settings
        self._own_jwks = jwks is None
        self.jwks: JwksCache | StaticJwks
        if jwks is not None:
            self.jwks = jwks
        elif settings.jwks is not None:
            self.jwks = StaticJwks(settings.jwks)
        else:
            self.jwks = JwksCache(
                settings.jwks_uri or "",
                refresh_interval=max(settings.refresh_interval.total_seconds(), MIN_REFRESH_INTERVAL),
            )
        self._algorithms = frozenset(settings.algorithms) - HMAC_ALGORITHMS
        self._leeway = settings.leeway.total_seconds()

    async def authenticate(self, request: EdgeRequest) -> Verdict:
        token = self._token(request)
        if token is None:
            return Verdict.absent()
        if not token:
            return Verdict.reject("empty bearer token")
        try:
            return await self._verify(token)
        except Exception:  # a bug or library surprise is a refusal, never a crash of the request
            log.exception("JWT provider %s: unexpected error while verifying a token", self.name)
            return Verdict.reject("invalid token")

    async def close(self) -> None:
        if self._own_jwks:
            await self.jwks.close()

    def _token(self, request: EdgeRequest) -> str | None:
        """The token; None when there is none of ours, "" for an empty bearer token."""
        value = request.header(self.settings.header)
        if value is None:
            return None
        value = value.strip()
        if self.settings.header != "authorization":
            return value or None
        if not value:
            return None  # "Authorization:" with nothing: no credentials of ours (was a 500)
        scheme, *rest = value.split(None, 1)
        if scheme.lower() != "bearer":
            return None  # Basic, DPoP, ...: another provider's credentials
        return rest[0].strip() if rest else ""

    async def _verify(self, token: str) -> Verdict:
        if len(token) > MAX_TOKEN_BYTES:
            return Verdict.reject("token too large")
        if token.count(".") != 2 or _TOKEN.fullmatch(token) is None:
            return Verdict.reject("malformed token")
        header = _decode_header(token.partition(".")[0])
        if header is None:
            return Verdict.reject("malformed token header")
        if "crit" in header:
            return Verdict.reject("unsupported critical header")
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            return Verdict.reject("missing alg")
        if alg.lower() == "none":
            return Verdict.reject("unsigned token refused")
        if alg.upper() in HMAC_ALGORITHMS:
            return Verdict.reject("HMAC algorithms refused")
        if alg not in self._algorithms:
            return Verdict.reject("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return Verdict.reject("malformed kid")
        if not self.jwks.started:
            await self.jwks.start()
        key = await self.jwks.key(kid, alg)
        if key is None:
            return Verdict.reject("unknown signing key")
        audiences = self.settings.audiences
        try:
            claims = pyjwt.decode(
                token,
                key=key,
                algorithms=[alg],
                options={
                    "require": ["exp", "iss"],
                    "verify_aud": bool(audiences),
                    "enforce_minimum_key_length": True,
                },
                issuer=self.settings.issuer,
                audience=audiences or None,
                leeway=self._leeway,
            )
        except pyjwt.MissingRequiredClaimError as exc:
            return Verdict.reject(
                f"missing {exc.claim} claim" if exc.claim in ("exp", "iss", "aud") else "missing claim"
            )
        except pyjwt.InvalidTokenError as exc:
            return Verdict.reject(_reason(exc))
        if claims.get("iss") != self.settings.issuer:  # PyJWT checks it too; cheap insurance
            return Verdict.reject("wrong issuer")
        principal = claims.get(self.settings.principal_claim)
        if not isinstance(principal, str) or not principal:
            return Verdict.reject("missing principal claim")
        upstream, remove = self._claim_headers(claims)
        return Verdict.accept(
            Identity(
                principal=principal,
                provider=self.name,
                claims=claims,
                upstream_headers=upstream,
                remove_headers=remove,
            )
        )

    def _claim_headers(self, claims: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
        upstream: list[tuple[str, str]] = []
        remove: list[str] = []
        for mapping in self.settings.claims_to_headers:
            value = header_value(claims.get(mapping.claim))
            if value is None:
                remove.append(mapping.header)
                continue
            if _UNSAFE_HEADER_CHARS.search(value):
                log.warning(
                    "JWT provider %s: claim %s has control characters; header %s not set",
                    self.name,
                    mapping.claim,
                    mapping.header,
                )
                remove.append(mapping.header)
                continue
            upstream.append((mapping.header, value))
        return upstream, remove


def header_value(value: Any) -> str | None:
    """A claim as a header value: strings as they are, lists joined by ",", None when absent."""
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(_scalar(item) for item in value)
    return _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _decode_header(segment: str) -> dict[str, Any] | None:
    if len(segment) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _reason(exc: pyjwt.InvalidTokenError) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"
