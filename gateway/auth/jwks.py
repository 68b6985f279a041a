"""A JSON Web Key Set fetched over HTTP(S), cached, refreshed in the background.

Only signature keys the JWT authenticator can use are kept: RSA (2048 bits or more) for RS*/PS*,
EC P-256 for ES256, EC P-384 for ES384, OKP Ed25519 for EdDSA. Keys with ``use`` other than
``sig``, ``key_ops`` without ``verify``, other key types or curves, symmetric (``oct``) keys and keys
whose ``alg`` names an algorithm that does not fit the key are skipped. A key that carries private
material (``d``) is skipped too: tokens signed with a published private key prove nothing.

A fetch that fails keeps the keys already held: connection errors and timeouts, a status other than
200, a body over 1 MiB or not a JSON object with a ``keys`` list, a supported key with malformed
material (bad base64, a point not on its curve), or a set with no usable key at all. A new set
replaces the old one whole, so keys removed by the issuer stop verifying after the next fetch.

An unknown ``kid`` triggers a refetch, at most one per ``min_refetch_interval`` (counted from the
start of the last fetch of any kind), so tokens with made-up key ids cannot make the gateway hammer
the issuer. Concurrent lookups wait for the fetch in flight instead of starting their own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

log = logging.getLogger("meshgate.gateway.auth.jwks")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

MAX_JWKS_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: Mapping[str, tuple[type[ec.EllipticCurve], int, str]] = {
    "P-256": (ec.SECP256R1, 32, "ES256"),
    "P-384": (ec.SECP384R1, 48, "ES384"),
}
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class JwksError(ValueError):
    """The key set document cannot be used (the keys held before are kept)."""


@dataclass(frozen=True)
class JwkKey:
    """One usable verification key and the algorithms it may verify."""

    kid: str | None
    key: PublicKey
    algorithms: frozenset[str]


def b64url_decode(value: object, what: str) -> bytes:
    """Strict base64url (padding optional, nothing outside the alphabet)."""
    if not isinstance(value, str) or not value or _B64URL.fullmatch(value) is None:
        raise JwksError(f"{what}: not base64url")
    stripped = value.rstrip("=")
    if len(stripped) % 4 == 1:
        raise JwksError(f"{what}: not base64url")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JwksError(f"{what}: not base64url") from exc


def _int(value: object, what: str) -> int:
    return int.from_bytes(b64url_decode(value, what), "big")


def parse_jwk(jwk: Mapping[str, Any]) -> JwkKey | None:
    """One JWK: a usable key, None when it is of a kind we skip, JwksError when it is malformed."""
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError("kid is not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    kty = jwk.get("kty")
    key: PublicKey
    if kty == "RSA":
        try:
            key = rsa.RSAPublicNumbers(_int(jwk.get("e"), "RSA e"), _int(jwk.get("n"), "RSA n")).public_key()
        except ValueError as exc:
            raise JwksError(f"bad RSA key {kid!r}") from exc
        if key.key_size < MIN_RSA_BITS:
            log.warning(
                "JWKS key %r: RSA key of %d bits skipped (minimum %d)", kid, key.key_size, MIN_RSA_BITS
            )
            return None
        fits = RSA_ALGORITHMS
    elif kty == "EC":
        curve = _EC_CURVES.get(str(jwk.get("crv")))
        if curve is None:
            return None
        curve_type, size, alg = curve
        x, y = b64url_decode(jwk.get("x"), "EC x"), b64url_decode(jwk.get("y"), "EC y")
        if len(x) != size or len(y) != size:
            raise JwksError(f"bad EC key {kid!r}: coordinate length")
        try:
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve_type()
            )
            key = numbers.public_key()
        except ValueError as exc:
            raise JwksError(f"bad EC key {kid!r}: point not on curve") from exc
        fits = frozenset({alg})
    elif kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            return None
        x = b64url_decode(jwk.get("x"), "OKP x")
        if len(x) != 32:
            raise JwksError(f"bad Ed25519 key {kid!r}: length")
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(x)
        except ValueError as exc:
            raise JwksError(f"bad Ed25519 key {kid!r}") from exc
        fits = frozenset({"EdDSA"})
    else:
        return None
    if "d" in jwk:
        log.error("JWKS key %r carries private key material; skipped", kid)
        return None
    declared = jwk.get("alg")
    if declared is not None:
        fits = fits & {declared}
        if not fits:
            return None
    return JwkKey(kid=kid, key=key, algorithms=fits)


def parse_jwks(body: bytes) -> list[JwkKey]:
    """A whole key set; JwksError when it cannot be used (see the module docstring)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise JwksError("not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError("not a JWK set (no keys list)")
    keys: list[JwkKey] = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            raise JwksError("a key is not a JSON object")
        parsed = parse_jwk(jwk)
        if parsed is not None:
            keys.append(parsed)
    if not keys:
        raise JwksError("no usable signature key")
    return keys


class StaticJwks:
    """Keys given inline in the policy (``jwt.jwks``): parsed once, never fetched; an unusable set
    is logged and verifies nothing. Same interface as :class:`JwksCache`."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self.uri = "inline"
        self.stats: dict[str, int] = {"fetches": 0, "fetch_errors": 0, "refetches_on_unknown_kid": 0}
        try:
            self._keys = parse_jwks(json.dumps(jwks).encode())
        except JwksError as exc:
            log.error("inline JWKS: %s; no token can be verified", exc)
            self.stats["fetch_errors"] += 1
            self._keys = []
        self.started = True

    @property
    def keys(self) -> list[JwkKey]:
        """The keys (a copy)."""
        return list(self._keys)

    async def start(self) -> None:
        """Nothing to fetch."""

    async def key(self, kid: str | None, alg: str) -> PublicKey | None:
        """The key for ``kid`` that may verify ``alg``, or None."""
        for k in self._keys:
            if (kid is None or k.kid == kid) and alg in k.algorithms:
                if kid is None and sum(alg in x.algorithms for x in self._keys) != 1:
                    return None
                return k.key
        return None

    async def close(self) -> None:
        """Nothing to close."""


class JwksCache:
    """The keys of one JWKS URL. ``stats``: ``fetches`` (attempts of any kind), ``fetch_errors``,
    ``refetches_on_unknown_kid``. A client passed in is not closed by :meth:`close`."""

    def __init__(
        self,
        uri: str,
        *,
        refresh_interval: float,
        min_refetch_interval: float = 10.0,
        timeout: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.uri = uri
        self.refresh_interval = max(refresh_interval, 0.05)
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self._client = client
        self._own_client = client is None
        self._keys: list[JwkKey] = []
        self._lock = asyncio.Lock()
        self._last_attempt: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.stats: dict[str, int] = {"fetches": 0, "fetch_errors": 0, "refetches_on_unknown_kid": 0}

    @property
    def started(self) -> bool:
        return self._started

    @property
    def keys(self) -> list[JwkKey]:
        """The keys held now (a copy)."""
        return list(self._keys)

    async def start(self) -> None:
        """First fetch (a failure is logged, not raised), then refresh every ``refresh_interval``."""
        if self._started or self._closed:
            return
        self._started = True
        async with self._lock:
            ok = await self._fetch()
        self._task = asyncio.create_task(self._refresh_loop(ok), name=f"jwks-refresh {self.uri}")

    async def key(self, kid: str | None, alg: str) -> PublicKey | None:
        """The key for ``kid`` that may verify ``alg``, or None. An unknown kid (or, for a token
        without kid, no single fitting key) triggers one rate-limited refetch."""
        found, known = self._lookup(kid, alg)
        if found is not None or known:
            return found
        if not self._lock.locked() and not self._refetch_allowed():
            return None
        async with self._lock:
            found, known = self._lookup(kid, alg)  # a fetch may have finished while we waited
            if found is not None or known or not self._refetch_allowed() or self._closed:
                return found
            self.stats["refetches_on_unknown_kid"] += 1
            await self._fetch()
            return self._lookup(kid, alg)[0]

    async def close(self) -> None:
        """Stop the refresh task and close the client (when it is ours)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _lookup(self, kid: str | None, alg: str) -> tuple[PublicKey | None, bool]:
        """(key, kid known): a known kid whose keys do not fit ``alg`` is no reason to refetch."""
        if kid is None:
            fitting = [k for k in self._keys if alg in k.algorithms]
            return (fitting[0].key if len(fitting) == 1 else None), False
        known = False
        for k in self._keys:
            if k.kid == kid:
                known = True
                if alg in k.algorithms:
                    return k.key, True
        return None, known

    def _refetch_allowed(self) -> bool:
        return self._last_attempt is None or (
            time.monotonic() - self._last_attempt >= self.min_refetch_interval
        )

    async def _refresh_loop(self, last_ok: bool) -> None:
        while True:
            # After a failure try again sooner (but not faster than on-demand refetches may).
            delay = (
                self.refresh_interval
                if last_ok
                else min(self.refresh_interval, max(self.min_refetch_interval, 5.0))
            )
            await asyncio.sleep(delay)
            async with self._lock:
                last_ok = await self._fetch()

    async def _fetch(self) -> bool:
        """One fetch (the lock is held); True when the new set was taken."""
        self.stats["fetches"] += 1
        self._last_attempt = time.monotonic()
        try:
            body = await self._get()
            keys = parse_jwks(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure keeps the old keys; the gateway keeps serving
            self.stats["fetch_errors"] += 1
            log.warning(
                "JWKS %s: fetch failed (%s); keeping %d key(s)", self.uri, _describe(exc), len(self._keys)
            )
            return False
        self._keys = keys
        log.debug("JWKS %s: %d key(s)", self.uri, len(keys))
        return True

    async def _get(self) -> bytes:
        if self._client is None:
            if self._closed:
                raise JwksError("closed")
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        async with asyncio.timeout(self.timeout):
            async with self._client.stream(
                "GET", self.uri, headers={"accept": "application/json"}, timeout=self.timeout
            ) as response:
                if response.status_code != 200:
                    raise JwksError(f"status {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError("body over 1 MiB")
                return bytes(body)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, JwksError) else text
