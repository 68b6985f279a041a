"""A tiny in-process mesh on 127.0.0.1 for the outbound, inbound and transport tests.

One CA, SVIDs for a caller (``web``) and a server (``orders``), an ``InboundServer`` (mTLS HTTP/2) in
front of an HTTP/1.1 app written by the test, a policy engine from a small policy set, and a
``MeshClient`` over an ``H2Pool`` with the caller's client context. Everything is closed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mesh.h2 import Limits
from mesh.inbound.handler import InboundHandler
from mesh.inbound.server import InboundServer
from mesh.outbound.client import MeshClient
from mesh.transport.h1 import ClientInfo, H1Pool, H1Server
from mesh.transport.messages import Request, Response, body_of
from mesh.transport.pool import H2Pool
from shared.config.loader import load_policy_set
from shared.config.model.mesh import TrafficPolicy
from shared.identity.ca import CertificateAuthority
from shared.identity.spiffeid import workload_id
from shared.identity.tls import client_context, server_context
from shared.policy.engine import PolicyEngine

TD = "rig.test"
T = TypeVar("T")

POLICIES = f"""\
apiVersion: meshgate/v1
kind: Mesh
trustDomain: {TD}
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: web
---
apiVersion: meshgate/v1
kind: Service
name: orders
---
apiVersion: meshgate/v1
kind: Service
name: billing
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: orders-access
target: {{service: orders}}
rules:
  - name: no-admin
    action: deny
    to: {{paths: ["/admin", "/admin/*"]}}
  - name: from-web
    action: allow
    from: {{services: [web]}}
"""

AppHandler = Callable[[Request, ClientInfo], Awaitable[Response]]


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run ``coro`` in a fresh loop, bounded by ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def spiffe(name: str) -> str:
    return str(workload_id(TD, name))


class Pki:
    """A CA in ``folder`` and contexts for workloads (``name`` -> SVID ``spiffe://rig.test/ns/default/sa/name``)."""

    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority.init(folder, TD)

    def server(self, name: str) -> ssl.SSLContext:
        chain, key = self.ca.issue(workload_id(TD, name))
        return server_context(chain, key, self.ca.bundle())

    def client(self, name: str) -> ssl.SSLContext:
        chain, key = self.ca.issue(workload_id(TD, name))
        return client_context(chain, key, self.ca.bundle())


def engine_from(folder: Path, text: str = POLICIES) -> PolicyEngine:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policies.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    result = load_policy_set([folder])
    assert result.policy_set is not None, "\n".join(str(e) for e in result.errors)
    return PolicyEngine(result.policy_set)


def traffic(**spec: Any) -> TrafficPolicy:
    """A TrafficPolicy from camelCase YAML-like fields, e.g. ``traffic(retries={"attempts": 1})``."""
    return TrafficPolicy.model_validate(spec)


async def read_all(response: Response) -> bytes:
    return b"".join([chunk async for chunk in response.body])


@dataclass
class Upstream:
    """An app behind its own InboundServer (one mesh endpoint)."""

    name: str
    app: AppHandler
    seen: list[Request]
    inbound: InboundServer
    handler: InboundHandler
    app_server: asyncio.Server
    app_pool: H1Pool
    port: int
    app_port: int

    def endpoint(self, eid: str | None = None, identity: str | None = None) -> dict[str, Any]:
        return {
            "id": eid or f"{self.name}-{self.port}",
            "address": "127.0.0.1",
            "port": self.port,
            "identity": identity or spiffe(self.name),
        }

    async def close(self) -> None:
        await self.inbound.drain(0)
        if self.inbound.server is not None:
            await self.inbound.server.wait_closed()
        await self.app_pool.close()
        self.app_server.close()
        await self.app_server.wait_closed()


@dataclass
class Rig:
    """The mesh: ``client`` calls ``orders`` (and whatever else ``update`` names)."""

    tmp: Path
    pki: Pki
    engine: PolicyEngine
    caller: str
    client: MeshClient
    pool: H2Pool
    upstreams: list[Upstream] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def caller_id(self) -> str:
        return spiffe(self.caller)

    async def upstream(
        self,
        app: AppHandler,
        *,
        name: str = "orders",
        limits: Limits | None = None,
        engine: PolicyEngine | None = None,
    ) -> Upstream:
        """Start ``app`` (HTTP/1.1) behind an InboundServer presenting ``name``'s SVID."""
        seen: list[Request] = []

        async def recording(request: Request, info: ClientInfo) -> Response:
            seen.append(request)
            # an app still busy when the rig closes is stopped here, not cancelled by asyncio.run
            task = asyncio.ensure_future(app(request, info))
            stop = asyncio.ensure_future(self.closing.wait())
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if task.done():
                return task.result()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return Response(503, [("content-length", "0")])

        app_server = await asyncio.start_server(H1Server(recording), "127.0.0.1", 0)
        app_port = int(app_server.sockets[0].getsockname()[1])
        app_pool = H1Pool("127.0.0.1", app_port)
        chosen = engine or self.engine
        handler = InboundHandler(name, app_pool, lambda: chosen)
        ctx = self.pki.server(name)
        inbound = InboundServer(handler, lambda: ctx, TD, limits)
        port = await inbound.start("127.0.0.1", 0)
        up = Upstream(name, app, seen, inbound, handler, app_server, app_pool, port, app_port)
        self.upstreams.append(up)
        return up

    def update(
        self,
        endpoints: Mapping[str, list[dict[str, Any]]],
        policies: Mapping[str, TrafficPolicy] | None = None,
    ) -> None:
        self.client.update(endpoints, policies or {})

    async def call(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        service: str = "orders",
    ) -> tuple[Response, bytes]:
        """One request through the client; returns the response and its whole body."""
        hdrs = list(headers or [])
        if body and not any(k == "content-length" for k, _ in hdrs):
            hdrs.append(("content-length", str(len(body))))
        response = await self.client.request(
            service, Request(method, path, service, headers=hdrs, body=body_of(body))
        )
        return response, await read_all(response)


@contextlib.asynccontextmanager
async def mesh(
    tmp: Path, *, caller: str = "web", pool_kwargs: Mapping[str, Any] | None = None
) -> AsyncIterator[Rig]:
    """A CA, a policy engine and a MeshClient for ``caller``; start upstreams with ``rig.upstream``."""
    pki = Pki(tmp / "ca")
    engine = engine_from(tmp / "policies")
    client_ctx = pki.client(caller)
    pool = H2Pool(lambda: client_ctx, TD, **dict(pool_kwargs or {}))
    rig = Rig(tmp, pki, engine, caller, MeshClient(pool), pool)
    try:
        yield rig
    finally:
        rig.closing.set()
        pool.close()
        for up in rig.upstreams:
            await up.close()
        await asyncio.sleep(0.01)  # let closing transports finish


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF or a broken connection, then close ``writer`` (one
    direction of a loopback relay)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def ok_app(text: bytes = b"ok") -> AppHandler:
    """An app answering 200 with ``text`` after reading the request body."""

    async def app(request: Request, info: ClientInfo) -> Response:
        async for _ in request.body:
            pass
        return Response(200, [("content-length", str(len(text)))], body_of(text))

    return app


async def drain_body(request: Request) -> bytes:
    return b"".join([chunk async for chunk in request.body])
