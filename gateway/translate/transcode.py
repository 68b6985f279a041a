"""The proxy step of ``translate: grpc-json`` routes: JSON request -> gRPC call through the mesh ->
JSON response (or newline-delimited JSON for server streams). See ``grpcjson`` for the mapping."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

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
    failed: list[TranscodeError],
) -> AsyncIterator[bytes]:
    """Newline-delimited JSON objects from the client, each one request message. A line that is no
    request message ends the stream with an error, also noted in ``failed`` (the mesh client only says
    that the body broke: the client is told why)."""
    pending = b""
    number = 0

    def message(line: bytes) -> bytes:
        what = f"line {number} of the body"
        try:
            return frame(transcoder.request_message(binding, variables, query, _parse(line, what)))
        except TranscodeError as exc:
            text = str(exc)
            raise TranscodeError(text if text.startswith(what) else f"{what}: {text}", exc.status) from exc

    try:
        async for chunk in body:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                number += 1
                if line.strip():
                    yield message(line)
        number += 1
        if pending.strip():
            yield message(pending)
    except TranscodeError as exc:
        failed.append(exc)
        raise


def _parse(data: bytes, what: str = "the body") -> Any:
    """The JSON in ``data`` (TranscodeError when it is none, or nested deeper than the parser's stack
    allows: ``[[[[...`` must be a 400, not a RecursionError)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        raise TranscodeError(f"{what} is not JSON: {reason}") from exc


def _status(headers: list[tuple[str, str]]) -> tuple[int, str, str | None]:
    """``grpc-status``, ``grpc-message`` (percent-decoded: gRPC's PROTOCOL-HTTP2.md encodes it on the
    wire) and ``grpc-status-details-bin`` of a trailer (or Trailers-Only header) block."""
    values = dict(headers)
    try:
        code = int(values.get("grpc-status", "2"))
    except ValueError:
        code = 2
    message = unquote(values.get("grpc-message", ""), errors="replace")
    return code, message, values.get("grpc-status-details-bin")


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
    failed: list[TranscodeError] = []  # a client stream's bad line
    try:
        if binding.method.client_streaming:
            source = request_body(receive, route.max_body_size) if ex.has_body else body_of(b"")
            body = _client_stream(transcoder, binding, variables, ex.query, source, failed)
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
    if failed:  # the client's stream broke on a line that is no request message: say which, and why
        if response.on_close is not None:
            response.on_close()
        return json_error(failed[0].status, 3, str(failed[0]))
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
        if code != 0:
            return json_error(HTTP_STATUS.get(code, 500), code, message, details)
        if binding.method.server_streaming:  # a stream that ended at once, without a message
            return Response(200, [("content-type", NDJSON), ("content-length", "0")], body_of(b""))
        return json_error(502, 13, "a unary method answered 0 messages")
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
