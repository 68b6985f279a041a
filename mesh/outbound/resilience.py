"""Retry budget, circuit breaker and outlier detection, per upstream service (no I/O here)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from mesh.outbound.endpoints import Endpoint
from shared.config.model.mesh import CircuitBreaker, OutlierDetection, RetryBudget

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class RetryBudgetTracker:
    """As Linkerd's: retries may add ``percent`` of recent requests plus ``min_per_second``.

    "Recent" is the last ``window`` seconds, counted in ``buckets`` slots of ``window / buckets``
    seconds each (so the oldest slot leaves whole): constant memory and time per request whatever
    the traffic. (A timestamp per request, trimmed only when a retry was asked for, grew by 40
    bytes a request on a sidecar that never retried.)
    """

    def __init__(self, budget: RetryBudget, window: float = 10.0, buckets: int = 10) -> None:
        self.budget = budget
        self.window = window
        self._width = window / buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._total_requests = 0
        self._total_retries = 0
        self._slot: int | None = None  # the slot number (time // width) counts go to now

    def _advance(self, now: float) -> int:
        """Move to the slot of ``now``, emptying the slots that left the window; its index."""
        slot = int(now // self._width)
        n = len(self._requests)
        if self._slot is None:
            self._slot = slot
        elif slot > self._slot:
            for s in range(self._slot + 1, min(slot, self._slot + n) + 1):
                i = s % n
                self._total_requests -= self._requests[i]
                self._total_retries -= self._retries[i]
                self._requests[i] = self._retries[i] = 0
            self._slot = slot
        return self._slot % n  # a clock that went back counts in the current slot

    def record_request(self, now: float | None = None) -> None:
        """Count one original request."""
        i = self._advance(time.monotonic() if now is None else now)
        self._requests[i] += 1
        self._total_requests += 1

    def try_retry(self, now: float | None = None) -> bool:
        """Take one retry from the budget; False when it is spent."""
        i = self._advance(time.monotonic() if now is None else now)
        allowed = self.budget.percent * self._total_requests + self.budget.min_per_second * self.window
        if self._total_retries + 1 > allowed:
            return False
        self._retries[i] += 1
        self._total_retries += 1
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
