"""Failure modes: Redis absent, killed, unresponsive; recovery without restart; one log per transition."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from ratelimit_testlib import LOGGER, RedisServer, free_port, make_doc, open_limiter

from gateway.ratelimit.limiter import RateDecision, RateLimiter
from shared.config.model.edge import RateLimit

SOURCES = {"allow": "fallback-allow", "deny": "fallback-deny", "allow-local": "fallback-local"}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def _follows_mode(mode: str, decisions: list[RateDecision], burst: int) -> None:
    assert {d.source for d in decisions} == {SOURCES[mode]}
    if mode == "allow":
        assert all(d.allowed and d.retry_after_s == 0 for d in decisions)
    elif mode == "deny":
        assert not any(d.allowed for d in decisions)
        assert all(d.retry_after_s == 1 for d in decisions)
        assert all(dict(d.headers())["retry-after"] == "1" for d in decisions)
    else:  # the same limits, in this process
        assert [d.allowed for d in decisions] == [True] * burst + [False] * (len(decisions) - burst)
        assert all(d.retry_after_s >= 1 for d in decisions[burst:])


async def _until_redis(limiter: RateLimiter, doc: RateLimit, key: str, within: float) -> float:
    """Check until a decision comes from Redis again; return how long it took (bounded)."""
    started = time.monotonic()
    while True:
        decision = await limiter.check(doc, key)
        if decision.source == "redis":
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"still {decision.source} after {within}s"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["allow", "deny", "allow-local"])
def test_redis_killed_then_restarted(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = RedisServer().start()
    try:

        async def main() -> None:
            doc = make_doc([(5, "10s")], failure_mode=mode)
            async with open_limiter(server.url) as limiter:
                first = await limiter.check(doc, "k")
                assert first.allowed and first.source == "redis" and limiter.redis_ok
                server.kill()
                decisions = []
                for _ in range(8):
                    started = time.monotonic()
                    decisions.append(await limiter.check(doc, "k"))
                    assert time.monotonic() - started < 0.3  # promptly, even the first
                assert not limiter.redis_ok
                _follows_mode(mode, decisions, burst=5)
                assert limiter.stats["fallback"] == 8
                assert limiter.stats["redis_errors"] >= 1
                trips = limiter.stats["round_trips"]
                await asyncio.sleep(0.3)
                for _ in range(50):  # while down, requests do not touch Redis at all
                    await limiter.check(doc, "k")
                assert limiter.stats["round_trips"] - trips <= 1  # at most the probe
                server.start()  # same port
                took = await _until_redis(limiter, doc, "fresh", within=2.5)
                assert took <= 2.0
                assert limiter.redis_ok

        asyncio.run(main())
    finally:
        server.stop()
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings  # down once, up once: not one per request
    assert "unavailable" in warnings[0] and "answers again" in warnings[1]


def test_unresponsive_redis_times_out_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = RedisServer().start()
    try:

        async def main() -> None:
            doc = make_doc([(5, "10s")], failure_mode="allow-local")
            async with open_limiter(server.url, timeout=0.2) as limiter:
                assert (await limiter.check(doc, "k")).source == "redis"
                server.pause()
                started = time.monotonic()
                first = await limiter.check(doc, "k")
                took = time.monotonic() - started
                assert first.source == "fallback-local" and 0.15 <= took < 0.5  # the timeout, once
                started = time.monotonic()
                rest = [await limiter.check(doc, "k") for _ in range(20)]
                assert time.monotonic() - started < 0.1  # then no waiting at all
                assert [d.allowed for d in rest] == [True] * 4 + [False] * 16
                server.resume()
                await _until_redis(limiter, doc, "fresh", within=2.5)

        asyncio.run(main())
    finally:
        server.stop()
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "no answer within 0.2s" in warnings[0]


def test_unreachable_from_the_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main() -> None:
        doc = make_doc([(3, "10s")], failure_mode="deny")
        async with open_limiter(f"redis://127.0.0.1:{free_port()}/0") as limiter:
            started = time.monotonic()
            decisions = [await limiter.check(doc, f"k{i}") for i in range(30)]
            assert time.monotonic() - started < 0.5
            _follows_mode("deny", decisions, burst=0)
            assert not limiter.redis_ok

    asyncio.run(main())
    assert len(_warnings(caplog)) == 1


@pytest.mark.parametrize("mode", ["allow", "deny", "allow-local"])
def test_no_redis_configured(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main() -> None:
        doc = make_doc([(4, "10s"), (100, "1d")], failure_mode=mode)
        async with open_limiter(None) as limiter:
            assert not limiter.redis_ok
            decisions = [await limiter.check(doc, "k") for _ in range(6)]
            _follows_mode(mode, decisions, burst=4)
            assert limiter.stats["fallback"] == 6
            assert limiter.stats["round_trips"] == 0
            if mode == "allow-local":
                assert decisions[3].states[1].remaining == 96
                assert (await limiter.check(doc, "other")).allowed  # per key

    asyncio.run(main())
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "no Redis configured" in warnings[0]  # once, at start


def test_metrics_callback_sees_every_counter_move() -> None:
    seen: dict[str, int] = {}

    def metrics(name: str, increment: int) -> None:
        seen[name] = seen.get(name, 0) + increment
        raise RuntimeError("a broken metrics sink must not break decisions")

    async def main() -> dict[str, int]:
        async with open_limiter(None, metrics=metrics) as limiter:
            doc = make_doc([(1, "10s")], failure_mode="allow-local")
            await limiter.check(doc, "k")
            await limiter.check(doc, "k")
            return dict(limiter.stats)

    stats = asyncio.run(main())
    assert seen == {k: v for k, v in stats.items() if v}
    assert stats["decisions"] == 2 and stats["denied"] == 1 and stats["fallback"] == 2
