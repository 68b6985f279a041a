"""CORS response headers on routes with ``cors``: the gateway's Access-Control-Allow-Origin,
-Allow-Credentials and -Expose-Headers replace the upstream's (one value each, as Envoy's CORS filter
does), and ``Vary: Origin`` is on every response whose CORS answer depends on the Origin (Fetch
standard, "CORS protocol and HTTP caches"), merged with the upstream's Vary."""

from __future__ import annotations

from pathlib import Path

import httpx
from gateway_testlib import edge, run

from mesh.transport.h1 import ClientInfo
from mesh.transport.messages import Request, Response, body_of

ROUTES = """\
apiVersion: meshgate/v1
kind: Route
name: creds
match: {path: {prefix: /creds}}
backends: [{service: orders}]
cors:
  allowOrigins: ["https://shop.example"]
  allowCredentials: true
  exposeHeaders: [x-total]
---
apiVersion: meshgate/v1
kind: Route
name: listed
match: {path: {prefix: /listed}}
backends: [{service: orders}]
cors: {allowOrigins: ["https://shop.example"]}
---
apiVersion: meshgate/v1
kind: Route
name: anyone
match: {path: {prefix: /anyone}}
backends: [{service: orders}]
cors: {allowOrigins: ["*"]}
---
apiVersion: meshgate/v1
kind: Route
name: plain
match: {path: {prefix: /plain}}
backends: [{service: orders}]
---
apiVersion: meshgate/v1
kind: Route
name: locked
match: {path: {prefix: /locked}}
backends: [{service: orders}]
auth: [keys]
cors: {allowOrigins: ["https://shop.example"]}
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  keys:
    - {name: alice, sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
"""

ORIGIN = "https://shop.example"


async def cors_app(request: Request, info: ClientInfo) -> Response:
    """An upstream with its own CORS headers (``/.../acao``) and/or Vary (``/.../vary-*``)."""
    async for _ in request.body:
        pass
    headers = [("content-type", "text/plain"), ("content-length", "2")]
    if "/acao" in request.path:
        headers += [
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "false"),
            ("access-control-expose-headers", "x-upstream"),
        ]
    if "/vary-ae" in request.path:
        headers.append(("vary", "accept-encoding"))
    if "/vary-origin" in request.path:
        headers.append(("vary", "Accept-Encoding, Origin"))
    return Response(200, headers, body_of(b"ok"))


def _varies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("vary")


def test_the_gateway_replaces_the_upstreams_cors_headers(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, ROUTES, apps={"orders": cors_app}) as gw:
            response = await gw.http.get("/creds/acao", headers={"origin": ORIGIN})
            assert response.status_code == 200
            assert response.headers.get_list("access-control-allow-origin") == [ORIGIN]
            assert response.headers.get_list("access-control-allow-credentials") == ["true"]
            assert response.headers.get_list("access-control-expose-headers") == ["x-total"]
            # a refused origin or no Origin: the upstream's "*" does not leak through either
            for headers in ({"origin": "https://evil.example"}, {}):
                other = await gw.http.get("/creds/acao", headers=headers)
                assert other.status_code == 200
                assert "access-control-allow-origin" not in other.headers
                assert "access-control-allow-credentials" not in other.headers
                assert "access-control-expose-headers" not in other.headers
            # routes without cors pass the upstream's headers as they are
            plain = await gw.http.get("/plain/acao", headers={"origin": ORIGIN})
            assert plain.headers.get_list("access-control-allow-origin") == ["*"]
            assert plain.headers.get_list("access-control-expose-headers") == ["x-upstream"]

    run(go())


def test_vary_origin_on_every_response_of_a_route_with_listed_origins(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, ROUTES, apps={"orders": cors_app}) as gw:
            for path in ("/listed/x", "/creds/x"):
                for headers in ({}, {"origin": "https://evil.example"}, {"origin": ORIGIN}):
                    response = await gw.http.get(path, headers=headers)
                    assert response.status_code == 200
                    assert _varies(response) == ["origin"], (path, headers, response.headers)
            # merged into the upstream's Vary, not a second field; not repeated when it names Origin
            merged = await gw.http.get("/listed/vary-ae", headers={"origin": ORIGIN})
            assert _varies(merged) == ["accept-encoding, origin"]
            refused = await gw.http.get("/listed/vary-ae")
            assert _varies(refused) == ["accept-encoding, origin"]
            named = await gw.http.get("/listed/vary-origin", headers={"origin": ORIGIN})
            assert _varies(named) == ["Accept-Encoding, Origin"]
            # the gateway's own answers on such a route too
            denied = await gw.http.get("/locked/x")
            assert denied.status_code == 401 and _varies(denied) == ["origin"]
            # "*" without credentials does not depend on the Origin; routes without cors are untouched
            anyone = await gw.http.get("/anyone/x")
            assert _varies(anyone) == [] and "access-control-allow-origin" not in anyone.headers
            star = await gw.http.get("/anyone/x", headers={"origin": ORIGIN})
            assert star.headers.get_list("access-control-allow-origin") == ["*"] and _varies(star) == []
            assert _varies(await gw.http.get("/plain/x")) == []
            assert _varies(await gw.http.get("/plain/vary-ae")) == ["accept-encoding"]

    run(go())
