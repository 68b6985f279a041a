"""Chaos 2: the control plane is SIGKILLed under live load and started again on the same port and data
directory.

Traffic gateway -> sidecar -> app and app -> sidecar -> sidecar -> app goes on with zero failed
requests on the cached configuration while it is away (every workload stays ready); after the restart
the watches reconnect (a new route and a new AccessPolicy written after the restart are in force in the
gateway and the sidecars within a bounded time) and nothing is lost (the same instances are listed,
passing, with fresh heartbeats). tests/e2e/test_static_stability.py covers a sidecar *restart* during an
outage, without load.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from chaos_lib import (
    ControlPlaneAdmin,
    LoadGenerator,
    Target,
    admin_config,
    assert_no_failures,
    between,
    chaos_stack,
    free_port,
    http_ok,
    mesh_policies,
    policy_version,
    route,
    sigkill,
    start_echo_app,
    summary,
    wait_until,
    write_atomic,
)

pytestmark = pytest.mark.slow

ACCESS = """\
apiVersion: meshgate/v1
kind: AccessPolicy
name: orders-access
target: {service: orders}
rules:
  - name: nothing-forbidden
    action: deny
    to: {paths: ["/orders/forbidden", "/orders/forbidden/*"]}
  - name: callers
    action: allow
    from: {services: [web, gateway]}
"""


def test_control_plane_sigkill_and_restart_under_load(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, mesh_policies()) as (stack, policies):
        cp = ControlPlaneAdmin(stack)
        beat = ("--heartbeat", "1s")
        orders = stack.start_sidecar(
            "orders", start_echo_app(stack.procs, "orders"), "--check", "http", *beat
        )
        web = stack.start_sidecar("web", free_port(), *beat)  # only its outbound proxy is used
        web.wait_knows("orders")
        gateway = stack.start_gateway(knows=["orders"])
        before = {s: set(cp.health(s)) for s in ("orders", "web")}
        assert all(len(ids) == 1 for ids in before.values()), before
        workloads = {"gateway": gateway.admin_url, "orders": orders.admin_url, "web": web.admin_url}

        targets = [
            Target("gateway", f"{gateway.url}/api/x"),
            Target("mesh", "http://orders/orders/x", proxy=web.proxy),
        ]
        with LoadGenerator(targets, workers=2, pause=0.02) as load:
            load.wait_progress(10)
            t_kill = time.monotonic()
            sigkill(stack.procs, "cp")
            time.sleep(3)  # a few watch and heartbeat retries fail meanwhile
            load.wait_progress(10)  # static stability: cached configuration, connections kept
            assert all(http_ok(f"{url}/readyz") for url in workloads.values())
            t_restart = time.monotonic()
            stack.procs.start("cp", *stack.cp_argv)  # same port, same data directory
            wait_until(lambda: http_ok(f"{stack.cp_url}/readyz"), what="control plane ready again")
            restarted_at = time.time()

            # the watches reconnect: a change made after the restart reaches every workload
            write_atomic(
                policies / "edge.yaml",
                route("orders-api", "/api", "orders") + "---\n" + route("fresh", "/fresh", "orders"),
            )
            write_atomic(policies / "access.yaml", ACCESS)
            version = policy_version(policies)

            def in_force() -> bool:
                return (
                    admin_config(gateway.admin_url)["policy_version"] == version
                    and admin_config(orders.admin_url)["policyVersion"] == version
                    and admin_config(web.admin_url)["policyVersion"] == version
                )

            wait_until(in_force, timeout=30, what=f"policy version {version} in every workload")
            with httpx.Client(timeout=20, trust_env=False) as client:
                assert client.get(f"{gateway.url}/fresh/x").status_code == 200
            with httpx.Client(timeout=20, trust_env=False, proxy=web.proxy) as client:
                denied = client.get("http://orders/orders/forbidden")
                assert (denied.status_code, denied.headers.get("x-meshgate-error")) == (403, "policy_denied")

            # nothing lost: the same instances, passing, heartbeating to the new process
            def registered_again() -> bool:
                for service, ids in before.items():
                    instances = cp.instances(service)
                    if {i["id"] for i in instances} != ids:
                        return False
                    if any(
                        i["health"] != "passing" or (i["lastHeartbeat"] or 0) <= restarted_at
                        for i in instances
                    ):
                        return False
                return True

            wait_until(registered_again, timeout=20, what="the same instances passing with fresh heartbeats")
            load.wait_progress(10)
        outcomes = load.outcomes
        assert between(outcomes, t_kill, t_restart), "no load while the control plane was down"
        print(summary(outcomes), len(between(outcomes, t_kill, t_restart)))
        assert_no_failures(outcomes, minimum=30)
