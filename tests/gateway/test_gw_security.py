"""Regression tests for the edge's security review: each attack that worked once, refused now."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import timedelta
from pathlib import Path

import pytest
from gateway_testlib import edge, run
from pydantic import ValidationError

from gateway.proxy import route_policy
from gateway.server import serve
from gateway.translate.grpcjson import _Template
from mesh.h2 import Limits
from mesh.transport.h2conn import H2Protocol
from mesh.transport.messages import Request
from shared.config.model.edge import Cors, Route
from shared.config.model.mesh import TrafficPolicy

KEY = hashlib.sha256(b"k").hexdigest()
POLICY = f"""\
apiVersion: meshgate/v1
kind: Route
name: admin
match: {{path: {{prefix: /admin}}}}
backends: [{{service: orders}}]
auth: [keys]
---
apiVersion: meshgate/v1
kind: Route
name: public
match: {{path: {{prefix: /}}}}
backends: [{{service: orders}}]
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  keys: [{{name: alice, sha256: {KEY}}}]
---
apiVersion: meshgate/v1
kind: Route
name: tenants
match: {{path: {{prefix: /tenants}}}}
backends: [{{service: orders}}]
rateLimit: per-tenant
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: tenants-acme
target: {{route: tenants}}
rules:
  - action: allow
    to: {{headers: [{{name: x-tenant, exact: acme}}]}}
---
apiVersion: meshgate/v1
kind: RateLimit
name: per-tenant
key: [{{type: header, name: x-tenant}}]
limits: [{{requests: 3, per: 1m}}]
failureMode: allow-local
"""


async def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    try:
        while b"\r\n\r\n" not in out:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            out += chunk
    finally:
        writer.close()
    return out


@pytest.mark.parametrize(
    "path",
    [
        "/%61dmin/users",
        "/x/../admin/users",
        "/./admin/users",
        "//admin/users",
        "/admin%2Fusers",
        "/admin\\users",
    ],
)
def test_path_tricks_cannot_reach_a_guarded_route_through_another(tmp_path: Path, path: str) -> None:
    async def go() -> bytes:
        async with edge(tmp_path, POLICY) as gw:  # raw bytes: a client library would clean the path itself
            server = await serve(gw.http._transport.app, "127.0.0.1", 0)  # type: ignore[attr-defined]
            try:
                port = server.sockets[0].getsockname()[1]
                return await raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            finally:
                server.close()

    status = run(go())[:12]
    assert status in (b"HTTP/1.1 400", b"HTTP/1.1 401")  # refused as ambiguous, or /admin asking for a key


def test_the_upstream_gets_the_canonical_path(tmp_path: Path) -> None:
    async def go() -> str:
        async with edge(tmp_path, POLICY) as gw:
            response = await gw.http.get("/a/./b//c/../d%20e?q=1")
            return str(response.json()["path"])

    assert run(go()) == "/a/b/d%20e?q=1"


def test_connect_is_not_served_at_the_edge(tmp_path: Path) -> None:
    async def go() -> int:
        async with edge(tmp_path, POLICY) as gw:
            server = await serve(gw.http._transport.app, "127.0.0.1", 0)  # type: ignore[attr-defined]
            port = server.sockets[0].getsockname()[1]
            try:
                loop = asyncio.get_running_loop()
                _, proto = await loop.create_connection(
                    lambda: H2Protocol(client_side=True, limits=Limits()), "127.0.0.1", port
                )
                await asyncio.wait_for(proto.ready, 5)
                assert (
                    not proto.endpoint._h2.remote_settings.enable_connect_protocol
                )  # no RFC 8441 at the edge
                response = await asyncio.wait_for(proto.request(Request("CONNECT", "/", "orders:80")), 5)
                proto.close()
                return response.status
            finally:
                server.close()

    assert run(go()) == 405


def test_a_websocket_handshake_with_a_body_is_refused_at_once(tmp_path: Path) -> None:
    async def go() -> tuple[bytes, float]:
        async with edge(tmp_path, POLICY) as gw:
            server = await serve(gw.http._transport.app, "127.0.0.1", 0)  # type: ignore[attr-defined]
            port = server.sockets[0].getsockname()[1]
            try:
                started = time.monotonic()
                handshake = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                answer = await raw(port, handshake + b"Content-Length: 10\r\n\r\n")
                # the worker is still alive: a normal request is answered
                second = await raw(port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
                assert second.startswith(b"HTTP/1.1 200")
                return answer, time.monotonic() - started
            finally:
                server.close()

    answer, elapsed = run(go())
    assert answer.startswith(b"HTTP/1.1 400") and elapsed < 3


def test_a_repeated_header_is_read_the_same_way_by_every_layer(tmp_path: Path) -> None:
    async def go() -> tuple[int, int]:
        async with edge(tmp_path, POLICY) as gw:
            alone = await gw.http.get("/tenants/1", headers={"x-tenant": "acme"})
            smuggled = await gw.http.get("/tenants/1", headers=[("x-tenant", "other"), ("x-tenant", "acme")])
            return alone.status_code, smuggled.status_code

    assert run(go()) == (200, 403)


def test_a_client_header_is_never_a_rate_limit_key(tmp_path: Path) -> None:
    async def go() -> list[int]:
        async with edge(tmp_path, POLICY) as gw:
            return [
                (await gw.http.get("/tenants/1", headers={"x-tenant": "acme", "x-spoof": str(i)})).status_code
                for i in range(5)
            ]

    assert run(go()) == [200, 200, 200, 429, 429]


def test_cors_wildcard_with_credentials_is_refused_by_the_model() -> None:
    with pytest.raises(ValidationError, match="allowCredentials"):
        Cors.model_validate({"allowOrigins": ["*"], "allowCredentials": True})


def test_a_grpc_deadline_shortens_but_never_lengthens_the_call() -> None:
    route = Route.model_validate(
        {"apiVersion": "meshgate/v1", "kind": "Route", "name": "r", "backends": [{"service": "s"}]}
    )
    service = TrafficPolicy(timeout=timedelta(seconds=15))
    longer = route_policy(route, service, deadline=360_000_000.0)
    shorter = route_policy(route, service, deadline=2.0)
    assert longer is not None and longer.timeout == timedelta(seconds=15)
    assert shorter is not None and shorter.timeout == timedelta(seconds=2)


@pytest.mark.parametrize("template", ["/v1/{a=**}/{b=**}/x", "/v1/{a=*/**}/x", "/v1/**/x"])
def test_descriptor_templates_with_a_double_star_inside_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="last segment"):
        _Template(template)


def test_an_api_key_sent_in_the_query_does_not_reach_the_service(tmp_path: Path) -> None:
    policy = f"""\
apiVersion: meshgate/v1
kind: Route
name: q
match: {{path: {{prefix: /q}}}}
backends: [{{service: orders}}]
auth: [qkeys]
---
apiVersion: meshgate/v1
kind: AuthProvider
name: qkeys
type: apiKey
apiKey:
  queryParam: api_key
  keys: [{{name: alice, sha256: {KEY}}}]
"""

    async def go() -> str:
        async with edge(tmp_path, policy) as gw:
            response = await gw.http.get("/q/items?page=2&api_key=k&sort=asc")
            assert response.status_code == 200
            return str(response.json()["path"])

    assert run(go()) == "/q/items?page=2&sort=asc"


async def _until_closed(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Everything the server sends on a connection carrying ``data``, up to its close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


@pytest.mark.parametrize("host", [b"", b"a,b", b"evil@orders"])
def test_a_request_the_edge_refuses_closes_the_connection(tmp_path: Path, host: bytes) -> None:
    """STANDARDS: 400 and close. The request pipelined behind a refused one never reaches the service
    (it did: the gateway's ``connection: close`` was dropped as a hop-by-hop header)."""

    async def go() -> bytes:
        async with edge(tmp_path, POLICY) as gw:
            server = await serve(gw.http._transport.app, "127.0.0.1", 0)  # type: ignore[attr-defined]
            port = server.sockets[0].getsockname()[1]
            try:
                pipelined = b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"
                return await _until_closed(
                    port, b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n" + pipelined
                )
            finally:
                server.close()

    out = run(go())
    assert out.startswith(b"HTTP/1.1 400") and b"connection: close" in out.lower()
    assert out.count(b"HTTP/1.1 ") == 1, out  # nothing answered for /after: it was never read
