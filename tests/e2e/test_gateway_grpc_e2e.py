"""gRPC at the edge with real grpcio on both ends: client -> gateway (h2c, our server) -> mTLS HTTP/2
-> the service's sidecar -> the grpcio server over h2c. Unary, the three streaming kinds, deadlines,
errors with details and binary metadata, Trailers-Only, an unreachable upstream, a wrong content type."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from e2e_lib import MeshStack, grpc_server, running

POLICIES = """
apiVersion: meshgate/v1
kind: Mesh
trustDomain: grpc-edge.test
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: gateway
---
apiVersion: meshgate/v1
kind: Service
name: echo
protocol: grpc
---
apiVersion: meshgate/v1
kind: Service
name: nowhere
protocol: grpc
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: echo-from-gateway
target: {service: echo}
rules:
  - action: allow
    from: {services: [gateway]}
---
apiVersion: meshgate/v1
kind: Route
name: echo
match: {path: {prefix: /echo.Echo}}
backends: [{service: echo}]
translate: grpc-web  # gRPC passes as it is; gRPC-Web is translated
cors:
  allowOrigins: ["https://app.example"]
  allowMethods: [POST]
  allowHeaders: [content-type, x-grpc-web, x-user-agent, grpc-timeout]
  exposeHeaders: [grpc-status, grpc-message]
---
apiVersion: meshgate/v1
kind: Route
name: nowhere-grpc
match: {path: {prefix: /nowhere.Nowhere}}
backends: [{service: nowhere}]
translate: grpc
"""


@dataclass
class Edge:
    channel: grpc.Channel
    url: str
    cancelled: threading.Event


def _say(request: bytes, context: grpc.ServicerContext) -> bytes:
    meta = dict(context.invocation_metadata())
    return request.upper() + b" via " + meta.get("x-meshgate-peer", "").encode()


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("detail-bin", b"\x00\x01\xff"), ("why", "because")))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now: " + request.decode())


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield f"item {i}".encode()


def _collect(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return b",".join(requests)


def _chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for message in requests:
        yield b"re: " + message


def make_slow(cancelled: threading.Event):  # type: ignore[no-untyped-def]
    def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(cancelled.set)
        deadline = time.monotonic() + 10
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
        return b"late"

    return _slow


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("grpc-edge")
    cancelled = threading.Event()
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(_say),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Collect": grpc.stream_unary_rpc_method_handler(_collect),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat),
        "Slow": grpc.unary_unary_rpc_method_handler(make_slow(cancelled)),
    }
    with grpc_server("echo.Echo", handlers) as app_port, running(tmp) as procs:
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "mesh.yaml").write_text(POLICIES)
        stack = MeshStack(procs, tmp)
        stack.start_control_plane(policies)
        stack.start_sidecar("echo", app_port)
        gateway = stack.start_gateway(knows=["echo"])
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            yield Edge(channel, gateway.url, cancelled)


def test_unary_call_through_the_edge_and_the_mesh(edge: Edge) -> None:
    reply = edge.channel.unary_unary("/echo.Echo/Say")(b"hello", timeout=10)
    assert reply == b"HELLO via spiffe://grpc-edge.test/ns/default/sa/gateway"


def test_status_message_and_binary_trailers_arrive_byte_for_byte(edge: Edge) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        edge.channel.unary_unary("/echo.Echo/Fail")(b"widget", timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert error.details() == "not now: widget"  # type: ignore[attr-defined]
    trailers = dict(error.trailing_metadata())  # type: ignore[attr-defined]
    assert trailers["detail-bin"] == b"\x00\x01\xff" and trailers["why"] == "because"


def test_server_client_and_bidirectional_streaming(edge: Edge) -> None:
    items = list(edge.channel.unary_stream("/echo.Echo/Stream")(b"200", timeout=10))
    assert items == [f"item {i}".encode() for i in range(200)]
    joined = edge.channel.stream_unary("/echo.Echo/Collect")(iter([b"a", b"b" * 70000, b"c"]), timeout=10)
    assert joined == b"a," + b"b" * 70000 + b",c"
    replies = list(
        edge.channel.stream_stream("/echo.Echo/Chat")(iter([b"one", b"two", b"three"]), timeout=10)
    )
    assert replies == [b"re: one", b"re: two", b"re: three"]


def test_the_deadline_is_honoured_and_the_upstream_call_cancelled(edge: Edge) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        edge.channel.unary_unary("/echo.Echo/Slow")(b"x", timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert time.monotonic() - started < 3
    assert edge.cancelled.wait(5), "the app's call was never cancelled"


def test_an_unreachable_upstream_is_unavailable(edge: Edge) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        edge.channel.unary_unary("/nowhere.Nowhere/Call")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_wrong_content_type_on_a_grpc_route_is_415(edge: Edge) -> None:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
            "{}",
            f"{edge.url}/echo.Echo/Say",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stdout == "415", out.stderr


# ----- gRPC-Web (hand-built frames over HTTP/1.1, as a browser sends them) ----------------------------


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Data frames and the trailers of a gRPC-Web response body."""
    messages, trailers, i = [], {}, 0
    while i < len(body):
        flag, size = body[i], int.from_bytes(body[i + 1 : i + 5], "big")
        payload = body[i + 5 : i + 5 + size]
        i += 5 + size
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def _web(edge: Edge, method: str, body: bytes, content_type: str = "application/grpc-web+proto"):  # type: ignore[no-untyped-def]
    import httpx

    headers = {"content-type": content_type, "x-grpc-web": "1", "x-user-agent": "grpc-web-javascript/0.1"}
    return httpx.post(f"{edge.url}/echo.Echo/{method}", content=body, headers=headers, timeout=10)


def test_grpc_web_unary_and_server_streaming(edge: Edge) -> None:
    response = _web(edge, "Say", _frame(b"web"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc-web+proto"
    messages, trailers = _frames(response.content)
    assert messages == [b"WEB via spiffe://grpc-edge.test/ns/default/sa/gateway"]
    assert trailers["grpc-status"] == "0"
    messages, trailers = _frames(_web(edge, "Stream", _frame(b"3")).content)
    assert messages == [b"item 0", b"item 1", b"item 2"] and trailers["grpc-status"] == "0"


def test_grpc_web_errors_travel_in_the_trailer_frame(edge: Edge) -> None:
    response = _web(edge, "Fail", _frame(b"widget"))
    assert response.status_code == 200
    messages, trailers = _frames(response.content)
    assert messages == []
    assert trailers["grpc-status"] == "9" and trailers["grpc-message"] == "not now: widget"


def test_grpc_web_text_is_base64_both_ways(edge: Edge) -> None:
    import base64

    body = base64.b64encode(_frame(b"ab")) + base64.b64encode(_frame(b"ignored"))[:0]
    response = _web(edge, "Say", body, "application/grpc-web-text")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc-web-text"
    messages, trailers = _frames(base64.b64decode(response.content))
    assert messages[0].startswith(b"AB via ") and trailers["grpc-status"] == "0"


def test_grpc_web_cors_preflight_is_answered_at_the_edge(edge: Edge) -> None:
    import httpx

    response = httpx.options(
        f"{edge.url}/echo.Echo/Say",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web",
        },
        timeout=10,
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-grpc-web" in response.headers["access-control-allow-headers"]
