"""WebSocket routes end to end with the ``websockets`` package on both ends: client -> gateway (our
server) -> HTTP/2 extended CONNECT over mTLS -> the service's sidecar -> HTTP/1.1 upgrade -> the app.
Messages both ways, subprotocols, close codes both ways, the idle timeout, a refused handshake, and a
configuration reload that leaves an open WebSocket alone."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_lib import MeshStack, free_port, running, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

POLICIES = """
apiVersion: meshgate/v1
kind: Mesh
trustDomain: ws-edge.test
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: gateway
---
apiVersion: meshgate/v1
kind: Service
name: chat
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: chat-from-gateway
target: {service: chat}
rules:
  - action: allow
    from: {services: [gateway]}
    to: {methods: [GET], paths: ["/chat/*", "/quiet/*"]}
---
apiVersion: meshgate/v1
kind: Route
name: chat
match: {path: {prefix: /chat}}
backends: [{service: chat}]
translate: websocket
---
apiVersion: meshgate/v1
kind: Route
name: quiet
match: {path: {prefix: /quiet}}
backends: [{service: chat}]
translate: websocket
timeout: 1s
"""

APP = """
import asyncio, sys
from websockets.asyncio.server import serve

CLOSES = sys.argv[2]

async def handler(ws):
    try:
        async for message in ws:
            if message == "close-4001":
                await ws.close(4001, "bye")
                return
            if message == "who":
                await ws.send(ws.request.headers.get("x-meshgate-peer", "") + " " + ws.request.path)
                continue
            await ws.send(("echo: " + message) if isinstance(message, str) else b"bin:" + message)
    finally:
        with open(CLOSES, "a") as fh:
            fh.write(f"{ws.close_code}\\n")

def select(connection, offered):
    return next((p for p in offered if p in ("chat.v2", "chat.v1")), None)  # none offered: none chosen

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), select_subprotocol=select):
        await asyncio.Future()

asyncio.run(main())
"""


@dataclass
class Edge:
    url: str
    closes: Path
    policies: Path
    admin: str


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("ws-edge")
    closes = tmp / "closes.txt"
    closes.write_text("")
    with running(tmp) as procs:
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "mesh.yaml").write_text(POLICIES)
        app = free_port()
        procs.start("app-chat", sys.executable, "-c", APP, str(app), str(closes))
        stack = MeshStack(procs, tmp)
        stack.start_control_plane(policies)
        stack.start_sidecar("chat", app)
        gateway = stack.start_gateway(knows=["chat"])
        yield Edge(f"ws://127.0.0.1:{gateway.port}", closes, policies, gateway.admin_url)


def test_messages_both_ways_with_a_subprotocol(edge: Edge) -> None:
    with connect(f"{edge.url}/chat/room1", subprotocols=["chat.v1"], open_timeout=10) as ws:
        assert ws.subprotocol == "chat.v1"
        ws.send("hello")
        assert ws.recv(timeout=5) == "echo: hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"bin:\x00\x01"
        ws.send("x" * 200_000)  # fragments and flow control on the way
        assert ws.recv(timeout=10) == "echo: " + "x" * 200_000
        ws.send("who")
        peer, path = ws.recv(timeout=5).split(" ")
        assert peer == "spiffe://ws-edge.test/ns/default/sa/gateway" and path == "/chat/room1"


def test_the_apps_close_code_reaches_the_client(edge: Edge) -> None:
    with connect(f"{edge.url}/chat/room2", open_timeout=10) as ws:
        ws.send("close-4001")
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=5)
    assert (
        caught.value.rcvd is not None and caught.value.rcvd.code == 4001 and caught.value.rcvd.reason == "bye"
    )


def test_the_clients_close_code_reaches_the_app(edge: Edge) -> None:
    before = edge.closes.read_text().split()
    with connect(f"{edge.url}/chat/room3", open_timeout=10) as ws:
        ws.send("hi")
        ws.recv(timeout=5)
        ws.close(4002, "done")
    wait_until(lambda: len(edge.closes.read_text().split()) > len(before), what="the app to see the close")
    assert edge.closes.read_text().split()[-1] == "4002"


def test_an_idle_websocket_is_closed_with_1001(edge: Edge) -> None:
    with connect(f"{edge.url}/quiet/room", open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "echo: hi"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=10)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1001
    assert time.monotonic() - started < 8


def test_a_websocket_to_no_route_is_refused(edge: Edge) -> None:
    with pytest.raises(InvalidStatus) as caught:
        connect(f"{edge.url}/nowhere", open_timeout=10)
    assert caught.value.response.status_code == 404


def test_a_configuration_reload_leaves_open_websockets_alone(edge: Edge) -> None:
    def version() -> str:
        with urllib.request.urlopen(f"{edge.admin}/config", timeout=2) as response:
            return str(json.load(response)["policy_version"])

    with connect(f"{edge.url}/chat/room4", open_timeout=10) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "echo: before"
        old = version()
        (edge.policies / "extra.yaml").write_text(
            "apiVersion: meshgate/v1\nkind: Route\nname: extra\nmatch: {path: {prefix: /extra}}\n"
            "backends: [{service: chat}]\n"
        )
        wait_until(lambda: version() != old, what="the gateway to apply the new policy set")
        ws.send("after")
        assert ws.recv(timeout=5) == "echo: after"
