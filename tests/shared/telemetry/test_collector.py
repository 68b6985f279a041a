"""The embedded OTLP/HTTP trace collector of ``meshgate up``: decoding, the bounded store, the tree
view and the HTTP surface, fed by the OpenTelemetry SDK's own exporter where it matters."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.telemetry.collector import (
    MAX_BODY,
    Collector,
    SpanRecord,
    TraceStore,
    decode_export,
    render_tree,
    wait_for,
)

PROTOBUF = "application/x-protobuf"
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")


def kv(key: str, **value: Any) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(**value))


def export_request(*spans: trace_pb2.Span, service: str = "web", scope: str = "app") -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=[kv("service.name", string_value=service)]),
                scope_spans=[
                    trace_pb2.ScopeSpans(scope=common_pb2.InstrumentationScope(name=scope), spans=list(spans))
                ],
            )
        ]
    )
    return bytes(request.SerializeToString())


def pb_span(
    span_id: int, parent: int | None = None, name: str = "op", start: int = 1000, **kw: Any
) -> trace_pb2.Span:
    return trace_pb2.Span(
        trace_id=kw.pop("trace_id", TRACE),
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent is not None else b"",
        name=name,
        start_time_unix_nano=start,
        end_time_unix_nano=kw.pop("end", start + 2_500_000),
        **kw,
    )


def record(
    span_id: str,
    parent_id: str = "",
    *,
    trace_id: str = "t1",
    service: str = "web",
    start: int = 0,
    end: int = 1_000_000,
    **kw: Any,
) -> SpanRecord:
    defaults: dict[str, Any] = {"name": f"op-{span_id}", "kind": "server", "status": "unset"}
    defaults.update(kw)
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent_id,
        service=service,
        start_ns=start,
        end_ns=end,
        **defaults,
    )


# -- decode_export ----------------------------------------------------------------------------------------


def test_decode_export_flattens_a_protobuf_request() -> None:
    root = pb_span(
        1,
        name="GET /shop",
        kind=trace_pb2.Span.SPAN_KIND_SERVER,
        attributes=[
            kv("http.response.status_code", int_value=200),
            kv("http.route", string_value="/shop"),
            kv("sampled", bool_value=True),
            kv("ratio", double_value=0.5),
            kv("raw", bytes_value=b"\x01\xff"),
            kv("empty"),
            kv("list", array_value=common_pb2.ArrayValue(values=[common_pb2.AnyValue(int_value=1)])),
        ],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK),
    )
    child = pb_span(
        2,
        parent=1,
        name="call orders",
        start=2000,
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR),
    )
    first, second = decode_export(export_request(root, child, service="web", scope="meshgate.sidecar"))
    assert first.trace_id == TRACE.hex() and first.span_id == "0000000000000001" and first.parent_id == ""
    assert (first.name, first.service, first.kind, first.status, first.scope) == (
        "GET /shop",
        "web",
        "server",
        "ok",
        "meshgate.sidecar",
    )
    assert first.duration_ms == 2.5
    assert first.attributes["http.response.status_code"] == 200
    assert first.attributes["http.route"] == "/shop"
    assert first.attributes["sampled"] is True and first.attributes["ratio"] == 0.5
    assert first.attributes["raw"] == "01ff" and first.attributes["empty"] is None
    assert isinstance(first.attributes["list"], str)
    assert second.parent_id == first.span_id
    assert (second.kind, second.status, second.start_ns) == ("client", "error", 2000)


def test_decode_export_without_service_name_and_with_odd_kinds() -> None:
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[pb_span(7, end=10)])])
        ]
    )
    (span,) = decode_export(request.SerializeToString())
    assert span.service == "unknown" and span.scope == "" and span.kind == "unspecified"
    assert span.duration_ms == 0.0, "an end before the start is no negative duration"


def test_decode_export_of_an_empty_request_is_no_spans() -> None:
    assert decode_export(b"") == []
    assert decode_export(trace_service_pb2.ExportTraceServiceRequest().SerializeToString()) == []


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"not protobuf at all", b"\x0a\x05ab"])
def test_decode_export_refuses_garbage(body: bytes) -> None:
    with pytest.raises(ValueError, match="not an OTLP ExportTraceServiceRequest"):
        decode_export(body)


# -- TraceStore -------------------------------------------------------------------------------------------


def test_store_keeps_at_most_max_traces_dropping_the_oldest() -> None:
    store = TraceStore(max_traces=2)
    store.add([record("a", trace_id="t1")])
    store.add([record("b", trace_id="t2")])
    store.add([record("c", trace_id="t1")])  # t1 seen again: now the newest
    store.add([record("d", trace_id="t3")])  # drops t2, the oldest
    assert store.trace("t2") == []
    assert [s.span_id for s in store.trace("t1")] == ["a", "c"]
    assert [t["traceId"] for t in store.summaries()] == ["t3", "t1"]
    newest = store.newest()
    assert newest is not None and newest[0] == "t3"
    assert store.received == 4


def test_store_keeps_at_most_max_spans_per_trace() -> None:
    store = TraceStore(max_spans_per_trace=3)
    store.add([record(str(i), start=i) for i in range(10)])
    assert [s.span_id for s in store.trace("t1")] == ["0", "1", "2"]
    assert store.received == 10


def test_store_returns_spans_by_start_and_ids_case_insensitively() -> None:
    store = TraceStore()
    store.add([record("late", start=50), record("early", start=5)])
    assert [s.span_id for s in store.trace("T1")] == ["early", "late"]
    assert store.trace("nope") == []


def test_summaries_name_the_root_and_are_newest_first() -> None:
    store = TraceStore()
    store.add(
        [
            record("r", service="gateway", name="GET /shop", start=0, end=4_000_000),
            record("c", "r", service="web", start=1, end=2),
            record("o", "missing-parent", service="orders", start=3, end=4),
        ]
    )
    store.add([record("x", trace_id="t2")])
    t2, t1 = store.summaries()
    assert t2["traceId"] == "t2"
    assert t1 == {
        "traceId": "t1",
        "root": "gateway: GET /shop",
        "services": ["gateway", "orders", "web"],
        "spans": 3,
        "durationMs": 4.0,
    }
    assert [s["traceId"] for s in store.summaries(limit=1)] == ["t2"]


def test_settled_on_an_empty_store_gives_up_at_the_timeout() -> None:
    started = time.monotonic()
    assert TraceStore().settled(quiet=0.1, timeout=0.2) is None
    assert 0.15 <= time.monotonic() - started < 2.0


def test_settled_waits_until_the_newest_trace_is_quiet() -> None:
    store = TraceStore()
    store.add([record("a", trace_id="old")])
    store.add([record("b", trace_id="new")])
    started = time.monotonic()
    assert store.settled(quiet=0.3, timeout=3.0) == "new"
    assert 0.25 <= time.monotonic() - started < 2.5


def test_settled_returns_the_newest_at_the_timeout_even_if_busy() -> None:
    store = TraceStore()
    store.add([record("a")])
    started = time.monotonic()
    assert store.settled(quiet=5.0, timeout=0.2) == "t1"
    assert time.monotonic() - started < 2.0


def test_wait_for_returns_what_arrived_by_the_timeout() -> None:
    store = TraceStore()
    store.add([record("a")])
    started = time.monotonic()
    assert [s.span_id for s in wait_for(store, "t1", 2, timeout=0.2)] == ["a"]
    assert time.monotonic() - started < 2.0


# -- render_tree ------------------------------------------------------------------------------------------


def test_render_tree_puts_children_under_parents() -> None:
    spans = [
        record("r", service="gateway", kind="server", name="GET /shop", start=0, end=5_000_000,
               attributes={"http.response.status_code": 200}),
        record("s", "r", service="web", kind="server", name="inbound", start=1, end=4_000_000,
               scope="meshgate.sidecar"),
        record("a", "s", service="web", kind="server", name="GET /", start=2, end=3_000_000),
        record("b", "a", service="orders", kind="client", name="orders.List", start=4, end=1_000_000,
               status="error", attributes={"rpc.grpc.status_code": 14}),
        record("c", "a", service="catalog", kind="client", name="first", start=3, end=500_000),
        record("o", "gone", service="stray", kind="internal", name="orphan", start=10),
    ]  # fmt: skip
    text = render_tree(list(reversed(spans)))
    lines = text.splitlines()
    assert lines[0] == "trace t1: 6 spans, services catalog, gateway, orders, stray, web"
    body = lines[1:]
    assert body[0].startswith("gateway ") and "GET /shop  5.00 ms  -> 200" in body[0]
    assert body[1].startswith("  web (sidecar) ") and "inbound" in body[1]
    assert body[2].startswith("    web ") and "(sidecar)" not in body[2]
    assert body[3].startswith("      catalog ") and "first  0.50 ms" in body[3]  # earlier start first
    assert body[4].startswith("      orders ") and body[4].endswith("orders.List  1.00 ms  -> 14  [error]")
    assert body[5].startswith("stray ") and "orphan" in body[5], "a span whose parent is missing is a root"
    assert len(body) == 6 and text.endswith("\n")


def test_render_tree_of_nothing_says_so() -> None:
    assert render_tree([]).startswith("no such trace (yet)")


# -- the HTTP collector -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serving() -> Iterator[Collector]:
    """One collector for the module (closing one takes up to half a second)."""
    c = Collector("127.0.0.1", 0).start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def collector(serving: Collector) -> Collector:
    """The module's collector with an empty store."""
    store = serving.store
    with store._lock:
        store._traces.clear()
        store._updated.clear()
        store.received = 0
    return serving


def request(
    c: Collector, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


def raw_exchange(c: Collector, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (bounded)."""
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def post(
    c: Collector, body: bytes, content_type: str = PROTOBUF, path: str = "/v1/traces"
) -> tuple[int, str, bytes]:
    return request(c, "POST", path, body, {"content-type": content_type})


def sdk_provider(c: Collector, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{c.url}/v1/traces", timeout=5))
    )
    return provider


def test_spans_exported_by_the_sdk_arrive_as_a_tree(collector: Collector) -> None:
    app, sidecar = sdk_provider(collector, "web"), sdk_provider(collector, "web")
    try:
        with sidecar.get_tracer("meshgate.sidecar").start_as_current_span(
            "inbound", kind=SpanKind.SERVER
        ) as outer:
            outer.set_attribute("http.response.status_code", 502)
            with app.get_tracer("web.app").start_as_current_span("GET /", kind=SpanKind.SERVER) as inner:
                inner.set_status(Status(StatusCode.ERROR))
        trace_id = format(outer.get_span_context().trace_id, "032x")
    finally:
        app.shutdown()
        sidecar.shutdown()
    spans = wait_for(collector.store, trace_id, 2, timeout=10)
    assert [s.name for s in spans] == ["inbound", "GET /"]
    outer_rec, inner_rec = spans
    assert inner_rec.parent_id == outer_rec.span_id and outer_rec.parent_id == ""
    assert (outer_rec.scope, outer_rec.kind, outer_rec.service) == ("meshgate.sidecar", "server", "web")
    assert inner_rec.status == "error"

    status, ctype, body = request(collector, "GET", f"/traces/{trace_id}")
    assert status == 200 and ctype.startswith("text/plain")
    lines = body.decode().splitlines()
    assert lines[0] == f"trace {trace_id}: 2 spans, services web"
    assert lines[1].startswith("web (sidecar) ") and "inbound" in lines[1] and "-> 502" in lines[1]
    assert lines[2].startswith("  web ") and lines[2].endswith("[error]")

    status, ctype, body = request(collector, "GET", f"/traces/{trace_id}?format=json")
    assert status == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert [s["name"] for s in doc] == ["inbound", "GET /"]
    assert doc[0]["scope"] == "meshgate.sidecar" and doc[1]["parent_id"] == doc[0]["span_id"]

    status, ctype, body = request(collector, "GET", "/traces")
    assert status == 200 and ctype == "application/json"
    [summary] = json.loads(body)
    assert summary == {
        "traceId": trace_id,
        "root": "web: inbound",
        "services": ["web"],
        "spans": 2,
        "durationMs": summary["durationMs"],
    }

    status, _, body = request(collector, "GET", "/traces/last")
    assert status == 200 and body.decode().startswith(f"trace {trace_id}: 2 spans")


def test_post_answers_an_empty_export_response(collector: Collector) -> None:
    status, ctype, body = post(collector, export_request(pb_span(1)))
    assert (status, ctype) == (200, PROTOBUF)
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(body) == (
        trace_service_pb2.ExportTraceServiceResponse()
    )
    assert len(collector.store.trace(TRACE.hex())) == 1


def test_content_type_parameters_are_allowed(collector: Collector) -> None:
    status, _, _ = post(collector, export_request(pb_span(1)), content_type="application/x-protobuf; v=1")
    assert status == 200


def test_post_to_another_path_is_404(collector: Collector) -> None:
    status, _, body = post(collector, export_request(pb_span(1)), path="/v1/metrics")
    assert status == 404 and b"/v1/traces" in body
    assert collector.store.received == 0


def test_post_json_is_415(collector: Collector) -> None:
    status, _, body = post(collector, b'{"resourceSpans": []}', content_type="application/json")
    assert status == 415 and b"application/x-protobuf" in body
    status, _, _ = request(collector, "POST", "/v1/traces", export_request(pb_span(1)), {})
    assert status == 415, "no content-type at all"
    assert collector.store.received == 0


def test_post_garbage_is_400(collector: Collector) -> None:
    status, _, body = post(collector, b"\xff\xff\xff\xff")
    assert status == 400 and b"not an OTLP ExportTraceServiceRequest" in body


def test_post_without_content_length_is_411(collector: Collector) -> None:
    reply = raw_exchange(
        collector,
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/x-protobuf\r\nconnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 411 "), reply[:80]
    reply = raw_exchange(
        collector,
        b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-length: ten\r\nconnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 411 "), reply[:80]


@pytest.mark.parametrize("length", [MAX_BODY + 1, 10**12, -1])
def test_oversized_or_negative_content_length_is_413_and_closes(collector: Collector, length: int) -> None:
    head = (
        f"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: {PROTOBUF}\r\ncontent-length: {length}\r\n\r\n"
    )
    reply = raw_exchange(collector, head.encode())  # ends: the server closes without reading a body
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:80]
    assert collector.store.received == 0


def test_a_body_of_exactly_the_limit_is_read_and_decoded(collector: Collector) -> None:
    status, _, body = post(collector, b"\xff" * MAX_BODY)
    assert status == 400 and b"not an OTLP ExportTraceServiceRequest" in body


def test_keep_alive_survives_a_post_to_another_path(collector: Collector) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    try:
        conn.request("POST", "/v1/metrics", body=b"hello", headers={"content-type": PROTOBUF})
        first = conn.getresponse()
        first.read()
        assert first.status == 404
        conn.request("GET", "/healthz")
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"ok\n")
    finally:
        conn.close()


def test_get_endpoints(collector: Collector) -> None:
    unknown = "ab" * 16
    status, ctype, body = request(collector, "GET", f"/traces/{unknown}")
    assert status == 404 and ctype.startswith("text/plain") and body.startswith(b"no such trace")
    status, ctype, body = request(collector, "GET", f"/traces/{unknown}?format=json")
    assert (status, ctype, json.loads(body)) == (404, "application/json", [])
    assert request(collector, "GET", "/traces")[::2] == (200, b"[]\n")
    assert request(collector, "GET", "/traces/")[::2] == (200, b"[]\n")
    assert request(collector, "GET", "/healthz")[::2] == (200, b"ok\n")
    status, _, body = request(collector, "GET", "/metrics")
    assert status == 404 and b"/traces" in body


def test_get_traces_limit(collector: Collector) -> None:
    for i in range(5):
        collector.store.add([record("s", trace_id=f"t{i}")])

    def ids(query: str) -> list[str]:
        return [t["traceId"] for t in json.loads(request(collector, "GET", f"/traces{query}")[2])]

    assert ids("?limit=2") == ["t4", "t3"]
    assert ids("?limit=0") == ["t4"], "the limit is at least 1"
    assert ids("?limit=x") == ["t4", "t3", "t2", "t1", "t0"], "a bad limit is the default"


def test_get_last_shows_the_newest_trace_once_settled(collector: Collector) -> None:
    collector.store.add([record("a", trace_id="older")])
    collector.store.add([record("b", trace_id="newest", name="the-one")])
    started = time.monotonic()
    status, _, body = request(collector, "GET", "/traces/last")
    assert status == 200 and body.startswith(b"trace newest: 1 spans") and b"the-one" in body
    assert 0.5 <= time.monotonic() - started < 5
    status, _, body = request(collector, "GET", "/traces/last?format=json")
    assert status == 200 and json.loads(body)[0]["name"] == "the-one"


def test_get_last_with_no_trace_is_404_after_a_bounded_wait(collector: Collector) -> None:
    started = time.monotonic()
    status, _, body = request(collector, "GET", "/traces/last")
    assert status == 404 and body.startswith(b"no such trace")
    assert time.monotonic() - started < 6


def test_close_frees_the_port() -> None:
    c = Collector("127.0.0.1", 0).start()
    port = c.port
    assert c.url == f"http://127.0.0.1:{port}"
    c.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    Collector("127.0.0.1", port).start().close()  # the port can be bound again
