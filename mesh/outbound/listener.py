"""The outbound listener apps talk to: plaintext HTTP/1.1 on loopback.

Proxy mode (apps set ``HTTP_PROXY=http://127.0.0.1:15001``): the request target names the service,
``http://orders/path`` or ``http://orders.mesh:8080/path``. A plain request's ``Host`` header works the
same way. A per-upstream local port sends everything to one service whatever the host.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mesh.outbound.client import MeshClient
from mesh.transport.h1 import ClientInfo
from mesh.transport.messages import Request, Response, error_response, for_caller

MESH_SUFFIXES = (".mesh", ".svc.cluster.local", ".svc")


def service_of(host: str) -> str:
    """``orders``, ``orders.mesh:80``, ``orders.default.svc`` -> ``orders``."""
    name = host.rsplit("@", 1)[-1]
    if name.startswith("["):
        return name
    name = name.split(":", 1)[0].lower()
    for suffix in MESH_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.split(".", 1)[0]


class OutboundHandler:
    """Routes each app request to a mesh service by name (or to ``fixed_service``)."""

    def __init__(self, client: MeshClient, fixed_service: str | None = None) -> None:
        self.client = client
        self.fixed_service = fixed_service

    async def __call__(self, request: Request, info: ClientInfo) -> Response:
        """Forward to the named service over the mesh."""
        target = request.path
        authority = request.authority
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            authority = parts.netloc
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
        elif request.method == "CONNECT":
            return error_response(
                501, "not_implemented", "TCP tunnelling through the proxy port is not available yet"
            )
        service = self.fixed_service or service_of(authority)
        if not service:
            return error_response(
                400, "no_service", "name the service in the URL or Host header (http://orders/...)"
            )
        request.path = target
        request.authority = service
        request.scheme = "http"
        return for_caller(request, await self.client.request(service, request))
