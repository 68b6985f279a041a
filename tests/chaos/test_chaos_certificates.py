"""Chaos 4: certificates change under live load.

- SVID renewal: with ``certificateTTL: 1m`` (leaves are backdated 30 s, so they live 90 s and are renewed
  at 45-55 % of that: 10-20 s after they were issued), every workload renews while the load runs:
  ``meshgate_certificate_expiry_seconds{certificate="svid"}`` jumps up on the gateway's and both
  sidecars' admin ports, with zero failed requests. (shared/config/model/mesh.py accepts any positive
  duration: there is no minimum TTL.)
- Root rotation (docs/identity.md): ``meshgate ca rotate`` under load, every workload renews under the
  new root (its cached SVID chains to it), ``meshgate ca rotate --finish`` drops the old root, zero
  failed requests; a workload that joins after the rotation can call the others.
"""

from __future__ import annotations

import base64
import json
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
    meshgate,
    metric,
    start_echo_app,
    summary,
    wait_until,
)
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

pytestmark = pytest.mark.slow


def _expiry(admin_url: str) -> float:
    value = metric(admin_url, "meshgate_certificate_expiry_seconds", certificate="svid")
    assert value is not None
    return value


def test_svids_renew_at_half_life_under_load(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, mesh_policies(certificate_ttl="1m")) as (stack, _policies):
        orders = stack.start_sidecar("orders", start_echo_app(stack.procs, "orders"))
        web = stack.start_sidecar("web", free_port())
        web.wait_knows("orders")
        gateway = stack.start_gateway(knows=["orders"])
        workloads = {"gateway": gateway.admin_url, "orders": orders.admin_url, "web": web.admin_url}
        last = {name: _expiry(url) for name, url in workloads.items()}
        assert all(0 < v <= 60 for v in last.values()), last
        renewed: dict[str, float] = {}

        def all_renewed() -> bool:
            for name, url in workloads.items():
                now = _expiry(url)
                if now > last[name] + 5:  # a new certificate: its expiry moved forward
                    renewed.setdefault(name, now)
                last[name] = now
            return len(renewed) == len(workloads)

        targets = [
            Target("gateway", f"{gateway.url}/api/x"),
            Target("mesh", "http://orders/orders/x", proxy=web.proxy),
        ]
        with LoadGenerator(targets, workers=2, pause=0.02) as load:
            load.wait_progress(10)
            wait_until(all_renewed, timeout=35, what="every workload to renew its SVID")
            load.wait_progress(10)
        outcomes = load.outcomes
        print(summary(outcomes), renewed)
        assert_no_failures(outcomes, minimum=50)


def _der(pem: bytes) -> str:
    return base64.b64encode(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).decode()


def _bundle_roots(cache: Path) -> list[str]:
    """The roots (base64 DER) of the trust bundle in the last snapshot a workload cached."""
    bundle = json.loads((cache / "snapshot.json").read_text())["bundle"]
    return [key["x5c"][0] for key in bundle["keys"]]


def _issued_by(cache: Path, root_pem: bytes) -> bool:
    """True when the SVID a workload keeps in ``cache`` is signed by the root in ``root_pem``."""
    leaf = x509.load_pem_x509_certificates((cache / "svid.pem").read_bytes())[0]
    try:
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def test_ca_root_rotation_under_load(tmp_path: Path) -> None:
    with chaos_stack(tmp_path, mesh_policies()) as (stack, _policies):
        beat = ("--heartbeat", "1s")
        stack.start_sidecar("orders", start_echo_app(stack.procs, "orders"), *beat)
        web = stack.start_sidecar("web", free_port(), *beat)
        web.wait_knows("orders")
        gateway = stack.start_gateway(knows=["orders"])
        cp = ControlPlaneAdmin(stack)
        ca_dir = stack.data / "ca"
        caches = {
            "gateway": tmp_path / "cache-gateway",
            "orders": tmp_path / "cache-sidecar-orders",
            "web": tmp_path / "cache-sidecar-web",
        }
        targets = [
            Target("gateway", f"{gateway.url}/api/x"),
            Target("mesh", "http://orders/orders/x", proxy=web.proxy),
        ]
        with LoadGenerator(targets, workers=2, pause=0.02) as load:
            load.wait_progress(10)
            meshgate("ca", "rotate", "--dir", str(ca_dir))  # a second root: both trusted, the new one signs
            new_root = (ca_dir / "ca-2.pem").read_bytes()
            wait_until(
                lambda: all(_issued_by(cache, new_root) for cache in caches.values()),
                timeout=20,
                what="every workload to hold an SVID under the new root",
            )
            load.wait_progress(10)
            meshgate("ca", "rotate", "--dir", str(ca_dir), "--finish")  # the old root leaves the bundle
            finished = time.time()
            wait_until(
                lambda: all(_bundle_roots(cache) == [_der(new_root)] for cache in caches.values()),
                timeout=20,
                what="the bundle with only the new root in every workload",
            )
            # the control plane serves under the new root now: the workloads still reach it
            wait_until(
                lambda: all(
                    i["health"] == "passing" and i["lastHeartbeat"] > finished
                    for service in ("orders", "web")
                    for i in cp.instances(service)
                ),
                what="heartbeats after the rotation finished",
            )
            load.wait_progress(20)
            # a workload that joins now (token pinned to the new root) reaches orders over mTLS
            late = stack.start_sidecar("web", free_port(), name="late-web")
            late.wait_knows("orders")
            with LoadGenerator([Target("late", "http://orders/orders/x", proxy=late.proxy)]) as late_load:
                late_load.wait_progress(10)
            load.wait_progress(10)
        outcomes = load.outcomes + late_load.outcomes
        print(summary(outcomes), admin_config(gateway.admin_url)["identity"])
        assert_no_failures(outcomes, minimum=10)
