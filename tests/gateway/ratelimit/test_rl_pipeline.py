"""Concurrent checks made in one loop tick go to Redis as one pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ratelimit_testlib import make_doc, open_limiter
from redis.asyncio.client import Pipeline


@pytest.fixture
def executes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the round trips independently of the limiter: the commands of every Pipeline.execute."""
    seen: list[int] = []
    original = Pipeline.execute

    async def counting(self: Pipeline, raise_on_error: bool = True) -> Any:
        seen.append(len(self.command_stack))
        return await original(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", counting)
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
