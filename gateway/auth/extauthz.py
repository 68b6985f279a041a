"""External authorization over HTTP, Envoy's ext_authz HTTP contract (existing auth services work as-is).

The check request
    The client's method; path = the URL's own path (if any) + ``pathPrefix`` + the client's path,
    plus ``?query`` when there is one (dot segments are resolved by the HTTP client, RFC 3986).
    Headers: ``host`` (the client's Host as sent), ``authorization``, the ``allowedRequestHeaders`` the
    client sent (all values, in order) and, only when a body is sent, ``content-length``. Nothing else: no
    cookies unless allowed, no user agent, no ``accept``. Framing and hop-by-hop headers are never
    forwarded, even when listed. The body only with ``includeBody``: the gateway reads it first
    (``needs_body``); over ``maxBodyBytes`` the client gets 413 and the service is not asked.

The answer
    - 200 allows. Headers in ``allowedUpstreamHeaders`` are set on the upstream request (overwriting)
      and are also the identity's claims; ``x-envoy-auth-headers-to-remove`` (comma separated) names
      headers to remove (never ``host`` or pseudo headers). The principal is the response's
      ``x-meshgate-principal`` header when present (Meshgate's extension: the service names the
      caller), else ``ext-authz:<provider name>``.
    - Any other status below 500 denies: the status and the body (at most 64 KiB) go to the client
      with ``content-type``, ``www-authenticate``, ``location`` (as Envoy adds them) and the
      ``allowedClientHeaders``.
    - A 5xx, a transport error or no full answer within ``timeout`` (0 = no limit) is a failure: 403
      with ``x-meshgate-error: ext_authz_failed``, or with ``failureModeAllow`` the request goes on
      as ``anonymous`` carrying ``x-meshgate-ext-authz-failed: true``. Failures are never cached.

The decision cache (``cache:``)
    Keyed by the SHA-256 of provider name, method, host, path and query, the values of every header
    the check request carries (``authorization`` and the ``allowedRequestHeaders``) plus any other
    ``keyHeaders``, and, with ``includeBody``, the body. So a cached answer is only reused for a
    request the service would have seen the same way (a key of ``authorization`` alone let a cookie
    session's allow answer a request without the cookie).
    Allows live ``ttl``, denials ``denyTtl``; concurrent identical requests share one check.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.cookiejar
import logging
import time
import types
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import cast

import httpx

from gateway.auth.base import Denial, EdgeRequest, Headers, Identity, Verdict
from gateway.auth.decisioncache import DecisionCache, SingleFlight, digest_key
from shared.config.model.edge import ExtAuthzSettings

log = logging.getLogger(__name__)

PRINCIPAL_HEADER = "x-meshgate-principal"
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
FAILED_MARK = ("x-meshgate-ext-authz-failed", "true")
MAX_RELAYED_BODY = 64 * 1024

# Never copied to the check request, upstream or client, whatever the lists say: they frame or
# route a message and belong to each hop.
_HOP = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "http2-settings",
    }
)
_ALWAYS_TO_CLIENT = ("content-type", "www-authenticate", "location")
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_TEXT = ("content-type", "text/plain; charset=utf-8")


def no_cookie_jar() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing (auth services' Set-Cookie is relayed, never stored)."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


async def read_capped(response: httpx.Response, cap: int) -> bytes:
    """At most ``cap`` bytes of the (streamed) body, as sent; the rest is not read."""
    chunks: list[bytes] = []
    size = 0
    raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())  # it is one; typed as an iterator
    async with contextlib.aclosing(raw) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            size += len(chunk)
            if size >= cap:
                break
    return b"".join(chunks)[:cap]


class ExtAuthzAuthenticator:
    """One ``extAuthz`` AuthProvider; see the module docstring for the contract."""

    def __init__(
        self,
        name: str,
        settings: ExtAuthzSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self.needs_body: bool = settings.include_body
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
        base = httpx.URL(settings.url)
        self._base = base
        self._base_path = base.raw_path.split(b"?", 1)[0].decode("ascii").rstrip("/")
        self._request_headers = frozenset(settings.allowed_request_headers) - _HOP
        # the cache key: every header the service sees, then any other keyHeaders (see the docstring)
        seen = ["authorization", *sorted(self._request_headers - {"authorization"})]
        extra = settings.cache.key_headers if settings.cache is not None else []
        self._key_headers = tuple(dict.fromkeys([*seen, *extra]))
        self._upstream_headers = frozenset(settings.allowed_upstream_headers) - _HOP
        self.owned_headers = self._upstream_headers
        self._client_headers = (frozenset(settings.allowed_client_headers) | set(_ALWAYS_TO_CLIENT)) - _HOP
        self.cache: DecisionCache | None = None
        if settings.cache is not None:
            self.cache = DecisionCache(
                ttl=settings.cache.ttl.total_seconds(),
                deny_ttl=settings.cache.deny_ttl.total_seconds(),
                max_entries=settings.cache.max_entries,
                clock=clock,
            )
        self._flights = SingleFlight()
        self.checks = 0  # check requests sent (for metrics and tests)

    async def authenticate(self, request: EdgeRequest) -> Verdict:
        body = (request.body or b"") if self.needs_body else b""
        if len(body) > self.settings.max_body_bytes:
            return Verdict.deny(
                Denial(413, (_TEXT, ("x-meshgate-error", "body_too_large")), b"request body too large\n"),
                f"body of {len(body)} bytes is over ext_authz maxBodyBytes {self.settings.max_body_bytes}",
            )
        if self.cache is None:
            verdict, _ = await self._check(request, body)
            return verdict
        key = self._cache_key(request, body)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        return await self._flights.run(key, lambda: self._check_and_store(key, request, body))

    async def close(self) -> None:
        await self._flights.close()
        if self._own_client:
            await self._client.aclose()

    # ----- internals ------------------------------------------------------------------------------

    def _cache_key(self, request: EdgeRequest, body: bytes) -> str:
        assert self.settings.cache is not None
        host = request.header("x-forwarded-host") or request.host  # the Host the service is sent
        parts = [self.name, request.method, host, request.path, request.query]
        for name in self._key_headers:
            values = [value for key, value in request.headers if key == name]
            parts.append(f"{name}:{len(values)}")
            parts.extend(values)
        if self.needs_body:
            parts.append(hashlib.sha256(body).hexdigest())
        return digest_key(parts)

    async def _check_and_store(self, key: str, request: EdgeRequest, body: bytes) -> Verdict:
        verdict, cacheable = await self._check(request, body)
        if cacheable and self.cache is not None:
            self.cache.put(key, verdict)
        return verdict

    def _check_request(self, request: EdgeRequest, body: bytes) -> httpx.Request:
        prefix = self._base_path + urllib.parse.quote(self.settings.path_prefix, _PATH_SAFE)
        target = prefix + urllib.parse.quote(request.path, _PATH_SAFE)
        if request.query:
            target += "?" + urllib.parse.quote(request.query, _QUERY_SAFE)
        # the client's Host as it sent it (the gateway keeps it in x-forwarded-host), as Envoy sends
        # :authority; the normalized host only when that is missing
        host = request.header("x-forwarded-host") or request.host or self._base.netloc.decode("ascii")
        headers: Headers = [("host", host)]
        for name, value in request.headers:
            if name == "authorization" or name in self._request_headers:
                headers.append((name, value))
        if body:
            headers.append(("content-length", str(len(body))))
        check = httpx.Request(
            request.method,
            self._base.copy_with(raw_path=target.encode("ascii")),
            headers=headers,
            content=body,
            extensions={"timeout": self._timeouts},
        )
        # httpx adds "content-length: 0" to a bodiless POST/PUT/PATCH; the contract sends none.
        if not body and "content-length" in check.headers:
            del check.headers["content-length"]
        return check

    async def _check(self, request: EdgeRequest, body: bytes) -> tuple[Verdict, bool]:
        """The verdict, and whether it may be cached (not after a failure)."""
        try:
            check = self._check_request(request, body)
            self.checks += 1
            async with asyncio.timeout(self._deadline):
                response = await self._client.send(check, stream=True, auth=None, follow_redirects=False)
                try:
                    content = await read_capped(response, MAX_RELAYED_BODY)
                finally:
                    await response.aclose()
        except Exception as exc:  # transport errors, timeouts, bad input: all are failures
            detail = "timed out" if isinstance(exc, TimeoutError | httpx.TimeoutException) else repr(exc)
            return self._failure(f"ext_authz check failed: {detail}"), False
        status = response.status_code
        if status >= 500:
            return self._failure(f"ext_authz service answered {status}"), False
        items = response.headers.multi_items()
        if status == 200:
            return Verdict.accept(self._identity(items)), True
        relayed = tuple((k, v) for k, v in items if k in self._client_headers)  # shared when cached
        return Verdict.deny(Denial(status, relayed, content), f"ext_authz denied ({status})"), True

    def _identity(self, items: Sequence[tuple[str, str]]) -> Identity:
        upstream = [(k, v) for k, v in items if k in self._upstream_headers]
        remove: list[str] = []
        principal = ""
        for key, value in items:
            if key == REMOVE_HEADER:
                for part in value.split(","):
                    header = part.strip().lower()
                    if header and header != "host" and not header.startswith(":") and header not in remove:
                        remove.append(header)
            elif key == PRINCIPAL_HEADER and not principal:
                principal = value.strip()
        claims: dict[str, str] = {}
        for key, value in upstream:
            claims[key] = f"{claims[key]}, {value}" if key in claims else value
        return Identity(
            principal=principal or f"ext-authz:{self.name}",
            provider=self.name,
            claims=types.MappingProxyType(claims),
            upstream_headers=tuple(upstream),
            remove_headers=tuple(remove),
        )

    def _failure(self, reason: str) -> Verdict:
        if self.settings.failure_mode_allow:
            log.warning("%s (provider %s); failureModeAllow lets the request through", reason, self.name)
            return Verdict.accept(
                Identity(principal="anonymous", provider=self.name, upstream_headers=(FAILED_MARK,))
            )
        log.warning("%s (provider %s); denying with 403", reason, self.name)
        return Verdict.deny(
            Denial(403, (_TEXT, ("x-meshgate-error", "ext_authz_failed")), b"authorization unavailable\n"),
            reason,
        )
