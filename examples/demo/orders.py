"""Demo service ``orders`` (Starlette on uvicorn, 127.0.0.1:$PORT): orders in memory; placing one asks
``catalog`` over gRPC (through this service's sidecar) whether the product exists.

    GET  /orders            the orders
    POST /orders            {"productId": "p-1", "quantity": 2} -> 201, 404 for an unknown product
    GET  /orders/{id}       one order
    GET  /admin/stats       exists, but the mesh policy denies it to every caller (a 403 to try)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import uvicorn
from catalog_api import CatalogClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from telemetry import TracingMiddleware, setup

ORDERS: dict[str, dict[str, object]] = {
    "o-1": {"id": "o-1", "productId": "p-1", "quantity": 1, "principal": "seed"},
}
NEXT = itertools.count(2)
CATALOG = CatalogClient(os.environ.get("CATALOG_GRPC", "127.0.0.1:15101"))


async def list_orders(request: Request) -> JSONResponse:
    return JSONResponse({"orders": list(ORDERS.values())})


async def get_order(request: Request) -> JSONResponse:
    order = ORDERS.get(request.path_params["id"])
    if order is None:
        return JSONResponse({"error": "no such order"}, status_code=404)
    return JSONResponse(order)


async def place_order(request: Request) -> JSONResponse:
    try:
        body = await request.json()
        product_id, quantity = str(body["productId"]), int(body.get("quantity", 1))
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'send {"productId": "p-1", "quantity": 1}'}, status_code=400)
    try:
        product = await CATALOG.call("GetProduct", id=product_id)
    except grpc.aio.AioRpcError as exc:
        status = 404 if exc.code() == grpc.StatusCode.NOT_FOUND else 502
        return JSONResponse({"error": f"catalog: {exc.details()}"}, status_code=status)
    order_id = f"o-{next(NEXT)}"
    ORDERS[order_id] = {
        "id": order_id,
        "productId": product.id,
        "product": product.name,
        "quantity": quantity,
        # Set by the gateway from the verified API key or JWT; never taken from the client.
        "principal": request.headers.get("x-meshgate-principal", ""),
    }
    return JSONResponse(ORDERS[order_id], status_code=201)


async def admin_stats(request: Request) -> JSONResponse:
    return JSONResponse({"orders": len(ORDERS)})


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    provider = setup("orders")
    yield
    await CATALOG.close()
    provider.shutdown()


app = TracingMiddleware(
    Starlette(
        routes=[
            Route("/orders", list_orders, methods=["GET"]),
            Route("/orders", place_order, methods=["POST"]),
            Route("/orders/{id}", get_order, methods=["GET"]),
            Route("/admin/stats", admin_stats),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )
)

if __name__ == "__main__":
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8081"))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
