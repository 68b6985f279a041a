"""The local cache of keys over their limit: denials from memory, without a Redis round trip."""

from __future__ import annotations

import asyncio

from ratelimit_testlib import make_doc, open_limiter

from gateway.ratelimit.limiter import LimitState, _hold_us


def test_denied_key_is_answered_from_memory_until_its_retry_time(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(10, "200ms")])  # one every 20 ms, all 10 back 200 ms after the last
            for _ in range(10):
                assert (await limiter.check(doc, "k")).allowed
            first = await limiter.check(doc, "k")
            assert not first.allowed and first.source == "redis"
            trips = limiter.stats["round_trips"]
            for _ in range(20):
                cached = await limiter.check(doc, "k")
                assert not cached.allowed and cached.source == "local-cache"
                assert cached.retry_after_s == 1 and cached.states[0].remaining == 0
                assert dict(cached.headers())["retry-after"] == "1"
            assert limiter.stats["round_trips"] == trips  # not one round trip
            assert limiter.stats["local_cache_hits"] == 20
            assert limiter.stats["denied"] == 21
            other = await limiter.check(doc, "other")  # other keys still go to Redis
            assert other.allowed and other.source == "redis"
            other_doc = make_doc([(10, "1s")], name="other-doc")  # same key, other document
            assert (await limiter.check(other_doc, "k")).source == "redis"
            await asyncio.sleep(0.25)  # the limit is fully available again: the cache lets go
            again = await limiter.check(doc, "k")
            assert again.allowed and again.source == "redis" and again.states[0].remaining >= 8

    asyncio.run(main())


def test_a_smaller_cost_is_not_denied_from_memory(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(10, "10s")])
            assert (await limiter.check(doc, "k", cost=8)).allowed
            big = await limiter.check(doc, "k", cost=5)
            assert not big.allowed and big.source == "redis"
            assert (await limiter.check(doc, "k", cost=6)).source == "local-cache"
            small = await limiter.check(doc, "k", cost=2)
            assert small.allowed and small.source == "redis"

    asyncio.run(main())


def test_cache_is_bounded_and_evicts_the_oldest(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url, local_cache_max=3) as limiter:
            doc = make_doc([(1, "1h")])
            for i in range(5):
                assert (await limiter.check(doc, f"k{i}")).allowed
                assert (await limiter.check(doc, f"k{i}")).source == "redis"  # denied, cached
            assert len(limiter._denied) == 3
            trips = limiter.stats["round_trips"]
            for i in (2, 3, 4):
                assert (await limiter.check(doc, f"k{i}")).source == "local-cache"
            assert limiter.stats["round_trips"] == trips
            evicted = await limiter.check(doc, "k0")
            assert not evicted.allowed and evicted.source == "redis"
            assert limiter.stats["round_trips"] == trips + 1

    asyncio.run(main())


def test_cache_holds_until_the_announced_retry_after(redis_url: str) -> None:
    """Retry-After is whole seconds: the cache denies until then (one round trip per second for a key
    that ignores it), as long as that is not past the limit's full reset."""

    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(10, "10s")])  # exact retry after a denial: 1 s; full reset: 10 s
            for _ in range(10):
                assert (await limiter.check(doc, "k")).allowed
            assert (await limiter.check(doc, "k")).source == "redis"
            await asyncio.sleep(0.3)
            held = await limiter.check(doc, "k")
            assert held.source == "local-cache" and held.retry_after_s == 1

    asyncio.run(main())


def test_cache_does_not_throttle_a_fast_subsecond_limit(redis_url: str) -> None:
    """20 per 100ms is 200/s: holding a denied key for a whole second would admit 20/s. The cache lets
    go when the limit is fully available again (100 ms), so the rate is kept."""

    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(20, "100ms")])
            admitted = 0
            loop = asyncio.get_running_loop()
            started = loop.time()
            while loop.time() - started < 0.5:  # bounded in time (and so in count)
                admitted += (await limiter.check(doc, "k")).allowed
                await asyncio.sleep(0)
            assert 80 <= admitted <= 125, admitted  # 20 + 200/s * 0.5 s = 120; held 1 s it would be 20
            assert limiter.stats["local_cache_hits"] > 0

    asyncio.run(main())


def test_hold_rule() -> None:
    deny = LimitState("a", 10, 10, 0, 10)
    room = LimitState("b", 1000, 86400, 500, 3600)
    s = 1_000_000
    assert _hold_us(10_000, 1, [deny], [10 * s], 1) == 1 * s  # until Retry-After
    assert _hold_us(2_000, 1, [deny], [100_000], 1) == 100_000  # not past the full reset
    assert _hold_us(1_500_000, 2, [deny, room], [3 * s, 3600 * s], 1) == 2 * s  # only denying limits
    assert _hold_us(300_000, 1, [room], [3600 * s], 1) == 300_000  # none looks denying: exact retry
