"""Key layout (Cluster hash tags, no raw keys in Redis) and bad input."""

from __future__ import annotations

import asyncio
import re

import pytest
import redis
from ratelimit_testlib import make_doc, open_limiter
from redis.crc import key_slot

from gateway.ratelimit.limiter import RateLimiter

NASTY = [
    "line\nbreak\r\n",
    "unicode ☃ ünïcødé 🚀 \u202e",
    "lone surrogate \ud800",
    "{braces}:and*globs?[x]",
    "",
    "x" * 1_000_000,
]


def test_keys_share_one_hash_tag_and_hide_the_raw_key(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            gcra = make_doc([(5, "1s"), (100, "1d"), (1000, "30d")], name="three")
            sliding = make_doc([(5, "1s"), (100, "1d")], name="window", algorithm="sliding-window")
            for key in ("alice@example.com", "10.0.0.1|route=orders"):
                assert (await limiter.check(gcra, key)).allowed
                assert (await limiter.check(sliding, key)).allowed
            prefix = limiter.key_prefix
            with redis.Redis.from_url(redis_url) as r:
                names = [k.decode() for k in r.scan_iter(match=f"{prefix}*", count=1000)]
        assert len(names) == 2 * 3 + 2 * 2
        pattern = re.compile(rf"^{re.escape(prefix)}\{{([0-9a-f]{{32}})\}}:([gs])(\d)$")
        by_tag: dict[str, set[str]] = {}
        for name in names:
            match = pattern.match(name)
            assert match, name
            by_tag.setdefault(match.group(1), set()).add(match.group(2) + match.group(3))
            assert "alice" not in name and "10.0.0.1" not in name
        assert sorted(sorted(v) for v in by_tag.values()) == [
            ["g0", "g1", "g2"],
            ["g0", "g1", "g2"],
            ["s0", "s1"],
            ["s0", "s1"],
        ]
        for tag in by_tag:  # one Redis Cluster slot per decision
            assert len({key_slot(n.encode()) for n in names if f"{{{tag}}}" in n}) == 1

    asyncio.run(main())


def test_nasty_keys_work_and_stay_apart(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(2, "10s")])
            for key in NASTY:
                results = [await limiter.check(doc, key) for _ in range(3)]
                assert [r.allowed for r in results] == [True, True, False], repr(key[:40])
                assert results[2].source == "redis"
            with redis.Redis.from_url(redis_url) as r:
                names = list(r.scan_iter(match=f"{limiter.key_prefix}*", count=1000))
            assert len(names) == len(NASTY)
            assert all(len(name) < 100 for name in names)

    asyncio.run(main())


def test_cost_above_burst_is_denied_cleanly(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            for algorithm in ("gcra", "sliding-window"):
                doc = make_doc([(5, "10s")], name=f"c-{algorithm}", algorithm=algorithm)
                big = await limiter.check(doc, "k", cost=6)
                assert not big.allowed and big.source == "redis"
                assert big.retry_after_s >= 1
                assert big.states[0].remaining == 5  # nothing was charged
                assert any(name == "retry-after" for name, _ in big.headers())
                ok = await limiter.check(doc, "k", cost=5)  # not cached: a smaller cost still fits
                assert ok.allowed and ok.source == "redis" and ok.states[0].remaining == 0
                free = await limiter.check(doc, "k", cost=0)  # cost 0 charges nothing
                assert free.allowed

    asyncio.run(main())


def test_invalid_arguments() -> None:
    async def main() -> None:
        async with open_limiter(None) as limiter:
            with pytest.raises(ValueError):
                await limiter.check(make_doc(), "k", cost=-1)

    asyncio.run(main())
    with pytest.raises(ValueError):
        RateLimiter(None, key_prefix="mg:{rl}:")
    with pytest.raises(ValueError):
        RateLimiter(None, timeout=0)
