"""Retry budget, circuit breaker and outlier detection, per upstream service (no I/O here)."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Sequence

from mesh.outbound.endpoints import Endpoint
from shared.config.model.mesh import CircuitBreaker, OutlierDetection, RetryBudget

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class RetryBudgetTracker:
    """As Linkerd's: retries may add ``percent`` of recent requests plus ``min_per_second``."""

    def __init__(self, budget: RetryBudget, window: float = 10.0) -> None:
        self.budget = budget
        self.window = window
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        edge = now - self.window
        while self._requests and self._requests[0] < edge:
            self._requests.popleft()
        while self._retries and self._retries[0] < edge:
            self._retries.popleft()

    def record_request(self, now: float | None = None) -> None:
        """Count one original request."""
        self._requests.append(time.monotonic() if now is None else now)

    def try_retry(self, now: float | None = None) -> bool:
        """Take one retry from the budget; False when it is spent."""
        t = time.monotonic() if now is None else now
        self._trim(t)
        allowed = self.budget.percent * len(self._requests) + self.budget.min_per_second * self.window
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(t)
        return True


def backoff_delay(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter for retry number ``attempt`` (1-based)."""
    ceiling = min(maximum, base * (2 ** (attempt - 1)))
    return float((rng or random).random() * ceiling)


def retry_after_seconds(value: str | None, cap: float) -> float | None:
    """A ``Retry-After`` in seconds (delta form only), capped; None when absent or not a number."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), cap)


class Breaker:
    """Circuit-breaker limits: requests in flight and requests waiting for a connection."""

    def __init__(self, limits: CircuitBreaker) -> None:
        self.limits = limits
        self.active = 0
        self.pending = 0

    def admit(self) -> bool:
        """True (and counted) when another request may start; release with :meth:`done`."""
        if self.active >= self.limits.max_requests:
            return False
        self.active += 1
        return True

    def done(self) -> None:
        """A request finished."""
        self.active -= 1

    def wait_for_connection(self) -> bool:
        """True (and counted) when another request may wait for a connection to open; release with
        :meth:`connected`. False: ``max_pending_requests`` are waiting already."""
        if self.pending >= self.limits.max_pending_requests:
            return False
        self.pending += 1
        return True

    def connected(self) -> None:
        """A request stopped waiting for a connection."""
        self.pending -= 1


class OutlierDetector:
    """Ejects endpoints after consecutive 5xx or connect failures, for base * number-of-ejections
    (capped), never more than ``max_ejection_percent`` of the endpoints at once."""

    def __init__(self, settings: OutlierDetection) -> None:
        self.settings = settings

    def record(
        self,
        endpoint: Endpoint,
        *,
        status: int | None,
        connect_failure: bool,
        all_eps: Sequence[Endpoint],
        now: float,
    ) -> bool:
        """Update the endpoint's counters; True when this result ejected it."""
        if connect_failure:
            endpoint.consecutive_connect_failures += 1
        elif status is not None and status >= 500:
            endpoint.consecutive_5xx += 1
            endpoint.consecutive_connect_failures = 0
        else:
            endpoint.consecutive_5xx = 0
            endpoint.consecutive_connect_failures = 0
            return False
        s = self.settings
        if endpoint.consecutive_5xx < s.consecutive_5xx and (
            endpoint.consecutive_connect_failures < s.consecutive_connect_failures
        ):
            return False
        ejected = sum(1 for e in all_eps if not e.available(now))
        if (ejected + 1) > s.max_ejection_percent * len(all_eps):
            return False
        endpoint.ejections += 1
        duration = min(
            s.base_ejection_time.total_seconds() * endpoint.ejections, s.max_ejection_time.total_seconds()
        )
        endpoint.ejected_until = now + duration
        endpoint.consecutive_5xx = 0
        endpoint.consecutive_connect_failures = 0
        return True
