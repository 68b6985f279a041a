"""``--access-log``: one JSON-ready log record per request at the edge (route, principal, status,
duration, error code, trace id), and per request in the sidecar."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from gateway_testlib import edge, run

POLICY = f"""\
apiVersion: meshgate/v1
kind: Route
name: keyed
match: {{path: {{prefix: /keyed}}}}
backends: [{{service: orders}}]
auth: [keys]
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  keys: [{{name: alice, sha256: {hashlib.sha256(b"k").hexdigest()}}}]
"""


def test_the_gateway_logs_one_line_per_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"

    async def go() -> None:
        async with edge(tmp_path, POLICY) as gw:
            gw.runtime.config.access_log = True
            traceparent = f"00-{trace}-b7ad6b7169203331-01"
            ok = await gw.http.get("/keyed/1", headers={"x-api-key": "k", "traceparent": traceparent})
            assert ok.status_code == 200
            assert (await gw.http.get("/keyed/2")).status_code == 401

    with caplog.at_level(logging.INFO, logger="meshgate.access"):
        run(go())
    records = [r for r in caplog.records if r.name == "meshgate.access"]
    assert len(records) == 2
    first, second = records
    assert (first.route, first.status, first.principal, first.upstream) == ("keyed", 200, "alice", "orders")  # type: ignore[attr-defined]
    assert first.trace_id == trace and first.error is None and first.duration_ms > 0  # type: ignore[attr-defined]
    assert (second.status, second.error, second.principal) == (401, "unauthenticated", None)  # type: ignore[attr-defined]
    # Retries and the upstream's share of the time: none and no upstream call for the refused one.
    assert first.retries == 0 and 0 < first.upstream_ms <= first.duration_ms  # type: ignore[attr-defined]
    assert second.retries == 0 and second.upstream_ms is None  # type: ignore[attr-defined]


def test_the_sidecar_logs_one_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    from mesh.measure import RequestMetrics
    from mesh.transport.messages import Request, error_response
    from shared.telemetry.metrics import Registry

    async def handler(request: Request, who: str) -> object:
        return error_response(503, "no_healthy_upstream", "none")

    measured = RequestMetrics(Registry(), access_log=True).wrap("outbound", handler, lambda r, w: "orders")  # type: ignore[arg-type]

    async def go() -> None:
        await measured(Request("GET", "/x?y=1", "orders", headers=[("x-meshgate-attempt", "2")]), "app")

    with caplog.at_level(logging.INFO, logger="meshgate.access"):
        run(go())
    (record,) = [r for r in caplog.records if r.name == "meshgate.access"]
    assert (record.direction, record.peer, record.path, record.status, record.error, record.attempt) == (  # type: ignore[attr-defined]
        "outbound", "orders", "/x", 503, "no_healthy_upstream", "2",
    )  # fmt: skip
