"""Fixtures for the rate-limit tests (defined in ratelimit_testlib): ``redis_url`` and ``own_redis``."""

from __future__ import annotations

from ratelimit_testlib import own_redis, redis_url

__all__ = ["own_redis", "redis_url"]
