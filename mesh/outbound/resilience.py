"""Retry budget, circuit breaker and outlier detection, per upstream service (no I/O here)."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime

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


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """The delay a ``Retry-After`` asks for, in seconds (0 or more, not capped), or None when the
    header is absent or not one of the RFC 9110 section 10.2.3 forms: ``delay-seconds``
    (``1*DIGIT``) or an ``HTTP-date`` (IMF-fixdate, or the obsolete RFC 850 and asctime forms that
    recipients must accept; a date in the past is 0). ``now`` is the wall clock (``time.time()``).

    Nothing else passes (``nan``, ``inf``, ``-3``, ``1.5``, ``1e400``): a value that parsed as a float
    could make the caller sleep for ever, or fail (``asyncio.sleep(nan)`` raises under uvloop)."""
    if value is None:
        return None
    text = value.strip(" \t")
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        # no int() of thousands of digits (CPython refuses over 4300): anything this long is "never"
        return float(int(digits)) if len(digits) <= _MAX_DIGITS else float(10**_MAX_DIGITS)
    when = _http_date(text)
    if when is None:
        return None
    return max(when - (time.time() if now is None else now), 0.0)


_MAX_DIGITS = 12
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_LONG = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = f"({'|'.join(_MONTH_NAMES)})"
_TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
#: RFC 9110 section 5.6.7: IMF-fixdate, rfc850-date and asctime-date, exactly (ASCII digits only).
_IMF_FIXDATE = re.compile(f"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT", re.ASCII)
_RFC850_DATE = re.compile(f"{_DAY_LONG}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT", re.ASCII)
_ASCTIME_DATE = re.compile(f"{_DAY} {_MONTH} ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})", re.ASCII)


def _http_date(text: str) -> float | None:
    """An RFC 9110 ``HTTP-date`` as seconds since the epoch, or None when ``text`` is not one."""
    if m := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = m.groups()
        full_year = int(year)
    elif m := _RFC850_DATE.fullmatch(text):
        day, month, year, hour, minute, second = m.groups()
        # a two-digit year more than 50 years in the future is the most recent past year with
        # those digits (RFC 9110 section 5.6.7)
        this_year = time.gmtime().tm_year
        full_year = this_year - this_year % 100 + int(year)
        if full_year > this_year + 50:
            full_year -= 100
    elif m := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = m.groups()
        full_year = int(year)
    else:
        return None
    try:
        # a leap second (60) counts as the second before: Retry-After needs no better
        stamp = datetime(
            full_year, _MONTHS[month], int(day), int(hour), int(minute), min(int(second), 59), tzinfo=UTC
        )
    except ValueError:  # 31 Feb, hour 25, ...
        return None
    return stamp.timestamp()


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
    (capped), never more than ``max_ejection_percent`` of the endpoints at once. As in Envoy, the
    number of ejections goes down by one for each ``interval`` the endpoint spent out of ejection."""

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
        if endpoint.ejections and now >= endpoint.ejections_decay_at:
            self._decay(endpoint, now)
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
        endpoint.ejected_for_connects = connect_failure
        endpoint.ejections_decay_at = endpoint.ejected_until + s.interval.total_seconds()
        endpoint.consecutive_5xx = 0
        endpoint.consecutive_connect_failures = 0
        return True

    def _decay(self, endpoint: Endpoint, now: float) -> None:
        """Take one ejection off per ``interval`` passed since the endpoint's decay was due."""
        interval = self.settings.interval.total_seconds()
        if interval <= 0:  # the model refuses it; a hand-built one forgets the ejections at once
            endpoint.ejections = 0
            return
        steps = 1 + int((now - endpoint.ejections_decay_at) // interval)
        endpoint.ejections = max(endpoint.ejections - steps, 0)
        endpoint.ejections_decay_at += steps * interval
