"""The proxy step of ``translate: grpc-json`` routes: JSON request -> gRPC call through the mesh ->
JSON response (or newline-delimited JSON for server streams). See ``grpcjson`` for the mapping."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.exchange import Exchange
from gateway.proxy import Receive, read_body, request_body, route_policy, upstream_headers
from gateway.translate.grpcjson import (
    HTTP_STATUS,
    Binding,
    TranscodeError,
    Transcoder,
    error_body,
    frame,
    frames,
)
from mesh.outbound.client import MeshClient
from mesh.transport.messages import GRPC_STATUS, Request, Response, body_of
from shared.config.model.mesh import TrafficPolicy

log = logging.getLogger("meshgate.gateway.transcode")

JSON = "application/json"
NDJSON = "application/x-ndjson"
DROP = frozenset({"content-type", "content-length", "accept", "te", "accept-encoding"})


def json_error(status: int, grpc_code: int, message: str, details_bin: str | None = None) -> Response:
    """An error answer in the transcoded routes' JSON shape."""
    body = error_body(grpc_code, message, details_bin)
    return Response(status, [("content-type", JSON), ("content-length", str(len(body)))], body_of(body))


async def _client_stream(
    transcoder: Transcoder,
    binding: Binding,
    variables: dict[str, str],
    query: str,
    body: AsyncIterator[bytes],
) -> AsyncIterator[bytes]:
    """Newline-delimited JSON objects from the client, each one request message."""
    pending = b""
    async for chunk in body:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield frame(transcoder.request_message(binding, variables, query, _parse(line)))
    if pending.strip():
        yield frame(transcoder.request_message(binding, variables, query, _parse(pending)))


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise TranscodeError(f"the body is not JSON: {exc}") from exc


def _status(headers: list[tuple[str, str]]) -> tuple[int, str, str | None]:
    values = dict(headers)
    try:
        code = int(values.get("grpc-status", "2"))
    except ValueError:
        code = 2
    return code, values.get("grpc-message", ""), values.get("grpc-status-details-bin")


async def forward_json(
    ex: Exchange,
    receive: Receive,
    client: MeshClient,
    transcoder: Transcoder,
    service_policy: TrafficPolicy | None,
) -> Response:
    """Transcode, call, transcode back."""
    assert ex.match is not None
    route = ex.match.route
    found = transcoder.match(ex.method, ex.path)
    if found is None:
        return json_error(404, 5, f"no gRPC method is bound to {ex.method} {ex.path}")
    binding, variables = found
    headers = [(k, v) for k, v in upstream_headers(ex) if k not in DROP]
    headers += [("content-type", "application/grpc"), ("te", "trailers")]
    try:
        if binding.method.client_streaming:
            source = request_body(receive, route.max_body_size) if ex.has_body else body_of(b"")
            body = _client_stream(transcoder, binding, variables, ex.query, source)
        else:
            raw = await read_body(receive, route.max_body_size) if ex.has_body else b""
            if raw is None:
                return json_error(413, 8, f"request body over {route.max_body_size} bytes")
            parsed = _parse(raw) if raw.strip() else None
            body = body_of(frame(transcoder.request_message(binding, variables, ex.query, parsed)))
    except TranscodeError as exc:
        return json_error(exc.status, 3, str(exc))
    upstream = Request("POST", binding.grpc_path, ex.match.backend.service, "https", headers, body)
    policy = route_policy(route, service_policy or TrafficPolicy())
    sent = time.perf_counter()
    response = await client.request(ex.match.backend.service, upstream, policy=policy)
    ex.attempts, ex.upstream_ms = response.attempts, round((time.perf_counter() - sent) * 1000, 3)
    code_name = response.header("x-meshgate-error")
    if code_name is not None and response.status != 200:  # the mesh's own answer
        if response.on_close is not None:
            response.on_close()
        return json_error(response.status, GRPC_STATUS.get(code_name, 2), f"meshgate: {code_name}")
    if response.status != 200 or not (response.header("content-type") or "").startswith("application/grpc"):
        if response.on_close is not None:
            response.on_close()
        return json_error(502, 13, f"the service did not answer with gRPC (HTTP {response.status})")
    if response.headers_only or response.trailers is None:  # Trailers-Only: the status is in the headers
        if response.on_close is not None:
            response.on_close()
        code, message, details = _status(response.headers)
        return json_error(HTTP_STATUS.get(code, 500), code, message, details)
    if binding.method.server_streaming:
        return _stream(transcoder, binding, response)
    try:
        messages = [m async for m in frames(response.body)]
    except TranscodeError as exc:
        return json_error(exc.status, 13, str(exc))
    code, message, details = _status(await response.trailers)
    if code != 0:
        return json_error(HTTP_STATUS.get(code, 500), code, message, details)
    if len(messages) != 1:
        return json_error(502, 13, f"a unary method answered {len(messages)} messages")
    try:
        data = json.dumps(transcoder.response_json(binding, messages[0])).encode()
    except TranscodeError as exc:
        return json_error(exc.status, 13, str(exc))
    return Response(200, [("content-type", JSON), ("content-length", str(len(data)))], body_of(data))


def _stream(transcoder: Transcoder, binding: Binding, response: Response) -> Response:
    """A server stream as newline-delimited JSON, each message sent as it arrives; a failure after the
    head is the last line, ``{"error": {...}}``."""
    trailers = response.trailers
    assert trailers is not None

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for payload in frames(response.body):
                yield json.dumps(transcoder.response_json(binding, payload)).encode() + b"\n"
        except TranscodeError as exc:
            yield json.dumps({"error": {"code": 13, "message": str(exc)}}).encode() + b"\n"
            return
        code, message, details = _status(await trailers)
        if code != 0:
            yield b'{"error": ' + error_body(code, message, details) + b"}\n"

    return Response(200, [("content-type", NDJSON)], lines(), on_close=response.on_close)
