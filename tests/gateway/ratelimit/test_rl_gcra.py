"""GCRA in Redis: burst, refill, several limits in one atomic script, no charge when denied, expiry."""

from __future__ import annotations

import asyncio
import time

import redis
from ratelimit_testlib import make_doc, open_limiter

from gateway.ratelimit.limiter import RateLimiter, key_digest, redis_keys
from gateway.ratelimit.script import SCRIPT


def _keys(limiter: RateLimiter, doc_name: str, key: str, count: int, letter: str = "g") -> tuple[bytes, ...]:
    return redis_keys(limiter.key_prefix, key_digest(doc_name, key), [f"{letter}{i}" for i in range(count)])


def test_burst_is_admitted_then_denied_with_retry_after(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(5, "10s")])
            decisions = [await limiter.check(doc, "alice") for _ in range(7)]
            assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
            assert [d.states[0].remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
            assert all(d.source == "redis" for d in decisions[:6])
            denied = decisions[5]
            assert denied.retry_after_s == 2  # one request every 2 s
            assert denied.states[0].reset_s == 10  # the whole burst back in 10 s
            assert denied.states[0].quota == 5 and denied.states[0].window_s == 10
            assert all(d.retry_after_s == 0 for d in decisions[:5])
            other = await limiter.check(doc, "bob")  # keys are independent
            assert other.allowed and other.states[0].remaining == 4
            assert limiter.stats["decisions"] == 8 and limiter.stats["denied"] == 2

    asyncio.run(main())


def test_explicit_burst_above_rate(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(2, "1s", 6)])
            allowed = [(await limiter.check(doc, "k")).allowed for _ in range(8)]
            assert allowed == [True] * 6 + [False] * 2

    asyncio.run(main())


def test_refills_at_the_emission_interval(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as one, open_limiter(redis_url, key_prefix=one.key_prefix) as two:
            doc = make_doc([(10, "1s")])  # one every 100 ms
            assert all([(await one.check(doc, "k")).allowed for _ in range(10)])
            assert not (await one.check(doc, "k")).allowed
            await asyncio.sleep(0.13)
            # ``one`` now denies from its local cache until the Retry-After (1 s) it announced; Redis
            # (asked through ``two``, another replica) has refilled exactly one request
            assert (await one.check(doc, "k")).source == "local-cache"
            assert (await two.check(doc, "k")).allowed
            assert not (await two.check(doc, "k")).allowed

    asyncio.run(main())


def test_every_limit_must_admit_and_a_denial_charges_none(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(2, "200ms"), (3, "1d")])
            g0, g1 = _keys(limiter, doc.name, "k", 2)
            with redis.Redis.from_url(redis_url) as r:
                assert [(await limiter.check(doc, "k")).allowed for _ in range(2)] == [True, True]
                day_before = r.get(g1)
                denied = await limiter.check(doc, "k")  # the 200ms limit says no
                assert not denied.allowed and denied.source == "redis"
                assert denied.states[1].remaining == 1
                assert r.get(g1) == day_before  # the day limit was not charged
                await asyncio.sleep(0.25)
                third = await limiter.check(doc, "k")
                assert third.allowed and third.states[1].remaining == 0
                await asyncio.sleep(0.25)
                fast_before = r.get(g0)
                by_day = await limiter.check(doc, "k")  # now the day limit says no
                assert not by_day.allowed
                assert by_day.retry_after_s > 3600  # a third of a day
                assert by_day.states[0].remaining >= 1  # the 200ms limit had room ...
                assert r.get(g0) == fast_before  # ... and was not charged either

    asyncio.run(main())


def test_keys_expire_when_idle(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(5, "200ms"), (100, "1h")])
            await limiter.check(doc, "k")
            g0, g1 = _keys(limiter, doc.name, "k", 2)
            with redis.Redis.from_url(redis_url) as r:
                assert 0 < r.pttl(g0) <= 40  # TAT is one interval (40 ms) ahead
                assert 0 < r.pttl(g1) <= 36_000
                await asyncio.sleep(0.1)
                assert not r.exists(g0)  # nothing to remember any more

    asyncio.run(main())


def test_clock_is_redis_time_not_the_gateways() -> None:
    """The script reads TIME itself; the arguments sent carry no timestamp, so gateway clocks do not
    matter (two calls at different times send identical arguments)."""
    assert "redis.call('TIME')" in SCRIPT

    async def main() -> None:
        sent: list[tuple[tuple[bytes, ...], tuple[bytes, ...]]] = []
        async with open_limiter(None) as limiter:

            async def capture(calls):  # type: ignore[no-untyped-def]
                sent.extend(calls)
                return [[1, 0, 1, 0]] * len(calls)

            limiter._client = object()  # type: ignore[assignment]
            limiter._ok = True
            limiter._send = capture  # type: ignore[method-assign]
            doc = make_doc([(10, "1s")])
            await limiter.check(doc, "k")
            time.sleep(0.02)
            await limiter.check(doc, "k")
            limiter._client = None
        assert len(sent) == 2 and sent[0] == sent[1]
        assert sent[0][1] == (b"gcra", b"1", b"1000000", b"10", b"10")

    asyncio.run(main())


def test_two_limiters_share_one_state(redis_url: str) -> None:
    """Two gateway replicas (two limiters) on one Redis see one budget."""

    async def main() -> None:
        async with open_limiter(redis_url) as one, open_limiter(redis_url, key_prefix=one.key_prefix) as two:
            doc = make_doc([(4, "10s")])
            results = [await (one if i % 2 else two).check(doc, "shared") for i in range(6)]
            assert [r.allowed for r in results] == [True] * 4 + [False] * 2

    asyncio.run(main())
