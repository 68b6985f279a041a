"""Rate limiting at the edge: one atomic Redis script per decision, local fallback.

See ``docs/ratelimit.md``. The entry point is :class:`~gateway.ratelimit.limiter.RateLimiter`.
"""

from gateway.ratelimit.limiter import LimitState, RateDecision, RateLimiter

__all__ = ["LimitState", "RateDecision", "RateLimiter"]
