"""API keys (an ``AuthProvider`` of type ``apiKey``): hashed keys in the policy file and/or in Redis.

The key is read from ``settings.header``, else from the query parameter ``settings.query_param``
(when set; first value). Its hex SHA-256 is looked up among ``settings.keys``, then, when
``redis_prefix`` is set, at ``GET <redis_prefix><sha256hex>`` whose value is the key's name.
Redis answers are cached in memory: found for 30 s, not found for 5 s, in a bounded dict. A Redis
failure is a refusal (``api key store unavailable``), never an exception.

The name of the matching entry is the principal. The key header is removed from the upstream
request: backends get the principal, not the credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING

from gateway.auth.base import EdgeRequest, Identity, Verdict
from shared.config.model.edge import ApiKeySettings

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger("meshgate.gateway.auth.apikey")

MAX_KEY_LENGTH = 4096
POSITIVE_TTL = 30.0
NEGATIVE_TTL = 5.0
CACHE_MAX_ENTRIES = 10_000
REDIS_TIMEOUT = 1.0
_MAX_QUERY_FIELDS = 200


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key`` (UTF-8): what operators put in policy files and Redis keys."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeyAuthenticator:
    """Looks API keys up by their SHA-256.

    The lookup is a dict lookup keyed by the hash rather than a constant-time comparison of the
    key: the hash is not secret (it is what the policy file stores), and what a timing difference
    could reveal is at most how much of the *hash* of the guessed key matches a stored hash, which
    does not help find a key that hashes to it (SHA-256 is preimage resistant). The key itself is
    never compared. A Redis client passed in belongs to the caller and is not closed here.
    """

    def __init__(
        self, name: str, settings: ApiKeySettings, *, redis: redis.asyncio.Redis | None = None
    ) -> None:
        self.name = name
        self.owned_headers: frozenset[str] = frozenset()
        self.settings = settings
        self._redis = redis
        self._static: dict[str, str] = {}
        for entry in settings.keys:
            if entry.sha256 in self._static:
                log.warning(
                    "API key provider %s: key %s listed twice; %s wins",
                    name,
                    entry.name,
                    self._static[entry.sha256],
                )
                continue
            self._static[entry.sha256] = entry.name
        self._cache: dict[str, tuple[float, str | None]] = {}  # sha256 -> (expires, name or None)
        self.stats: dict[str, int] = {"redis_lookups": 0, "redis_errors": 0, "cache_hits": 0}
        if settings.redis_prefix is not None and redis is None:
            log.warning(
                "API key provider %s: redisPrefix set but no Redis client; only listed keys work", name
            )

    async def authenticate(self, request: EdgeRequest) -> Verdict:
        key = self._key(request)
        if key is None:
            return Verdict.absent()
        if len(key) > MAX_KEY_LENGTH:
            return Verdict.reject("api key too long")
        try:
            digest = hash_key(key)
        except UnicodeEncodeError:
            return Verdict.reject("malformed api key")
        name = self._static.get(digest)
        prefix = self.settings.redis_prefix
        if name is None and prefix is not None:
            if self._redis is None:
                return Verdict.reject("api key store unavailable")
            try:
                name = await self._lookup_redis(self._redis, prefix, digest)
            except Exception as exc:  # Redis down, timeout, protocol error: refuse, keep serving
                self.stats["redis_errors"] += 1
                log.warning("API key provider %s: Redis lookup failed: %s", self.name, _describe(exc))
                return Verdict.reject("api key store unavailable")
        if name is None:
            return Verdict.reject("unknown api key")
        return Verdict.accept(
            Identity(
                principal=name,
                provider=self.name,
                claims={"api_key_name": name},
                remove_headers=(self.settings.header,),
                # a key that came in the query does not go on to the service (or its logs)
                remove_query=(self.settings.query_param,) if self.settings.query_param else (),
            )
        )

    async def close(self) -> None:
        self._cache.clear()

    def _key(self, request: EdgeRequest) -> str | None:
        value = request.header(self.settings.header)
        if value is not None and value.strip():
            return value.strip()
        param = self.settings.query_param
        if param is None or not request.query:
            return None
        try:
            values = urllib.parse.parse_qs(request.query, max_num_fields=_MAX_QUERY_FIELDS).get(param)
        except ValueError:
            return None
        if not values or not values[0]:
            return None
        return values[0]

    async def _lookup_redis(self, client: redis.asyncio.Redis, prefix: str, digest: str) -> str | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached[0] > now:
                self.stats["cache_hits"] += 1
                return cached[1]
            del self._cache[digest]
        self.stats["redis_lookups"] += 1
        async with asyncio.timeout(REDIS_TIMEOUT):
            raw = await client.get(prefix + digest)
        name: str | None
        if raw is None:
            name = None
        elif isinstance(raw, bytes):
            name = raw.decode("utf-8", errors="replace")
        else:
            name = str(raw)
        if name is not None and not name:
            name = None
        self._remember(digest, name, now)
        return name

    def _remember(self, digest: str, name: str | None, now: float) -> None:
        # Full: drop the oldest entries (dicts keep insertion order), expired or not.
        while self._cache and len(self._cache) >= CACHE_MAX_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = (now + (POSITIVE_TTL if name is not None else NEGATIVE_TTL), name)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
