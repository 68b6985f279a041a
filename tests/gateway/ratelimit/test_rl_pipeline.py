"""Concurrent checks made in one loop tick go to Redis as one pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ratelimit_testlib import make_doc, open_limiter
from redis.asyncio.connection import AbstractConnection


@pytest.fixture
def executes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the round trips independently of the limiter, at redis-py's socket writes: the EVALSHA
    commands in every ``send_packed_command``."""
    seen: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        parts = [command] if isinstance(command, bytes | str) else list(command)
        evalshas = sum(bytes(part).count(b"EVALSHA") for part in parts if isinstance(part, bytes))
        if evalshas:  # not the CLIENT SETINFO of a new connection
            seen.append(evalshas)
        await original(self, parts, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return seen


def test_200_concurrent_checks_take_one_round_trip(redis_url: str, executes: list[int]) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(150, "1h")])
            await limiter.check(doc, "warmup")  # connection and script
            executes.clear()
            trips = limiter.stats["round_trips"]
            decisions = await asyncio.gather(*(limiter.check(doc, "hot") for _ in range(200)))
            assert sum(d.allowed for d in decisions) == 150  # still exact
            assert all(d.source == "redis" for d in decisions)
            assert executes == [200]  # one pipeline of 200 EVALSHA
            assert limiter.stats["round_trips"] - trips == 1

    asyncio.run(main())


def test_batches_are_capped(redis_url: str, executes: list[int]) -> None:
    async def main() -> None:
        async with open_limiter(redis_url, max_batch=64) as limiter:
            doc = make_doc([(1000, "1h")])
            await limiter.check(doc, "warmup")
            executes.clear()
            decisions = await asyncio.gather(*(limiter.check(doc, f"k{i % 7}") for i in range(200)))
            assert all(d.allowed for d in decisions)
            assert sorted(executes) == [8, 64, 64, 64]

    asyncio.run(main())


def test_sequential_checks_are_not_delayed(redis_url: str, executes: list[int]) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(1000, "1h")])
            await limiter.check(doc, "warmup")
            executes.clear()
            for _ in range(5):
                assert (await limiter.check(doc, "k")).allowed
            assert executes == [1] * 5

    asyncio.run(main())
