"""Retry budget, backoff, Retry-After, circuit breaker and outlier detection (no I/O)."""

from __future__ import annotations

import random

import pytest

from mesh.outbound.endpoints import Endpoint
from mesh.outbound.resilience import (
    IDEMPOTENT,
    Breaker,
    OutlierDetector,
    RetryBudgetTracker,
    backoff_delay,
    retry_after_seconds,
)
from shared.config.model.mesh import CircuitBreaker, OutlierDetection, RetryBudget


def eps(n: int) -> list[Endpoint]:
    return [
        Endpoint(f"ep-{i}", "127.0.0.1", 10000 + i, "spiffe://rig.test/ns/default/sa/x") for i in range(n)
    ]


# ----- retry budget ----------------------------------------------------------------------------------------


def test_default_budget_is_twenty_percent_plus_ten_per_second() -> None:
    budget = RetryBudget()
    assert (budget.percent, budget.min_per_second) == (0.2, 10)
    tracker = RetryBudgetTracker(budget, window=10.0)
    for _ in range(1000):
        tracker.record_request(now=100.0)
    # 20% of 1000 requests + 10/s over the 10 s window
    granted = sum(tracker.try_retry(now=100.0) for _ in range(400))
    assert granted == 200 + 100


def test_spent_budget_refuses_until_the_window_moves_on() -> None:
    tracker = RetryBudgetTracker(
        RetryBudget.model_validate({"percent": "20%", "minPerSecond": 0}), window=10.0
    )
    for _ in range(10):
        tracker.record_request(now=0.0)
    assert tracker.try_retry(now=1.0) and tracker.try_retry(now=1.0)
    assert not tracker.try_retry(now=1.0)  # 20% of 10 = 2
    tracker.record_request(now=5.0)
    tracker.record_request(now=5.0)
    tracker.record_request(now=5.0)
    tracker.record_request(now=5.0)
    tracker.record_request(now=5.0)
    assert tracker.try_retry(now=5.0)  # 20% of 15 = 3
    assert not tracker.try_retry(now=5.0)
    # at t=10.5 the first ten requests and the two early retries left the window: 20% of 5 = 1
    assert not tracker.try_retry(now=10.5)  # the retry at t=5 still counts
    assert tracker.try_retry(now=15.5) is False  # nothing in the window at all: 0 allowed


def test_min_per_second_alone_allows_retries_without_traffic() -> None:
    tracker = RetryBudgetTracker(RetryBudget.model_validate({"percent": "0%", "minPerSecond": 1}), window=5.0)
    assert sum(tracker.try_retry(now=0.0) for _ in range(10)) == 5


# ----- backoff and Retry-After -----------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(4)
    for attempt, ceiling in ((1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (9, 0.25)):
        delays = [backoff_delay(attempt, 0.025, 0.25, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter covers the range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("0.5", None),  # RFC 9110: delay-seconds = 1*DIGIT
        (" 2 ", 2.0),
        ("120", 120.0),  # not capped: beyond backoff.max the client does not retry
        ("-3", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # an HTTP-date in the past: at once
        ("Wed, 21 Oct 2015 07:28:05 GMT", 5.0),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value, now=1445412480.0) == expected  # Wed, 21 Oct 2015 07:28:00 GMT


def test_only_idempotent_methods_are_retried_by_default() -> None:
    assert {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"} <= IDEMPOTENT
    assert "POST" not in IDEMPOTENT and "PATCH" not in IDEMPOTENT


# ----- circuit breaker -------------------------------------------------------------------------------------


def test_breaker_admits_up_to_max_requests_then_refuses() -> None:
    breaker = Breaker(CircuitBreaker.model_validate({"maxRequests": 3}))
    assert [breaker.admit() for _ in range(5)] == [True, True, True, False, False]
    assert breaker.active == 3
    breaker.done()
    assert breaker.admit()
    assert not breaker.admit()
    for _ in range(3):
        breaker.done()
    assert breaker.active == 0


def test_breaker_counts_requests_waiting_for_a_connection() -> None:
    breaker = Breaker(CircuitBreaker.model_validate({"maxPendingRequests": 2}))
    assert [breaker.wait_for_connection() for _ in range(3)] == [True, True, False]
    breaker.connected()
    assert breaker.wait_for_connection()
    assert breaker.pending == 2


# ----- outlier detection -----------------------------------------------------------------------------------


def detector(**spec: object) -> OutlierDetector:
    base = {"consecutive5xx": 3, "consecutiveConnectFailures": 2, "baseEjectionTime": "10s"}
    base.update(spec)
    return OutlierDetector(OutlierDetection.model_validate(base))


def test_consecutive_5xx_eject_and_a_success_resets_the_count() -> None:
    d = detector()
    endpoints = eps(4)
    ep = endpoints[0]
    for status in (503, 500):
        assert not d.record(ep, status=status, connect_failure=False, all_eps=endpoints, now=0.0)
    assert not d.record(ep, status=200, connect_failure=False, all_eps=endpoints, now=0.0)
    assert ep.consecutive_5xx == 0
    assert not d.record(ep, status=502, connect_failure=False, all_eps=endpoints, now=0.0)
    assert not d.record(ep, status=404, connect_failure=False, all_eps=endpoints, now=0.0)  # 4xx is fine
    for _ in range(2):
        assert not d.record(ep, status=503, connect_failure=False, all_eps=endpoints, now=1.0)
    assert d.record(ep, status=503, connect_failure=False, all_eps=endpoints, now=1.0)
    assert not ep.available(5.0) and ep.available(11.0)


def test_consecutive_connect_failures_eject() -> None:
    d = detector()
    endpoints = eps(4)
    ep = endpoints[1]
    assert not d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=0.0)
    assert d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=0.0)
    assert ep.ejected_until == 10.0


def test_ejection_time_grows_with_each_ejection_up_to_the_maximum() -> None:
    d = detector(baseEjectionTime="10s", maxEjectionTime="25s")
    endpoints = eps(4)
    ep = endpoints[0]
    durations = []
    t = 0.0
    for _ in range(4):
        assert not d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=t)
        assert d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=t)
        durations.append(ep.ejected_until - t)
        t = ep.ejected_until + 1
    assert durations == [10.0, 20.0, 25.0, 25.0]
    assert ep.ejections == 4


def test_never_more_than_max_ejection_percent_of_endpoints() -> None:
    d = detector(maxEjectionPercent="50%", consecutiveConnectFailures=1)
    endpoints = eps(4)
    results = [
        d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=0.0) for ep in endpoints
    ]
    assert results == [True, True, False, False]
    assert sum(not e.available(1.0) for e in endpoints) == 2
    # once the ejections expire another endpoint may be ejected
    assert d.record(endpoints[2], status=None, connect_failure=True, all_eps=endpoints, now=100.0)


def test_a_single_endpoint_is_never_ejected_at_the_default_share() -> None:
    d = detector(consecutiveConnectFailures=1)
    (only,) = eps(1)
    assert not d.record(only, status=None, connect_failure=True, all_eps=[only], now=0.0)
    assert only.available(0.0)


def test_budget_memory_does_not_grow_with_traffic() -> None:
    """A sidecar that never retries must not keep one entry per request (the soak test's leak)."""
    tracker = RetryBudgetTracker(RetryBudget(), window=10.0)
    for i in range(50_000):
        tracker.record_request(now=i * 0.001)
    assert len(tracker._requests) == 10 and tracker._total_requests <= 10_000
    # at t=50 s the window holds the last ~10 s: 9,000-10,000 requests, so 20% + 10/s = ~1,900-2,100
    granted = sum(tracker.try_retry(now=50.0) for _ in range(3000))
    assert 1_800 <= granted <= 2_100


def test_budget_forgets_everything_after_a_long_quiet_spell() -> None:
    tracker = RetryBudgetTracker(RetryBudget.model_validate({"percent": "50%", "minPerSecond": 0}))
    for _ in range(100):
        tracker.record_request(now=1.0)
    assert tracker.try_retry(now=2.0)
    assert not tracker.try_retry(now=1_000_000.0)  # nothing recent: nothing allowed
    assert tracker._total_requests == tracker._total_retries == 0


def test_the_ejection_count_decays_by_one_per_interval_out_of_ejection() -> None:
    """Envoy's rule: a host healthy for a while is ejected for less next time. Without it an
    endpoint ejected a few times during one outage stayed at the longest ejection for ever."""
    d = detector(baseEjectionTime="10s", maxEjectionTime="300s", interval="10s")
    endpoints = eps(4)
    ep = endpoints[0]
    t = 0.0
    for _ in range(3):  # one outage: ejected three times in a row
        assert not d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=t)
        assert d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=t)
        t = ep.ejected_until
    assert ep.ejections == 3 and ep.ejected_until == 60.0
    # back in service: within one interval of the ejection's end nothing changes
    assert not d.record(ep, status=200, connect_failure=False, all_eps=endpoints, now=65.0)
    assert ep.ejections == 3
    # one interval later: one fewer; two more intervals: none left
    assert not d.record(ep, status=200, connect_failure=False, all_eps=endpoints, now=70.0)
    assert ep.ejections == 2
    assert not d.record(ep, status=200, connect_failure=False, all_eps=endpoints, now=95.0)
    assert ep.ejections == 0
    # the next failure run ejects for the base time again, not 40 s
    assert not d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=100.0)
    assert d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=100.0)
    assert ep.ejected_until == 110.0


def test_the_ejection_count_decays_even_when_the_next_result_is_a_failure() -> None:
    d = detector(baseEjectionTime="10s", interval="10s")
    endpoints = eps(4)
    ep = endpoints[0]
    for _ in range(2):
        assert not d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=0.0)
        assert d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=ep.ejected_until)
    assert ep.ejections == 2  # ejected at 0 (10 s) and at 10 (20 s): out at 30
    # an hour later, quiet until now: the count has gone, this run ejects for 10 s
    assert not d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=3600.0)
    assert d.record(ep, status=None, connect_failure=True, all_eps=endpoints, now=3600.0)
    assert ep.ejected_until == 3610.0 and ep.ejections == 1


def test_a_zero_interval_is_refused_with_a_clear_error() -> None:
    import pydantic
    import pytest

    for value in ("0s", 0):
        with pytest.raises(pydantic.ValidationError, match="interval must be positive"):
            OutlierDetection.model_validate({"interval": value})
