"""Tracing through the mesh: the caller's W3C trace context is continued by both sidecars (a CLIENT
span in the caller's sidecar, a SERVER span in the callee's), and the app receives the same trace
with the callee sidecar's span as parent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from e2e_lib import MeshStack, Processes, copy_policies, dump_logs, start_echo_app, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_trace_context_is_continued_hop_by_hop(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    try:
        stack = MeshStack(procs, tmp_path)
        stack.start_control_plane(copy_policies(tmp_path / "policies"))
        files = {name: tmp_path / f"{name}-spans.jsonl" for name in ("orders", "web")}
        stack.start_sidecar("orders", start_echo_app(procs, "orders"), "--trace-file", str(files["orders"]))
        web = stack.start_sidecar("web", start_echo_app(procs, "web"), "--trace-file", str(files["web"]))
        web.wait_knows("orders")
        out = subprocess.run(
            [
                "curl",
                "-s",
                "--max-time",
                "10",
                "-x",
                web.proxy,
                "-H",
                f"traceparent: 00-{TRACE}-{PARENT}-01",
                "-H",
                "tracestate: vendor=abc",
                "http://orders/orders/7?x=1",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        seen = json.loads(out)["headers"]
        wait_until(lambda: _spans(files["web"]) and _spans(files["orders"]), what="spans to be exported")
        wait_until(lambda: len(_spans(files["web"])) >= 2, what="both of web's spans")
        web_spans = {s["kind"]: s for s in _spans(files["web"]) if s["context"]["trace_id"] == f"0x{TRACE}"}
        (server,) = [s for s in _spans(files["orders"]) if s["context"]["trace_id"] == f"0x{TRACE}"]
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()
    # web's sidecar: a SERVER span for its app's request, a CLIENT span for the attempt to orders
    app_side, client = web_spans["SpanKind.SERVER"], web_spans["SpanKind.CLIENT"]
    assert app_side["parent_id"] == f"0x{PARENT}"
    assert client["parent_id"] == app_side["context"]["span_id"]
    assert server["kind"] == "SpanKind.SERVER" and server["parent_id"] == client["context"]["span_id"]
    assert client["name"] == server["name"] == "GET"
    assert client["attributes"]["server.port"] > 0 and "http.request.resend_count" not in client["attributes"]
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["attributes"]["url.path"] == "/orders/7"
    assert server["attributes"]["meshgate.peer"].endswith("/sa/web")
    assert server["attributes"]["network.protocol.version"] == "2"  # sidecar to sidecar
    assert app_side["attributes"]["network.protocol.version"] == "1.1"  # curl to its sidecar
    assert app_side["attributes"]["client.address"] == "127.0.0.1"
    assert client["attributes"]["url.full"] == "https://orders/orders/7?x=1"
    version, trace_id, parent_id, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert f"0x{parent_id}" == server["context"]["span_id"]
    assert seen["tracestate"] == "vendor=abc"
