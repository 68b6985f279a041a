"""Review findings on the gateway's protocol translation, in process.

JSON transcoding: deeply nested JSON is a 400 (not a RecursionError), a Trailers-Only OK is an empty
NDJSON stream or a 502 for a unary method, ``grpc-message`` is percent-decoded, wrapper types and
strict ASCII numbers in path and query strings, a client stream's bad line is named in the 400.
WebSockets: refused handshakes keep their headers, a route's ``cors`` origins are enforced, RFC 6455
handshake checks (version, key, HTTP/1.0), and a client that vanishes is a 1001 to the app.

The gRPC side is a fake mesh client (``FakeMesh``) where the test needs trailers or a WebSocket app;
the client-stream tests use the real mesh hop of ``gateway_testlib``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc_tools  # type: ignore[import-untyped]
import httpx
import pytest
from gateway_testlib import BASE, edge, run
from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from meshrig_testlib import engine_from
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage

from gateway.app import build_app
from gateway.middleware.hygiene import HygieneSettings
from gateway.server import serve
from gateway.state import GatewayConfig, GatewayRuntime
from gateway.translate.grpcjson import TranscodeError, Transcoder, frame
from mesh.outbound.client import MeshClient
from mesh.transport.messages import Headers, Request, Response, body_of

PROTO = """\
syntax = "proto3";
package review.v1;
import "google/api/annotations.proto";
import "google/protobuf/wrappers.proto";

enum Color { COLOR_UNSPECIFIED = 0; RED = 1; BLUE = 2; }
message Inner { string s = 1; int32 n = 2; Inner next = 3; }
message Req {
  string name = 1;
  int32 small = 2;
  int64 big = 3;
  uint64 u64 = 4;
  double d = 5;
  float f = 6;
  Color color = 7;
  google.protobuf.Int32Value wi32 = 8;
  google.protobuf.UInt32Value wu32 = 9;
  google.protobuf.BoolValue wbool = 10;
  google.protobuf.DoubleValue wdouble = 11;
  google.protobuf.FloatValue wfloat = 12;
  google.protobuf.Int64Value wi64 = 13;
  google.protobuf.UInt64Value wu64 = 14;
  google.protobuf.StringValue wstr = 15;
  google.protobuf.BytesValue wbytes = 16;
  Inner inner = 17;
}
message Resp { Req echo = 1; string note = 2; }
service Review {
  rpc Echo(Req) returns (Resp) {
    option (google.api.http) = {
      get: "/v1/echo/{name}"
      additional_bindings { post: "/v1/echo/{name}" body: "*" }
    };
  }
  rpc Watch(Req) returns (stream Resp) { option (google.api.http) = { get: "/v1/watch/{name}" }; }
  rpc Collect(stream Req) returns (Resp) { option (google.api.http) = { post: "/v1/collect" body: "*" }; }
}
"""

JSON_ROUTE = """\
apiVersion: meshgate/v1
kind: Route
name: review-json
match: {path: {prefix: /v1}}
backends: [{service: orders}]
translate: grpc-json
grpcJson: {descriptorSet: review.pb}
maxBodySize: 4MiB
"""

WS_ROUTES = """\
apiVersion: meshgate/v1
kind: Route
name: ws
match: {path: {prefix: /ws/}}
backends: [{service: orders}]
translate: websocket
---
apiVersion: meshgate/v1
kind: Route
name: wso
match: {path: {prefix: /wso/}}
backends: [{service: orders}]
translate: websocket
cors: {allowOrigins: ["https://app.example"], allowCredentials: true}
---
apiVersion: meshgate/v1
kind: Route
name: wsany
match: {path: {prefix: /wsany/}}
backends: [{service: orders}]
translate: websocket
cors: {allowOrigins: ["*"]}
---
apiVersion: meshgate/v1
kind: Route
name: wsk
match: {path: {prefix: /wsk/}}
backends: [{service: orders}]
translate: websocket
auth: [keys]
---
apiVersion: meshgate/v1
kind: Route
name: wsl
match: {path: {prefix: /wsl/}}
backends: [{service: orders}]
translate: websocket
rateLimit: one
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  header: x-api-key
  keys:
    - {name: tester, sha256: KEYHASH}
---
apiVersion: meshgate/v1
kind: RateLimit
name: one
key: [{type: clientAddress}, {type: route}]
limits: [{requests: 1, per: 60s}]
failureMode: allow-local
""".replace("KEYHASH", hashlib.sha256(b"sekret").hexdigest())


# ----- the descriptor set ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def descriptor(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """``review.proto`` compiled with grpcio-tools' protoc (imports included)."""
    out = tmp_path_factory.mktemp("review-proto")
    (out / "review.proto").write_text(PROTO)
    google_root = Path(annotations_pb2.__file__).resolve().parents[2]
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{out}",
            f"-I{google_root}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={out / 'review.pb'}",
            "review.proto",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (out / "review.pb").read_bytes()


def message(transcoder: Transcoder, name: str) -> Message:
    return transcoder.message_class(transcoder.pool.FindMessageTypeByName(f"review.v1.{name}"))()


def query(descriptor: bytes, text: str, path: str = "/v1/echo/n") -> dict[str, Any]:
    """The request message (as proto3 JSON) a GET with query ``text`` becomes; TranscodeError else."""
    transcoder = Transcoder(descriptor)
    found = transcoder.match("GET", path)
    assert found is not None
    binding, variables = found
    req = message(transcoder, "Req")
    req.ParseFromString(transcoder.request_message(binding, variables, text, None))
    return dict(json_format.MessageToDict(req))


# ----- a gateway in front of a fake mesh client ------------------------------------------------------


def grpc_response(messages: list[bytes], status: Headers | None, *, headers_only: bool = False) -> Response:
    """A gRPC answer as the mesh client hands it over: messages then trailers ``status``; with
    ``headers_only``, Trailers-Only (the status in the headers, no body, no trailers)."""
    head = [("content-type", "application/grpc")]
    if headers_only:
        return Response(200, head + list(status or []), body_of(b""), headers_only=True)
    trailers: asyncio.Future[Headers] = asyncio.get_running_loop().create_future()
    trailers.set_result(list(status or []))
    return Response(200, head, body_of(b"".join(frame(m) for m in messages)), trailers)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class FakeMesh:
    """Stands in for the MeshClient: ``handler`` answers each request."""

    handler: Handler
    seen: list[Request] = field(default_factory=list)

    async def request(self, service: str, request: Request, policy: Any = None) -> Response:
        self.seen.append(request)
        return await self.handler(request)


@contextlib.asynccontextmanager
async def gateway(
    tmp: Path, policies: str, mesh: FakeMesh, descriptor: bytes | None = None
) -> AsyncIterator[Any]:
    """The gateway app with ``policies`` (added to gateway_testlib's BASE) and ``mesh`` as its client."""
    folder = tmp / "gw-policies"
    folder.mkdir(parents=True, exist_ok=True)
    if descriptor is not None:
        (folder / "review.pb").write_bytes(descriptor)
    engine = engine_from(folder, BASE + "---\n" + textwrap.dedent(policies))
    runtime = GatewayRuntime(
        GatewayConfig(admin=None, redis=None, hygiene=HygieneSettings()), client=cast(MeshClient, mesh)
    )
    runtime.apply(engine.policy_set)
    try:
        yield build_app(runtime)
    finally:
        runtime.stopping.set()
        if runtime.state is not None:
            for provider in runtime.state.providers.values():
                await provider.close()
        await runtime.limiter.close()
        runtime.tracing.shutdown()


@contextlib.asynccontextmanager
async def json_client(tmp: Path, descriptor: bytes, handler: Handler) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(tmp, JSON_ROUTE, FakeMesh(handler), descriptor) as app:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as http:
            yield http


def echo_handler(descriptor: bytes) -> Handler:
    """A unary Echo: the request message back in ``Resp.echo``."""
    transcoder = Transcoder(descriptor)

    async def handle(request: Request) -> Response:
        body = b"".join([chunk async for chunk in request.body])
        req = message(transcoder, "Req")
        req.ParseFromString(body[5:])
        resp = message(transcoder, "Resp")
        resp.echo.CopyFrom(req)
        return grpc_response([resp.SerializeToString()], [("grpc-status", "0")])

    return handle


# ----- 2: deeply nested JSON is a 400 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * (1024 * 1024),
        b'{"a":' * 200_000,
        b'{"name": "x", "inner": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ],
    ids=["brackets", "objects", "deep-field"],
)
def test_deeply_nested_json_bodies_are_a_400(tmp_path: Path, descriptor: bytes, body: bytes) -> None:
    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with json_client(tmp_path, descriptor, echo_handler(descriptor)) as http:
            deep = await http.post("/v1/echo/x", content=body)
            shallow = await http.post("/v1/echo/x", json={"inner": {"next": {"s": "ok"}}})
            return deep, shallow

    response, shallow = run(go())
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 3
    assert "nested too deep" in response.json()["message"]
    assert shallow.json() == {"echo": {"name": "x", "inner": {"next": {"s": "ok"}}}}


def test_a_query_key_naming_a_recursive_message_thousands_deep_is_a_400(descriptor: bytes) -> None:
    key = "inner." + "next." * 20_000 + "s"
    with pytest.raises(TranscodeError, match="nested over 100 levels"):
        query(descriptor, f"{key}=x")
    assert query(descriptor, "inner.next.next.s=x") == {"name": "n", "inner": {"next": {"next": {"s": "x"}}}}


# ----- 3: Trailers-Only OK ---------------------------------------------------------------------------


def test_a_stream_that_ends_ok_without_a_message_is_an_empty_ndjson_body(
    tmp_path: Path, descriptor: bytes
) -> None:
    async def ok_at_once(request: Request) -> Response:
        return grpc_response([], [("grpc-status", "0"), ("grpc-message", "")], headers_only=True)

    async def go() -> httpx.Response:
        async with json_client(tmp_path, descriptor, ok_at_once) as http:
            return await http.get("/v1/watch/x")

    response = run(go())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.content == b""


def test_a_unary_call_that_ends_ok_without_a_message_is_a_502(tmp_path: Path, descriptor: bytes) -> None:
    async def ok_at_once(request: Request) -> Response:
        return grpc_response([], [("grpc-status", "0")], headers_only=True)

    async def go() -> httpx.Response:
        async with json_client(tmp_path, descriptor, ok_at_once) as http:
            return await http.get("/v1/echo/x")

    response = run(go())
    assert response.status_code == 502
    assert response.json() == {"code": 13, "message": "a unary method answered 0 messages", "details": []}


# ----- 4: grpc-message is percent-decoded ------------------------------------------------------------

ENCODED = "50%25 %C3%BCber%0Aline2 %E2%82"  # "50% über\nline2 " and a broken UTF-8 sequence
DECODED = "50% über\nline2 \ufffd"


def test_grpc_message_is_percent_decoded_in_the_json_error(tmp_path: Path, descriptor: bytes) -> None:
    async def fail(request: Request) -> Response:
        return grpc_response([], [("grpc-status", "3"), ("grpc-message", ENCODED)], headers_only=True)

    async def go() -> httpx.Response:
        async with json_client(tmp_path, descriptor, fail) as http:
            return await http.get("/v1/echo/x")

    response = run(go())
    assert response.status_code == 400
    assert response.json() == {"code": 3, "message": DECODED, "details": []}


def test_grpc_message_is_percent_decoded_in_the_ndjson_error_line(tmp_path: Path, descriptor: bytes) -> None:
    transcoder = Transcoder(descriptor)
    resp = message(transcoder, "Resp")
    resp.note = "n0"

    async def stream_then_fail(request: Request) -> Response:
        return grpc_response([resp.SerializeToString()], [("grpc-status", "5"), ("grpc-message", ENCODED)])

    async def go() -> httpx.Response:
        async with json_client(tmp_path, descriptor, stream_then_fail) as http:
            return await http.get("/v1/watch/x")

    response = run(go())
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [{"note": "n0"}, {"error": {"code": 5, "message": DECODED, "details": []}}]


# ----- 5 and 10: wrapper types; strict numbers in path and query strings -----------------------------


def test_wrapper_types_convert_like_their_primitives_in_query_strings(descriptor: bytes) -> None:
    got = query(
        descriptor,
        "wi32=-7&wu32=3&wbool=true&wdouble=1.5&wfloat=0.25&wi64=9007199254740993"
        "&wu64=18446744073709551615&wstr=hi&wbytes=aGk%3D",
    )
    assert got == {
        "name": "n",
        "wi32": -7,
        "wu32": 3,
        "wbool": True,
        "wdouble": 1.5,
        "wfloat": 0.25,
        "wi64": "9007199254740993",
        "wu64": "18446744073709551615",
        "wstr": "hi",
        "wbytes": "aGk=",
    }
    assert query(descriptor, "wbool=0")["wbool"] is False


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("wi32=x", "wi32: 'x' is not an integer"),
        ("wbool=yes", "wbool: 'yes' is not a boolean"),
        ("wdouble=abc", "wdouble: 'abc' is not a number"),
        ("wi64=1_000", "wi64: '1_000' is not an integer"),
        ("wi32=1_0", "wi32: '1_0' is not an integer"),
    ],
)
def test_bad_wrapper_values_name_the_field(descriptor: bytes, text: str, error: str) -> None:
    with pytest.raises(TranscodeError, match=error):
        query(descriptor, text)


@pytest.mark.parametrize(
    "text",
    [
        "small=\u0661\u0662",  # Arabic-Indic digits
        "small=1_000",
        "small=+5",
        "small=%205",
        "big=1_000",
        "big=\uff11\uff12",  # fullwidth digits
        "u64=\u0969",
        "d=1_000.5",
        "d=\u0661.5",
        "color=\u0661",
    ],
)
def test_numbers_in_query_strings_take_ascii_digits_only(descriptor: bytes, text: str) -> None:
    with pytest.raises(TranscodeError):
        query(descriptor, text)


def test_numbers_in_query_strings_take_the_proto3_json_forms(descriptor: bytes) -> None:
    got = query(descriptor, "small=-12&big=-9007199254740993&u64=007&d=-1.5e3&f=Infinity&color=2")
    assert got == {
        "name": "n",
        "small": -12,
        "big": "-9007199254740993",
        "u64": "7",
        "d": -1500.0,
        "f": "Infinity",
        "color": "BLUE",
    }
    assert query(descriptor, "small=1e3&big=2.0&d=NaN") == {
        "name": "n",
        "small": 1000,
        "big": "2",
        "d": "NaN",
    }
    with pytest.raises(TranscodeError, match="small"):
        query(descriptor, "small=1.5")
    with pytest.raises(TranscodeError, match="f: 'nan' is not a number"):
        query(descriptor, "f=nan")  # proto3 JSON spells it NaN
    with pytest.raises(TranscodeError, match="small"):
        query(descriptor, "small=99999999999")  # out of int32's range


# ----- a client stream's bad line: the 400 says which and why (real mesh hop) -----------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"small": 1}\n{nope\n', "line 2 of the body is not JSON: Expecting property name"),
        (b'{"small": 1}\n\n' + b"[" * 100_000 + b"\n", "line 3 of the body is not JSON: nested too deep"),
        (b'{"small": 1}\n{"nosuch": 1}', "line 2 of the body: the request does not fit review.v1.Req"),
    ],
    ids=["bad-json", "deep", "unknown-field"],
)
def test_a_client_streams_bad_line_is_named_in_the_400(
    tmp_path: Path, descriptor: bytes, body: bytes, expected: str
) -> None:
    (tmp_path / "gw-policies").mkdir()
    (tmp_path / "gw-policies" / "review.pb").write_bytes(descriptor)

    async def go() -> httpx.Response:
        async with edge(tmp_path, JSON_ROUTE) as gw:
            return await gw.http.post("/v1/collect", content=body)

    response = run(go())
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 3
    assert response.json()["message"].startswith(expected), response.json()


# ----- WebSockets: a gateway on our server, a fake mesh whose app speaks wsproto ---------------------


@dataclass
class WsApp:
    """What the fake app behind the mesh saw: its close events."""

    closes: list[CloseConnection] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def ws_handler(app: WsApp) -> Handler:
    """The mesh's answer to the gateway's extended CONNECT: 200, then a WebSocket server (wsproto) on
    the stream: text messages echoed, a close answered and recorded."""

    async def handle(request: Request) -> Response:
        assert request.method == "CONNECT"
        if request.path.startswith("/ws/denied"):  # the service's sidecar refuses, as its policy would
            return Response(
                403,
                [("content-length", "0"), ("x-meshgate-error", "policy_denied"), ("x-app-internal", "no")],
            )
        conn = Connection(ConnectionType.SERVER)
        back: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def serve_stream() -> None:
            try:
                async for chunk in request.body:
                    conn.receive_data(chunk)
                    for event in conn.events():
                        if isinstance(event, TextMessage):
                            back.put_nowait(conn.send(TextMessage(data=event.data)))
                        elif isinstance(event, CloseConnection):
                            app.closes.append(event)
                            back.put_nowait(conn.send(event.response()))
                            return
            finally:
                app.closed.set()
                back.put_nowait(None)

        task = asyncio.ensure_future(serve_stream())

        async def body() -> AsyncIterator[bytes]:
            try:
                while (item := await back.get()) is not None:
                    yield item
            finally:
                task.cancel()

        return Response(200, [], body())

    return handle


@contextlib.asynccontextmanager
async def ws_gateway(tmp: Path, app: WsApp | None = None) -> AsyncIterator[int]:
    """Our server with the gateway app on 127.0.0.1; yields its port."""
    before = asyncio.all_tasks()
    async with gateway(tmp, WS_ROUTES, FakeMesh(ws_handler(app or WsApp()))) as gw:
        server = await serve(gw, "127.0.0.1", 0)
        try:
            yield int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        finally:
            server.close()
            await server.wait_closed()
            await settled(before)


async def settled(before: set[asyncio.Task[Any]], limit: float = 5.0) -> None:
    """Wait (bounded) for the tasks started since ``before`` to end: a relay whose client just left
    closes its side of the mesh stream first; cancelling it at the loop's end would only log noise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if all(t.done() for t in asyncio.all_tasks() - before):
            return
        await asyncio.sleep(0.02)


def handshake(
    path: str, *, key: bytes | None = None, version: bytes = b"13", http: bytes = b"1.1", extra: bytes = b""
) -> bytes:
    key = key if key is not None else base64.b64encode(b"0123456789abcdef")
    return (
        b"GET " + path.encode() + b" HTTP/" + http + b"\r\nHost: edge.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: "
        + version
        + b"\r\n"
        + extra
        + b"\r\n"
    )


async def answer_head(port: int, request: bytes) -> tuple[int, dict[str, str]]:
    """The status and header fields (lower-case names) of the answer to ``request``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(":", 1) for line in lines[1:] if line)
    return int(lines[0].split()[1]), {k.strip().lower(): v.strip() for k, v in fields.items()}


# ----- 6: refused handshakes keep their headers ------------------------------------------------------


def test_a_rate_limited_handshake_keeps_retry_after_and_the_ratelimit_headers(tmp_path: Path) -> None:
    async def go() -> list[tuple[int, dict[str, str]]]:
        async with ws_gateway(tmp_path) as port:
            return [await answer_head(port, handshake("/wsl/a")) for _ in range(2)]

    (first, _), (status, headers) = run(go())
    assert first == 101
    assert status == 429
    assert headers["x-meshgate-error"] == "rate_limited"
    assert int(headers["retry-after"]) >= 1
    assert "ratelimit" in headers and "ratelimit-policy" in headers


def test_an_unauthenticated_handshake_keeps_www_authenticate(tmp_path: Path) -> None:
    async def go() -> tuple[tuple[int, dict[str, str]], int]:
        async with ws_gateway(tmp_path) as port:
            refused = await answer_head(port, handshake("/wsk/a"))
            accepted, _ = await answer_head(port, handshake("/wsk/a", extra=b"x-api-key: sekret\r\n"))
            return refused, accepted

    (status, headers), accepted = run(go())
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers["x-meshgate-error"] == "unauthenticated"
    assert accepted == 101


def test_a_handshake_the_service_refuses_keeps_the_error_code(tmp_path: Path) -> None:
    async def go() -> tuple[int, dict[str, str]]:
        async with ws_gateway(tmp_path) as port:
            return await answer_head(port, handshake("/ws/denied"))

    status, headers = run(go())
    assert status == 403
    assert headers["x-meshgate-error"] == "policy_denied"
    assert "x-app-internal" not in headers


# ----- 7: the route's cors origins apply to handshakes -----------------------------------------------


def test_a_handshake_from_an_origin_the_route_does_not_allow_is_refused(tmp_path: Path) -> None:
    async def go() -> list[tuple[int, dict[str, str]]]:
        async with ws_gateway(tmp_path) as port:
            return [
                await answer_head(port, handshake("/wso/a", extra=b"Origin: https://evil.example\r\n")),
                await answer_head(port, handshake("/wso/a", extra=b"Origin: null\r\n")),
                await answer_head(port, handshake("/wso/a", extra=b"Origin: https://app.example\r\n")),
                await answer_head(port, handshake("/wso/a")),  # no Origin: not a browser
                await answer_head(port, handshake("/wsany/a", extra=b"Origin: https://evil.example\r\n")),
                await answer_head(port, handshake("/ws/a", extra=b"Origin: https://evil.example\r\n")),
            ]

    answers = run(go())
    assert [status for status, _ in answers] == [403, 403, 101, 101, 101, 101]
    assert answers[0][1]["x-meshgate-error"] == "origin_not_allowed"


# ----- 8: RFC 6455 handshake checks ------------------------------------------------------------------


def test_rfc6455_handshake_checks(tmp_path: Path) -> None:
    async def go() -> list[tuple[int, dict[str, str]]]:
        async with ws_gateway(tmp_path) as port:
            return [
                await answer_head(port, handshake("/ws/a", version=b"8")),
                await answer_head(port, handshake("/ws/a", key=b"abc")),
                await answer_head(port, handshake("/ws/a", key=base64.b64encode(b"x" * 15))),
                await answer_head(port, handshake("/ws/a", key=b"!!!!!!!!!!!!!!!!!!!!!!==")),
                await answer_head(port, handshake("/ws/a", http=b"1.0")),
                await answer_head(port, handshake("/ws/a")),
            ]

    answers = run(go())
    assert [status for status, _ in answers] == [426, 400, 400, 400, 400, 101]
    assert answers[0][1]["sec-websocket-version"] == "13"


# ----- 9: a client that vanishes is a 1001 to the app; a close's reason passes -----------------------


def masked(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return (
        bytes([0x80 | opcode, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def vanish(tmp: Path, how: str) -> list[tuple[int, str]]:
    app = WsApp()
    async with ws_gateway(tmp, app) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sock.sendall(handshake("/ws/a"))
            head = b""
            while b"\r\n\r\n" not in head:
                head += await asyncio.to_thread(sock.recv, 4096)
            assert b" 101 " in head.split(b"\r\n")[0], head
            sock.sendall(masked(0x1, b"hi"))
            echoed = await asyncio.to_thread(sock.recv, 100)
            assert echoed.endswith(b"hi"), echoed
            if how == "close":
                sock.sendall(masked(0x8, struct.pack("!H", 4002) + b"client-bye"))
            elif how == "fin":
                sock.shutdown(socket.SHUT_WR)
            else:  # a reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            await asyncio.wait_for(app.closed.wait(), 10)
        finally:
            sock.close()
    return [(int(event.code), event.reason or "") for event in app.closes]


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_a_client_that_vanishes_is_a_1001_to_the_app(tmp_path: Path, how: str) -> None:
    closes = run(vanish(tmp_path, how))
    assert [code for code, _ in closes] == [1001]


def test_the_clients_close_reason_reaches_the_app(tmp_path: Path) -> None:
    assert run(vanish(tmp_path, "close")) == [(4002, "client-bye")]
