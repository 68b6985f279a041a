"""The outbound listener apps talk to: plaintext HTTP/1.1 on loopback.

Proxy mode (apps set ``HTTP_PROXY=http://127.0.0.1:15001``): the request target names the service,
``http://orders/path`` or ``http://orders.mesh:8080/path``. A plain request's ``Host`` header works the
same way. A per-upstream local port sends everything to one service whatever the host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from mesh.outbound.client import MeshClient
from mesh.transport.h1 import ClientInfo
from mesh.transport.messages import Request, Response, error_response, for_caller

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def service_of(host: str, namespace: str = "default") -> str | None:
    """The mesh service a host names, or None when it names none.

    ``orders``, ``orders.mesh``, ``orders.NS``, ``orders.NS.svc`` and ``orders.NS.svc.cluster.local``
    (any case, any port, a trailing dot) name ``orders`` when NS is the Mesh's ``namespace``, and
    ``orders.NS`` otherwise (how the registry lists another namespace's instances). IP literals and
    other names (``orders.example.com``, ``api.github.com``) are not mesh names: the outbound port is
    no way out of the mesh, and an outside API is never captured by a service that shares its first
    label.
    """
    name = host.rsplit("@", 1)[-1].lower()
    if name.startswith("["):
        return None
    name = name.split(":", 1)[0]
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if len(labels) == 2 and labels[1] == "mesh":
        return labels[0]
    if labels[2:] in (["svc"], ["svc", "cluster", "local"]):
        labels = labels[:2]
    if len(labels) == 1 and not labels[0].isdigit():
        return labels[0]
    if len(labels) == 2 and not (labels[0].isdigit() or labels[1].isdigit()):
        return labels[0] if labels[1] == namespace else f"{labels[0]}.{labels[1]}"
    return None


class OutboundHandler:
    """Routes each app request to a mesh service by name (or to ``fixed_service``)."""

    def __init__(
        self,
        client: MeshClient,
        fixed_service: str | None = None,
        namespace: Callable[[], str] = lambda: "default",
    ) -> None:
        self.client = client
        self.fixed_service = fixed_service
        self.namespace = namespace  # the Mesh's, from the current policy set

    async def __call__(self, request: Request, info: ClientInfo) -> Response:
        """Forward to the named service over the mesh."""
        target = request.path
        authority = request.authority
        if request.method == "CONNECT":
            return error_response(
                501, "not_implemented", "TCP tunnelling through the proxy port is not available yet"
            )
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            authority = parts.netloc
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
        if self.fixed_service is not None:
            service = self.fixed_service
        elif not authority:
            return error_response(
                400, "no_service", "name the service in the URL or Host header (http://orders/...)"
            )
        else:
            named = service_of(authority, self.namespace())
            if named is None:
                return error_response(
                    404,
                    "unknown_service",
                    f"{authority!r} is not a mesh service name (orders, orders.mesh, orders.NAMESPACE, "
                    "orders.NAMESPACE.svc.cluster.local); the outbound port does not reach outside hosts",
                )
            service = named
        request.path = target
        request.authority = service
        request.scheme = "http"
        return for_caller(request, await self.client.request(service, request))
