"""The gateway app end to end in one process: ASGI in, real mTLS HTTP/2 mesh hop out, echo app behind."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from gateway_testlib import edge, run

ROUTES = """\
apiVersion: meshgate/v1
kind: Route
name: orders-api
match:
  path: {prefix: /api/orders}
backends: [{service: orders}]
rewrite: {prefix: /orders}
requestHeaders:
  set: {x-route: orders-api}
  remove: [x-drop-me]
responseHeaders:
  set: {x-served-by: meshgate}
maxBodySize: 64
cors:
  allowOrigins: ["https://shop.example"]
  allowMethods: [GET, POST]
  allowHeaders: [content-type]
---
apiVersion: meshgate/v1
kind: Route
name: secret
match:
  path: {prefix: /secret}
backends: [{service: orders}]
auth: [keys]
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: secret-users
target: {route: secret}
rules:
  - action: allow
    from: {requestPrincipals: [alice]}
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  keys:
    - {name: alice, sha256: KEY_ALICE}
    - {name: bob, sha256: KEY_BOB}
---
apiVersion: meshgate/v1
kind: Route
name: limited
match:
  path: {prefix: /limited}
backends: [{service: orders}]
rateLimit: three
---
apiVersion: meshgate/v1
kind: RateLimit
name: three
key: [{type: clientAddress}]
limits: [{requests: 3, per: 1m}]
failureMode: allow-local
"""


def policies() -> str:
    return ROUTES.replace("KEY_ALICE", hashlib.sha256(b"alice-key").hexdigest()).replace(
        "KEY_BOB", hashlib.sha256(b"bob-key").hexdigest()
    )


def test_a_route_forwards_through_the_mesh_with_rewrite_and_header_ops(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, policies()) as gw:
            response, seen = await gw.get_json(
                "/api/orders/7?x=1",
                headers={"x-drop-me": "1", "x-meshgate-principal": "root", "x-forwarded-for": "6.6.6.6"},
            )
            assert response.status_code == 200, response.text
            assert seen is not None
            assert seen["path"] == "/orders/7?x=1"
            headers = dict(seen["headers"])  # type: ignore[arg-type]
            assert headers["x-route"] == "orders-api"
            assert "x-drop-me" not in headers
            assert "x-meshgate-principal" not in headers  # forged identity never reaches the service
            assert headers["x-forwarded-for"] == "203.0.113.7"
            assert headers["x-meshgate-peer"].endswith("/sa/gateway")  # the mesh saw the gateway's SVID
            assert response.headers["x-served-by"] == "meshgate"

    run(go())


def test_unknown_route_is_404_with_an_error_code(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, policies()) as gw:
            response = await gw.http.get("/nowhere")
            assert response.status_code == 404
            assert response.headers["x-meshgate-error"] == "route_not_found"

    run(go())


def test_body_over_the_route_cap_is_413_declared_or_streamed(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, policies()) as gw:
            response = await gw.http.post("/api/orders", content=b"x" * 65)
            assert response.status_code == 413 and response.headers["x-meshgate-error"] == "body_too_large"

            async def chunks():  # type: ignore[no-untyped-def]
                for _ in range(10):
                    yield b"x" * 20

            response = await gw.http.post("/api/orders", content=chunks())
            assert response.status_code == 413
            response = await gw.http.post("/api/orders", content=b"x" * 64)
            assert response.status_code == 200 and response.json()["body"] == "x" * 64
            assert len(gw.upstreams["orders"].seen) == 1

    run(go())


def test_cors_preflight_is_answered_at_the_edge(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, policies()) as gw:
            pre = {"origin": "https://shop.example", "access-control-request-method": "POST"}
            response = await gw.http.options("/api/orders", headers=pre)
            assert response.status_code == 204
            assert response.headers["access-control-allow-origin"] == "https://shop.example"
            assert "POST" in response.headers["access-control-allow-methods"]
            bad = await gw.http.options("/api/orders", headers={**pre, "origin": "https://evil.example"})
            assert bad.status_code == 403
            actual = await gw.http.get("/api/orders", headers={"origin": "https://shop.example"})
            assert actual.headers["access-control-allow-origin"] == "https://shop.example"
            assert gw.upstreams["orders"].seen and all(r.method == "GET" for r in gw.upstreams["orders"].seen)

    run(go())


def test_api_key_principal_and_route_policy(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, policies()) as gw:
            none = await gw.http.get("/secret")
            assert none.status_code == 401 and none.headers["x-meshgate-error"] == "unauthenticated"
            wrong = await gw.http.get("/secret", headers={"x-api-key": "nope"})
            assert wrong.status_code == 401
            bob = await gw.http.get("/secret", headers={"x-api-key": "bob-key"})
            assert bob.status_code == 403 and bob.headers["x-meshgate-error"] == "policy_denied"
            alice = await gw.http.get("/secret", headers={"x-api-key": "alice-key"})
            assert alice.status_code == 200
            headers = dict(alice.json()["headers"])
            assert headers["x-meshgate-principal"] == "alice"
            assert len(gw.upstreams["orders"].seen) == 1  # refusals never reached the service

    run(go())


def test_rate_limit_answers_429_with_headers_without_touching_the_upstream(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, policies()) as gw:
            answers = [await gw.http.get("/limited") for _ in range(5)]
            assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
            assert "ratelimit-policy" in answers[0].headers and "ratelimit" in answers[0].headers
            assert int(answers[3].headers["retry-after"]) >= 1
            assert answers[3].headers["x-meshgate-error"] == "rate_limited"
            assert len(gw.upstreams["orders"].seen) == 3

    run(go())


def test_a_new_policy_set_applies_without_a_restart(tmp_path: Path) -> None:
    async def go() -> None:
        async with edge(tmp_path, policies()) as gw:
            assert (await gw.http.get("/api/orders/1")).status_code == 200
            state = gw.runtime.state
            assert state is not None
            routes = {k: v for k, v in state.policy_set.routes.items() if k != "orders-api"}
            from dataclasses import replace

            gw.runtime.apply(replace(state.policy_set, routes=routes, version="v2"))
            assert (await gw.http.get("/api/orders/1")).status_code == 404
            assert (
                gw.runtime.state is not None and gw.runtime.state.providers["keys"] is state.providers["keys"]
            )
            await asyncio.sleep(0)

    run(go())
