"""Demo service ``web`` (Starlette on uvicorn, 127.0.0.1:$PORT): the shop front. ``GET /`` asks
``orders`` (HTTP, through the sidecar's proxy at $MESHGATE_OUTBOUND) and ``catalog`` (gRPC, through the
sidecar's local port $CATALOG_GRPC) and returns both, so one request makes a trace across five hops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import httpx
import uvicorn
from catalog_api import CatalogClient
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from telemetry import TracingMiddleware, outgoing_headers, setup

OUTBOUND = os.environ.get("MESHGATE_OUTBOUND", "http://127.0.0.1:15001")
CATALOG = CatalogClient(os.environ.get("CATALOG_GRPC", "127.0.0.1:15101"))
HTTP: dict[str, httpx.AsyncClient] = {}  # made in the lifespan, on the server's event loop


async def recent_orders() -> object:
    tracer = trace.get_tracer("meshgate.demo")
    with tracer.start_as_current_span("GET orders", kind=trace.SpanKind.CLIENT):
        response = await HTTP["client"].get("http://orders/orders", headers=outgoing_headers())
    if response.status_code != 200:
        return {
            "error": f"orders answered {response.status_code}",
            "code": response.headers.get("x-meshgate-error"),
        }
    return response.json()["orders"]


async def products() -> object:
    try:
        listed = await CATALOG.call("ListProducts", page_size=10)
    except grpc.aio.AioRpcError as exc:
        return {"error": f"catalog: {exc.code().name}: {exc.details()}"}
    return MessageToDict(listed).get("products", [])


async def index(request: Request) -> JSONResponse:
    orders, listed = await asyncio.gather(recent_orders(), products())
    return JSONResponse({"shop": "meshgate demo", "products": listed, "orders": orders})


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    provider = setup("web")
    HTTP["client"] = httpx.AsyncClient(proxy=OUTBOUND, timeout=3.0, trust_env=False)
    yield
    await HTTP["client"].aclose()
    await CATALOG.close()
    provider.shutdown()


app = TracingMiddleware(Starlette(routes=[Route("/", index), Route("/healthz", healthz)], lifespan=lifespan))

if __name__ == "__main__":
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080"))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
