"""Chaos 6: SIGTERM drains a sidecar under live load.

- One of two ``orders`` sidecars (the callee side), with load through the gateway and through the
  ``web`` sidecar: zero failed requests, the requests it had in flight are answered, the drained
  instance leaves the registry and every caller's endpoints, and the process exits 0 within its drain
  timeout.
- The ``web`` sidecar (the caller side) while its app has requests in flight through the outbound
  proxy: those requests are in-flight requests of the sidecar too, and finish (docs/guide.md
  "Upgrades": SIGTERM drains, in-flight requests finish within ``--drain-timeout``).
- The gateway, with requests in flight (docs/guide.md "Upgrades" says the same of gateways).

tests/e2e/test_sidecar_lifecycle.py covers SIGTERM and ``/quitquitquit`` without load or a second
replica.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from chaos_lib import (
    ControlPlaneAdmin,
    LoadGenerator,
    MeshStack,
    Outcome,
    Target,
    assert_no_failures,
    between,
    chaos_stack,
    endpoint_count,
    free_port,
    mesh_policies,
    sigterm,
    start_slow_echo_app,
    summary,
    wait_until,
)

pytestmark = pytest.mark.slow

DRAIN_TIMEOUT = 10.0  # the sidecar's default --drain-timeout, given explicitly
SLOW = 1.5  # seconds the app takes to answer the slow requests


def test_sigterm_drains_a_replica_under_load(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, mesh_policies()) as (stack, _policies):
        cp = ControlPlaneAdmin(stack)
        token = stack.token("orders", "--reusable")
        replicas = [
            stack.start_sidecar(
                "orders",
                start_slow_echo_app(stack.procs, f"orders-{i}"),
                "--drain-timeout",
                f"{DRAIN_TIMEOUT:g}s",
                name=f"orders-{i}",
                token=token,
            )
            for i in (1, 2)
        ]
        web = stack.start_sidecar("web", free_port())
        gateway = stack.start_gateway(knows=["orders"])
        callers = {"gateway": gateway.admin_url, "mesh": web.admin_url}
        wait_until(
            lambda: all(endpoint_count(url, "orders") == 2 for url in callers.values()),
            what="both callers to know both replicas",
        )
        ports = {i["id"]: i["port"] for i in cp.instances("orders")}
        (survivor,) = [iid for iid, port in ports.items() if port == replicas[1].inbound]

        targets = [
            Target("gateway", f"{gateway.url}/api/x"),
            Target("mesh", "http://orders/orders/x", proxy=web.proxy),
            # requests that take a while: some are in flight on the drained replica when it gets SIGTERM
            Target("slow", f"{gateway.url}/api/slow?delay={SLOW}", workers=4),
        ]
        with LoadGenerator(targets, workers=2, pause=0.02) as load:
            load.wait_progress(20, only=["gateway", "mesh"])
            load.wait_progress(4, only=["slow"])
            time.sleep(SLOW / 3)  # the next slow requests are on their way
            t_term = time.monotonic()
            code, exited_after = sigterm(stack.procs, "orders-1", DRAIN_TIMEOUT + 5)
            # deregistered before it exited: only the other replica is left
            assert [i["id"] for i in cp.instances("orders")] == [survivor]
            wait_until(
                lambda: all(endpoint_count(url, "orders") == 1 for url in callers.values()),
                what="both callers to drop the drained endpoint",
            )
            t_gone = time.monotonic()
            load.wait_progress(20, only=["gateway", "mesh"])
            load.wait_progress(4, only=["slow"])
        outcomes = load.outcomes
        print(summary(outcomes), f"exit {code} after {exited_after:.2f}s")
        assert code == 0, f"exit code {code} (None: still running {exited_after:.0f}s after SIGTERM)"
        assert exited_after <= DRAIN_TIMEOUT, f"exited {exited_after:.1f}s after SIGTERM"
        assert between(outcomes, t_term, t_gone), "no load during the drain"
        assert_no_failures(outcomes, minimum=8)
        assert {o.service for o in outcomes if o.started > t_gone} == {"orders-2"}
        # requests the drained replica had in flight were answered by it
        finished = [o for o in outcomes if o.service == "orders-1" and o.started < t_term < o.ended]
        assert finished, "no request was in flight on the drained replica"


def _sigterm_with_requests_in_flight(
    stack: MeshStack, name: str, targets: list[Target]
) -> tuple[int | None, float, list[Outcome]]:
    """Load ``targets`` (slow ones included), SIGTERM process ``name`` while slow requests are in flight,
    wait for it to exit; returns its exit code, how long it took, and the requests sent before SIGTERM
    (the callers stop sending with it: only those are judged)."""
    load = LoadGenerator(targets, workers=2, pause=0.02)
    load.start()
    try:
        load.wait_progress(4, only=["slow"])
        time.sleep(0.5)  # the next slow requests are on their way (they take 2 * SLOW)
        t_term = time.monotonic()
        code, exited_after = sigterm(stack.procs, name, DRAIN_TIMEOUT + 5)
    finally:
        outcomes = load.stop()
    sent = [o for o in outcomes if o.started < t_term]
    in_flight = [o for o in sent if o.ended > t_term]
    print(summary(sent), f"in flight: {summary(in_flight)}; exit {code} after {exited_after:.2f}s")
    assert [o for o in in_flight if o.target == "slow"], "no slow request was in flight at SIGTERM"
    return code, exited_after, sent


def test_sigterm_on_a_calling_sidecar_lets_its_in_flight_outbound_requests_finish(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, mesh_policies()) as (stack, _policies):
        stack.start_sidecar("orders", start_slow_echo_app(stack.procs, "orders"))
        web = stack.start_sidecar("web", free_port(), "--drain-timeout", f"{DRAIN_TIMEOUT:g}s")
        web.wait_knows("orders")
        targets = [
            Target("slow", f"http://orders/orders/slow?delay={2 * SLOW}", proxy=web.proxy, workers=4),
            Target("fast", "http://orders/orders/x", proxy=web.proxy),
        ]
        code, exited_after, sent = _sigterm_with_requests_in_flight(stack, "sidecar-web", targets)
        assert code == 0, f"exit code {code} (None: still running {exited_after:.0f}s after SIGTERM)"
        assert exited_after <= DRAIN_TIMEOUT
        assert_no_failures(sent, minimum=4)


def test_sigterm_on_the_gateway_lets_its_in_flight_requests_finish(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, mesh_policies()) as (stack, _policies):
        stack.start_sidecar("orders", start_slow_echo_app(stack.procs, "orders"))
        gateway = stack.start_gateway(knows=["orders"])
        targets = [
            Target("slow", f"{gateway.url}/api/slow?delay={2 * SLOW}", workers=4),
            Target("fast", f"{gateway.url}/api/x"),
        ]
        code, exited_after, sent = _sigterm_with_requests_in_flight(stack, "gateway", targets)
        assert code == 0, f"exit code {code} (None: still running {exited_after:.0f}s after SIGTERM)"
        assert exited_after <= DRAIN_TIMEOUT
        assert_no_failures(sent, minimum=4)
