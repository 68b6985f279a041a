"""ApiKeyAuthenticator: keys from a header or the query, hashed keys in the policy file or in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from jwt_testlib import free_port, request, run

from gateway.auth import apikey
from gateway.auth.apikey import ApiKeyAuthenticator, hash_key
from gateway.auth.base import EdgeRequest, Verdict
from shared.config.model.edge import ApiKeyEntry, ApiKeySettings

ACME_KEY = "acme-secret-key-1"
GLOBEX_KEY = "globex-secret-key-2"


def static(**over: Any) -> ApiKeySettings:
    base: dict[str, Any] = {
        "keys": [
            ApiKeyEntry(name="acme", sha256=hash_key(ACME_KEY)),
            ApiKeyEntry(name="globex", sha256=hash_key(GLOBEX_KEY)),
        ]
    }
    base.update(over)
    return ApiKeySettings(**base)


def judge(settings: ApiKeySettings, *requests: EdgeRequest) -> list[Verdict]:
    async def main() -> list[Verdict]:
        auth = ApiKeyAuthenticator("partner-keys", settings)
        try:
            return [await auth.authenticate(r) for r in requests]
        finally:
            await auth.close()

    return run(main())


def test_hash_key_is_hex_sha256() -> None:
    assert hash_key("acme") == hashlib.sha256(b"acme").hexdigest()
    assert hash_key("clé") == hashlib.sha256("clé".encode()).hexdigest()
    assert len(hash_key("")) == 64


def test_keys_from_the_header() -> None:
    verdicts = judge(
        static(),
        request([("x-api-key", ACME_KEY)]),
        request([("x-api-key", f"  {GLOBEX_KEY} ")]),
        request([("x-api-key", "wrong")]),
        request([("x-api-key", ACME_KEY.upper())]),
        request(),
        request([("x-api-key", "")]),
        request([("authorization", f"Bearer {ACME_KEY}")]),
        request([("x-api-key", "k" * 5000)]),
    )
    acme = verdicts[0].identity
    assert acme is not None
    assert acme.principal == "acme" and acme.provider == "partner-keys"
    assert dict(acme.claims) == {"api_key_name": "acme"}
    assert list(acme.remove_headers) == ["x-api-key"]  # the credential does not go upstream
    assert verdicts[1].identity is not None and verdicts[1].identity.principal == "globex"
    assert verdicts[2] == Verdict.reject("unknown api key")
    assert verdicts[3] == Verdict.reject("unknown api key")
    assert verdicts[4] == Verdict.absent()
    assert verdicts[5] == Verdict.absent()
    assert verdicts[6] == Verdict.absent()
    assert verdicts[7] == Verdict.reject("api key too long")


def test_keys_from_the_query() -> None:
    settings = static(header="x-partner-key", query_param="api_key")
    verdicts = judge(
        settings,
        request(query=f"api_key={ACME_KEY}"),
        request(query=f"x=1&api_key={GLOBEX_KEY}&api_key={ACME_KEY}"),  # first value
        request(query="api_key=acme%2Dsecret%2Dkey%2D1"),  # percent-decoded
        request(query="api_key="),
        request(query="other=1"),
        request(query="api_key=nope"),
        request([("x-partner-key", GLOBEX_KEY)], query=f"api_key={ACME_KEY}"),  # the header wins
        request(query="&".join(f"f{i}=1" for i in range(500)) + f"&api_key={ACME_KEY}"),  # too many fields
    )
    assert verdicts[0].identity is not None and verdicts[0].identity.principal == "acme"
    assert verdicts[1].identity is not None and verdicts[1].identity.principal == "globex"
    assert verdicts[2].identity is not None and verdicts[2].identity.principal == "acme"
    assert verdicts[3] == Verdict.absent()
    assert verdicts[4] == Verdict.absent()
    assert verdicts[5] == Verdict.reject("unknown api key")
    assert verdicts[6].identity is not None and verdicts[6].identity.principal == "globex"
    assert verdicts[7] == Verdict.absent()
    # Without query_param the query is not looked at.
    assert judge(static(), request(query=f"api_key={ACME_KEY}")) == [Verdict.absent()]


def test_redis_prefix_without_a_client_refuses_unlisted_keys(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="meshgate.gateway.auth.apikey"):
        verdicts = judge(
            static(redis_prefix="apikeys:"),
            request([("x-api-key", ACME_KEY)]),
            request([("x-api-key", "in-redis-maybe")]),
        )
    assert verdicts[0].identity is not None
    assert verdicts[1] == Verdict.reject("api key store unavailable")
    assert "no Redis client" in caplog.text


# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` when set, else a private ``redis-server`` on a free port (stopped after)."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server and no REDIS_URL")
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.ping():
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        finally:
            client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def prefix() -> str:
    """A prefix of its own per test, so a shared REDIS_URL is safe."""
    return f"meshgate:test:apikeys:{uuid.uuid4().hex}:"


@contextlib.asynccontextmanager
async def redis_client(url: str, *, decode: bool = False) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, decode_responses=decode
    )
    try:
        yield client
    finally:
        await client.aclose()


def key_request(key: str) -> EdgeRequest:
    return request([("x-api-key", key)])


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "str"])
def test_keys_stored_in_redis(redis_url: str, prefix: str, decode: bool) -> None:
    async def main() -> None:
        async with redis_client(redis_url, decode=decode) as client:
            await client.set(prefix + hash_key("redis-key-1"), "initech")
            auth = ApiKeyAuthenticator("partner-keys", static(redis_prefix=prefix), redis=client)
            try:
                verdict = await auth.authenticate(key_request("redis-key-1"))
                assert verdict.identity is not None, verdict.reason
                assert verdict.identity.principal == "initech"
                assert dict(verdict.identity.claims) == {"api_key_name": "initech"}
                # Listed keys do not need Redis.
                lookups = auth.stats["redis_lookups"]
                acme = await auth.authenticate(key_request(ACME_KEY))
                assert acme.identity is not None and acme.identity.principal == "acme"
                assert auth.stats["redis_lookups"] == lookups
                assert await auth.authenticate(key_request("unknown")) == Verdict.reject("unknown api key")
            finally:
                await auth.close()

    run(main())


def test_redis_answers_are_cached(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apikey, "POSITIVE_TTL", 0.4)
    monkeypatch.setattr(apikey, "NEGATIVE_TTL", 0.2)
    assert (apikey.POSITIVE_TTL, apikey.NEGATIVE_TTL) == (0.4, 0.2)

    async def main() -> None:
        async with redis_client(redis_url) as client:
            auth = ApiKeyAuthenticator("partner-keys", static(keys=[], redis_prefix=prefix), redis=client)
            try:
                good = key_request("cached-key")
                await client.set(prefix + hash_key("cached-key"), b"hooli")
                assert (await auth.authenticate(good)).identity is not None
                # Revoked in Redis: still accepted from the positive cache until it expires.
                await client.delete(prefix + hash_key("cached-key"))
                for _ in range(5):
                    assert (await auth.authenticate(good)).identity is not None
                assert auth.stats["redis_lookups"] == 1
                await asyncio.sleep(0.45)
                assert await auth.authenticate(good) == Verdict.reject("unknown api key")
                assert auth.stats["redis_lookups"] == 2
                # Negative answers are cached too (shorter).
                await client.set(prefix + hash_key("cached-key"), b"hooli")
                assert await auth.authenticate(good) == Verdict.reject("unknown api key")
                assert auth.stats["redis_lookups"] == 2
                await asyncio.sleep(0.25)
                assert (await auth.authenticate(good)).identity is not None
                assert auth.stats["redis_lookups"] == 3
            finally:
                await auth.close()

    run(main())


def test_the_cache_is_bounded(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apikey, "CACHE_MAX_ENTRIES", 5)

    async def main() -> None:
        async with redis_client(redis_url) as client:
            auth = ApiKeyAuthenticator("partner-keys", static(keys=[], redis_prefix=prefix), redis=client)
            try:
                for i in range(50):
                    verdict = await auth.authenticate(key_request(f"random-{i}"))
                    assert verdict == Verdict.reject("unknown api key")
                    assert len(auth._cache) <= 5
            finally:
                await auth.close()

    run(main())


def test_the_default_ttls() -> None:
    assert (apikey.POSITIVE_TTL, apikey.NEGATIVE_TTL) == (30.0, 5.0)


def test_redis_down_is_a_refusal_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[Verdict]:
        async with redis_client(f"redis://127.0.0.1:{free_port()}/0") as client:  # nothing listens
            auth = ApiKeyAuthenticator("partner-keys", static(redis_prefix="k:"), redis=client)
            try:
                return [
                    await auth.authenticate(key_request("whatever")),
                    await auth.authenticate(key_request(ACME_KEY)),
                ]
            finally:
                await auth.close()

    with caplog.at_level(logging.WARNING, logger="meshgate.gateway.auth.apikey"):
        verdicts = run(main())
    assert verdicts[0] == Verdict.reject("api key store unavailable")
    assert verdicts[1].identity is not None  # listed keys still work
    assert "Redis lookup failed" in caplog.text
    assert "whatever" not in caplog.text


def test_a_redis_that_never_answers_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apikey, "REDIS_TIMEOUT", 0.3)

    async def main() -> Verdict:
        connections: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await reader.read()  # read until the client gives up; never answer

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with redis_client(f"redis://127.0.0.1:{port}/0") as client:
                auth = ApiKeyAuthenticator("partner-keys", static(redis_prefix="k:"), redis=client)
                started = time.monotonic()
                verdict = await auth.authenticate(key_request("whatever"))
                assert time.monotonic() - started < 2.0
                await auth.close()
                return verdict
        finally:
            for writer in connections:
                writer.close()
            server.close()
            await server.wait_closed()

    assert run(main()) == Verdict.reject("api key store unavailable")
