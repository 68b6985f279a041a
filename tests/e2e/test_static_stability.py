"""Static stability: with the control plane down, a sidecar that restarts serves traffic again from
its cache (SVID and last snapshot), and the mesh keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from e2e_lib import MESHGATE, Processes, copy_policies, free_port, http_ok, wait_until


def _curl(proxy: str, url: str) -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", "-x", proxy, url],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_sidecar_restart_during_a_control_plane_outage_still_serves(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    try:
        policies = copy_policies(tmp_path / "policies")
        data = tmp_path / "cp"
        cp_port = free_port()
        cp_url = f"https://127.0.0.1:{cp_port}"
        cp_argv = (
            MESHGATE,
            "control-plane",
            "--policies",
            str(policies),
            "--data-dir",
            str(data),
            "--listen",
            f"127.0.0.1:{cp_port}",
        )
        procs.start("cp", *cp_argv)
        wait_until(lambda: http_ok(f"{cp_url}/readyz"), what="control plane")
        ports = {}
        for name in ("orders", "web"):
            app = free_port()
            procs.start(
                f"app-{name}", sys.executable, "examples/echo_app.py", "--name", name, "--port", str(app)
            )
            token = subprocess.run(
                [MESHGATE, "token", "create", "--data-dir", str(data), "--service", name],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
            (tmp_path / f"{name}.token").write_text(token)
            ports[name] = (app, free_port(), free_port(), free_port())

        def sidecar(name: str) -> None:
            app, inbound, outbound, admin = ports[name]
            procs.start(
                f"sidecar-{name}",
                MESHGATE,
                "sidecar",
                "--service",
                name,
                "--app",
                f"http://127.0.0.1:{app}",
                "--control-plane",
                cp_url,
                "--token",
                str(tmp_path / f"{name}.token"),
                "--cache-dir",
                str(tmp_path / f"cache-{name}"),
                "--inbound",
                f"127.0.0.1:{inbound}",
                "--outbound",
                f"127.0.0.1:{outbound}",
                "--admin",
                f"127.0.0.1:{admin}",
            )
            wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/readyz"), what=f"sidecar {name} ready")

        sidecar("orders")
        sidecar("web")
        web_admin = f"http://127.0.0.1:{ports['web'][3]}"

        def web_knows_orders() -> bool:
            with urllib.request.urlopen(f"{web_admin}/config", timeout=2) as response:
                return bool(json.load(response)["endpoints"].get("orders"))

        wait_until(web_knows_orders, what="web to learn orders")
        proxy = f"http://127.0.0.1:{ports['web'][2]}"
        assert _curl(proxy, "http://orders/orders/1")[0] == 200

        assert procs.stop("cp") == 0  # the control plane goes away...
        procs.stop("sidecar-web")  # ...and the caller's sidecar restarts meanwhile
        sidecar("web")  # ready from its cache: spent join token, no control plane
        wait_until(web_knows_orders, what="web to know orders from its cached snapshot")
        status, body = _curl(proxy, "http://orders/orders/2")
        assert status == 200, body
        assert json.loads(body)["headers"]["x-meshgate-peer"].endswith("/sa/web")
        status, _ = _curl(proxy, "http://orders/admin/x")
        assert status == 403  # policies from the cache are enforced too
    except BaseException:
        for name in list(procs.procs):
            sys.stderr.write(f"--- {name} ---\n{procs.log(name)[-3000:]}\n")
        raise
    finally:
        procs.stop_all()
