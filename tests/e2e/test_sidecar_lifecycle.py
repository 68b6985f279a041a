"""A sidecar's lifecycle: SIGTERM drains (deregisters, finishes in-flight requests) and exits 0;
``POST /quitquitquit`` on the admin port stops it the same way (for jobs)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

from e2e_lib import MESHGATE, Processes, copy_policies, free_port, http_ok, wait_until


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
        policies = copy_policies(tmp_path / "policies")
        data = tmp_path / "cp"
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
        wait_until(lambda: http_ok(f"{cp_url}/readyz"), what="control plane")
        admin_token = (data / "admin-token").read_text().strip()
        app = free_port()
        procs.start("app", sys.executable, "examples/echo_app.py", "--name", "orders", "--port", str(app))
        token = subprocess.run(
            [MESHGATE, "token", "create", "--data-dir", str(data), "--service", "orders", "--reusable"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        (tmp_path / "orders.token").write_text(token)

        def start(name: str) -> str:
            admin = free_port()
            procs.start(
                name,
                MESHGATE,
                "sidecar",
                "--service",
                "orders",
                "--app",
                f"http://127.0.0.1:{app}",
                "--control-plane",
                cp_url,
                "--token",
                str(tmp_path / "orders.token"),
                "--cache-dir",
                str(tmp_path / name),
                "--inbound",
                f"127.0.0.1:{free_port()}",
                "--outbound",
                f"127.0.0.1:{free_port()}",
                "--admin",
                f"127.0.0.1:{admin}",
            )
            url = f"http://127.0.0.1:{admin}"
            wait_until(lambda: http_ok(f"{url}/readyz"), what=f"{name} ready")
            wait_until(lambda: len(_instances(cp_url, admin_token, "orders")) >= 1, what=f"{name} registered")
            return url

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
        for name in list(procs.procs):
            sys.stderr.write(f"--- {name} ---\n{procs.log(name)[-3000:]}\n")
        raise
    finally:
        procs.stop_all()
