"""Chaos 5: the policy folder is edited under live load.

1. A harmless change (a route's timeout): the new version is in force in the gateway and every sidecar
   (admin ``/config``), zero failed requests.
2. A routing change (``/api`` now goes to ``catalog`` instead of ``orders``): zero failed requests, every
   request that starts once the gateway shows the new version reaches ``catalog``, and mesh traffic
   (``web`` -> ``orders``) is untouched.
3. A broken edit: the control plane reports it with FILE:LINE, the version in force stays everywhere,
   zero failed requests; removing it changes nothing either.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from chaos_lib import (
    ControlPlaneAdmin,
    LoadGenerator,
    Target,
    admin_config,
    assert_no_failures,
    chaos_stack,
    free_port,
    mesh_policies,
    policy_version,
    route,
    start_echo_app,
    summary,
    wait_until,
    write_atomic,
)

pytestmark = pytest.mark.slow

BROKEN = """\
apiVersion: meshgate/v1
kind: Route
name: broken
match: {path: {prefix: /broken}}
backends: [{service: orders}]
timeout: soon
"""


def test_policy_edits_under_load(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, mesh_policies()) as (stack, policies):
        cp = ControlPlaneAdmin(stack)
        orders = stack.start_sidecar("orders", start_echo_app(stack.procs, "orders"))
        catalog = stack.start_sidecar("catalog", start_echo_app(stack.procs, "catalog"))
        web = stack.start_sidecar("web", free_port())
        web.wait_knows("orders")
        gateway = stack.start_gateway(knows=["orders", "catalog"])
        sidecars = [orders.admin_url, catalog.admin_url, web.admin_url]

        def versions() -> set[str]:
            return {admin_config(gateway.admin_url)["policy_version"]} | {
                admin_config(url)["policyVersion"] for url in sidecars
            }

        def reload(text: str) -> tuple[str, float]:
            """Write edge.yaml; returns the new version and when the gateway first showed it."""
            write_atomic(policies / "edge.yaml", text)
            version = policy_version(policies)
            wait_until(lambda: versions() == {version}, timeout=20, what=f"version {version} everywhere")
            return version, time.monotonic()

        first = policy_version(policies)
        assert versions() == {first}
        targets = [
            Target("gateway", f"{gateway.url}/api/x"),
            Target("mesh", "http://orders/orders/x", proxy=web.proxy),
        ]
        with LoadGenerator(targets, workers=2, pause=0.02) as load:
            load.wait_progress(10)
            harmless, _ = reload(route("orders-api", "/api", "orders", timeout="9s"))
            assert harmless != first
            load.wait_progress(10)
            t_edit = time.monotonic()
            routed, t_routed = reload(route("orders-api", "/api", "catalog", timeout="9s"))
            load.wait_progress(20)

            write_atomic(policies / "broken.yaml", BROKEN)
            wait_until(
                lambda: "broken.yaml:6" in str(cp.get("/v1/status")["policy"]),
                what="the control plane to report the broken file",
            )
            load.wait_progress(10)
            assert versions() == {routed}
            (policies / "broken.yaml").unlink()
            wait_until(lambda: "broken.yaml" not in str(cp.get("/v1/status")["policy"]), what="error cleared")
            load.wait_progress(10)
            assert versions() == {routed}
        outcomes = load.outcomes
        print(summary(outcomes), cp.get("/v1/status")["policy"])
        assert_no_failures(outcomes, minimum=50)
        edge = [o for o in outcomes if o.target == "gateway"]
        assert {o.service for o in edge if o.ended < t_edit} == {"orders"}
        assert {o.service for o in edge if o.started > t_routed} == {"catalog"}
        assert {o.service for o in outcomes if o.target == "mesh"} == {"orders"}
