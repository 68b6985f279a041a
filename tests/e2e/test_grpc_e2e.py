"""gRPC through the mesh with real grpcio: client -> caller's sidecar (h2c on its per-upstream port) ->
mTLS HTTP/2 -> callee's sidecar -> the gRPC app over h2c. Trailers (grpc-status, grpc-message) arrive
as the app sent them; mesh errors reach the client as gRPC statuses."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from e2e_lib import MeshStack, Processes, dump_logs, free_port

POLICIES = """
apiVersion: meshgate/v1
kind: Mesh
trustDomain: grpc.test
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: web
---
apiVersion: meshgate/v1
kind: Service
name: echo
protocol: grpc
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: echo-access
target: {service: echo}
rules:
  - action: deny
    to: {paths: ["/echo.Echo/Forbidden"]}
  - action: allow
    from: {services: [web]}
    to: {methods: [POST], paths: ["/echo.Echo/*"]}
"""


def _say(request: bytes, context: grpc.ServicerContext) -> bytes:
    peer = dict(context.invocation_metadata()).get("x-meshgate-peer", "")
    return request.upper() + b" from " + peer.encode()


def _missing(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield f"item {i}".encode()


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    tmp = tmp_path_factory.mktemp("grpc")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(_say),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
        "Forbidden": grpc.unary_unary_rpc_method_handler(_say),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    app_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    procs = Processes(tmp)
    try:
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "mesh.yaml").write_text(POLICIES)
        stack = MeshStack(procs, tmp)
        stack.start_control_plane(policies)
        upstream = free_port()
        stack.start_sidecar("echo", app_port)
        web = stack.start_sidecar("web", free_port(), "--upstream", f"{upstream}=echo")
        web.wait_knows("echo")
        with grpc.insecure_channel(f"127.0.0.1:{upstream}") as ch:
            yield ch
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()
        server.stop(None)


def test_unary_call_reaches_the_app_with_the_callers_identity(channel: grpc.Channel) -> None:
    reply = channel.unary_unary("/echo.Echo/Say")(b"hello", timeout=10)
    assert reply == b"HELLO from spiffe://grpc.test/ns/default/sa/web"


def test_grpc_status_and_message_from_the_app_pass_through(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/echo.Echo/Missing")(b"widget", timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no such thing: widget"


def test_server_streaming_arrives_whole(channel: grpc.Channel) -> None:
    items = list(channel.unary_stream("/echo.Echo/Stream")(b"50", timeout=10))
    assert items == [f"item {i}".encode() for i in range(50)]


def test_policy_denial_is_permission_denied(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/echo.Echo/Forbidden")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
