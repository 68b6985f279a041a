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
from pathlib import Path

import pytest
from e2e_lib import MESHGATE, Processes, copy_policies, free_port, http_ok, wait_until


@dataclass
class Mesh:
    procs: Processes
    cp_url: str
    web_proxy: str
    orders_admin: str
    web_admin: str
    trust_domain: str = "demo.meshgate.local"


def _token(data: Path, service: str, tmp: Path) -> Path:
    out = subprocess.run(
        [MESHGATE, "token", "create", "--data-dir", str(data), "--service", service],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    path = tmp / f"{service}.token"
    path.write_text(out.stdout)
    return path


def _sidecar(
    procs: Processes, tmp: Path, data: Path, cp_url: str, service: str, app_port: int
) -> tuple[str, str]:
    inbound, outbound, admin = free_port(), free_port(), free_port()
    procs.start(
        f"sidecar-{service}",
        MESHGATE,
        "sidecar",
        "--service",
        service,
        "--app",
        f"http://127.0.0.1:{app_port}",
        "--control-plane",
        cp_url,
        "--token",
        str(_token(data, service, tmp)),
        "--cache-dir",
        str(tmp / f"cache-{service}"),
        "--inbound",
        f"127.0.0.1:{inbound}",
        "--outbound",
        f"127.0.0.1:{outbound}",
        "--admin",
        f"127.0.0.1:{admin}",
    )
    return f"http://127.0.0.1:{outbound}", f"http://127.0.0.1:{admin}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    procs = Processes(tmp)
    try:
        policies = copy_policies(tmp / "policies")
        data = tmp / "cp"
        cp_port = free_port()
        cp_url = f"https://127.0.0.1:{cp_port}"
        procs.start(
            "cp",
            MESHGATE,
            "control-plane",
            "--policies",
            str(policies),
            "--data-dir",
            str(data),
            "--listen",
            f"127.0.0.1:{cp_port}",
        )
        wait_until(lambda: http_ok(f"{cp_url}/readyz"), what="control plane ready")
        for name in ("orders", "web"):
            port = free_port()
            procs.start(
                f"app-{name}", sys.executable, "examples/echo_app.py", "--name", name, "--port", str(port)
            )
            if name == "orders":
                _, orders_admin = _sidecar(procs, tmp, data, cp_url, "orders", port)
            else:
                web_proxy, web_admin = _sidecar(procs, tmp, data, cp_url, "web", port)
        for admin in (orders_admin, web_admin):
            wait_until(lambda admin=admin: http_ok(f"{admin}/readyz"), what=f"{admin} ready")

        def web_knows_orders() -> bool:
            with urllib.request.urlopen(f"{web_admin}/config", timeout=2) as response:
                return bool(json.load(response)["endpoints"].get("orders"))

        wait_until(web_knows_orders, what="web's sidecar to learn the orders endpoint")
        yield Mesh(procs, cp_url, web_proxy, orders_admin, web_admin)
    except BaseException:
        for name in list(procs.procs):
            sys.stderr.write(f"--- {name} ---\n{procs.log(name)[-3000:]}\n")
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
    assert "meshgate_certificate_expiry_seconds" in text and "meshgate_ready 1" in text
    web = f"spiffe://{mesh.trust_domain}/ns/default/sa/web"
    assert f'meshgate_requests_total{{direction="inbound",peer="{web}",code="200"}}' in text
    assert f'meshgate_requests_total{{direction="inbound",peer="{web}",code="403"}}' in text
    assert 'meshgate_local_errors_total{direction="inbound",error="policy_denied"}' in text
    assert f'meshgate_request_duration_seconds_count{{direction="inbound",peer="{web}"}}' in text


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
