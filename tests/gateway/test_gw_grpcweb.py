"""gRPC-Web translation units: base64 text streaming both ways, the trailer frame, content types."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gateway_testlib import edge, run

from gateway.translate.grpcweb import (
    GrpcWebError,
    decode_text,
    grpc_content_type,
    request_headers,
    trailer_frame,
    translate_response,
)
from mesh.transport.h1 import ClientInfo
from mesh.transport.messages import Request, Response, body_of


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in body])


def test_content_types() -> None:
    assert grpc_content_type("application/grpc-web") == "application/grpc"
    assert grpc_content_type("application/grpc-web+proto") == "application/grpc+proto"
    assert grpc_content_type("application/grpc-web-text+proto") == "application/grpc+proto"
    headers = request_headers(
        [("content-length", "9"), ("x-grpc-web", "1"), ("a", "b")], "application/grpc-web"
    )
    assert headers == [("a", "b"), ("content-type", "application/grpc"), ("te", "trailers")]


def test_text_bodies_decode_across_chunk_boundaries_and_padded_groups() -> None:
    one, two = base64.b64encode(b"\x00\x00\x00\x00\x01a"), base64.b64encode(b"\x00\x00\x00\x00\x02bc")
    stream = one + two  # two padded messages back to back, as clients send them
    cut = [stream[i : i + 3] for i in range(0, len(stream), 3)]
    assert asyncio.run(collect(decode_text(chunks(*cut)))) == b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x02bc"


@pytest.mark.parametrize("bad", [b"abc", b"!!!!", b"ab=c"])
def test_bad_text_bodies_are_refused(bad: bytes) -> None:
    with pytest.raises(GrpcWebError):
        asyncio.run(collect(decode_text(chunks(bad))))


def test_trailer_frame_layout() -> None:
    frame = trailer_frame([("grpc-status", "0"), ("Grpc-Message", "ok")])
    assert frame[0] == 0x80
    assert int.from_bytes(frame[1:5], "big") == len(frame) - 5
    assert frame[5:] == b"grpc-status: 0\r\ngrpc-message: ok\r\n"


def test_responses_get_the_trailer_frame_and_text_encoding() -> None:
    async def go(content_type: str) -> tuple[Response, bytes]:
        trailers: asyncio.Future[list[tuple[str, str]]] = asyncio.get_running_loop().create_future()
        trailers.set_result([("grpc-status", "0")])
        upstream = Response(
            200, [("content-type", "application/grpc")], chunks(b"\x00\x00\x00\x00\x01x"), trailers
        )
        out = translate_response(upstream, content_type)
        return out, await collect(out.body)

    response, body = asyncio.run(go("application/grpc-web"))
    assert response.header("content-type") == "application/grpc-web"
    assert body == b"\x00\x00\x00\x00\x01x" + trailer_frame([("grpc-status", "0")])
    response, text = asyncio.run(go("application/grpc-web-text"))
    assert base64.b64decode(text) == body


def test_trailers_only_answers_keep_the_status_in_headers_and_the_frame() -> None:
    async def go() -> tuple[Response, bytes]:
        upstream = Response(
            200, [("grpc-status", "14"), ("grpc-message", "down")], chunks(), headers_only=True
        )
        out = translate_response(upstream, "application/grpc-web")
        return out, await collect(out.body)

    response, body = asyncio.run(go())
    assert response.header("grpc-status") == "14"
    assert body == trailer_frame([("grpc-status", "14"), ("grpc-message", "down")])


GRPC_WEB_ROUTE = """\
apiVersion: meshgate/v1
kind: Route
name: web
match: {path: {prefix: /echo.Echo}}
backends: [{service: orders}]
translate: grpc-web
"""


@pytest.mark.parametrize("parts", [[b"!!!!"], [base64.b64encode(b"\x00\x00\x00\x00\x01a"), b"ab=c"]])
def test_bad_base64_in_a_text_body_is_a_grpc_web_invalid_argument(tmp_path: Path, parts: list[bytes]) -> None:
    async def go() -> httpx.Response:
        async with edge(tmp_path, GRPC_WEB_ROUTE) as gw:
            return await gw.http.post(
                "/echo.Echo/Say",
                content=chunks(*parts),
                headers={"content-type": "application/grpc-web-text", "x-grpc-web": "1"},
            )

    response = run(go())
    assert response.status_code == 200
    assert response.headers["grpc-status"] == "3"
    assert response.headers["x-meshgate-error"] == "bad_request"
    assert response.headers["content-type"] == "application/grpc-web-text"
    assert trailer_frame([("grpc-status", "3")])[5:] in base64.b64decode(response.content)


GRPC_ROUTE = """\
apiVersion: meshgate/v1
kind: Route
name: grpc
match: {path: {prefix: /orders.Grpc}}
backends: [{service: orders}]
translate: grpc
"""


async def not_found_app(request: Request, info: ClientInfo) -> Response:
    async for _ in request.body:
        pass
    page = b"<h1>Not Found</h1>"
    return Response(404, [("content-type", "text/html"), ("content-length", str(len(page)))], body_of(page))


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/orders.Grpc/Get", "application/grpc"), ("/echo.Echo/Say", "application/grpc-web")],
)
def test_a_non_grpc_upstream_404_reaches_grpc_callers_as_unimplemented(
    tmp_path: Path, path: str, content_type: str
) -> None:
    async def go() -> httpx.Response:
        async with edge(
            tmp_path, GRPC_ROUTE + "---\n" + GRPC_WEB_ROUTE, apps={"orders": not_found_app}
        ) as gw:
            return await gw.http.post(
                path,
                content=b"\x00\x00\x00\x00\x01x",
                headers={"content-type": content_type, "te": "trailers"},
            )

    response = run(go())
    assert response.status_code == 200
    assert response.headers["grpc-status"] == "12"
    assert response.headers["x-meshgate-upstream-status"] == "404"
    assert response.headers["content-type"].startswith(content_type)
    assert b"Not Found" not in response.content
