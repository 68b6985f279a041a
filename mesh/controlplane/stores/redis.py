"""The shared store: Redis, so that several control-plane replicas serve one registry.

All keys share one hash tag (``{meshgate}``), so the store also works on Redis Cluster. Changes are
announced on a pub/sub channel; other replicas wake their watchers from it within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mesh.controlplane.records import InstanceRecord, TokenRecord, hash_secret
from mesh.controlplane.stores.base import Store, StoreError, TokenProblem
from shared.urls import redacted

log = logging.getLogger("meshgate.controlplane.store")

# Checks a token and consumes it if single-use, atomically. Returns a status and the record.
_TAKE_TOKEN = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'unknown', ''} end
local rec = cjson.decode(raw)
if rec['secret_sha256'] ~= ARGV[1] then return {'bad-secret', ''} end
if tonumber(rec['expires_at']) <= tonumber(ARGV[2]) then return {'expired', ''} end
if rec['reusable'] then return {'ok', raw} end
if rec['used_at'] ~= cjson.null and rec['used_at'] ~= nil then return {'used', ''} end
rec['used_at'] = tonumber(ARGV[2])
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return {'ok', raw}
"""


class RedisStore(Store):
    """State in Redis at ``url``; any number of replicas may share it."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "meshgate:{meshgate}:") -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self._redis: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        #: Tags this process's change announcements, so that it does not reload what it just wrote.
        self.replica_id = secrets.token_hex(6)

    def _key(self, name: str) -> str:
        return self.prefix + name

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreError("store is not open")
        return self._redis

    async def open(self) -> None:
        try:
            self._redis = aioredis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
            await self._redis.ping()
        except (RedisError, OSError, ValueError) as exc:
            raise StoreError(f"cannot reach Redis store {redacted(self.url)}: {exc}") from exc
        self._take = self._redis.register_script(_TAKE_TOKEN)
        self._listener = asyncio.create_task(self._listen(), name="redis-store-listener")

    async def _listen(self) -> None:
        """Relay other replicas' change announcements; reconnect with backoff when Redis is away."""
        delay = 0.1
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._key("events"))
                delay = 0.1
                self._last_error = None
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        with contextlib.suppress(ValueError):
                            sender, _, index = bytes(message["data"]).decode().partition(" ")
                            if sender != self.replica_id:  # our own changes are applied already
                                self._notify(int(index))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._last_error = str(exc)
                log.warning("redis store subscription lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def index(self) -> int:
        value = await self.redis.get(self._key("index"))
        return int(value or 0)

    async def bump_index(self) -> int:
        index = int(await self.redis.incr(self._key("index")))
        await self.redis.publish(self._key("events"), f"{self.replica_id} {index}")
        return index

    async def put_instance(self, record: InstanceRecord) -> None:
        await self.redis.hset(self._key("instances"), record.id, record.to_json())

    async def delete_instance(self, instance_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self._key("instances"), instance_id)
        pipe.hdel(self._key("heartbeats"), instance_id)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def list_instances(self) -> list[InstanceRecord]:
        raw = await self.redis.hgetall(self._key("instances"))
        return [InstanceRecord.from_json(v) for v in raw.values()]

    async def heartbeat(self, instance_id: str, now: float) -> None:
        await self.redis.hset(self._key("heartbeats"), instance_id, repr(now))

    async def heartbeats(self) -> dict[str, float]:
        raw = await self.redis.hgetall(self._key("heartbeats"))
        return {(k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in raw.items()}

    async def put_token(self, record: TokenRecord) -> None:
        ttl = max(1, int(record.expires_at - record.created_at) + 86400)  # keep a day to say "expired"
        await self.redis.set(self._key(f"token:{record.id}"), record.to_json(), ex=ttl)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        raw = await self.redis.get(self._key(f"token:{token_id}"))
        return TokenRecord.from_json(raw) if raw else None

    async def take_token(
        self, token_id: str, secret: str, now: float
    ) -> tuple[TokenRecord | None, TokenProblem | None]:
        status, raw = await self._take(
            keys=[self._key(f"token:{token_id}")], args=[hash_secret(secret), repr(now)]
        )
        status = status.decode() if isinstance(status, bytes) else str(status)
        problems: dict[str, TokenProblem] = {
            "unknown": "unknown",
            "expired": "expired",
            "used": "used",
            "bad-secret": "bad-secret",
        }
        if status != "ok":
            return None, problems.get(status, "unknown")
        return TokenRecord.from_json(raw), None

    async def get_blob(self, name: str) -> bytes | None:
        value = await self.redis.get(self._key(f"blob:{name}"))
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    async def put_blob(self, name: str, data: bytes, *, only_if_absent: bool = False) -> bool:
        done = await self.redis.set(self._key(f"blob:{name}"), data, nx=only_if_absent)
        return bool(done)

    async def describe(self) -> dict[str, Any]:
        try:
            await self.redis.ping()
            ok = True
        except (RedisError, OSError, StoreError) as exc:
            ok = False
            self._last_error = str(exc)
        location = redacted(self.url)  # workloads may read status: never the store's password
        return {"kind": self.kind, "location": location, "reachable": ok, "lastError": self._last_error}
