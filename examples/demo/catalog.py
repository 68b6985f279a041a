"""Demo service ``catalog``: a gRPC server (grpcio, h2c on 127.0.0.1:$PORT) with products in memory.

The gateway serves it to the edge as JSON (policies/edge.yaml, route catalog-api); ``web`` and ``orders``
call it over gRPC through their sidecars. Every call continues the caller's trace."""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from catalog_api import METHODS, SERVICE, messages
from opentelemetry import propagate, trace
from telemetry import setup


class Catalog:
    """The products, behind a lock (grpcio calls handlers from a thread pool)."""

    def __init__(self) -> None:
        self.pb = messages()
        self.lock = threading.Lock()
        self.products = {
            p["id"]: self.pb["Product"](**p)
            for p in (
                {"id": "p-1", "name": "teapot", "price_cents": 2400, "stock": 12},
                {"id": "p-2", "name": "kettle", "price_cents": 3900, "stock": 3},
                {"id": "p-3", "name": "mug", "price_cents": 900, "stock": 40},
            )
        }

    def ListProducts(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            products = list(self.products.values())
        size = request.page_size or len(products)
        return self.pb["ListProductsResponse"](products=products[:size])

    def GetProduct(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            found = self.products.get(request.id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no product {request.id!r}")
        return found

    def CreateProduct(self, request: Any, context: grpc.ServicerContext) -> Any:
        product = request.product
        if not product.name or product.price_cents < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a product needs a name and a price >= 0")
        with self.lock:
            created = self.pb["Product"]()
            created.CopyFrom(product)
            created.id = f"p-{len(self.products) + 1}"
            self.products[created.id] = created
        return created


def traced(method: str, handler: Any) -> Any:
    """``handler`` inside a SERVER span parented on the caller's ``traceparent`` metadata."""
    tracer = trace.get_tracer("meshgate.demo")

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        carrier = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with tracer.start_as_current_span(
            f"{SERVICE}/{method}",
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
        ):
            return handler(request, context)

    return call


def main() -> None:
    provider = setup("catalog")
    catalog = Catalog()
    pb = catalog.pb
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            traced(name, getattr(catalog, name)),
            request_deserializer=pb[request].FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
        for name, (request, _) in METHODS.items()
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8082')}"
    server.add_insecure_port(address)
    server.start()
    print(f"catalog: gRPC on {address}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=2).wait()
    provider.shutdown()


if __name__ == "__main__":
    main()
