"""The control plane's HTTP API: bad input, the catalog with health, blocking queries, watcher clean-up,
OpenAPI and metrics. One in-process control plane per module; tests use their own instance ids."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cp_testlib import Endpoint, InProcessControlPlane, error_of, join, register_body, wait_until

from mesh.controlplane.api import build_app
from mesh.controlplane.schemas import MAX_BODY_BYTES

# ----- bad input -------------------------------------------------------------------------------------------


def test_malformed_json_is_400_with_the_reason(ep: Endpoint) -> None:
    with ep.admin() as http:
        r = http.post(
            "/v1/register", content=b'{"service": "orders",', headers={"content-type": "application/json"}
        )
    assert r.status_code == 400
    code, message = error_of(r)
    assert code == "bad_json" and "not valid JSON" in message and "line 1" in message


def test_json_that_is_not_an_object_is_400(ep: Endpoint) -> None:
    with ep.admin() as http:
        r = http.post("/v1/register", json=["orders"])
    assert r.status_code == 400 and "JSON object" in error_of(r)[1]


def test_unknown_field_is_400_naming_it(ep: Endpoint) -> None:
    with ep.admin() as http:
        r = http.post("/v1/register", json=register_body("orders", weight=3))
        nested = http.post("/v1/register", json=register_body("orders", check={"type": "http", "pth": "/h"}))
    assert r.status_code == 400
    code, message = error_of(r)
    assert code == "invalid_body" and "weight: unknown field" in message
    assert nested.status_code == 400 and "check.pth: unknown field" in error_of(nested)[1]


def test_body_over_64_kib_is_413(ep: Endpoint) -> None:
    big = json.dumps(register_body("orders", metadata={"k": "x" * (MAX_BODY_BYTES + 10)})).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming too
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    with ep.admin() as http:
        declared = http.post("/v1/register", content=big, headers={"content-type": "application/json"})
        streamed = http.post("/v1/register", content=chunks(), headers={"content-type": "application/json"})
        under = http.post("/v1/register", json=register_body("orders", metadata={"k": "x" * 2000}))
    assert declared.status_code == 413 and error_of(declared)[0] == "body_too_large"
    assert streamed.status_code == 413
    assert under.status_code == 400 and "1024" in error_of(under)[1]  # within the limit, checked as usual


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("address", "orders.local", "not an IP address"),
        ("address", "10.0.0.256", "not an IP address"),
        ("port", 70000, "port"),
        ("ttl", "0s", "ttl must be between"),
        ("service", "Orders!", "service"),
    ],
)
def test_invalid_fields_are_400(ep: Endpoint, field: str, value: object, needle: str) -> None:
    with ep.admin() as http:
        r = http.post("/v1/register", json=register_body("orders") | {field: value})
    assert r.status_code == 400, r.text
    assert needle in error_of(r)[1]


def test_bad_query_parameters_are_400(ep: Endpoint) -> None:
    with ep.admin() as http:
        for query in ("index=abc", "index=-1", "index=1&wait=soon"):
            r = http.get(f"/v1/snapshot?{query}")
            assert r.status_code == 400, query


# ----- catalog and health -----------------------------------------------------------------------------------


def _views(ep: Endpoint, service: str) -> dict[str, dict[str, object]]:
    with ep.admin() as http:
        r = http.get(f"/v1/services/{service}")
    assert r.status_code == 200, r.text
    return {v["id"]: v for v in r.json()}


def test_services_list_instances_with_health(ep: Endpoint) -> None:
    with ep.admin() as http:
        body = register_body(
            "web", 41, id="web-41", metadata={"version": "v2"}, check={"type": "http", "path": "/h"}
        )
        assert http.post("/v1/register", json=body).status_code == 201
        every = http.get("/v1/services").json()
        declared_empty = http.get("/v1/services/catalog")
        unknown = http.get("/v1/services/nosuch")
    assert "web" in every
    view = next(v for v in every["web"] if v["id"] == "web-41")
    assert view["health"] == "passing" and view["address"] == "10.1.0.41" and view["port"] == 15006
    assert view["metadata"] == {"version": "v2"} and view["lastHeartbeat"] is not None
    assert declared_empty.status_code == 200  # declared in policies/services.yaml
    assert unknown.status_code == 404 and error_of(unknown)[0] == "not_found"


def test_heartbeat_statuses_are_reflected_and_critical_leaves_the_snapshot(ep: Endpoint) -> None:
    workload = join(ep, "orders")
    with workload.client() as http:
        assert http.post("/v1/register", json=register_body("orders", 51, id="orders-51")).status_code == 201
        for status in ("warning", "critical", "passing"):
            r = http.put("/v1/heartbeat/orders-51", json={"status": status, "output": f"app says {status}"})
            assert r.status_code == 200, r.text
            view = _views(ep, "orders")["orders-51"]
            assert view["health"] == status and view["checkOutput"] == f"app says {status}"
            snap = http.get("/v1/snapshot").json()
            ids = {e["id"]: e["health"] for e in snap["endpoints"].get("orders", [])}
            if status == "critical":
                assert "orders-51" not in ids
            else:
                assert ids["orders-51"] == status
        assert http.put("/v1/heartbeat/orders-51", json={"status": "dead"}).status_code == 400
        assert http.put("/v1/heartbeat/orders-nosuch", json={}).status_code == 404


def test_deregister_removes_the_instance(ep: Endpoint) -> None:
    workload = join(ep, "orders")
    with workload.client() as http:
        assert http.post("/v1/register", json=register_body("orders", 61, id="orders-61")).status_code == 201
        assert "orders-61" in _views(ep, "orders")
        r = http.delete("/v1/register/orders-61")
        assert r.status_code == 200 and r.json()["id"] == "orders-61"
        assert "orders-61" not in _views(ep, "orders")
        endpoints = http.get("/v1/snapshot").json()["endpoints"].get("orders", [])
        assert "orders-61" not in {e["id"] for e in endpoints}
        assert http.delete("/v1/register/orders-61").status_code == 404


def test_missed_heartbeats_turn_critical_drop_out_then_get_reaped(tmp_path: Path) -> None:
    with InProcessControlPlane(tmp_path / "data", sweep_interval=0.1, reap_after=1.5) as plane:
        _missed_heartbeats(plane.endpoint)


def _missed_heartbeats(ep: Endpoint) -> None:
    with ep.admin() as http:
        assert (
            http.post("/v1/register", json=register_body("orders", 71, id="orders-71", ttl="1s")).status_code
            == 201
        )
        assert (
            http.post("/v1/register", json=register_body("orders", 72, id="orders-72", ttl="1h")).status_code
            == 201
        )
        index = int(http.get("/v1/snapshot").json()["index"])

        # a watcher hears about the health change (a new index) without anyone calling the API
        r = http.get(f"/v1/snapshot?index={index}&wait=5s")
        assert r.status_code == 200 and int(r.json()["index"]) > index
        health = wait_until(
            lambda: _views(ep, "orders").get("orders-71", {}).get("health") == "critical",
            5,
            "orders-71 critical",
        )
        assert health
        snap = http.get("/v1/snapshot").json()
        assert {e["id"] for e in snap["endpoints"]["orders"]} == {"orders-72"}
        assert http.get("/v1/status").json()["registry"]["health"]["critical"] == 1

        wait_until(lambda: "orders-71" not in _views(ep, "orders"), 5, "orders-71 to be reaped")
        assert "orders-72" in _views(ep, "orders")
        # a heartbeat for a reaped instance: 404, so the sidecar knows to register again
        assert http.put("/v1/heartbeat/orders-71", json={}).status_code == 404


def test_a_late_heartbeat_brings_a_critical_instance_back(fresh_cp: InProcessControlPlane) -> None:
    ep = fresh_cp.endpoint
    with ep.admin() as http:
        assert (
            http.post("/v1/register", json=register_body("web", 81, id="web-81", ttl="1s")).status_code == 201
        )
        wait_until(lambda: _views(ep, "web")["web-81"]["health"] == "critical", 5, "web-81 critical")
        assert http.put("/v1/heartbeat/web-81", json={"status": "passing"}).status_code == 200
        assert _views(ep, "web")["web-81"]["health"] == "passing"
        assert "web-81" in {e["id"] for e in http.get("/v1/snapshot").json()["endpoints"]["web"]}


# ----- blocking queries ------------------------------------------------------------------------------------


def test_blocking_query_returns_at_once_when_the_index_is_past_n(ep: Endpoint) -> None:
    index = ep.index()
    with ep.admin() as http:
        started = time.monotonic()
        r = http.get(f"/v1/snapshot?index={index - 1}&wait=10s")
        elapsed = time.monotonic() - started
    assert r.status_code == 200 and int(r.headers["x-meshgate-index"]) >= index
    assert elapsed < 1.0


def test_blocking_query_without_a_change_returns_after_wait(ep: Endpoint) -> None:
    index = ep.index()
    with ep.admin() as http:
        started = time.monotonic()
        r = http.get(f"/v1/snapshot?index={index}&wait=400ms")
        elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert int(r.json()["index"]) == index  # nothing changed: same index, caller asks again
    assert 0.35 <= elapsed < 3.0


def test_blocking_query_wakes_on_a_change(ep: Endpoint) -> None:
    async def scenario() -> tuple[float, dict[str, object]]:
        async with ep.async_admin() as http:
            index = int((await http.get("/v1/snapshot")).json()["index"])
            watch = asyncio.create_task(http.get(f"/v1/snapshot?index={index}&wait=20s"))
            await asyncio.sleep(0.3)
            assert not watch.done()
            changed = time.monotonic()
            r = await http.post("/v1/register", json=register_body("web", 91, id="web-91"))
            assert r.status_code == 201
            response = await asyncio.wait_for(watch, 5)
            return time.monotonic() - changed, response.json()

    elapsed, snap = asyncio.run(scenario())
    assert elapsed < 1.0
    assert "web-91" in {e["id"] for e in snap["endpoints"]["web"]}  # type: ignore[index]


def test_a_watcher_that_disconnects_mid_wait_is_cleaned_up(ep: Endpoint) -> None:
    def watchers() -> int:
        return int(ep.status()["registry"]["watchers"])

    assert watchers() == 0

    async def scenario() -> None:
        index = ep.index()
        async with ep.async_admin() as http:
            tasks = [asyncio.create_task(http.get(f"/v1/snapshot?index={index}&wait=60s")) for _ in range(3)]
            for _ in range(200):
                if await asyncio.to_thread(watchers) == 3:
                    break
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(watchers) == 3
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # the client (and its connections) are closed here

    asyncio.run(scenario())
    wait_until(lambda: watchers() == 0, 3, "watchers back to 0 after the clients went away")
    with ep.admin() as http:
        metrics = http.get("/metrics").text
    assert "meshgate_controlplane_watchers 0" in metrics


def test_snapshot_carries_policies_endpoints_bundle_and_version(ep: Endpoint) -> None:
    with ep.admin() as http:
        r = http.get("/v1/snapshot")
        bundle = http.get("/v1/bundle").json()
    snap = r.json()
    assert r.headers["x-meshgate-index"] == str(snap["index"])
    assert snap["trustDomain"] == "demo.meshgate.local"
    assert isinstance(snap["policyVersion"], str) and snap["policies"]
    assert snap["bundle"] == bundle and isinstance(snap["endpoints"], dict)


# ----- documents: OpenAPI and metrics ----------------------------------------------------------------------


def test_openapi_lists_every_endpoint(ep: Endpoint, shared_cp: InProcessControlPlane) -> None:
    with ep.anon() as http:
        r = http.get("/openapi.json")
    assert r.status_code == 200
    doc = json.loads(r.text)
    assert doc["openapi"].startswith("3.")
    assert shared_cp.cp is not None
    routes = {
        (route.path, method.lower())
        for route in build_app(shared_cp.cp).routes
        for method in route.methods or ()
    }  # type: ignore[attr-defined]
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    api = {(p, m) for p, m in routes if m != "head" and p != "/openapi.json" and not p.startswith("/ui")}
    assert api <= documented  # /ui is the dashboard (HTML), not the API
    register = doc["paths"]["/v1/register"]["post"]
    schema = register["requestBody"]["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False and {"service", "address", "port"} <= set(
        schema["required"]
    )


_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+$'
)


def test_metrics_are_prometheus_text(ep: Endpoint) -> None:
    with ep.admin() as http:
        http.post("/v1/register", json=register_body("web", 99, id="web-99"))
    with ep.anon() as http:
        r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families: dict[str, str] = {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
        elif line and not line.startswith("#"):
            assert _SAMPLE.match(line), line
            name = line.split("{")[0].split(" ")[0]
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in families or families.get(base) == "histogram", line
    assert families["meshgate_controlplane_registrations_total"] == "counter"
    assert families["meshgate_controlplane_watchers"] == "gauge"
    assert families["meshgate_controlplane_request_duration_seconds"] == "histogram"
    assert 'meshgate_controlplane_instances{service="web",health="passing"}' in r.text
    assert 'meshgate_controlplane_requests_total{route="/v1/register",code="201"}' in r.text
    assert "meshgate_config_last_reload_successful 1" in r.text
    assert 'meshgate_certificate_expiry_seconds{certificate="ca"}' in r.text


def test_health_endpoints_need_no_credentials(ep: Endpoint) -> None:
    with ep.anon() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert http.get("/v1/bundle").status_code == 200
        assert http.get("/v1/status").status_code == 401
        assert http.get("/v1/snapshot").status_code == 401
        assert http.get("/config").status_code == 401


def test_requests_on_a_kept_alive_connection_are_not_held_back_by_nagle(ep: Endpoint) -> None:
    with ep.anon() as http:
        assert http.get("/healthz").status_code == 200  # connect and handshake first
        started = time.monotonic()
        for _ in range(20):
            http.get("/healthz")
        elapsed = time.monotonic() - started
    assert elapsed < 0.4, f"20 requests took {elapsed:.2f}s (Nagle + delayed ACK costs ~40 ms each)"


def test_the_listener_speaks_tls_13_only(ep: Endpoint) -> None:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=ctx, timeout=5) as http, pytest.raises(httpx.ConnectError):
        http.get(f"{ep.url}/healthz")


def test_a_service_of_another_namespace_is_never_merged_into_the_mesh_namespaces(ep: Endpoint) -> None:
    """ns/sandbox/sa/orders was listed with ns/default/sa/orders under "orders": callers of orders
    sent production traffic to the sandbox instance (its certificate matched what it registered)."""
    with ep.admin() as http:
        prod = http.post("/v1/register", json=register_body("orders", 81, id="orders-81"))
        sandbox = http.post(
            "/v1/register", json=register_body("orders", 82, id="orders-82", namespace="sandbox")
        )
        assert prod.status_code == 201 and sandbox.status_code == 201, (prod.text, sandbox.text)
        endpoints = http.get("/v1/snapshot").json()["endpoints"]
        try:
            assert "orders-82" not in {e["id"] for e in endpoints.get("orders", [])}
            assert "orders-81" in {e["id"] for e in endpoints["orders"]}
            assert [e["id"] for e in endpoints["orders.sandbox"]] == ["orders-82"]
            assert endpoints["orders.sandbox"][0]["identity"].endswith("/ns/sandbox/sa/orders")
        finally:
            http.delete("/v1/register/orders-81")
            http.delete("/v1/register/orders-82")


def test_an_index_from_the_future_gets_a_full_snapshot_at_once(ep: Endpoint) -> None:
    """A sidecar restarting from its cache against a reset store waited out the whole wait (stale
    configuration for up to 30 s) and got no delta base it could use."""
    with ep.admin() as http:
        current = int(http.get("/v1/snapshot").headers["x-meshgate-index"])
        started = time.monotonic()
        r = http.get(f"/v1/snapshot?index={current + 1000}&wait=5s&delta=1")
        elapsed = time.monotonic() - started
    assert r.status_code == 200 and elapsed < 2, elapsed
    assert int(r.headers["x-meshgate-index"]) == current
    assert "endpoints" in r.json() and "trustDomain" in r.json()


def test_unknown_paths_and_methods_get_the_json_error_form(ep: Endpoint) -> None:
    with ep.admin() as http:
        missing = http.get("/v1/nosuch")
        method = http.delete("/v1/snapshot")
    assert missing.status_code == 404 and error_of(missing)[0] == "not_found"
    assert method.status_code == 405 and error_of(method)[0] == "method_not_allowed"
    assert set(method.headers["allow"].split(", ")) == {"GET", "HEAD"}
