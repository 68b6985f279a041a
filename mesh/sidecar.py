"""``meshgate sidecar``: wires identity, configuration watch, inbound, outbound and the admin port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.admin import admin_response
from mesh.inbound.handler import InboundHandler
from mesh.inbound.server import InboundServer
from mesh.measure import RequestMetrics, upstream_families
from mesh.outbound.client import MeshClient
from mesh.outbound.listener import OutboundHandler
from mesh.transport.h1 import ClientInfo, H1Pool, H1Server
from mesh.transport.h2c import Drain, H2cPool, TcpHandler, TcpMode, serve_sniffing
from mesh.transport.messages import Request, Response
from mesh.transport.pool import H2Pool
from mesh.transport.tunnel import tcp_listener
from shared.config.policyset import PolicySet
from shared.policy.engine import PolicyEngine
from shared.registry.client import ControlPlaneUnavailable, RegistryClient
from shared.registry.health import AppCheck, heartbeat_loop
from shared.telemetry.common_metrics import ConfigStatus, build_version, common_families
from shared.telemetry.metrics import Family, Registry
from shared.telemetry.tracing import Tracing, exporters

log = logging.getLogger("meshgate.sidecar")

HostPort = tuple[str, int]


@dataclass
class SidecarConfig:
    """Everything ``meshgate sidecar`` takes, parsed once."""

    service: str
    app: HostPort
    control_plane: str
    token: str | None
    cache_dir: Path
    namespace: str = "default"
    inbound: HostPort = ("127.0.0.1", 15006)
    advertise: str = "127.0.0.1"
    outbound: HostPort = ("127.0.0.1", 15001)
    admin: HostPort = ("127.0.0.1", 15000)
    upstreams: dict[int, str] = field(default_factory=dict)
    check: AppCheck = field(default_factory=AppCheck)
    heartbeat_interval: float = 5.0
    ttl: float = 15.0
    drain_timeout: float = 10.0
    trace_file: Path | None = None
    otlp_endpoint: str | None = None
    otlp_headers: dict[str, str] = field(default_factory=dict)
    access_log: bool = False
    trace_sample: float = 1.0


class Sidecar:
    """One sidecar process's parts; :meth:`start` then :meth:`wait` then :meth:`stop`."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.registry = RegistryClient(
            config.control_plane,
            service=config.service,
            namespace=config.namespace,
            token=config.token,
            cache_dir=config.cache_dir,
        )
        self.engine: PolicyEngine | None = None
        self.policy_version: str | None = None
        self.client: MeshClient | None = None
        self.inbound: InboundServer | None = None
        self.handler: InboundHandler | None = None
        self.app = H1Pool(*config.app)
        self.grpc_app = H2cPool(*config.app)
        self.ports: dict[str, int] = {}
        self._bundle_sequence: int | None = None
        self.config_status = ConfigStatus()
        self.metrics_registry = Registry()
        self.metrics_registry.collect(self._families)
        chosen = exporters(config.trace_file, config.otlp_endpoint, config.otlp_headers)
        self.tracing = Tracing(config.service, chosen, config.trace_sample, scope="meshgate.sidecar")
        self.outbound_drain = Drain()
        self.measure = RequestMetrics(self.metrics_registry, self.tracing, config.access_log)
        self.stopping = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def ready(self) -> bool:
        """Ready with a certificate that has not expired and a configuration, and not stopping."""
        return self.why_not_ready() == ""

    def why_not_ready(self) -> str:
        """Why ``/readyz`` says not ready ("" when ready)."""
        if self.stopping.is_set():
            return "stopping"
        certs = self.registry.certs
        if certs is None:
            return "no certificate yet"
        if certs.seconds_to_expiry() <= 0:
            return (
                "the certificate has expired and could not be renewed (is the control plane "
                "reachable? see the sidecar's log)"
            )
        if self.engine is None:
            return "no configuration yet"
        return ""

    def _on_snapshot(self, snapshot: dict[str, Any]) -> None:
        bundle = snapshot.get("bundle") or {}
        sequence = bundle.get("spiffe_sequence")
        if (
            self.inbound is not None
            and self._bundle_sequence is not None
            and sequence != self._bundle_sequence
        ):
            asyncio.get_running_loop().create_task(self.inbound.renew_listener())
        self._bundle_sequence = sequence
        self._apply(snapshot)

    def _apply(self, snapshot: dict[str, Any]) -> None:
        policies = snapshot.get("policies")
        if policies:
            try:
                policy_set = PolicySet.from_json(policies)
            except ValueError as exc:
                self.config_status.failed()
                log.error(
                    "snapshot %s carries unusable policies (%s); keeping the current ones",
                    snapshot["index"],
                    exc,
                )
            else:
                if policy_set.version != self.policy_version:
                    self.engine = PolicyEngine(policy_set)
                    self.policy_version = policy_set.version
                    self.config_status.applied(policy_set.version)
                    log.info("policy version %s in force", policy_set.version)
                assert self.client is not None
                self.client.update(
                    snapshot.get("endpoints") or {},
                    {name: svc.traffic_policy for name, svc in policy_set.services.items()},
                )
                return
        if self.client is not None:
            self.client.update(snapshot.get("endpoints") or {}, {})

    async def start(self) -> None:
        """Bootstrap identity (cache or join token), open every listener, register, watch."""
        cfg = self.config
        await self.registry.bootstrap()
        certs = self.registry.certs
        assert certs is not None and self.registry.bundle is not None
        td = self.registry.bundle.trust_domain
        self.client = MeshClient(H2Pool(certs.client_context, td), self.tracing)
        self.handler = InboundHandler(cfg.service, self.app, lambda: self.engine, self.grpc_app)
        inbound_handler = self.measure.wrap("inbound", self.handler, lambda _request, peer: peer)
        self.inbound = InboundServer(inbound_handler, certs.server_context, td)
        self.ports["inbound"] = await self.inbound.start(*cfg.inbound)
        outbound = await serve_sniffing(
            self._outbound(OutboundHandler(self.client, namespace=self._mesh_namespace)),
            *cfg.outbound,
            drain=self.outbound_drain,
        )
        self._servers.append(outbound)
        self.ports["outbound"] = outbound.sockets[0].getsockname()[1]
        for port, service in cfg.upstreams.items():
            server = await serve_sniffing(
                self._outbound(OutboundHandler(self.client, service)),
                cfg.outbound[0],
                port,
                tcp=self._tcp_mode(service),
                drain=self.outbound_drain,
            )
            self._servers.append(server)
        admin = await asyncio.start_server(H1Server(self._admin), *cfg.admin)
        self._servers.append(admin)
        self.ports["admin"] = admin.sockets[0].getsockname()[1]
        self._tasks.append(
            asyncio.create_task(self.registry.watch(self._on_snapshot, self.stopping), name="watch")
        )
        self._tasks.append(asyncio.create_task(self._register_and_beat(), name="heartbeat"))
        log.info(
            "sidecar for %s: inbound %s, outbound %s, admin %s",
            self.registry.identity,
            self.ports["inbound"],
            self.ports["outbound"],
            self.ports["admin"],
        )

    def _outbound(self, handler: OutboundHandler) -> Callable[[Request, ClientInfo], Awaitable[Response]]:
        """``handler`` measured; the peer is the destination service it resolved."""
        client = self.client
        assert client is not None

        def peer(request: Request, _info: ClientInfo) -> str:
            # label only services the mesh knows: apps may name any host, and series must stay bounded
            return request.authority if client.endpoints.get(request.authority) else "_unknown"

        return self.measure.wrap("outbound", handler, peer)

    def _mesh_namespace(self) -> str:
        """The Mesh's namespace (proxy-mode names ``orders.NS`` of another one keep their ``.NS``)."""
        engine = self.engine
        return engine.policy_set.mesh.namespace if engine is not None else "default"

    def _tcp_mode(self, service: str) -> TcpMode:
        """For a per-upstream port: tunnel its connections when ``service`` is declared ``protocol: tcp``."""
        client = self.client
        assert client is not None
        handler = tcp_listener(lambda request: client.request(service, request), service)

        def mode() -> TcpHandler | None:
            engine = self.engine
            declared = engine.policy_set.services.get(service) if engine is not None else None
            return handler if declared is not None and declared.protocol == "tcp" else None

        return mode

    async def _register_and_beat(self) -> None:
        cfg = self.config
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self.registry.register(
                    cfg.advertise, self.ports["inbound"], ttl=f"{cfg.ttl:g}s", metadata={"protocol": "http"}
                )
                break
            except ControlPlaneUnavailable as exc:
                log.warning("registration failed (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, 15.0)
        await heartbeat_loop(self.registry, cfg.check, cfg.heartbeat_interval, self.stopping, self.report)

    def report(self) -> dict[str, Any]:
        """What each heartbeat tells the control plane beyond health (shown by its dashboard)."""
        certs = self.registry.certs
        return {
            "version": build_version(),
            "policyVersion": self.config_status.version,
            "certificateExpiresIn": certs.seconds_to_expiry() if certs is not None else None,
            "inbound": self.measure.traffic_report(),
        }

    async def _admin(self, request: Request, info: ClientInfo) -> Response:
        return await admin_response(
            request,
            ready=lambda: self.ready,
            metrics=self.metrics,
            describe=self.describe,
            quit=self.stopping.set,
            why_not_ready=self.why_not_ready,
        )

    def describe(self) -> dict[str, Any]:
        """The effective configuration, for ``/config``."""
        return {
            "service": self.config.service,
            "identity": str(self.registry.identity),
            "ports": self.ports,
            "policyVersion": self.policy_version,
            "index": self.registry.index,
            "endpoints": {
                s: [e.id for e in self.client.endpoints.get(s)] for s in self.client.endpoints.services()
            }
            if self.client
            else {},
        }

    def metrics(self) -> str:
        """Prometheus text (names and labels: docs/metrics.md)."""
        return self.metrics_registry.render()

    def _families(self) -> list[Family]:
        certs = self.registry.certs
        families = common_families(
            "sidecar",
            ready=self.ready,
            config=self.config_status,
            certificates={"svid": certs.seconds_to_expiry()} if certs is not None else {},
        )
        stats = self.handler.stats if self.handler is not None else {}
        families.append(
            Family(
                "meshgate_policy_denials_total",
                "counter",
                "Requests the policy engine denied; mode audit: would have denied (logged, let through).",
                ("mode",),
            )
            .add(stats.get("denied", 0), "enforce")
            .add(stats.get("audit_denied", 0), "audit")
        )
        inbound = self.inbound
        families.append(
            Family(
                "meshgate_sidecar_inbound_connections",
                "gauge",
                "Open mTLS connections from peer sidecars.",
            ).add(len(inbound.connections) if inbound is not None else 0)
        )
        families.append(
            Family(
                "meshgate_sidecar_inbound_connections_refused_total",
                "counter",
                "Inbound connections refused: the peer's certificate or ALPN did not verify.",
            ).add(inbound.refused if inbound is not None else 0)
        )
        if self.client is not None:
            families += upstream_families(self.client)
        return families

    async def wait(self) -> None:
        """Until SIGTERM, SIGINT or ``POST /quitquitquit``."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        await self.stopping.wait()

    async def stop(self) -> None:
        """Drain: stop accepting, deregister, GOAWAY to peers, finish in-flight requests, close."""
        self.stopping.set()
        for server in self._servers:
            server.close()
        self.outbound_drain.announce()  # the app's kept-alive connections: close after their request
        with contextlib.suppress(ControlPlaneUnavailable, TimeoutError):
            await asyncio.wait_for(self.registry.deregister(), 2.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        if self.inbound is not None:
            await self.inbound.drain(self.config.drain_timeout)
        if self.client is not None:  # the app's requests through the outbound proxy finish too
            await self.client.wait_idle(max(deadline - loop.time(), 0.0))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.client is not None:
            self.client.pool.close()
        await self.app.close()
        await self.grpc_app.close()
        await self.registry.close()
        self.tracing.shutdown()
