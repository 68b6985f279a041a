"""Static stability: with the control plane down, a sidecar that restarts serves traffic again from
its cache (SVID and last snapshot), and the mesh keeps working."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from e2e_lib import MeshStack, Processes, copy_policies, dump_logs, start_echo_app


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
        stack = MeshStack(procs, tmp_path)
        stack.start_control_plane(copy_policies(tmp_path / "policies"))
        stack.start_sidecar("orders", start_echo_app(procs, "orders"))
        web_app = start_echo_app(procs, "web")
        web_token = stack.token("web")
        web = stack.start_sidecar("web", web_app, token=web_token)
        web.wait_knows("orders")
        assert _curl(web.proxy, "http://orders/orders/1")[0] == 200

        assert procs.stop("cp") == 0  # the control plane goes away...
        procs.stop("sidecar-web")  # ...and the caller's sidecar restarts meanwhile
        again = stack.start_sidecar("web", web_app, token=web_token)  # from its cache: spent token, no CP
        again.wait_knows("orders")
        status, body = _curl(again.proxy, "http://orders/orders/2")
        assert status == 200, body
        assert json.loads(body)["headers"]["x-meshgate-peer"].endswith("/sa/web")
        status, _ = _curl(again.proxy, "http://orders/admin/x")
        assert status == 403  # policies from the cache are enforced too
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()
