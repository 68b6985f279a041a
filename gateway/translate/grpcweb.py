"""gRPC-Web (grpc/grpc doc/PROTOCOL-WEB.md) to gRPC and back.

Request: ``application/grpc-web[+proto]`` becomes ``application/grpc[+proto]`` with ``te: trailers``;
the ``-text`` variants are base64 and decoded as they stream (4-character groups, padding allowed
between groups). Response: the gRPC messages pass as they are; the trailers (``grpc-status``,
``grpc-message``, metadata) follow in the body as one frame whose flag byte is 0x80, names lower case,
``name: value\\r\\n`` lines; for ``-text`` the whole body is base64 (encoded in 3-byte groups as it
streams, so the client sees one unbroken base64 text). A Trailers-Only answer keeps its status in the
headers and gets the trailer frame too. Works over HTTP/1.1 (browsers) as well as HTTP/2.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import AsyncIterator

from mesh.transport.messages import Headers, Response

GRPC_WEB = "application/grpc-web"
GRPC_WEB_TEXT = "application/grpc-web-text"


class GrpcWebError(Exception):
    """The client's gRPC-Web body cannot be decoded."""


def is_grpc_web(content_type: str | None) -> bool:
    """True for any gRPC-Web content type."""
    return content_type is not None and content_type.startswith(GRPC_WEB)


def is_text(content_type: str) -> bool:
    """True for the base64 (``-text``) variants."""
    return content_type.startswith(GRPC_WEB_TEXT)


def grpc_content_type(content_type: str) -> str:
    """``application/grpc-web(-text)[+proto]`` -> ``application/grpc[+proto]``."""
    rest = content_type[len(GRPC_WEB_TEXT) :] if is_text(content_type) else content_type[len(GRPC_WEB) :]
    return "application/grpc" + rest


def request_headers(headers: Headers, content_type: str) -> Headers:
    """The upstream request's headers: gRPC content type, ``te: trailers``, no length (the body's
    length changes for ``-text``), no gRPC-Web-only headers."""
    out = [
        (k, v)
        for k, v in headers
        if k not in ("content-type", "content-length", "te", "x-grpc-web", "x-user-agent", "accept")
    ]
    out.append(("content-type", grpc_content_type(content_type)))
    out.append(("te", "trailers"))
    return out


async def decode_text(
    body: AsyncIterator[bytes], failed: list[GrpcWebError] | None = None
) -> AsyncIterator[bytes]:
    """base64 text to bytes as it streams; GrpcWebError on bad input, also appended to ``failed``
    (whoever sends the body upstream sees only a failed stream: the caller then answers bad_request)."""
    pending = b""
    async for chunk in body:
        pending += chunk.replace(b"\r", b"").replace(b"\n", b"")
        usable = len(pending) - len(pending) % 4
        if usable:
            try:
                data = _b64decode_groups(pending[:usable])
            except (binascii.Error, ValueError) as exc:
                error = GrpcWebError(f"bad base64 in the gRPC-Web text body: {exc}")
                if failed is not None:
                    failed.append(error)
                raise error from exc
            pending = pending[usable:]
            yield data
    if pending:
        error = GrpcWebError("the gRPC-Web text body ends mid base64 group")
        if failed is not None:
            failed.append(error)
        raise error


def _b64decode_groups(data: bytes) -> bytes:
    """Decode whole 4-character groups; a padded group may sit in the middle (concatenated messages)."""
    if b"=" not in data[:-4]:
        return base64.b64decode(data, validate=True)
    out = bytearray()
    start = 0
    for i in range(0, len(data), 4):
        if b"=" in data[i : i + 4]:
            out += base64.b64decode(data[start : i + 4], validate=True)
            start = i + 4
    if start < len(data):
        out += base64.b64decode(data[start:], validate=True)
    return bytes(out)


def trailer_frame(trailers: Headers) -> bytes:
    """The 0x80 frame carrying ``trailers`` in the body."""
    block = "".join(f"{k.lower()}: {v}\r\n" for k, v in trailers).encode("latin-1")
    return struct.pack(">BI", 0x80, len(block)) + block


def translate_response(response: Response, content_type: str) -> Response:
    """The gRPC answer as gRPC-Web: content type, body with the trailer frame, ``-text`` encoding."""
    text = is_text(content_type)
    web_type = (GRPC_WEB_TEXT if text else GRPC_WEB) + ("+proto" if content_type.endswith("+proto") else "")
    headers = [(k, v) for k, v in response.headers if k not in ("content-type", "content-length")]
    headers.append(("content-type", web_type))
    trailers_only = response.headers_only or response.trailers is None
    only = [(k, v) for k, v in response.headers if k.startswith("grpc-")] if trailers_only else []

    async def body() -> AsyncIterator[bytes]:
        async for chunk in response.body:
            yield chunk
        trailers = await response.trailers if response.trailers is not None else only
        yield trailer_frame(trailers or only)

    source = body()
    out = _encode_text(source) if text else source
    return Response(response.status, headers, out, None, response.on_close)


async def _encode_text(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    carry = b""
    async for chunk in body:
        data = carry + chunk
        usable = len(data) - len(data) % 3
        carry = data[usable:]
        if usable:
            yield base64.b64encode(data[:usable])
    if carry:
        yield base64.b64encode(carry)
