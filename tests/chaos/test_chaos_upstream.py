"""Chaos 3: one of two ``orders`` replicas dies (SIGKILL of its app, or of its sidecar) under a load of
idempotent GETs through the gateway and through another sidecar's outbound proxy.

``orders``' traffic policy (as in policies/services.yaml) retries twice on another endpoint and ejects
an endpoint after 5 consecutive 5xx or connect failures: every request succeeds (zero failures), the
callers eject the dead endpoint, and the control plane then marks the instance critical and drops it
from the endpoints every caller gets. tests/e2e/test_health_e2e.py covers the health transitions
without load or a second replica.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from chaos_lib import (
    ControlPlaneAdmin,
    LoadGenerator,
    Target,
    assert_no_failures,
    between,
    chaos_stack,
    endpoint_count,
    free_port,
    mesh_policies,
    metric,
    sigkill,
    start_slow_echo_app,
    summary,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("victim", ["app", "sidecar"])
def test_a_replica_killed_under_load_costs_no_request(tmp_path: Path, victim: str) -> None:
    with chaos_stack(tmp_path, mesh_policies()) as (stack, _policies):
        cp = ControlPlaneAdmin(stack)
        token = stack.token("orders", "--reusable")
        replicas = []
        # The callers must see 5 failures of the dead endpoint before the registry drops it. A killed
        # sidecar stops heartbeating and leaves after its TTL (15 s at least), long after its
        # connect failures. A killed app leaves at its sidecar's next app check: every 2 s, a caller
        # with a light share of the load could lose that race on a busy machine (seen in 1 of 4 CI
        # runs), so the app checks run every 20 s there.
        heartbeat = "20s" if victim == "app" else "2s"
        for i in (1, 2):
            app = start_slow_echo_app(stack.procs, f"orders-{i}")
            replicas.append(
                stack.start_sidecar(
                    "orders",
                    app,
                    "--check",
                    "http",
                    "--heartbeat",
                    heartbeat,
                    name=f"orders-{i}",
                    token=token,
                )
            )
        web = stack.start_sidecar("web", free_port())
        gateway = stack.start_gateway(knows=["orders"])
        callers = {"gateway": gateway.admin_url, "mesh": web.admin_url}
        wait_until(
            lambda: all(endpoint_count(url, "orders") == 2 for url in callers.values()),
            what="both callers to know both replicas",
        )
        health = cp.health("orders")
        assert sorted(health.values()) == ["passing", "passing"], health
        victim_id = next(i["id"] for i in cp.instances("orders") if i["port"] == replicas[0].inbound)

        targets = [
            Target("gateway", f"{gateway.url}/api/x"),
            Target("mesh", "http://orders/orders/x", proxy=web.proxy),
            # requests that take a while: some are in flight on the victim when it dies
            Target("slow", f"{gateway.url}/api/slow?delay=1.5", workers=4),
        ]
        with LoadGenerator(targets, workers=2, pause=0.02) as load:
            load.wait_progress(20, only=["gateway", "mesh"])
            load.wait_progress(4, only=["slow"])
            time.sleep(0.5)  # the next slow requests are on their way
            t_kill = time.monotonic()
            sigkill(stack.procs, "app-orders-1" if victim == "app" else "orders-1")
            # the callers eject it on their own (outlier detection) ...
            wait_until(
                lambda: all(
                    (metric(url, "meshgate_upstream_ejections_total", service="orders") or 0) >= 1
                    for url in callers.values()
                ),
                timeout=20,
                what="both callers to eject the dead endpoint",
            )
            # ... and the registry marks it critical (failed app check, or no heartbeat for its TTL), so
            # that it leaves the endpoints of every caller
            wait_until(
                lambda: cp.health("orders").get(victim_id) == "critical",
                timeout=30,
                what="the control plane to mark the dead instance critical",
            )
            wait_until(
                lambda: all(endpoint_count(url, "orders") == 1 for url in callers.values()),
                what="both callers to drop the dead endpoint",
            )
            t_dropped = time.monotonic()
            load.wait_progress(20, only=["gateway", "mesh"])
            load.wait_progress(4, only=["slow"])
        outcomes = load.outcomes
        print(summary(outcomes), len(between(outcomes, t_kill, t_dropped)))
        assert between(outcomes, t_kill, t_dropped), "no load between the kill and the endpoint's removal"
        assert_no_failures(outcomes, minimum=8)
        survivors = {o.service for o in outcomes if o.started > t_dropped}
        assert survivors == {"orders-2"}, survivors
