"""The control plane's HTTPS API (Starlette). Handlers are thin: they authenticate, validate, and
call :class:`~mesh.controlplane.core.ControlPlane`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from mesh.controlplane.auth import bearer, require
from mesh.controlplane.core import ControlPlane
from mesh.controlplane.errors import ApiError
from mesh.controlplane.metrics import ApiMetrics
from mesh.controlplane.openapi import OPENAPI
from mesh.controlplane.records import InstanceRecord, JoinToken
from mesh.controlplane.schemas import HeartbeatBody, RegisterBody, SignBody, TokenBody, read_body
from mesh.controlplane.ui import ui_routes
from shared.config.durations import parse_duration
from shared.identity.ca import CAError, CsrRejected
from shared.identity.spiffeid import workload_id
from shared.telemetry.metrics import CONTENT_TYPE

log = logging.getLogger("meshgate.controlplane.api")

MAX_WAIT_S = 300.0
TOKEN_PROBLEMS = {
    "unknown": "join token is not known to this control plane",
    "bad-secret": "join token is not valid",
    "expired": "join token has expired; create a new one with 'meshgate token create'",
    "used": "join token was already used; create a new one, or use --reusable",
}


def build_app(cp: ControlPlane) -> Starlette:
    """The API for ``cp``; routes are listed in one place below."""
    api_metrics = ApiMetrics(cp)

    def who(request: Request, *, admin_only: bool = False) -> Any:
        return require(request, cp.trust_domain, cp.admin_token, admin_only=admin_only)

    async def sign(request: Request) -> Response:
        body = await read_body(request, SignBody)
        csr = body.csr.encode()
        token_text = bearer(request)
        token = JoinToken.parse(token_text) if token_text else None
        if token is None:
            caller = who(request)
            if caller.identity is None:
                raise ApiError(
                    403, "forbidden", "operators do not get SVIDs; workloads sign with a join token"
                )
            identity = caller.identity
        else:
            record, problem = await cp.store.check_token(token.id, token.secret, time.time())
            if record is None:
                reason = problem or "unknown"
                cp.counters.auth_failures[reason] = cp.counters.auth_failures.get(reason, 0) + 1
                raise ApiError(401, "bad_token", TOKEN_PROBLEMS[problem or "unknown"])
            identity = workload_id(cp.trust_domain, record.service, record.namespace)
        try:
            result = cp.sign(csr, identity)
        except CsrRejected as exc:
            cp.counters.csr_rejected += 1
            raise ApiError(400, "csr_rejected", str(exc)) from exc
        except CAError as exc:
            raise ApiError(500, "ca_error", str(exc)) from exc
        if token is not None:
            record, problem = await cp.store.take_token(token.id, token.secret, time.time())
            if record is None:  # lost a race with another use of a single-use token
                raise ApiError(401, "bad_token", TOKEN_PROBLEMS[problem or "unknown"])
        log.info("signed an SVID for %s", identity)
        return JSONResponse(result)

    async def bundle(request: Request) -> Response:
        return JSONResponse(cp.ca.bundle().to_jwks())

    async def register(request: Request) -> Response:
        caller = who(request)
        body = await read_body(request, RegisterBody)
        namespace = body.namespace or (caller.identity.namespace if caller.identity else None) or "default"
        if caller.identity is not None and (
            caller.identity.service != body.service or caller.identity.namespace != namespace
        ):
            raise ApiError(
                403,
                "foreign_identity",
                f"{caller.identity} may only register its own service, not {namespace}/{body.service}",
            )
        instance_id = body.id or f"{namespace}-{body.service}-{body.address}-{body.port}".replace(":", "-")
        await cp.registry.sync()  # another replica's changes, before deciding who owns the id
        existing = cp.registry.get(instance_id)
        if existing is not None and caller.identity is not None and existing.identity != str(caller.identity):
            raise ApiError(403, "foreign_identity", f"instance {instance_id} belongs to {existing.identity}")
        identity = caller.identity or workload_id(cp.trust_domain, body.service, namespace)
        record = InstanceRecord(
            id=instance_id,
            service=body.service,
            namespace=namespace,
            address=body.address,
            port=body.port,
            identity=str(identity),
            metadata=dict(body.metadata),
            check=_check(body),
            ttl_s=body.ttl.total_seconds(),
            registered_at=time.time(),
        )
        await cp.register(record)
        return JSONResponse({"id": record.id, "index": cp.registry.index}, status_code=201)

    async def _owned(request: Request, instance_id: str) -> InstanceRecord:
        caller = who(request)
        await cp.registry.sync()  # an instance registered through another replica
        record = cp.registry.get(instance_id)
        if record is None:
            raise ApiError(404, "not_found", f"no instance {instance_id!r}")
        if caller.identity is not None and str(caller.identity) != record.identity:
            raise ApiError(403, "foreign_identity", f"{caller.identity} does not own instance {instance_id}")
        return record

    async def deregister(request: Request) -> Response:
        instance_id = request.path_params["id"]
        await _owned(request, instance_id)
        await cp.registry.deregister(instance_id)
        return JSONResponse({"id": instance_id, "index": cp.registry.index})

    async def heartbeat(request: Request) -> Response:
        instance_id = request.path_params["id"]
        record = await _owned(request, instance_id)
        body = await read_body(request, HeartbeatBody)
        await cp.registry.heartbeat(instance_id, body.status, body.output)
        if body.report is not None:
            cp.reports.record(instance_id, record.service, body.report)
        return JSONResponse({"id": instance_id, "index": cp.registry.index})

    async def services(request: Request) -> Response:
        who(request)
        await cp.registry.sync()
        return JSONResponse(
            {name: [v.to_json() for v in views] for name, views in sorted(cp.registry.services().items())}
        )

    async def service(request: Request) -> Response:
        who(request)
        await cp.registry.sync()
        name = request.path_params["name"]
        views = cp.registry.instances(name)
        declared = cp.watcher.current is not None and name in cp.watcher.current.services
        if not views and not declared:
            raise ApiError(404, "not_found", f"no service {name!r} is declared or registered")
        return JSONResponse([v.to_json() for v in views])

    async def snapshot(request: Request) -> Response:
        who(request)
        after = _int_param(request, "index")
        wait_text = request.query_params.get("wait", "30s")
        try:
            wait = min(parse_duration(wait_text).total_seconds(), MAX_WAIT_S)
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"wait: {exc}") from None
        if after is not None and after > cp.registry.index:
            # an index this store never reached (it was reset, or the client's cache is from another
            # life): a full snapshot at once, as for no index (it waited out ``wait`` for nothing)
            after = None
        if after is not None and cp.registry.index <= after:
            await _wait_or_disconnect(request, cp, after, wait)
        delta = request.query_params.get("delta", "").lower() in ("1", "true", "yes")
        gzip_ok = "gzip" in request.headers.get("accept-encoding", "").lower()
        index, body = await cp.snapshot(after if delta else None, compress=gzip_ok)
        headers = {"x-meshgate-index": str(index), "vary": "accept-encoding"}
        if gzip_ok:
            headers["content-encoding"] = "gzip"
        return Response(body, media_type="application/json", headers=headers)

    async def status(request: Request) -> Response:
        who(request)
        return JSONResponse(await cp.status())

    async def tokens(request: Request) -> Response:
        who(request, admin_only=True)
        body = await read_body(request, TokenBody)
        token, expires = await cp.create_token(
            body.service, body.namespace, body.ttl.total_seconds(), body.reusable
        )
        return JSONResponse({"token": str(token), "expiresAt": expires}, status_code=201)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if cp.ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready: no valid policy set loaded\n", status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(api_metrics.render(), media_type=CONTENT_TYPE)

    async def config(request: Request) -> Response:
        who(request, admin_only=True)
        current = cp.watcher.current
        return JSONResponse(
            {
                "trustDomain": cp.trust_domain,
                "policies": current.to_json() if current else None,
                "dataDir": str(cp.data_dir),
                "store": await cp.store.describe(),
            }
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own 404 and 405 (no route, wrong method) in the API's JSON error form."""
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        response = ApiError(exc.status_code, code, str(exc.detail)).response()
        response.headers.update(exc.headers or {})  # 405's Allow (RFC 9110 section 15.5.6)
        return response

    routes = [
        Route("/v1/sign", sign, methods=["POST"]),
        Route("/v1/bundle", bundle, methods=["GET"]),
        Route("/v1/register", register, methods=["POST"]),
        Route("/v1/register/{id}", deregister, methods=["DELETE"]),
        Route("/v1/heartbeat/{id}", heartbeat, methods=["PUT"]),
        Route("/v1/services", services, methods=["GET"]),
        Route("/v1/services/{name}", service, methods=["GET"]),
        Route("/v1/snapshot", snapshot, methods=["GET"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/tokens", tokens, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/config", config, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/ui/", lambda request: RedirectResponse("/ui", 308), methods=["GET"]),
        *ui_routes(cp),
    ]
    api_metrics.routes = routes
    return Starlette(
        routes=routes,
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error},
        middleware=[api_metrics.middleware()],
    )


def _check(body: RegisterBody) -> Any:
    from mesh.controlplane.records import CheckSpec

    return CheckSpec(
        type=body.check.type,
        path=body.check.path,
        interval_s=body.check.interval.total_seconds(),
        timeout_s=body.check.timeout.total_seconds(),
    )


def _int_param(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be a whole number, got {text!r}") from None
    if value < 0:
        raise ApiError(400, "bad_request", f"{name} must not be negative")
    return value


async def _wait_or_disconnect(request: Request, cp: ControlPlane, after: int, wait: float) -> None:
    """Block until the index passes ``after``, the wait ends, or the client goes away."""
    cp.counters.watchers += 1
    waiter = asyncio.ensure_future(cp.registry.wait_for_change(after, wait))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cp.counters.watchers -= 1
        for task in (waiter, gone):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
