"""Health end to end: the sidecar checks its app (HTTP path) and heartbeats the result; when the app
dies the control plane shows the instance critical and drops it from the endpoints callers get, and
when it comes back the instance is passing again."""

from __future__ import annotations

import json
import ssl
import sys
import urllib.request
from pathlib import Path

from e2e_lib import MeshStack, Processes, copy_policies, dump_logs, free_port, wait_until


def _health(stack: MeshStack, token: str) -> list[str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(
        f"{stack.cp_url}/v1/services/orders", headers={"authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=5, context=ctx) as response:
        return [str(i["health"]) for i in json.load(response)]


def test_app_death_turns_the_instance_critical_and_recovery_passing(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    try:
        stack = MeshStack(procs, tmp_path)
        stack.start_control_plane(copy_policies(tmp_path / "policies"))
        admin = (stack.data / "admin-token").read_text().strip()
        app = free_port()
        argv = (sys.executable, "examples/echo_app.py", "--name", "orders", "--port", str(app))
        procs.start("app", *argv)
        stack.start_sidecar(
            "orders", app, "--check", "http", "--check-path", "/healthz", "--heartbeat", "300ms"
        )
        web = stack.start_sidecar("web", free_port())
        wait_until(lambda: _health(stack, admin) == ["passing"], what="orders passing")
        web.wait_knows("orders")

        procs.stop("app")
        wait_until(lambda: _health(stack, admin) == ["critical"], what="orders critical")
        wait_until(lambda: not web.knows("orders"), what="web to drop the critical endpoint")

        procs.start("app", *argv)
        wait_until(lambda: _health(stack, admin) == ["passing"], what="orders passing again")
        web.wait_knows("orders")
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()
