"""EVALSHA with SCRIPT LOAD on NOSCRIPT (a restarted or flushed Redis forgets scripts)."""

from __future__ import annotations

import asyncio

from ratelimit_testlib import RedisServer, make_doc, open_limiter


def test_script_flush_then_decisions_still_work(own_redis: RedisServer) -> None:
    async def main() -> None:
        async with open_limiter(own_redis.url) as limiter:
            doc = make_doc([(3, "10s")])
            assert (await limiter.check(doc, "k")).allowed  # first use: NOSCRIPT, loaded
            loads = limiter.stats["noscript_reloads"]
            assert loads == 1
            assert (await limiter.check(doc, "k")).allowed
            assert limiter.stats["noscript_reloads"] == loads  # loaded once, EVALSHA from then on
            with own_redis.client() as r:
                r.script_flush()
                assert r.script_exists(limiter_sha()) == [False]
            third = await limiter.check(doc, "k")
            assert third.allowed and third.source == "redis"
            assert limiter.stats["noscript_reloads"] == loads + 1
            assert not (await limiter.check(doc, "k")).allowed  # state survived the flush
            assert limiter.stats["redis_errors"] == 0 and limiter.stats["fallback"] == 0

            with own_redis.client() as r:
                r.script_flush()
            batch = await asyncio.gather(*(limiter.check(doc, f"c{i}") for i in range(50)))
            assert all(d.allowed and d.source == "redis" for d in batch)
            assert limiter.stats["noscript_reloads"] == loads + 2  # one reload for the whole pipeline

    asyncio.run(main())


def limiter_sha() -> str:
    from gateway.ratelimit.script import SCRIPT_SHA

    return SCRIPT_SHA
