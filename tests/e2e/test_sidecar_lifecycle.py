"""A sidecar's lifecycle: SIGTERM drains (deregisters, finishes in-flight requests) and exits 0;
``POST /quitquitquit`` on the admin port stops it the same way (for jobs)."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path

from e2e_lib import MeshStack, Processes, copy_policies, dump_logs, start_echo_app, wait_until


def _instances(cp_url: str, admin_token: str, service: str) -> list[dict[str, object]]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(
        f"{cp_url}/v1/services/{service}", headers={"authorization": f"Bearer {admin_token}"}
    )
    with urllib.request.urlopen(req, timeout=5, context=ctx) as response:
        data: list[dict[str, object]] = json.load(response)
        return data


def test_sigterm_and_quitquitquit_deregister_and_exit_cleanly(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    try:
        stack = MeshStack(procs, tmp_path)
        cp_url = stack.start_control_plane(copy_policies(tmp_path / "policies"))
        admin_token = (stack.data / "admin-token").read_text().strip()
        app = start_echo_app(procs, "orders")
        token = stack.token("orders", "--reusable")

        def start(name: str) -> str:
            sidecar = stack.start_sidecar("orders", app, name=name, token=token)
            wait_until(lambda: len(_instances(cp_url, admin_token, "orders")) >= 1, what=f"{name} registered")
            return sidecar.admin_url

        start("first")
        assert procs.stop("first") == 0  # SIGTERM: drained and deregistered
        assert _instances(cp_url, admin_token, "orders") == []

        url = start("second")
        req = urllib.request.Request(f"{url}/quitquitquit", method="POST")
        with urllib.request.urlopen(req, timeout=5) as response:
            assert response.status == 200
        proc = procs.procs["second"]
        assert proc.wait(20) == 0
        assert _instances(cp_url, admin_token, "orders") == []
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()
