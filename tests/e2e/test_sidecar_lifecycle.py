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


HOLDING_APP = """
import http.server, pathlib, sys, time
port, marker = int(sys.argv[1]), pathlib.Path(sys.argv[2])
class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.endswith("/hold"):
            marker.write_text("held")
            time.sleep(0.35)  # under the example policy's 500 ms per try
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), App).serve_forever()
"""


def test_sigterm_tells_apps_on_a_per_upstream_port_to_close_too(tmp_path: Path) -> None:
    """An app calling through ``--upstream PORT=orders`` on a kept-alive connection is told
    ``Connection: close`` on the answer in flight when the drain begins, as apps on the proxy port
    are; before, the connection stayed open and the app's next request was cut with no response."""
    import http.client
    import signal
    import sys
    import threading

    from e2e_lib import free_port

    procs = Processes(tmp_path)
    try:
        stack = MeshStack(procs, tmp_path)
        stack.start_control_plane(copy_policies(tmp_path / "policies"))
        app_port, marker = free_port(), tmp_path / "held"
        procs.start("app-orders", sys.executable, "-c", HOLDING_APP, str(app_port), str(marker))
        stack.start_sidecar("orders", app_port)
        port = free_port()
        web = stack.start_sidecar("web", start_echo_app(procs, "web"), "--upstream", f"{port}=orders")
        web.wait_knows("orders")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", "/orders/1")  # the kept-alive connection, warm
        first = conn.getresponse()
        assert (first.status, first.read(), first.getheader("connection")) == (200, b"ok", None)
        answer: list[object] = []

        def held() -> None:
            conn.request("GET", "/orders/hold")
            response = conn.getresponse()
            answer.append((response.status, response.read(), response.getheader("connection")))

        caller = threading.Thread(target=held)
        caller.start()
        wait_until(marker.exists, what="the held request at the app")
        procs.procs["sidecar-web"].send_signal(signal.SIGTERM)  # while that request is in flight
        caller.join(20)
        assert procs.procs["sidecar-web"].wait(30) == 0
        assert answer == [(200, b"ok", "close")], (answer, dump_logs(procs))
        conn.close()
    finally:
        procs.stop_all()
