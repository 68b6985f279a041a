"""The catalog's protobuf messages and a small gRPC client, built from the descriptor set the gateway
also uses (policies/descriptors/catalog.pb), so the demo needs no generated code."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTOR = Path(
    os.environ.get(
        "CATALOG_DESCRIPTOR", Path(__file__).resolve().parents[2] / "policies" / "descriptors" / "catalog.pb"
    )
)
SERVICE = "demo.catalog.v1.Catalog"


@cache
def messages() -> dict[str, Any]:
    """Message classes by short name (Product, ListProductsRequest, ...)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    package = pool.FindServiceByName(SERVICE).file.package
    names = [
        "Product",
        "ListProductsRequest",
        "ListProductsResponse",
        "GetProductRequest",
        "CreateProductRequest",
    ]
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{n}")) for n in names}


#: method -> (request message, response message)
METHODS = {
    "ListProducts": ("ListProductsRequest", "ListProductsResponse"),
    "GetProduct": ("GetProductRequest", "Product"),
    "CreateProduct": ("CreateProductRequest", "Product"),
}


class CatalogClient:
    """Async gRPC calls to the catalog through the local sidecar port (``CATALOG_GRPC``), each in a
    CLIENT span whose context travels in the ``traceparent`` metadata."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel: Any = None

    @property
    def channel(self) -> Any:
        """The channel, made on first use: grpc.aio binds it to the running event loop."""
        if self._channel is None:
            import grpc.aio

            options = [("grpc.default_authority", "catalog")]
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        return self._channel

    async def call(self, method: str, **fields: Any) -> Any:
        """Call ``method`` with a request built from ``fields``; raises grpc.aio.AioRpcError."""
        from opentelemetry import trace
        from telemetry import outgoing_headers

        request_name, response_name = METHODS[method]
        pb = messages()
        stub = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb[response_name].FromString,
        )
        tracer = trace.get_tracer("meshgate.demo")
        with tracer.start_as_current_span(
            f"{SERVICE}/{method}",
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
        ):
            metadata = tuple(outgoing_headers().items())
            return await stub(pb[request_name](**fields), metadata=metadata, timeout=2.0)

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
