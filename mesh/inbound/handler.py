"""Inbound steps for one request: authorize the caller's SPIFFE ID with the policy engine, then
forward to the local app with ``x-meshgate-peer`` set (and any such header from outside removed)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from mesh.transport.h1 import H1Pool, UpstreamError
from mesh.transport.h2c import H2cPool
from mesh.transport.messages import Request, Response, error_response, for_caller
from mesh.transport.tunnel import connect_app, websocket_app
from shared.policy.engine import PolicyEngine
from shared.policy.request import Caller, split_spiffe_id
from shared.policy.request import Request as PolicyRequest

log = logging.getLogger("meshgate.inbound")

#: Headers only the mesh may set toward apps; whatever a caller sent under these names is dropped.
MESH_HEADERS = frozenset({"x-meshgate-peer", "x-meshgate-principal"})


def policy_request(request: Request) -> PolicyRequest:
    """The engine's view of a request: method, path, headers (repeated ones joined with commas). A
    WebSocket (extended CONNECT with ``:protocol websocket``) is seen as the GET of its handshake."""
    headers: dict[str, str] = {}
    for key, value in request.headers:
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    method = request.method
    if method == "CONNECT" and headers.get(":protocol") == "websocket":
        method = "GET"
    return PolicyRequest(method, request.path, headers)


class InboundHandler:
    """Authorize, then forward to the app."""

    def __init__(
        self,
        service: str,
        app: H1Pool,
        engine: Callable[[], PolicyEngine | None],
        grpc_app: H2cPool | None = None,
    ) -> None:
        self.service = service
        self.app = app
        self.grpc_app = grpc_app
        self.engine = engine
        self.stats = {"requests": 0, "denied": 0, "audit_denied": 0, "app_errors": 0}

    def authorize(self, caller_id: str, request: Request) -> Response | None:
        """None when allowed; otherwise the 403 to send. Audit-mode verdicts are only logged."""
        engine = self.engine()
        if engine is None:
            return error_response(503, "no_configuration", "the sidecar has no policy yet")
        principal = None
        if self._from_gateway(engine, caller_id):
            principal = request.header("x-meshgate-principal")
        caller = Caller.from_identity(caller_id, principal=principal)
        decision = engine.decide(caller, self.service, policy_request(request))
        if decision.audit is not None and not decision.audit.allowed:
            self.stats["audit_denied"] += 1
            log.info(
                "audit: would deny %s %s from %s (%s, AccessPolicy/%s)",
                request.method,
                request.path,
                caller_id,
                decision.audit.rule,
                decision.audit.policy,
            )
        if decision.allowed:
            return None
        self.stats["denied"] += 1
        log.info(
            "denied %s %s from %s by %s: %s",
            request.method,
            request.path,
            caller_id,
            decision.rule,
            decision.reason,
        )
        return error_response(403, "policy_denied", f"{caller_id} may not {request.method} {request.path}")

    async def __call__(self, request: Request, caller_id: str) -> Response:
        """Handle one request from an authenticated peer sidecar."""
        self.stats["requests"] += 1
        refused = self._refuse_kind(request)
        if refused is not None:
            return for_caller(request, refused)
        denied = self.authorize(caller_id, request)
        if denied is not None:
            # answer at once: the body is not read (a tunnel's never ends); whatever the caller still
            # sends on this stream is acknowledged and dropped by the transport once we have answered
            return for_caller(request, denied)
        engine = self.engine()
        principal = request.header("x-meshgate-principal")
        request.headers = [(k, v) for k, v in request.headers if k not in MESH_HEADERS]
        request.headers.append(("x-meshgate-peer", caller_id))
        if principal is not None and engine is not None and self._from_gateway(engine, caller_id):
            request.headers.append(("x-meshgate-principal", principal))
        try:
            if request.method == "CONNECT" and request.header(":protocol") == "websocket":
                return await websocket_app(request, self.app.host, self.app.port, self.service)
            if request.method == "CONNECT":  # a TCP tunnel, authorized above as it opens
                return await connect_app(request, self.app.host, self.app.port)
            if self.grpc_app is not None and self._speaks_grpc():
                return await self.grpc_app.request(request)
            return await self.app.request(request)
        except UpstreamError as exc:
            self.stats["app_errors"] += 1
            log.warning("app unreachable for %s %s: %s", request.method, request.path, exc)
            failed = error_response(503 if exc.code == "connect_failure" else 502, exc.code, str(exc))
            return for_caller(request, failed)

    @staticmethod
    def _from_gateway(engine: PolicyEngine, caller_id: str) -> bool:
        """True when the caller is an edge gateway of this mesh (``Mesh.edgeGateways``): only those may
        pass on the end user's principal."""
        mesh = engine.policy_set.mesh
        try:
            td, _ns, service = split_spiffe_id(caller_id)
        except ValueError:
            return False
        return td == mesh.trust_domain and service in mesh.edge_gateways

    def _refuse_kind(self, request: Request) -> Response | None:
        """A plain CONNECT (a raw TCP tunnel to the app) only to a ``protocol: tcp`` service, and only
        CONNECT to one: a tunnel into an HTTP app would carry requests no policy saw, with forged
        ``x-meshgate-peer`` headers. Extended CONNECT only for ``:protocol websocket``."""
        engine = self.engine()
        if engine is None:
            return None  # authorize answers no_configuration
        declared = engine.policy_set.services.get(self.service)
        tcp = declared is not None and declared.protocol == "tcp"
        protocol = request.header(":protocol")
        if request.method == "CONNECT" and protocol is not None and protocol != "websocket":
            return error_response(501, "not_implemented", f"extended CONNECT for {protocol!r} is not served")
        tunnel = request.method == "CONNECT" and protocol is None
        if tunnel == tcp:
            return None
        self.stats["denied"] += 1
        if tunnel:
            log.info("refused a TCP tunnel into %s, which is not declared protocol: tcp", self.service)
            return error_response(
                405, "method_not_allowed", f"{self.service} is not a TCP service: no CONNECT tunnels"
            )
        return error_response(
            405, "method_not_allowed", f"{self.service} is a TCP service (protocol: tcp): tunnels only"
        )

    def _speaks_grpc(self) -> bool:
        """The app is reached over h2c when its ``Service`` says ``protocol: grpc``."""
        engine = self.engine()
        declared = engine.policy_set.services.get(self.service) if engine is not None else None
        return declared is not None and declared.protocol == "grpc"
