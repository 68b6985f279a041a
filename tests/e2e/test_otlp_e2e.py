"""Spans over OTLP/HTTP from real processes: a receiver in the test decodes the protobuf payloads the
gateway and the sidecar send and checks that one trace chains client -> gateway (server span, auth
and rate-limit spans, client span) -> the service's sidecar (server span), parents across processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from e2e_lib import MeshStack, copy_policies, free_port, running, wait_until
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


class Receiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        service = next(
                            (
                                a.value.string_value
                                for a in resource_spans.resource.attributes
                                if a.key == "service.name"
                            ),
                            "",
                        )
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                receiver.spans.append(
                                    {
                                        "service": service,
                                        "scope": scope.scope.name,
                                        "name": span.name,
                                        "kind": span.kind,
                                        "trace_id": span.trace_id.hex(),
                                        "span_id": span.span_id.hex(),
                                        "parent_id": span.parent_span_id.hex(),
                                    }
                                )
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


def test_one_trace_chains_the_gateway_and_the_sidecar_over_otlp(tmp_path: Any, receiver: Receiver) -> None:
    otlp = ["--otlp-endpoint", receiver.url, "--trace-sample", "1"]
    with running(tmp_path) as procs:
        stack = MeshStack(procs, tmp_path)
        stack.start_control_plane(copy_policies(tmp_path / "policies"))
        app = free_port()
        procs.start(
            "app-orders", sys.executable, "examples/echo_app.py", "--name", "orders", "--port", str(app)
        )
        stack.start_sidecar("orders", app, *otlp)
        gateway = stack.start_gateway(*otlp, knows=["orders"])
        out = subprocess.run(
            [
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                "-H", "x-api-key: demo-key-alice", "-H", f"traceparent: 00-{TRACE}-{PARENT}-01",
                f"{gateway.url}/api/orders/1",
            ],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert out.stdout == "200"

        def complete() -> bool:
            names = {(s["service"], s["name"], s["kind"]) for s in receiver.of_trace(TRACE)}
            return len(names) >= 5

        wait_until(complete, timeout=15, what="spans from the gateway and the sidecar")
        time.sleep(0.5)  # a late batch would only add spans
    spans = receiver.of_trace(TRACE)
    server_kind, client_kind = 2, 3  # OTLP Span.SpanKind
    (gw_server,) = [s for s in spans if s["service"] == "gateway" and s["kind"] == server_kind]
    (gw_client,) = [s for s in spans if s["service"] == "gateway" and s["kind"] == client_kind]
    (sidecar,) = [s for s in spans if s["service"] == "orders" and s["kind"] == server_kind]
    assert gw_server["parent_id"] == PARENT  # the client's context continued
    assert gw_client["parent_id"] == gw_server["span_id"]
    assert sidecar["parent_id"] == gw_client["span_id"]  # across processes, over mTLS
    steps = {s["name"]: s for s in spans if s["service"] == "gateway"}
    assert steps["auth"]["parent_id"] == gw_server["span_id"]
    assert steps["rate_limit"]["parent_id"] == gw_server["span_id"]
