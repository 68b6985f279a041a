"""A route behind a JWT AuthProvider and a claims AccessPolicy, checked through the whole gateway: a real
JWKS server, tokens minted with PyJWT, the gateway's ASGI app, a real mTLS mesh hop to the echo app."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "auth"))

from gateway_testlib import Edge, edge, run
from jwt_testlib import AUDIENCE, ISSUER, JwksServer, SigningKey, claims, mint, rsa_key

KEY = rsa_key("edge-key")

POLICIES = """\
apiVersion: meshgate/v1
kind: Route
name: tenant-api
match: {path: {prefix: /tenant}}
backends: [{service: orders}]
auth: [jwt-provider]
---
apiVersion: meshgate/v1
kind: AuthProvider
name: jwt-provider
type: jwt
jwt:
  issuer: "ISSUER"
  audiences: [AUDIENCE]
  jwksUri: "JWKS_URI"
  algorithms: [RS256]
  claimsToHeaders:
    - {claim: tenant, header: x-tenant}
    - {claim: plan, header: x-plan}
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: tenant-api-acme-only
target: {route: tenant-api}
rules:
  - action: allow
    from:
      claims: [{claim: tenant, equals: acme}]
"""


def policies(jwks: JwksServer) -> str:
    return POLICIES.replace("JWKS_URI", jwks.url).replace("ISSUER", ISSUER).replace("AUDIENCE", AUDIENCE)


def header_values(seen: Mapping[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` the echo app received (it reports headers as [name, value] pairs)."""
    return [value for key, value in seen["headers"] if key.lower() == name]


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **extra}


def upstream_calls(gw: Edge) -> int:
    return len(gw.upstreams["orders"].seen)


def test_a_token_with_the_allowed_claim_reaches_the_service_with_principal_and_claim_header(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with JwksServer(KEY) as jwks, edge(tmp_path, policies(jwks)) as gw:
            token = mint(KEY, claims(sub="alice", tenant="acme", plan="gold"))
            response, seen = await gw.get_json("/tenant/orders/7", headers=bearer(token))
            assert response.status_code == 200, response.text
            assert seen is not None
            assert seen["path"] == "/tenant/orders/7"
            assert header_values(seen, "x-meshgate-principal") == ["alice"]
            assert header_values(seen, "x-tenant") == ["acme"]
            assert header_values(seen, "x-plan") == ["gold"]
            # the mesh hop authenticated the gateway itself
            assert header_values(seen, "x-meshgate-peer")[0].endswith("/sa/gateway")
            assert upstream_calls(gw) == 1

    run(go())


def test_a_valid_token_with_another_claim_value_is_denied_by_the_route_policy(tmp_path: Path) -> None:
    async def go() -> None:
        async with JwksServer(KEY) as jwks, edge(tmp_path, policies(jwks)) as gw:
            for token_claims in (
                claims(sub="mallory", tenant="globex"),  # another value
                claims(sub="mallory", tenant=["acme"]),  # a list is not the string "acme" (equals)
                claims(sub="mallory"),  # no tenant claim at all
            ):
                response = await gw.http.get("/tenant/orders/7", headers=bearer(mint(KEY, token_claims)))
                assert response.status_code == 403, (token_claims, response.text)
                assert response.headers["x-meshgate-error"] == "policy_denied"
            # a client-sent claim header does not satisfy the policy either: it matches the token's claims
            response = await gw.http.get(
                "/tenant/x", headers=bearer(mint(KEY, claims(sub="mallory")), **{"x-tenant": "acme"})
            )
            assert response.status_code == 403
            assert upstream_calls(gw) == 0

    run(go())


def _expired() -> dict[str, Any]:
    now = int(time.time())
    return claims(sub="alice", tenant="acme", iat=now - 900, nbf=now - 900, exp=now - 600)


def _token(case: str) -> str:
    good = claims(sub="alice", tenant="acme")
    if case == "expired":
        return mint(KEY, _expired())
    if case == "unknown-kid":  # signed by a key the JWKS does not publish
        return mint(rsa_key("stranger"), good)
    if case == "known-kid-other-key":  # the published kid, but signed by someone else's private key
        impostor = SigningKey(KEY.kid, KEY.alg, rsa_key("impostor").private)
        return mint(impostor, good)
    if case == "wrong-issuer":
        return mint(KEY, claims(sub="alice", tenant="acme", iss="https://evil.test/"))
    if case == "wrong-audience":
        return mint(KEY, claims(sub="alice", tenant="acme", aud="other-api"))
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "token expired"),
        ("unknown-kid", "unknown signing key"),
        ("known-kid-other-key", "bad signature"),
        ("wrong-issuer", "wrong issuer"),
        ("wrong-audience", "wrong audience"),
    ],
)
def test_a_token_that_does_not_verify_is_401_and_never_reaches_the_service(
    tmp_path: Path, case: str, reason: str
) -> None:
    async def go() -> None:
        async with JwksServer(KEY) as jwks, edge(tmp_path, policies(jwks)) as gw:
            token = _token(case)
            response = await gw.http.get("/tenant/orders/7", headers=bearer(token))
            assert response.status_code == 401, response.text
            assert response.headers["x-meshgate-error"] == "unauthenticated"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert reason in response.text
            for part in token.split("."):  # the reason never echoes the token
                assert part not in response.text
            assert upstream_calls(gw) == 0

    run(go())


def test_no_token_is_401_authentication_required(tmp_path: Path) -> None:
    async def go() -> None:
        async with JwksServer(KEY) as jwks, edge(tmp_path, policies(jwks)) as gw:
            response = await gw.http.get("/tenant/orders/7", headers={"x-tenant": "acme"})
            assert response.status_code == 401
            assert response.headers["x-meshgate-error"] == "unauthenticated"
            assert "authentication required" in response.text
            response = await gw.http.get("/tenant/orders/7", headers={"authorization": "Basic YTpi"})
            assert response.status_code == 401
            assert upstream_calls(gw) == 0

    run(go())


def test_claim_headers_and_the_principal_cannot_be_forged_by_the_client(tmp_path: Path) -> None:
    async def go() -> None:
        async with JwksServer(KEY) as jwks, edge(tmp_path, policies(jwks)) as gw:
            token = mint(KEY, claims(sub="alice", tenant="acme"))  # no plan claim
            forged = [
                ("authorization", f"Bearer {token}"),
                ("x-tenant", "globex"),
                ("X-Tenant", "initech"),  # any case, repeated
                ("x-plan", "platinum"),  # the token has no plan: the header must not pass at all
                ("x-meshgate-principal", "root"),
            ]
            response, seen = await gw.get_json("/tenant/orders/7", headers=forged)
            assert response.status_code == 200, response.text
            assert seen is not None
            assert header_values(seen, "x-tenant") == ["acme"]
            assert header_values(seen, "x-plan") == []
            assert header_values(seen, "x-meshgate-principal") == ["alice"]

    run(go())


HEADER_RULES = """\
apiVersion: meshgate/v1
kind: Route
name: api
match: {path: {prefix: /api}}
backends: [{service: orders}]
auth: [jwt-provider, keys]
---
apiVersion: meshgate/v1
kind: AuthProvider
name: jwt-provider
type: jwt
jwt:
  issuer: "ISSUER"
  audiences: [AUDIENCE]
  jwksUri: "JWKS_URI"
  algorithms: [RS256]
  claimsToHeaders: [{claim: tenant, header: x-tenant}]
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  keys: [{name: partner, sha256: KEY_HASH}]
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: api-acme-header
target: {route: api}
rules:
  - action: allow
    to: {headers: [{name: x-tenant, exact: acme}]}
"""


def test_header_rules_see_the_claim_headers_not_the_clients(tmp_path: Path) -> None:
    """AccessPolicy header rules match the request as it goes upstream (claims to headers applied,
    as Envoy runs jwt_authn before RBAC): the token's tenant decides, a forged header does not.
    Before: a genuine acme token was denied and a globex token with ``x-tenant: acme`` allowed."""
    text = policies_from(HEADER_RULES).replace("KEY_HASH", hashlib.sha256(b"partner-key").hexdigest())

    async def go() -> list[int]:
        async with JwksServer(KEY) as jwks, edge(tmp_path, text.replace("JWKS_URI", jwks.url)) as gw:
            acme = mint(KEY, claims(sub="alice", tenant="acme"))
            globex = mint(KEY, claims(sub="mallory", tenant="globex"))
            statuses = []
            for headers in (bearer(acme), bearer(globex, **{"x-tenant": "acme"})):
                response, _ = await gw.get_json("/api/x", headers=headers)
                statuses.append(response.status_code)
            return statuses

    assert run(go()) == [200, 403]


def test_claim_headers_cannot_be_forged_when_another_provider_accepts(tmp_path: Path) -> None:
    """Any-of: the API key accepts, and the JWT provider's claim header is still not the client's."""
    text = policies_from(HEADER_RULES).replace("KEY_HASH", hashlib.sha256(b"partner-key").hexdigest())
    text = text[: text.index("---\napiVersion: meshgate/v1\nkind: AccessPolicy")]

    async def go() -> list[str]:
        async with JwksServer(KEY) as jwks, edge(tmp_path, text.replace("JWKS_URI", jwks.url)) as gw:
            response, seen = await gw.get_json(
                "/api/x", headers={"x-api-key": "partner-key", "x-tenant": "acme"}
            )
            assert response.status_code == 200, response.text
            assert seen is not None
            assert header_values(seen, "x-meshgate-principal") == ["partner"]
            return header_values(seen, "x-tenant")

    assert run(go()) == []


def policies_from(text: str) -> str:
    return text.replace("ISSUER", ISSUER).replace("AUDIENCE", AUDIENCE)


@pytest.mark.parametrize("sub", ["bob\r\nx-evil: 1", "bøb ☃", " bob"])
def test_a_principal_the_service_cannot_be_told_is_refused(tmp_path: Path, sub: str) -> None:
    """A verified token whose subject cannot travel as a header value is a 401, not a request passed
    on without ``x-meshgate-principal`` (it was)."""

    async def go() -> tuple[int, int]:
        async with JwksServer(KEY) as jwks, edge(tmp_path, policies(jwks)) as gw:
            token = mint(KEY, claims(sub=sub, tenant="acme"))
            response, _ = await gw.get_json("/tenant/orders/7", headers=bearer(token))
            return response.status_code, upstream_calls(gw)

    assert run(go()) == (401, 0)
