"""A RateLimit changed live under the same name (an operator raising ``100 per 1h`` to ``100 per 1s``):
the GCRA state written under the old limit is read under the new one. A key is at most one full burst
in debt under the current limit, so it is admitted again within the new window, not after the old one.

Each limiter below stands for another gateway replica (none has the others' local denial cache)."""

from __future__ import annotations

import asyncio

from ratelimit_testlib import make_doc, open_limiter


def test_gcra_key_recovers_within_the_new_window_after_a_raise(redis_url: str) -> None:
    async def main() -> None:
        async with (
            open_limiter(redis_url) as one,
            open_limiter(redis_url, key_prefix=one.key_prefix) as two,
            open_limiter(redis_url, key_prefix=one.key_prefix) as three,
        ):
            old, new = make_doc([(100, "1h")], name="change"), make_doc([(100, "1s")], name="change")
            assert all([(await one.check(old, "k")).allowed for _ in range(100)])
            exhausted = await one.check(old, "k")
            assert not exhausted.allowed and exhausted.retry_after_s == 36

            first = await two.check(new, "k")  # the first decision under the new limit
            assert not first.allowed and first.source == "redis"
            assert first.retry_after_s == 1, first.headers()  # one emission interval (10 ms), not 3598 s
            assert first.states[0].remaining == 0 and first.states[0].reset_s <= 1

            await asyncio.sleep(1.1)  # one new window: the whole new burst is back
            again = await asyncio.gather(*(three.check(new, "k") for _ in range(100)))  # one pipeline
            assert all(d.allowed for d in again)
            assert again[0].states[0].remaining == 99

    asyncio.run(main())


def test_gcra_key_is_admitted_at_the_new_rate_right_after_a_raise(redis_url: str) -> None:
    async def main() -> None:
        async with (
            open_limiter(redis_url) as one,
            open_limiter(redis_url, key_prefix=one.key_prefix) as two,
            open_limiter(redis_url, key_prefix=one.key_prefix) as three,
        ):
            old, new = make_doc([(100, "1h")], name="change"), make_doc([(100, "1s")], name="change")
            assert all([(await one.check(old, "k")).allowed for _ in range(100)])
            assert not (await two.check(new, "k")).allowed  # a full burst in debt, no more
            await asyncio.sleep(0.05)  # five emission intervals of the new limit
            after = await three.check(new, "k")
            assert after.allowed, after.headers()
            assert after.states[0].reset_s <= 1

    asyncio.run(main())


def test_one_gateways_local_state_starts_afresh_after_a_change(redis_url: str) -> None:
    """The same gateway that denied a key under the old limit asks Redis again under the new one (its
    cache of denied keys held the old Retry-After), and its allow-local buckets start afresh."""

    async def main() -> None:
        async with open_limiter(redis_url) as one:
            old, new = make_doc([(2, "1h")], name="change"), make_doc([(100, "1s")], name="change")
            assert [(await one.check(old, "k")).allowed for _ in range(3)] == [True, True, False]
            assert (await one.check(old, "k")).source == "local-cache"
            first = await one.check(new, "k")
            assert first.source == "redis" and first.retry_after_s <= 1, first
            await asyncio.sleep(1.05)  # that denial is held at most until the new limit's reset
            assert (await one.check(new, "k")).allowed
        async with open_limiter(None) as local:  # no Redis: allow-local buckets
            old, new = make_doc([(1, "1h")], name="change"), make_doc([(5, "1s")], name="change")
            assert [(await local.check(old, "k")).allowed for _ in range(2)] == [True, False]
            assert (await local.check(new, "k")).allowed

    asyncio.run(main())
