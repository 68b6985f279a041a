"""Control-plane fixes from the ninth session's review: the store's password never shown, a non-ASCII
bearer token is a plain 401."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request

from mesh.controlplane.auth import authenticate
from mesh.controlplane.stores.redis import RedisStore


def test_the_redis_stores_password_is_never_in_its_description() -> None:
    """/v1/status (which workloads may read) showed the --store URL with its password, and that
    password opens the CA's private key in Redis."""

    async def go() -> dict[str, object]:
        store = RedisStore("redis://:s3cr3t-pass@127.0.0.1:1/0")  # nothing listens on port 1
        try:
            await store.open()
        except Exception as exc:
            assert "s3cr3t" not in str(exc)
        return await store.describe()

    described = asyncio.run(go())
    assert "s3cr3t" not in json.dumps(described)
    assert described["location"] == "redis://***@127.0.0.1:1/0"


def test_a_non_ascii_bearer_token_is_no_caller_not_a_crash() -> None:
    scope = {
        "type": "http",
        "headers": [(b"authorization", "Bearer tök€n".encode())],
        "state": {},
    }
    assert authenticate(Request(scope), "td.test", "the-admin-token") is None
