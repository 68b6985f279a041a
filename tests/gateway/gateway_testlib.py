"""An in-process edge for the gateway tests: the gateway's ASGI app (httpx.ASGITransport, no server)
in front of a real mesh hop (MeshClient -> mTLS HTTP/2 -> InboundServer -> HTTP/1.1 echo app).

The policy set given by the test is completed with the Mesh and the ``gateway``/``orders`` services;
``orders`` lets the ``gateway`` service call it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mesh" / "outbound"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "ratelimit"))

from meshrig_testlib import TD, Rig, Upstream, engine_from, mesh, run

from gateway.app import build_app
from gateway.middleware.hygiene import HygieneSettings
from gateway.state import GatewayConfig, GatewayRuntime
from mesh.transport.h1 import ClientInfo
from mesh.transport.messages import Request, Response, body_of

__all__ = ["BASE", "Edge", "echo_app", "edge", "run"]

BASE = f"""\
apiVersion: meshgate/v1
kind: Mesh
trustDomain: {TD}
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: gateway
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
name: orders-from-gateway
target: {{service: orders}}
rules:
  - action: allow
    from: {{services: [gateway]}}
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: billing-from-gateway
target: {{service: billing}}
rules:
  - action: allow
    from: {{services: [gateway]}}
"""


async def echo_app(request: Request, info: ClientInfo) -> Response:
    """Answers with what it received as JSON: method, path, headers, body."""
    body = b"".join([chunk async for chunk in request.body])
    data = json.dumps(
        {
            "method": request.method,
            "path": request.path,
            "headers": request.headers,
            "body": body.decode("latin-1"),
        }
    ).encode()
    return Response(
        200, [("content-type", "application/json"), ("content-length", str(len(data)))], body_of(data)
    )


@dataclass
class Edge:
    """The gateway app, its runtime, an httpx client on it, and the mesh behind."""

    rig: Rig
    runtime: GatewayRuntime
    http: httpx.AsyncClient
    upstreams: dict[str, Upstream]

    async def get_json(self, path: str, **kw: object) -> tuple[httpx.Response, dict[str, object] | None]:
        response = await self.http.get(path, **kw)  # type: ignore[arg-type]
        try:
            return response, response.json()
        except ValueError:
            return response, None


@contextlib.asynccontextmanager
async def edge(
    tmp: Path,
    policies: str,
    *,
    redis: str | None = None,
    hygiene: HygieneSettings | None = None,
    client_address: str = "203.0.113.7",
    trace_file: Path | None = None,
    apps: dict[str, Any] | None = None,
) -> AsyncIterator[Edge]:
    """The gateway with ``policies`` (YAML documents added to BASE) in front of ``orders`` and
    ``billing`` echo apps."""
    async with mesh(tmp, caller="gateway") as rig:
        engine = engine_from(tmp / "gw-policies", BASE + "---\n" + textwrap.dedent(policies))
        upstreams = {}
        for name in ("orders", "billing"):
            up = await rig.upstream((apps or {}).get(name, echo_app), name=name, engine=engine)
            upstreams[name] = up
        rig.update({name: [up.endpoint()] for name, up in upstreams.items()})
        config = GatewayConfig(
            admin=None, redis=redis, hygiene=hygiene or HygieneSettings(), trace_file=trace_file
        )
        runtime = GatewayRuntime(config, client=rig.client)
        rig.client.tracing = runtime.tracing  # one tracer for the gateway's spans and the mesh client's
        runtime.apply(engine.policy_set)
        app = build_app(runtime)
        transport = httpx.ASGITransport(app=app, client=(client_address, 50000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as http:
                yield Edge(rig, runtime, http, upstreams)
        finally:
            runtime.stopping.set()
            if runtime.state is not None:
                for provider in runtime.state.providers.values():
                    await provider.close()
            await runtime.limiter.close()
            runtime.tracing.shutdown()
