"""The OpenAPI description served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from mesh.controlplane.schemas import HeartbeatBody, RegisterBody, SignBody, TokenBody


def _body(model: Any) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": model.model_json_schema(by_alias=True)}},
    }


def _ok(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {}}}


_ERRORS = {
    "400": {"description": "malformed JSON or invalid fields; `message` says which"},
    "401": {"description": "no or bad credentials (certificate, admin token, join token)"},
    "403": {"description": "authenticated, but not allowed (e.g. another service's identity)"},
    "413": {"description": "body over 64 KiB"},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Meshgate control plane",
        "version": "1",
        "description": "Registry, certificate signing and configuration for sidecars and gateways. "
        "Workloads authenticate with their SVID (mTLS); before they have one, with a join token "
        "(`Authorization: Bearer mgt1...`, only for /v1/sign). Operators use the admin token.",
    },
    "components": {
        "securitySchemes": {
            "svid": {"type": "mutualTLS"},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
    },
    "paths": {
        "/v1/sign": {
            "post": {
                "summary": "Sign a CSR into an X.509-SVID for the caller's identity (from token or SVID)",
                "requestBody": _body(SignBody),
                "responses": {"200": _ok("chain (PEM), expiry and trust bundle"), **_ERRORS},
            }
        },
        "/v1/bundle": {"get": {"summary": "SPIFFE trust bundle (JWKS)", "responses": {"200": _ok("bundle")}}},
        "/v1/register": {
            "post": {
                "summary": "Register an instance of the caller's own service",
                "requestBody": _body(RegisterBody),
                "responses": {"201": _ok("instance id and index"), **_ERRORS},
            }
        },
        "/v1/register/{id}": {
            "delete": {
                "summary": "Deregister an instance",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _ok("removed"), "404": {"description": "unknown instance"}, **_ERRORS},
            }
        },
        "/v1/heartbeat/{id}": {
            "put": {
                "summary": "Heartbeat with the app check's result",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": _body(HeartbeatBody),
                "responses": {"200": _ok("index"), "404": {"description": "unknown instance"}, **_ERRORS},
            }
        },
        "/v1/services": {
            "get": {"summary": "Instances of every service, with health", "responses": {"200": _ok("")}}
        },
        "/v1/services/{name}": {
            "get": {
                "summary": "Instances of one service, with health (passing | warning | critical)",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": _ok(""), "404": {"description": "neither declared nor registered"}},
            }
        },
        "/v1/snapshot": {
            "get": {
                "summary": "Configuration snapshot; blocking query with index and wait (as Consul's)",
                "parameters": [
                    {"name": "index", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "wait", "in": "query", "schema": {"type": "string", "example": "30s"}},
                ],
                "responses": {"200": _ok("snapshot; header x-meshgate-index"), **_ERRORS},
            }
        },
        "/v1/status": {
            "get": {"summary": "Policy load state, store state, CA", "responses": {"200": _ok("")}}
        },
        "/v1/tokens": {
            "post": {
                "summary": "Create a join token (operators)",
                "requestBody": _body(TokenBody),
                "responses": {"201": _ok("token and expiry"), **_ERRORS},
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: a valid policy set is loaded",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        "/config": {"get": {"summary": "Effective configuration (operators)", "responses": {"200": _ok("")}}},
    },
}
