"""The report book: sidecar heartbeat reports turned into the live traffic graph's edges (rates, error
rate, denials, P99 from histogram deltas), and the histogram quantile it uses. Time is a fake clock."""

from __future__ import annotations

import math
from typing import Any

import pytest

from mesh.controlplane.reports import Edge, ReportBook, quantile
from mesh.controlplane.schemas import ReportBody

BUCKETS = [0.01, 0.1, 1.0]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counts(requests: int, errors: int = 0, denied: int = 0, hist: list[int] | None = None) -> dict[str, Any]:
    """One caller's cumulative counts; ``hist`` is cumulative over BUCKETS then +Inf."""
    entry: dict[str, Any] = {"requests": requests, "errors": errors, "denied": denied}
    if hist is not None:
        entry["buckets"] = BUCKETS
        entry["counts"] = hist
    return entry


def report(**inbound: dict[str, Any]) -> ReportBody:
    return ReportBody.model_validate({"version": "1.2.3", "inbound": inbound})


def book(keep: float = 120.0) -> tuple[ReportBook, Clock]:
    clock = Clock()
    return ReportBook(keep=keep, clock=clock), clock


def only(edges: list[Edge]) -> Edge:
    assert len(edges) == 1, edges
    return edges[0]


def by_pair(edges: list[Edge]) -> dict[tuple[str, str], Edge]:
    return {(e.source, e.target): e for e in edges}


# ----- rates from reports -----------------------------------------------------------------------------------


def test_two_reports_give_rates_error_rate_denials_and_p99_of_the_difference() -> None:
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(100, 10, 2, [50, 90, 100, 100])))
    clock.now += 10
    # 200 more requests, 20 more 5xx, 10 more denials; 100 new ones in 10-100 ms, 100 in 0.1-1 s
    reports.record("orders-1", "orders", report(web=counts(300, 30, 12, [50, 190, 300, 300])))
    edge = only(reports.edges(30))
    assert (edge.source, edge.target) == ("web", "orders")
    assert edge.requests == 200
    assert edge.rps == pytest.approx(20.0)
    assert edge.error_rate == pytest.approx(0.1)
    assert edge.denied_rps == pytest.approx(1.0)
    # deltas [0, 100, 200, 200]: rank 198 in (0.1, 1.0], 98 of 100 -> 0.1 + 0.9 * 0.98 s
    assert edge.p99_ms == pytest.approx((0.1 + 0.9 * 0.98) * 1000)
    as_json = edge.to_json()
    assert as_json["source"] == "web" and as_json["target"] == "orders"
    assert as_json["rps"] == 20.0 and as_json["errorRate"] == 0.1 and as_json["deniedRps"] == 1.0
    assert as_json["p99Ms"] == pytest.approx(982.0) and as_json["requests"] == 200


def test_each_caller_is_an_edge_of_its_own_and_idle_callers_make_none() -> None:
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(10), gateway=counts(5), batch=counts(7)))
    clock.now += 5
    reports.record("orders-1", "orders", report(web=counts(60), gateway=counts(30), batch=counts(7)))
    edges = by_pair(reports.edges(30))
    assert set(edges) == {("web", "orders"), ("gateway", "orders")}  # batch sent nothing new
    assert edges[("web", "orders")].rps == pytest.approx(10.0)
    assert edges[("gateway", "orders")].rps == pytest.approx(5.0)
    assert edges[("web", "orders")].p99_ms is None  # no histogram reported
    assert [(e.source, e.target) for e in reports.edges(30)] == sorted(edges)


def test_a_caller_new_in_the_latest_report_counts_from_zero() -> None:
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(10)))
    clock.now += 10
    reports.record("orders-1", "orders", report(web=counts(10), gateway=counts(40, 4)))
    edge = only(reports.edges(30))
    assert (edge.source, edge.requests) == ("gateway", 40)
    assert edge.error_rate == pytest.approx(0.1)
    assert edge.rps == pytest.approx(4.0)


def test_two_instances_of_one_service_are_summed() -> None:
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(0, 0, 0, [0, 0, 0, 0])))
    reports.record("orders-2", "orders", report(web=counts(0, 0, 0, [0, 0, 0, 0])))
    clock.now += 10
    reports.record("orders-1", "orders", report(web=counts(100, 0, 0, [100, 100, 100, 100])))
    reports.record("orders-2", "orders", report(web=counts(300, 30, 5, [0, 0, 300, 300])))
    reports.record(
        "catalog-1", "catalog", report(web=counts(50))
    )  # one report of another target: no rate yet
    edges = by_pair(reports.edges(30))
    edge = edges[("web", "orders")]
    assert edge.requests == 400
    assert edge.rps == pytest.approx(40.0)  # 10/s + 30/s
    assert edge.error_rate == pytest.approx(30 / 400)
    assert edge.denied_rps == pytest.approx(0.5)
    # merged histogram [100, 100, 400, 400]: rank 396 in (0.1, 1.0], 296 of 300
    assert edge.p99_ms == pytest.approx((0.1 + 0.9 * 296 / 300) * 1000)
    assert ("web", "catalog") not in edges


def test_a_single_report_gives_no_rate_yet() -> None:
    """Counts of unknown age (the first report after a control-plane restart) are not a rate."""
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(60, 6)))
    assert reports.edges(30) == []
    clock.now += 5
    reports.record("orders-1", "orders", report(web=counts(70, 6)))
    edge = only(reports.edges(30))
    assert edge.requests == 10 and edge.rps == pytest.approx(2.0) and edge.error_rate == 0


def test_reports_closer_than_a_second_do_not_blow_up_the_rate() -> None:
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(0)))
    clock.now += 0.01
    reports.record("orders-1", "orders", report(web=counts(5)))
    edge = only(reports.edges(30))
    assert edge.rps == pytest.approx(5.0)  # the span is at least one second


# ----- restarts, silence and the window ---------------------------------------------------------------------


def _no_negative(edge: Edge) -> None:
    assert edge.rps >= 0 and edge.denied_rps >= 0 and edge.requests >= 0
    assert 0 <= edge.error_rate <= 1
    assert edge.p99_ms is None or edge.p99_ms >= 0


def test_a_sidecar_restart_counts_from_zero_instead_of_going_negative() -> None:
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(1000, 100, 50, [500, 900, 1000, 1000])))
    clock.now += 10
    reports.record("orders-1", "orders", report(web=counts(20, 2, 1, [20, 20, 20, 20])))  # restarted
    edge = only(reports.edges(30))
    _no_negative(edge)
    assert edge.requests == 20 and edge.rps == pytest.approx(2.0)
    assert edge.error_rate == pytest.approx(0.1) and edge.denied_rps == pytest.approx(0.1)
    assert edge.p99_ms == pytest.approx(0.01 * 0.99 * 1000)  # 19.8 of 20 in the first bucket


def test_changed_histogram_buckets_count_from_zero() -> None:
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(10, 0, 0, [10, 10, 10, 10])))
    clock.now += 10
    newer = counts(30, 0, 0, [0, 30, 30])
    newer["buckets"] = [0.5, 2.0]
    reports.record("orders-1", "orders", report(web=newer))
    edge = only(reports.edges(30))
    _no_negative(edge)
    assert edge.requests == 30
    assert edge.p99_ms == pytest.approx((0.5 + 1.5 * 0.99) * 1000)


def test_a_restart_with_more_requests_than_before_still_gives_no_negative_numbers() -> None:
    reports, clock = book()
    reports.record("orders-1", "orders", report(web=counts(100, 50, 40, [0, 0, 100, 100])))
    clock.now += 10
    # restarted and busy since: 120 requests, no error or denial yet, all fast
    reports.record("orders-1", "orders", report(web=counts(120, 0, 0, [120, 120, 120, 120])))
    _no_negative(only(reports.edges(30)))


def test_an_instance_silent_longer_than_keep_is_forgotten() -> None:
    reports, clock = book(keep=60)
    reports.record("orders-1", "orders", report(web=counts(10)))
    reports.record("orders-2", "orders", report(web=counts(10)))
    clock.now += 50
    reports.record("orders-2", "orders", report(web=counts(20)))
    assert reports.latest("orders-1") is not None  # 50 s: still kept
    clock.now += 20
    reports.record("orders-2", "orders", report(web=counts(30)))  # orders-1 silent for 70 s now
    assert reports.latest("orders-1") is None
    latest = reports.latest("orders-2")
    assert latest is not None and latest.inbound["web"].requests == 30
    # orders-1 reporting again starts over: one report is no rate yet, the second one is
    reports.record("orders-1", "orders", report(web=counts(15)))
    edge = only(reports.edges(30))
    assert edge.requests == 20  # orders-2 only: 20 since its baseline 70 s ago
    clock.now += 5
    reports.record("orders-1", "orders", report(web=counts(25)))
    edge = only(reports.edges(30))
    assert edge.requests == 20 + 10


def test_an_instance_that_changes_service_starts_over() -> None:
    reports, clock = book()
    reports.record("x-1", "orders", report(web=counts(100)))
    clock.now += 10
    reports.record("x-1", "catalog", report(web=counts(130)))
    assert reports.edges(30) == []  # the new service's first report: no rate yet
    clock.now += 10
    reports.record("x-1", "catalog", report(web=counts(150)))
    edge = only(reports.edges(30))
    assert (edge.target, edge.requests) == ("catalog", 20)


def test_latest_is_the_newest_report_of_that_instance() -> None:
    reports, clock = book()
    assert reports.latest("orders-1") is None
    first = ReportBody.model_validate({"version": "1", "policyVersion": "p1", "certificateExpiresIn": 100})
    second = ReportBody.model_validate({"version": "2", "policyVersion": "p2", "certificateExpiresIn": 90})
    reports.record("orders-1", "orders", first)
    clock.now += 10
    reports.record("orders-1", "orders", second)
    reports.record("orders-2", "orders", first)
    assert reports.latest("orders-1") is second
    assert reports.latest("orders-2") is first
    assert reports.latest("orders-3") is None
    assert reports.edges(30) == []  # nothing inbound


def test_many_samples_keep_only_the_recent_ones_and_stay_correct() -> None:
    reports, clock = book()
    for i in range(200):  # more than the samples kept per instance
        reports.record("orders-1", "orders", report(web=counts(i * 10)))
        clock.now += 1
    clock.now -= 1
    edge = only(reports.edges(30))
    assert edge.rps == pytest.approx(10.0)


# ----- quantile ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.05, 0.05),  # rank 5 in (0, 0.1]: 5 of 10
        (0.1, 0.1),  # rank 10: the top of the first bucket
        (0.5, 0.1 + 0.4 * 40 / 50),  # rank 50 in (0.1, 0.5]: 40 of 50
        (0.75, 0.5 + 0.5 * 15 / 30),  # rank 75 in (0.5, 1.0]: 15 of 30
        (0.9, 1.0),  # rank 90: the top of the last finite bucket
        (0.99, 1.0),  # rank 99 in +Inf: the last finite bound, as Prometheus
        (1.0, 1.0),
    ],
)
def test_quantile_interpolates_linearly_inside_the_bucket(q: float, expected: float) -> None:
    assert quantile([0.1, 0.5, 1.0], [10, 60, 90, 100], q) == pytest.approx(expected)


def test_quantile_skips_empty_buckets() -> None:
    # nothing up to 0.1, everything in (0.1, 0.5]
    assert quantile([0.1, 0.5, 1.0], [0, 40, 40, 40], 0.5) == pytest.approx(0.1 + 0.4 * 0.5)
    assert quantile([0.1, 0.5, 1.0], [0, 0, 0, 8], 0.5) == pytest.approx(1.0)  # all above the last bound


def test_quantile_of_no_observations_is_none() -> None:
    assert quantile([], [], 0.99) is None
    assert quantile([0.1, 1.0], [0, 0, 0], 0.99) is None
    assert quantile([], [5], 0.5) is None  # only +Inf, no finite bound to answer with


def test_quantile_is_monotonic_in_q() -> None:
    values = [quantile([0.1, 0.5, 1.0], [3, 7, 12, 13], q / 100) for q in range(1, 101)]
    assert all(v is not None and not math.isnan(v) for v in values)
    assert values == sorted(values)  # type: ignore[type-var]
