"""The sliding window (two-window weighted counter) in Redis."""

from __future__ import annotations

import asyncio
import math

import redis
from ratelimit_testlib import make_doc, open_limiter, redis_time_s

from gateway.ratelimit.limiter import key_digest, redis_keys


def test_admits_the_quota_in_a_window(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(5, "1h"), (50, "1d")], algorithm="sliding-window")
            decisions = [await limiter.check(doc, "k") for _ in range(7)]
            assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
            assert [d.states[0].remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
            assert decisions[4].states[1].remaining == 45
            denied = decisions[5]
            assert denied.source == "redis" and denied.retry_after_s >= 1
            assert denied.states[1].remaining == 45  # the day window was not charged
            key0, key1 = redis_keys(limiter.key_prefix, key_digest("api", "k"), ["s0", "s1"])
            with redis.Redis.from_url(redis_url, decode_responses=True) as r:
                state = r.hgetall(key0)
                assert state["c"] == "5" and state["p"] == "0"
                assert state["w"] == "0"  # windows start at the key's first request ...
                assert abs(float(state["a"]) / 1e6 - redis_time_s(redis_url)) < 5  # ... anchored here
                assert r.hget(key1, "c") == "5"
                assert 3600_000 < r.pttl(key0) <= 2 * 3600_000  # gone two windows after the last write
                assert r.pttl(key1) > 86400_000

    asyncio.run(main())


def test_previous_window_is_weighted_by_its_overlap(redis_url: str) -> None:
    """100 requests in the previous hour, none in this one: at fraction f of this hour the window
    still holds 100 * (1 - f) of them, so floor(100 * f) more fit."""

    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(100, "1h")], algorithm="sliding-window")
            (key,) = redis_keys(limiter.key_prefix, key_digest("api", "k"), ["s0"])
            now = redis_time_s(redis_url)
            fraction = 0.3  # the key's second window is 30% through
            with redis.Redis.from_url(redis_url) as r:
                anchor_us = int((now - 3600 - fraction * 3600) * 1e6)
                r.hset(key, mapping={"a": anchor_us, "w": 0, "c": 100, "p": 0})
                r.pexpire(key, 60_000)
            admitted = 0
            for _ in range(101):  # bounded: at most the quota
                decision = await limiter.check(doc, "k")
                if not decision.allowed:
                    break
                admitted += 1
            expected = math.floor(100 * fraction)
            assert expected - 1 <= admitted <= expected + 1, (admitted, fraction)
            assert decision.retry_after_s >= 1
            # retry_after: when 100 * (1 - f') + admitted + 1 <= 100
            wait_s = (1 - (100 - admitted - 1) / 100) * 3600 - fraction * 3600
            assert abs(decision.retry_after_s - wait_s) <= 2

    asyncio.run(main())


def test_short_window_frees_up_after_two_windows(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(3, "200ms")], algorithm="sliding-window")
            first = [(await limiter.check(doc, "k")).allowed for _ in range(4)]
            assert first.count(True) >= 3  # a window boundary in between may free more
            await asyncio.sleep(0.45)  # two windows later nothing is remembered
            again = [(await limiter.check(doc, "k")).allowed for _ in range(3)]
            assert again == [True] * 3

    asyncio.run(main())
