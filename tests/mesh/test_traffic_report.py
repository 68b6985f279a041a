"""The sidecar's traffic report (sent with heartbeats): inbound counts by calling service, 5xx errors,
policy denials and a cumulative latency histogram; outbound calls are not in it."""

from __future__ import annotations

import asyncio
import json

from mesh.controlplane.schemas import MAX_BODY_BYTES, HeartbeatBody, TrafficCounts
from mesh.measure import RequestMetrics
from mesh.transport.messages import Request, Response, error_response
from shared.telemetry.metrics import DURATION_BUCKETS, Registry

TD = "demo.meshgate.local"


def spiffe(service: str) -> str:
    return f"spiffe://{TD}/ns/default/sa/{service}"


async def app(request: Request, who: str) -> Response:
    """The local app as the sidecar's inbound handler sees it: the path picks the answer."""
    if request.path == "/fail":
        return Response(503)
    if request.path == "/boom":
        return Response(500)
    if request.path == "/denied":
        return error_response(403, "policy_denied", "no rule allows it")
    if request.path == "/missing":
        return Response(404)
    return Response(200)


def call_all(metrics: RequestMetrics, calls: list[tuple[str, str, str]]) -> None:
    """``(direction, peer, path)`` calls through ``metrics.wrap`` (peer: SPIFFE ID or service name)."""
    inbound = metrics.wrap("inbound", app, lambda r, who: who)
    outbound = metrics.wrap("outbound", app, lambda r, who: r.authority)

    async def go() -> None:
        for direction, peer, path in calls:
            if direction == "inbound":
                await inbound(Request("GET", path, "orders"), peer)
            else:
                await outbound(Request("GET", path, peer), "app")

    asyncio.run(go())


def test_report_counts_inbound_calls_by_caller() -> None:
    metrics = RequestMetrics(Registry())
    calls = (
        [("inbound", spiffe("web"), "/ok")] * 5
        + [("inbound", spiffe("web"), "/fail")] * 2
        + [("inbound", spiffe("web"), "/boom")]
        + [("inbound", spiffe("web"), "/missing")]
        + [("inbound", spiffe("gateway"), "/ok")] * 3
        + [("inbound", spiffe("gateway"), "/denied")]
        + [("outbound", "catalog", "/ok")] * 4
        + [("outbound", "web", "/fail")] * 2
    )
    call_all(metrics, calls)
    report = metrics.traffic_report()
    assert set(report) == {"web", "gateway"}  # outbound calls (to catalog, to web) are not in it
    web, gateway = report["web"], report["gateway"]
    assert (web["requests"], web["errors"], web["denied"]) == (9, 3, 0)  # 404 is not an error
    assert (gateway["requests"], gateway["errors"], gateway["denied"]) == (4, 0, 1)  # 403 is no 5xx
    for entry in (web, gateway):
        assert entry["buckets"] == list(DURATION_BUCKETS)
        hist = entry["counts"]
        assert len(hist) == len(DURATION_BUCKETS) + 1  # +Inf last
        assert hist == sorted(hist) and hist[0] >= 0  # cumulative
        assert hist[-1] == entry["requests"]
        TrafficCounts.model_validate(entry)  # what the control plane accepts
    # the sidecar's metrics keep outbound calls, just not in the report
    assert metrics.requests.values[("outbound", "catalog", "200")] == 4


def test_report_is_cumulative_and_json_ready() -> None:
    metrics = RequestMetrics(Registry())
    assert metrics.traffic_report() == {}
    call_all(metrics, [("inbound", spiffe("web"), "/ok")] * 2)
    first = metrics.traffic_report()
    call_all(metrics, [("inbound", spiffe("web"), "/fail")] * 3)
    second = metrics.traffic_report()
    assert first["web"]["requests"] == 2 and second["web"]["requests"] == 5
    assert second["web"]["errors"] == 3 and second["web"]["counts"][-1] == 5
    assert all(b >= a for a, b in zip(first["web"]["counts"], second["web"]["counts"], strict=True))
    body = json.loads(json.dumps({"status": "passing", "report": {"inbound": second}}))
    parsed = HeartbeatBody.model_validate(body)
    assert parsed.report is not None and parsed.report.inbound["web"].requests == 5


def test_callers_without_a_workload_identity_are_unknown() -> None:
    metrics = RequestMetrics(Registry())
    call_all(
        metrics,
        [("inbound", "spiffe://other.td/some/path", "/ok"), ("inbound", "garbage", "/ok")],
    )
    report = metrics.traffic_report()
    assert report["_unknown"]["requests"] == 1  # a SPIFFE ID that names no service
    assert report["garbage"]["requests"] == 1  # a plain name is the service label as given


def test_denials_by_policy_count_only_inbound() -> None:
    metrics = RequestMetrics(Registry())
    call_all(
        metrics,
        [("outbound", "web", "/denied")] * 2 + [("inbound", spiffe("web"), "/denied")],
    )
    report = metrics.traffic_report()
    assert report == {"web": report["web"]}
    assert (report["web"]["requests"], report["web"]["denied"]) == (1, 1)


def test_a_report_of_many_callers_still_fits_a_heartbeat() -> None:
    metrics = RequestMetrics(Registry())
    call_all(metrics, [("inbound", spiffe(f"svc-{i}"), "/ok") for i in range(400)])
    report = {"status": "passing", "report": {"inbound": metrics.traffic_report()}}
    body = json.dumps(report, separators=(",", ":"))  # compact, as httpx sends it
    assert len(body.encode()) <= MAX_BODY_BYTES, len(body.encode())


def test_error_reasons_an_app_invents_do_not_grow_the_label_set() -> None:
    """``x-meshgate-error`` from an app (a value per request) must not become a series per value."""
    metrics = RequestMetrics(Registry())

    async def chatty(request: Request, who: str) -> Response:
        return Response(500, [("x-meshgate-error", f"app_{request.path}")])

    wrapped = metrics.wrap("inbound", chatty, lambda r, who: who)

    async def go() -> None:
        for i in range(500):
            await wrapped(Request("GET", str(i), "orders"), spiffe("web"))
        await metrics.wrap("inbound", app, lambda r, who: who)(
            Request("GET", "/denied", "orders"), spiffe("web")
        )

    asyncio.run(go())
    # the app's answers are not the sidecar's errors at all: only its own one is counted
    assert metrics.errors.values == {("inbound", "policy_denied"): 1.0}


def test_a_relayed_error_is_not_counted_as_the_callers_own() -> None:
    """The callee's 403 policy_denied, relayed to the caller's app, is no error the caller's sidecar
    made: meshgate_sidecar_local_errors_total counts only answers made here."""
    metrics = RequestMetrics(Registry())

    async def relay(request: Request, who: str) -> Response:
        if request.path == "/relayed":
            return Response(403, [("x-meshgate-error", "policy_denied")])  # as read from the peer
        return error_response(503, "no_healthy_upstream", "none")

    wrapped = metrics.wrap("outbound", relay, lambda r, who: r.authority)

    async def go() -> None:
        await wrapped(Request("GET", "/relayed", "orders"), "app")
        await wrapped(Request("GET", "/local", "orders"), "app")

    asyncio.run(go())
    assert metrics.errors.values == {("outbound", "no_healthy_upstream"): 1.0}


def test_paths_of_proxy_mode_targets() -> None:
    from mesh.transport.messages import target_path as _path

    assert _path("http://orders.mesh:8080/span-check?x=1") == "/span-check"
    assert _path("http://orders") == "/"
    assert _path("https://orders/a/b") == "/a/b"
    assert _path("/plain?q") == "/plain"
