"""Streaming responses (server-sent events, chunked) pass the gateway and the mesh without buffering:
the first event reaches the client as soon as the app sends it, not when the stream ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gateway_testlib import edge, run

from gateway.server import serve
from mesh.transport.h1 import ClientInfo
from mesh.transport.messages import Request, Response

ROUTES = """\
apiVersion: meshgate/v1
kind: Route
name: events
match: {path: {prefix: /events}}
backends: [{service: orders}]
"""

GAP = 0.4  # seconds between events


async def sse_app(request: Request, info: ClientInfo) -> Response:
    async def events() -> AsyncIterator[bytes]:
        for i in range(3):
            if i:
                await asyncio.sleep(GAP)
            yield f"data: event {i}\n\n".encode()

    return Response(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")], events())


def test_server_sent_events_arrive_as_they_are_sent(tmp_path: Path) -> None:
    async def go() -> list[tuple[float, bytes]]:
        async with edge(tmp_path, ROUTES, apps={"orders": sse_app}) as gw:
            server = await serve(gw.http._transport.app, "127.0.0.1", 0)  # type: ignore[attr-defined]
            port = server.sockets[0].getsockname()[1]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = time.monotonic()
                writer.write(b"GET /events HTTP/1.1\r\nHost: edge.test\r\naccept: text/event-stream\r\n\r\n")
                arrivals: list[tuple[float, bytes]] = []
                data = b""
                while b"event 2" not in data and time.monotonic() - started < 10:
                    chunk = await asyncio.wait_for(reader.read(65536), 10)
                    if not chunk:
                        break
                    data += chunk
                    arrivals.append((time.monotonic() - started, chunk))
                writer.close()
                return arrivals
            finally:
                server.close()

    arrivals = run(go())
    first = next(t for t, chunk in arrivals if b"event 0" in chunk)
    last = next(t for t, chunk in arrivals if b"event 2" in chunk)
    # the first event arrives before the app even sends the second (a buffering proxy would deliver all
    # three together, after 2 * GAP)
    assert first < GAP, f"first event after {first:.3f}s: buffered"
    assert last - first >= GAP * 1.5
    head = b"".join(chunk for _, chunk in arrivals)
    assert b"transfer-encoding: chunked" in head.lower() and b"text/event-stream" in head
