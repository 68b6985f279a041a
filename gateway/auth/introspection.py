"""OAuth 2.0 token introspection (RFC 7662) for opaque bearer tokens, with a cache.

- The token is the ``Authorization: Bearer <token>`` credential; no bearer credential means absent
  (the next provider is asked), an empty or malformed one is rejected.
- The gateway POSTs ``token=<token>&token_type_hint=access_token`` (form) to ``url`` with HTTP Basic
  ``clientId:secret``; the secret comes from the environment variable ``clientSecretEnv`` (empty when
  unset), both form-encoded first as RFC 6749 section 2.3.1 asks.
- ``"active": true`` accepts: the principal is ``sub``, else ``username``, else ``client_id``; the
  claims are the whole response. ``"active": false`` (or anything else) rejects, as does an active
  answer whose ``exp`` has passed or that names nobody.
- Answers are cached by the SHA-256 of the token for ``cacheTtl``, an accept never past its ``exp``.
  A failure (transport error, timeout, a status other than 200, a body that is not a JSON object)
  rejects with "introspection unavailable" and is not cached. Concurrent lookups of one token share
  one call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from gateway.auth.base import EdgeRequest, Identity, Verdict
from gateway.auth.decisioncache import DecisionCache, SingleFlight
from gateway.auth.extauthz import no_cookie_jar, read_capped
from shared.config.model.edge import IntrospectionSettings

log = logging.getLogger(__name__)

UNAVAILABLE = "introspection unavailable"
MAX_RESPONSE = 1024 * 1024


def bearer_token(request: EdgeRequest) -> str | None:
    """The bearer token ("" when malformed), or None when there is no bearer credential."""
    value = request.header("authorization")
    if value is None:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = rest.strip()
    if not token or any(ch.isspace() for ch in token):
        return ""
    return token


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class IntrospectionAuthenticator:
    """One ``introspection`` AuthProvider; see the module docstring."""

    def __init__(
        self,
        name: str,
        settings: IntrospectionSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_entries: int = 10_000,
    ) -> None:
        self.name = name
        self.owned_headers: frozenset[str] = frozenset()
        self.settings = settings
        seconds = settings.timeout.total_seconds()
        self._deadline: float | None = seconds if seconds > 0 else None
        self._timeouts = httpx.Timeout(self._deadline).as_dict()
        self._own_client = client is None
        self._client = (
            client
            if client is not None
            else httpx.AsyncClient(
                trust_env=False, follow_redirects=False, timeout=self._deadline, cookies=no_cookie_jar()
            )
        )
        self._url = httpx.URL(settings.url)
        secret = os.environ.get(settings.client_secret_env, "") if settings.client_secret_env else ""
        pair = f"{urllib.parse.quote_plus(settings.client_id)}:{urllib.parse.quote_plus(secret)}"
        self._basic = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        ttl = settings.cache_ttl.total_seconds()
        self.cache = DecisionCache(ttl=ttl, deny_ttl=ttl, max_entries=max_entries, clock=clock)
        self._wall_clock = wall_clock
        self._flights = SingleFlight()
        self.calls = 0  # introspection requests sent (for metrics and tests)

    async def authenticate(self, request: EdgeRequest) -> Verdict:
        token = bearer_token(request)
        if token is None:
            return Verdict.absent()
        if not token:
            return Verdict.reject("malformed bearer token")
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        return await self._flights.run(key, lambda: self._introspect_and_store(key, token))

    async def close(self) -> None:
        await self._flights.close()
        if self._own_client:
            await self._client.aclose()

    # ----- internals ------------------------------------------------------------------------------

    async def _introspect_and_store(self, key: str, token: str) -> Verdict:
        answer = await self._introspect(token)
        if answer is None:
            return Verdict.reject(UNAVAILABLE)
        verdict, ttl = self._judge(answer)
        self.cache.put(key, verdict, ttl=ttl)
        return verdict

    async def _introspect(self, token: str) -> Mapping[str, Any] | None:
        """The introspection response, or None when there is no usable one (logged)."""
        form = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}).encode("ascii")
        try:
            request = httpx.Request(
                "POST",
                self._url,
                headers=[
                    ("authorization", self._basic),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("accept", "application/json"),
                ],
                content=form,
                extensions={"timeout": self._timeouts},
            )
            self.calls += 1
            async with asyncio.timeout(self._deadline):
                response = await self._client.send(request, stream=True, auth=None, follow_redirects=False)
                try:
                    content = await read_capped(response, MAX_RESPONSE + 1)
                finally:
                    await response.aclose()
        except Exception as exc:  # transport errors and timeouts
            detail = "timed out" if isinstance(exc, TimeoutError | httpx.TimeoutException) else repr(exc)
            log.warning("introspection for provider %s failed: %s", self.name, detail)
            return None
        if response.status_code != 200:
            log.warning("introspection for provider %s answered %d", self.name, response.status_code)
            return None
        try:
            if (
                len(content) > MAX_RESPONSE
                or response.headers.get("content-encoding", "identity") != "identity"
            ):
                raise ValueError("response too large or encoded")
            data = json.loads(content)
        except ValueError as exc:
            log.warning("introspection for provider %s: unusable response (%s)", self.name, exc)
            return None
        if not isinstance(data, dict):
            log.warning("introspection for provider %s: response is not a JSON object", self.name)
            return None
        return data

    def _judge(self, answer: Mapping[str, Any]) -> tuple[Verdict, float | None]:
        """The verdict on an introspection response and, for an accept, its cache lifetime."""
        if answer.get("active") is not True:
            return Verdict.reject("token inactive"), None
        ttl = self.cache.ttl
        exp = _number(answer.get("exp"))
        if exp is not None:
            left = exp - self._wall_clock()
            if left <= 0:
                return Verdict.reject("token expired"), None
            ttl = min(ttl, left)
        principal = next(
            (
                value
                for value in (answer.get("sub"), answer.get("username"), answer.get("client_id"))
                if isinstance(value, str) and value
            ),
            None,
        )
        if principal is None:
            return Verdict.reject("introspection response names no subject"), None
        identity = Identity(
            principal=principal, provider=self.name, claims=types.MappingProxyType(dict(answer))
        )
        return Verdict.accept(identity), ttl
