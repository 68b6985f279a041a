"""The mesh end to end: a control plane, two services each behind a sidecar, curl through the mesh.

Real processes, real mTLS between the sidecars, real HTTP/1.1 from curl, all on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2e_lib import MESHGATE, MeshStack, Processes, copy_policies, dump_logs, free_port


@dataclass
class Mesh:
    procs: Processes
    cp_url: str
    web_proxy: str
    orders_admin: str
    web_admin: str
    trust_domain: str = "demo.meshgate.local"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    procs = Processes(tmp)
    try:
        stack = MeshStack(procs, tmp)
        cp_url = stack.start_control_plane(copy_policies(tmp / "policies"))
        sidecars = {}
        for name in ("orders", "web"):
            port = free_port()
            procs.start(
                f"app-{name}", sys.executable, "examples/echo_app.py", "--name", name, "--port", str(port)
            )
            sidecars[name] = stack.start_sidecar(name, port)
        sidecars["web"].wait_knows("orders")
        yield Mesh(
            procs, cp_url, sidecars["web"].proxy, sidecars["orders"].admin_url, sidecars["web"].admin_url
        )
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()


def _curl(mesh: Mesh, url: str, *extra: str) -> tuple[int, dict[str, str], str]:
    out = subprocess.run(
        ["curl", "-s", "-i", "--max-time", "10", "-x", mesh.web_proxy, *extra, url],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def test_curl_through_two_sidecars_reaches_the_app_with_the_callers_identity(mesh: Mesh) -> None:
    status, _, body = _curl(mesh, "http://orders/orders/42")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["service"] == "orders" and seen["path"] == "/orders/42"
    assert seen["headers"]["x-meshgate-peer"] == f"spiffe://{mesh.trust_domain}/ns/default/sa/web"


def test_forged_peer_header_from_the_caller_is_replaced(mesh: Mesh) -> None:
    status, _, body = _curl(
        mesh, "http://orders/orders/1", "-H", "x-meshgate-peer: spiffe://evil/ns/x/sa/admin"
    )
    assert status == 200
    assert json.loads(body)["headers"]["x-meshgate-peer"] == f"spiffe://{mesh.trust_domain}/ns/default/sa/web"


def test_policy_denial_is_403_with_the_error_header(mesh: Mesh) -> None:
    status, headers, _ = _curl(mesh, "http://orders/admin/users")
    assert status == 403
    assert headers["x-meshgate-error"] == "policy_denied"


def test_encoded_path_trick_does_not_pass_the_deny_rule(mesh: Mesh) -> None:
    status, headers, _ = _curl(mesh, "http://orders/orders/..%2Fadmin", "--path-as-is")
    assert status == 403 and headers["x-meshgate-error"] == "policy_denied"


def test_unknown_service_is_503_no_healthy_upstream(mesh: Mesh) -> None:
    status, headers, _ = _curl(mesh, "http://nosuch/x")
    assert status == 503 and headers["x-meshgate-error"] == "no_healthy_upstream"


def test_post_body_reaches_the_app(mesh: Mesh) -> None:
    status, _, body = _curl(mesh, "http://orders/orders", "--data-binary", "x" * 100_000)
    assert status == 200
    assert json.loads(body)["bodyBytes"] == 100_000


def test_admin_endpoints(mesh: Mesh) -> None:
    with urllib.request.urlopen(f"{mesh.orders_admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'meshgate_certificate_expiry_seconds{certificate="svid"}' in text and "meshgate_ready 1" in text
    assert 'meshgate_sidecar_requests_total{direction="inbound",service="web",code="200"}' in text
    assert 'meshgate_sidecar_requests_total{direction="inbound",service="web",code="403"}' in text
    assert 'meshgate_sidecar_local_errors_total{direction="inbound",reason="policy_denied"}' in text
    assert 'meshgate_sidecar_request_duration_seconds_count{direction="inbound",service="web"}' in text
    assert 'meshgate_policy_denials_total{mode="enforce"}' in text


def test_wait_ready_returns_once_the_sidecar_is_ready(mesh: Mesh) -> None:
    done = subprocess.run(
        [MESHGATE, "wait-ready", "--admin", mesh.orders_admin, "--timeout", "5s"], timeout=30
    )
    assert done.returncode == 0


def test_wait_ready_fails_after_its_timeout_when_nothing_answers() -> None:
    done = subprocess.run(
        [MESHGATE, "wait-ready", "--admin", f"http://127.0.0.1:{free_port()}", "--timeout", "500ms"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "not ready after" in done.stderr
