"""Each outbound attempt is its own CLIENT span, a child of the caller's context, with
``http.request.resend_count`` on retries (OTel HTTP conventions), and each attempt carries its own
``traceparent`` to the peer."""

from __future__ import annotations

from pathlib import Path

from meshrig_testlib import mesh, run
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_outbound_client import flaky_app, status

from shared.telemetry.tracing import Tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_every_attempt_is_a_client_span_of_the_callers_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing("caller", exporter)
    assert tracing._provider is not None
    tracing._provider.add_span_processor(SimpleSpanProcessor(exporter))  # synchronous, for the test

    async def go() -> list[str | None]:
        async with mesh(tmp_path) as rig:
            rig.client.tracing = tracing
            up = await rig.upstream(flaky_app([status(503), status(503)]))
            rig.update({"orders": [up.endpoint()]})
            response, _ = await rig.call("/orders/1", headers=[("traceparent", f"00-{TRACE}-{PARENT}-01")])
            assert response.status == 200
            return [r.header("traceparent") for r in up.seen]

    seen = run(go())
    tracing.shutdown()
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == int(TRACE, 16)]
    spans = sorted({s.context.span_id: s for s in spans}.values(), key=lambda s: s.start_time or 0)
    assert len(spans) == 3
    assert all(s.parent is not None and s.parent.span_id == int(PARENT, 16) for s in spans)
    assert [s.attributes.get("http.request.resend_count") for s in spans] == [None, 1, 2]
    assert [s.attributes["http.response.status_code"] for s in spans] == [503, 503, 200]
    assert [f"{s.context.span_id:016x}" for s in spans] == [t.split("-")[2] for t in seen if t]


def test_a_client_span_lasts_until_the_response_body_is_done(tmp_path: Path) -> None:
    import asyncio
    from collections.abc import AsyncIterator

    from mesh.transport.h1 import ClientInfo
    from mesh.transport.messages import Request, Response

    exporter = InMemorySpanExporter()
    tracing = Tracing("caller", exporter)
    assert tracing._provider is not None
    tracing._provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def slow_body(request: Request, info: ClientInfo) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first "
            await asyncio.sleep(0.4)
            yield b"last"

        return Response(200, [], body())

    async def go() -> bytes:
        async with mesh(tmp_path) as rig:
            rig.client.tracing = tracing
            up = await rig.upstream(slow_body)
            rig.update({"orders": [up.endpoint()]})
            _, body = await rig.call("/", headers=[("traceparent", f"00-{TRACE}-{PARENT}-01")])
            return body

    assert run(go()) == b"first last"
    tracing.shutdown()
    # both the batch and the synchronous processor export to the exporter: one span, seen twice
    (span,) = {
        s.context.span_id: s for s in exporter.get_finished_spans() if s.context.trace_id == int(TRACE, 16)
    }.values()
    assert span.end_time is not None and span.start_time is not None
    assert (span.end_time - span.start_time) / 1e9 >= 0.35  # the body's 0.4 s are inside the span
