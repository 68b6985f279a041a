"""A small OTLP/HTTP trace receiver for local stacks (``meshgate up`` without an OTLP endpoint).

``POST /v1/traces`` takes ``ExportTraceServiceRequest`` protobuf (what every OpenTelemetry SDK's
OTLP/HTTP exporter sends). ``GET /traces`` lists the newest traces as JSON; ``GET /traces/ID`` shows
one as an indented tree of spans (``?format=json`` for JSON); ``GET /traces/last`` shows the newest
once its spans stopped arriving. Memory is bounded: the oldest traces are dropped past ``max_traces``.
It is a viewer for a laptop, not a trace store.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TEXT = "text/plain; charset=utf-8"
MAX_BODY = 8 * 1024 * 1024
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass
class SpanRecord:
    """One received span, flattened."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    scope: str = ""

    @property
    def duration_ms(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e6


def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    if which is None:
        return None
    if which in ("array_value", "kvlist_value"):
        return str(getattr(any_value, which))
    if which == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, which)


def decode_export(body: bytes) -> list[SpanRecord]:
    """The spans of one ``ExportTraceServiceRequest`` (protobuf); ValueError when it is not one."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    try:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise ValueError(f"not an OTLP ExportTraceServiceRequest: {exc}") from exc
    out: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", "unknown"))
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                out.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        service=service,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status={0: "unset", 1: "ok", 2: "error"}.get(span.status.code, "unset"),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        scope=scope.scope.name,
                    )
                )
    return out


class TraceStore:
    """Spans grouped by trace, newest trace last; thread-safe; at most ``max_traces`` traces and
    ``max_spans_per_trace`` spans in each."""

    def __init__(self, max_traces: int = 500, max_spans_per_trace: int = 500) -> None:
        self.max_traces = max_traces
        self.max_spans_per_trace = max_spans_per_trace
        self._traces: OrderedDict[str, list[SpanRecord]] = OrderedDict()
        self._updated: dict[str, float] = {}
        self._lock = threading.Lock()
        self.received = 0

    def add(self, spans: list[SpanRecord]) -> None:
        """Keep ``spans``; a trace seen again moves to the newest end."""
        with self._lock:
            for span in spans:
                self.received += 1
                bucket = self._traces.setdefault(span.trace_id, [])
                if len(bucket) < self.max_spans_per_trace:
                    bucket.append(span)
                self._traces.move_to_end(span.trace_id)
                self._updated[span.trace_id] = time.monotonic()
            while len(self._traces) > self.max_traces:
                dropped, _ = self._traces.popitem(last=False)
                self._updated.pop(dropped, None)

    def newest(self) -> tuple[str, float] | None:
        """The id of the trace that received spans last, and seconds since it did."""
        with self._lock:
            if not self._traces:
                return None
            trace_id = next(reversed(self._traces))
            return trace_id, time.monotonic() - self._updated.get(trace_id, 0.0)

    def settled(self, quiet: float = 0.6, timeout: float = 3.0) -> str | None:
        """The newest trace once no span has arrived for it for ``quiet`` seconds (spans of one
        request come from several processes, each exporting on its own schedule); waits at most
        ``timeout`` seconds, also for a first trace to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            newest = self.newest()
            if newest is not None and (newest[1] >= quiet or time.monotonic() >= deadline):
                return newest[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """The spans of one trace, oldest start first."""
        with self._lock:
            return sorted(self._traces.get(trace_id.lower(), []), key=lambda s: s.start_ns)

    def summaries(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` traces: id, root span, services, span count, duration."""
        with self._lock:
            newest = list(self._traces.items())[-limit:]
        out = []
        for trace_id, spans in reversed(newest):
            ids = {s.span_id for s in spans}
            roots = [s for s in spans if not s.parent_id or s.parent_id not in ids]
            root = min(roots or spans, key=lambda s: s.start_ns)
            out.append(
                {
                    "traceId": trace_id,
                    "root": f"{root.service}: {root.name}",
                    "services": sorted({s.service for s in spans}),
                    "spans": len(spans),
                    "durationMs": round(root.duration_ms, 3),
                }
            )
        return out


def render_tree(spans: list[SpanRecord]) -> str:
    """An indented tree: ``service  kind  name  duration  status`` per span, children under parents."""
    if not spans:
        return "no such trace (yet): spans arrive within a second of the request\n"
    ids = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = {}
    roots = []
    for span in spans:
        if span.parent_id and span.parent_id in ids:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    services = ", ".join(sorted({s.service for s in spans}))
    lines = [f"trace {spans[0].trace_id}: {len(spans)} spans, services {services}"]

    def walk(span: SpanRecord, depth: int) -> None:
        status = f"  [{span.status}]" if span.status == "error" else ""
        code = span.attributes.get("http.response.status_code") or span.attributes.get("rpc.grpc.status_code")
        shown = f"  -> {code}" if code is not None else ""
        where = f"{span.service} (sidecar)" if span.scope == "meshgate.sidecar" else span.service
        lines.append(
            f"{'  ' * depth}{where:<18} {span.kind:<7} {span.name}  {span.duration_ms:.2f} ms{shown}{status}"
        )
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.start_ns):
        walk(root, 0)
    return "\n".join(lines) + "\n"


class Collector:
    """The receiver on ``host:port`` (port 0 picks one), served from a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 4318, store: TraceStore | None = None) -> None:
        self.store = store or TraceStore()
        store_ = self.store

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(
                self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if urlsplit(self.path).path != "/v1/traces":
                    # the body must not be read as the next request: drop it, or close when unknown
                    declared = self.headers.get("content-length") or ""
                    if declared.isascii() and declared.isdigit() and int(declared) <= MAX_BODY:
                        self.rfile.read(int(declared))
                    else:
                        self.close_connection = True
                    self._reply(404, b"only /v1/traces (OTLP/HTTP traces) is served here\n")
                    return
                try:
                    length = int(self.headers.get("content-length") or "")
                except ValueError:
                    self.close_connection = True
                    self._reply(411, b"content-length required\n")
                    return
                if length < 0 or length > MAX_BODY:
                    self.close_connection = True
                    self._reply(413, b"export over 8 MiB\n")
                    return
                body = self.rfile.read(length)
                ctype = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
                if ctype != "application/x-protobuf":
                    self._reply(415, b"send application/x-protobuf (OTLP/HTTP protobuf encoding)\n")
                    return
                try:
                    store_.add(decode_export(body))
                except ValueError as exc:
                    self._reply(400, f"{exc}\n".encode())
                    return
                from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self._reply(200, reply, "application/x-protobuf")

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if parts.path in ("/traces", "/traces/"):
                    try:
                        limit = min(max(int(query.get("limit", ["20"])[0]), 1), 500)
                    except ValueError:
                        limit = 20
                    body = json.dumps(store_.summaries(limit), indent=2).encode() + b"\n"
                    self._reply(200, body, "application/json")
                elif parts.path.startswith("/traces/"):
                    wanted = parts.path.removeprefix("/traces/")
                    if wanted == "last":
                        wanted = store_.settled() or ""
                    spans = store_.trace(wanted)
                    if query.get("format") == ["json"]:
                        body = json.dumps([asdict(s) for s in spans], indent=2).encode() + b"\n"
                        self._reply(200 if spans else 404, body, "application/json")
                    else:
                        self._reply(200 if spans else 404, render_tree(spans).encode())
                elif parts.path == "/healthz":
                    self._reply(200, b"ok\n")
                else:
                    self._reply(404, b"try /traces, /traces/last or /traces/TRACE_ID\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-collector", daemon=True)

    @property
    def url(self) -> str:
        """Base URL (``.../v1/traces`` is where exporters send)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Collector:
        """Serve in the background."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def wait_for(store: TraceStore, trace_id: str, count: int, timeout: float = 10.0) -> list[SpanRecord]:
    """Spans of ``trace_id`` once at least ``count`` arrived (or what arrived by ``timeout``)."""
    deadline = time.monotonic() + timeout
    spans = store.trace(trace_id)
    while len(spans) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        spans = store.trace(trace_id)
    return spans
