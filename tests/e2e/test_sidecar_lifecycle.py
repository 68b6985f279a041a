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


def test_sigterm_tells_apps_on_a_per_upstream_port_to_close_too(tmp_path: Path) -> None:
    """An app calling through ``--upstream PORT=orders`` on a kept-alive connection is told
    ``Connection: close`` during the drain, as apps on the proxy port are; the next request on that
    connection was cut with no response (a POST's fate unknown to the app)."""
    import http.client
    import signal
    import threading
    import time

    from e2e_lib import free_port

    procs = Processes(tmp_path)
    try:
        stack = MeshStack(procs, tmp_path)
        stack.start_control_plane(copy_policies(tmp_path / "policies"))
        stack.start_sidecar("orders", start_echo_app(procs, "orders"))
        port = free_port()
        web = stack.start_sidecar("web", start_echo_app(procs, "web"), "--upstream", f"{port}=orders")
        web.wait_knows("orders")
        outcome: list[object] = []
        stop = threading.Event()

        def calls() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            sent = 0
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    conn.request("GET", "/orders/1")
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    outcome.append(("broken", sent, repr(exc)))
                    return
                sent += 1
                if response.getheader("connection") == "close":
                    outcome.append(("told to close", sent, response.status))
                    return
            outcome.append(("never told", sent))

        caller = threading.Thread(target=calls)
        caller.start()
        wait_until(lambda: caller.is_alive() and not outcome, what="calls started")
        time.sleep(0.5)
        procs.procs["sidecar-web"].send_signal(signal.SIGTERM)
        assert procs.procs["sidecar-web"].wait(30) == 0
        caller.join(25)
        stop.set()
        assert outcome and outcome[0][0] == "told to close", (outcome, dump_logs(procs))
    finally:
        procs.stop_all()
