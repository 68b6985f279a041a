"""The gateway's configuration in force (``GatewayState``, swapped whole) and the per-process parts
around it (``GatewayRuntime``: identity, mesh client, rate limiter, watch, admin port, metrics)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.auth.base import Authenticator
from gateway.exchange import Exchange
from gateway.metrics import GatewayMetrics
from gateway.middleware.hygiene import HygieneSettings
from gateway.ratelimit.limiter import RateLimiter
from gateway.routing import Router
from mesh.admin import admin_response
from mesh.outbound.client import MeshClient
from mesh.transport.h1 import ClientInfo, H1Server
from mesh.transport.messages import Request, Response
from mesh.transport.pool import H2Pool
from shared.config.model.edge import AuthProvider, RateLimit
from shared.config.model.mesh import TrafficPolicy
from shared.config.policyset import PolicySet
from shared.policy.engine import PolicyEngine
from shared.registry.client import RegistryClient
from shared.telemetry.tracing import Tracing, exporters

log = logging.getLogger("meshgate.gateway")
access = logging.getLogger("meshgate.access")

#: A replaced auth provider stays open after a configuration change for its own lookup timeout, at
#: least ``CLOSE_GRACE_FLOOR`` seconds, plus ``CLOSE_GRACE_MARGIN``: requests in flight finish their
#: lookups with it. A provider without a limit (timeout 0) gets ``CLOSE_GRACE_UNLIMITED`` seconds.
CLOSE_GRACE_FLOOR = 10.0
CLOSE_GRACE_MARGIN = 1.0
CLOSE_GRACE_UNLIMITED = 300.0


def close_grace(doc: AuthProvider | None) -> float:
    """How long after a configuration change a replaced provider (built from ``doc``) is closed."""
    settings = (doc.ext_authz or doc.introspection) if doc is not None else None
    seconds = settings.timeout.total_seconds() if settings is not None else 0.0
    if settings is not None and seconds <= 0:
        seconds = CLOSE_GRACE_UNLIMITED
    return max(seconds, CLOSE_GRACE_FLOOR) + CLOSE_GRACE_MARGIN


def build_authenticator(doc: AuthProvider, redis_url: str | None) -> Authenticator:
    """The authenticator for one AuthProvider document."""
    if doc.type == "jwt":
        from gateway.auth.jwt import JwtAuthenticator

        assert doc.jwt is not None
        return JwtAuthenticator(doc.name, doc.jwt)
    if doc.type == "apiKey":
        from gateway.auth.apikey import ApiKeyAuthenticator

        assert doc.api_key is not None
        redis = None
        if doc.api_key.redis_prefix is not None and redis_url:
            import redis.asyncio as aioredis

            redis = aioredis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return ApiKeyAuthenticator(doc.name, doc.api_key, redis=redis)
    if doc.type == "extAuthz":
        from gateway.auth.extauthz import ExtAuthzAuthenticator

        assert doc.ext_authz is not None
        return ExtAuthzAuthenticator(doc.name, doc.ext_authz)
    from gateway.auth.introspection import IntrospectionAuthenticator

    assert doc.introspection is not None
    return IntrospectionAuthenticator(doc.name, doc.introspection)


@dataclass
class GatewayState:
    """One policy set compiled for the edge; requests keep the state they started with."""

    policy_set: PolicySet
    router: Router
    engine: PolicyEngine
    providers: Mapping[str, Authenticator]
    rate_limits: Mapping[str, RateLimit]
    _provider_docs: Mapping[str, AuthProvider] = field(default_factory=dict)
    transcoders: Mapping[str, Any] = field(default_factory=dict)  # route name -> grpcjson.Transcoder

    def needs_body(self, provider: str) -> bool:
        """True when ``provider`` reads the request body (ext_authz with includeBody)."""
        return bool(getattr(self.providers.get(provider), "needs_body", False))

    def service_policy(self, service: str) -> TrafficPolicy | None:
        """The Service document's traffic policy, when there is one."""
        svc = self.policy_set.services.get(service)
        return svc.traffic_policy if svc is not None else None


@dataclass
class GatewayConfig:
    """What ``meshgate gateway`` takes, for each worker."""

    control_plane: str | None = None
    cache_dir: Path | None = None
    token: str | None = None
    service: str = "gateway"
    namespace: str = "default"
    redis: str | None = None
    admin: tuple[str, int] | None = ("127.0.0.1", 15100)
    hygiene: HygieneSettings = field(default_factory=HygieneSettings)
    trace_file: Path | None = None
    trace_sample: float = 1.0
    otlp_endpoint: str | None = None
    otlp_headers: dict[str, str] = field(default_factory=dict)
    access_log: bool = False

    def to_json(self) -> str:
        """For the worker processes (environment variable)."""
        data = {
            "control_plane": self.control_plane,
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "service": self.service,
            "namespace": self.namespace,
            "redis": self.redis,
            "admin": list(self.admin) if self.admin else None,
            "hygiene": self.hygiene.__dict__,
            "trace_file": str(self.trace_file) if self.trace_file else None,
            "trace_sample": self.trace_sample,
            "otlp_endpoint": self.otlp_endpoint,
            "otlp_headers": self.otlp_headers,
            "access_log": self.access_log,
        }
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> GatewayConfig:
        """The inverse of :meth:`to_json` (the token never travels: workers start from the cache)."""
        data = json.loads(text)
        return cls(
            control_plane=data["control_plane"],
            cache_dir=Path(data["cache_dir"]) if data["cache_dir"] else None,
            service=data["service"],
            namespace=data["namespace"],
            redis=data["redis"],
            admin=(data["admin"][0], int(data["admin"][1])) if data["admin"] else None,
            hygiene=HygieneSettings(**data["hygiene"]),
            trace_file=Path(data["trace_file"]) if data["trace_file"] else None,
            trace_sample=float(data["trace_sample"]),
            otlp_endpoint=data.get("otlp_endpoint"),
            otlp_headers=dict(data.get("otlp_headers") or {}),
            access_log=bool(data.get("access_log", False)),
        )


class GatewayRuntime:
    """Per worker process: started by the ASGI lifespan, stopped with it."""

    def __init__(self, config: GatewayConfig, *, client: MeshClient | None = None) -> None:
        self.config = config
        self.hygiene = config.hygiene
        self.state: GatewayState | None = None
        self.metrics = GatewayMetrics()
        self.metrics.collect_from(self)
        chosen = exporters(config.trace_file, config.otlp_endpoint, config.otlp_headers)
        self.tracing = Tracing(config.service, chosen, config.trace_sample, scope="meshgate.gateway")
        self.limiter = RateLimiter(config.redis)
        self._client = client
        self.registry: RegistryClient | None = None
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing: set[asyncio.Task[Any]] = set()  # providers of a replaced configuration closing
        self._refused_version: str | None = None  # a policy version that could not be put in force
        self._admin: asyncio.Server | None = None
        self.admin_port: int | None = None

    @property
    def client(self) -> MeshClient:
        """The outbound mesh client (available once started)."""
        assert self._client is not None, "gateway runtime not started"
        return self._client

    @property
    def has_client(self) -> bool:
        """True once the outbound mesh client exists."""
        return self._client is not None

    @property
    def ready(self) -> bool:
        """Ready with a mesh client (hence a certificate) and a configuration."""
        return self._client is not None and self.state is not None

    def observe(
        self,
        route: str,
        status: int,
        started: float,
        ex: Exchange | None = None,
        error: str | None = None,
        span: Any = None,
    ) -> None:
        """Count one answered request; with ``--access-log``, one JSON line about it."""
        elapsed = time.perf_counter() - started
        self.metrics.observe(route, status, elapsed)
        if self.config.access_log and ex is not None:
            trace_id = None
            if span is not None:
                trace_id = f"{span.get_span_context().trace_id:032x}"
            else:
                parent = ex.header("traceparent")
                trace_id = parent.split("-")[1] if parent and parent.count("-") == 3 else None
            access.info(
                "request",
                extra={
                    "trace_id": trace_id,
                    "route": route,
                    "method": ex.method,
                    "path": ex.path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "upstream_ms": ex.upstream_ms,
                    "retries": max(ex.attempts - 1, 0),
                    "principal": ex.identity.principal if ex.identity else None,
                    "client": ex.client_address,
                    "client_spiffe_id": ex.client_spiffe_id,
                    "upstream": ex.match.backend.service if ex.match else None,
                    "error": error,
                    "http_version": ex.http_version,
                },
            )

    async def start(self) -> None:
        """Identity from the cache (or token), the mesh client, the watch and the admin port."""
        cfg = self.config
        if self._client is None:
            if cfg.control_plane is None or cfg.cache_dir is None:
                raise RuntimeError("a gateway needs --control-plane and a cache directory")
            self.registry = RegistryClient(
                cfg.control_plane,
                service=cfg.service,
                namespace=cfg.namespace,
                token=cfg.token,
                cache_dir=cfg.cache_dir,
            )
            await self.registry.bootstrap()
            certs = self.registry.certs
            assert certs is not None and self.registry.bundle is not None
            self._client = MeshClient(
                H2Pool(certs.client_context, self.registry.bundle.trust_domain), self.tracing
            )
            self._tasks.append(asyncio.create_task(self.registry.watch(self._on_snapshot, self.stopping)))
        if cfg.admin is not None:
            self._admin = await asyncio.start_server(H1Server(self._serve_admin), *cfg.admin, reuse_port=True)
            self.admin_port = int(self._admin.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop the watch, close authenticators, the limiter and connections."""
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._admin is not None:
            self._admin.close()
        if self._closing:  # replaced providers waiting out their grace: closed now (stopping is set)
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        if self.state is not None:
            for provider in self.state.providers.values():
                with contextlib.suppress(Exception):
                    await provider.close()
        await self.limiter.close()
        if self._client is not None:
            self._client.pool.close()
        if self.registry is not None:
            await self.registry.close()
        self.tracing.shutdown()

    def _on_snapshot(self, snapshot: dict[str, Any]) -> None:
        policies = snapshot.get("policies")
        policy_set = None
        version = str(policies.get("version") or "") if isinstance(policies, dict) else ""
        if policies and not (version and version == self._refused_version):
            try:
                policy_set = PolicySet.from_json(policies)
            except ValueError as exc:
                self._refused_version = version or None  # not counted again with every endpoint update
                self.metrics.config.failed()
                log.error("snapshot carries unusable policies (%s); keeping the current ones", exc)
        if policy_set is not None:
            self._try_apply(policy_set, snapshot.get("index"))
        # the endpoints go in even when the policies could not: with the traffic policies in force
        services = self.state.policy_set.services if self.state is not None else {}
        self.client.update(
            snapshot.get("endpoints") or {}, {name: svc.traffic_policy for name, svc in services.items()}
        )

    def _try_apply(self, policy_set: PolicySet, index: object = None) -> None:
        """:meth:`apply`, for the watch: a set that cannot be compiled is logged and counted once, the
        configuration in force stays, and the watch goes on (later sets, endpoint updates)."""
        version = policy_set.version
        if version and version == self._refused_version:
            return  # refused already (logged and counted then); the same content fails the same way
        try:
            self.apply(policy_set)
        except Exception as exc:
            self._refused_version = version or None
            self.metrics.config.failed()
            current = self.state.policy_set.version if self.state is not None else None
            log.error(
                "gateway policy version %s (snapshot %s) cannot be put in force: %s: %s; keeping %s",
                version or "(none)",
                index,
                type(exc).__name__,
                exc,
                f"version {current}" if current else "no configuration (requests get 503)",
                exc_info=exc,
            )
            return
        self._refused_version = None

    def apply(self, policy_set: PolicySet) -> None:
        """Compile ``policy_set`` and put it in force; unchanged auth providers are kept (their key
        caches too), replaced ones are closed once requests in flight are done with them (after
        :func:`close_grace`; at once when the runtime stops). Raises when the set cannot be compiled,
        leaving the configuration in force as it was."""
        old = self.state
        if old is not None and old.policy_set.version == policy_set.version and policy_set.version:
            return
        # the parts that can fail first, before any provider is built
        router = Router(policy_set.routes.values())
        engine = PolicyEngine(policy_set)
        providers: dict[str, Authenticator] = {}
        docs: dict[str, AuthProvider] = {}
        for name, doc in policy_set.auth_providers.items():
            if old is not None and old._provider_docs.get(name) == doc and name in old.providers:
                providers[name] = old.providers[name]
            else:
                try:
                    providers[name] = build_authenticator(doc, self.config.redis)
                except Exception as exc:  # a provider that cannot be built fails closed (401)
                    log.error("auth provider %s cannot be used: %s", name, exc)
                    continue
            docs[name] = doc
        transcoders: dict[str, Any] = {}
        for route in policy_set.routes.values():
            if route.grpc_json is None or route.grpc_json.descriptor is None:
                continue
            previous = old.transcoders.get(route.name) if old is not None else None
            old_route = old.policy_set.routes.get(route.name) if old is not None else None
            if previous is not None and old_route is not None and old_route.grpc_json == route.grpc_json:
                transcoders[route.name] = previous
                continue
            try:
                from gateway.translate.grpcjson import Transcoder

                transcoders[route.name] = Transcoder(
                    base64.b64decode(route.grpc_json.descriptor),
                    route.grpc_json.services,
                    preserve_names=route.grpc_json.preserve_proto_field_names,
                )
            except Exception as exc:  # the route then answers 503 no_configuration
                log.error("route %s: cannot use its descriptor set: %s", route.name, exc)
        self.state = GatewayState(
            transcoders=transcoders,
            policy_set=policy_set,
            router=router,
            engine=engine,
            providers=providers,
            rate_limits=dict(policy_set.rate_limits),
            _provider_docs=docs,
        )
        self.metrics.config.applied(policy_set.version)
        log.info("gateway policy version %s in force (%d routes)", policy_set.version, len(policy_set.routes))
        if old is not None:
            for name, provider in old.providers.items():
                if providers.get(name) is not provider:
                    self._close_later(provider, close_grace(old._provider_docs.get(name)))

    def _close_later(self, provider: Authenticator, grace: float) -> None:
        """Close a replaced ``provider`` after ``grace`` seconds (or when the runtime stops): requests
        that started with the previous configuration may still be waiting on its lookups."""
        task = asyncio.get_running_loop().create_task(
            self._close_after(provider, grace), name=f"close-auth-provider-{provider.name}"
        )
        self._closing.add(task)  # held until done: the loop keeps only a weak reference to a task
        task.add_done_callback(self._closing.discard)

    async def _close_after(self, provider: Authenticator, grace: float) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), grace)
        finally:
            try:
                await provider.close()
            except Exception as exc:
                log.warning("replaced auth provider %s did not close cleanly: %s", provider.name, exc)

    def describe(self) -> dict[str, Any]:
        """The effective configuration, for ``/config``."""
        state = self.state
        return {
            "service": self.config.service,
            "identity": str(self.registry.identity) if self.registry else None,
            "policy_version": state.policy_set.version if state else None,
            "routes": sorted(state.router.routes) if state else [],
            "auth_providers": sorted(state.providers) if state else [],
            "rate_limits": sorted(state.rate_limits) if state else [],
            "redis": bool(self.config.redis),
            "redis_ok": self.limiter.redis_ok,
            "endpoints": (
                {svc: len(self._client.endpoints.get(svc)) for svc in self._client.endpoints.services()}
                if self._client
                else {}
            ),
        }

    def render_metrics(self) -> str:
        """Prometheus text (names and labels: docs/metrics.md)."""
        return self.metrics.render()

    async def _serve_admin(self, request: Request, info: ClientInfo) -> Response:
        return await admin_response(
            request, ready=lambda: self.ready, metrics=self.render_metrics, describe=self.describe
        )
