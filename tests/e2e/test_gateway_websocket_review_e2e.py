"""WebSocket closes end to end, as the app sees them: client -> gateway (our server) -> HTTP/2 extended
CONNECT over mTLS -> the service's sidecar -> a ``websockets`` app that writes down each close code
and reason. A client that vanishes (TCP FIN or reset, no close frame) is a 1001 "going away" to the
app, not a normal 1000 (or nothing); a client's close reason reaches the app."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_lib import MeshStack, free_port, running, wait_until

POLICIES = """
apiVersion: meshgate/v1
kind: Mesh
trustDomain: ws-review.test
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
---
apiVersion: meshgate/v1
kind: Route
name: chat
match: {path: {prefix: /chat}}
backends: [{service: chat}]
translate: websocket
"""

APP = """
import asyncio, json, sys
from websockets.asyncio.server import serve

CLOSES = sys.argv[2]

async def handler(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except Exception:
        pass
    finally:
        with open(CLOSES, "a") as fh:  # close_code: 1006 when no close frame came
            fh.write(json.dumps({"path": ws.request.path, "code": ws.close_code, "reason": ws.close_reason}))
            fh.write("\\n")

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1])):
        await asyncio.Future()

asyncio.run(main())
"""


@dataclass
class Edge:
    port: int
    closes: Path

    def close_of(self, path: str) -> dict[str, object]:
        """The close frame the app received on ``path`` (waits for the app to write it down)."""

        def seen() -> list[dict[str, object]]:
            lines = [json.loads(line) for line in self.closes.read_text().splitlines() if line]
            return [entry for entry in lines if entry["path"] == path]

        wait_until(lambda: bool(seen()), timeout=10, what=f"the app to see {path} close")
        return seen()[0]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("ws-review")
    closes = tmp / "closes.jsonl"
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
        yield Edge(gateway.port, closes)


def masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (masked, as a client's must be)."""
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + data


def open_socket(edge: Edge, path: str) -> socket.socket:
    """A raw WebSocket through the gateway, one message echoed through the app."""
    sock = socket.create_connection(("127.0.0.1", edge.port), timeout=10)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: edge.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert b" 101 " in head.split(b"\r\n")[0], head
    sock.sendall(masked(0x1, b"hi"))
    assert sock.recv(100).endswith(b"hi")
    return sock


def test_a_client_gone_with_a_fin_is_a_1001_to_the_app(edge: Edge) -> None:
    sock = open_socket(edge, "/chat/fin")
    sock.shutdown(socket.SHUT_WR)
    try:
        assert edge.close_of("/chat/fin")["code"] == 1001
    finally:
        sock.close()


def test_a_client_gone_with_a_reset_is_a_1001_to_the_app(edge: Edge) -> None:
    sock = open_socket(edge, "/chat/reset")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert edge.close_of("/chat/reset")["code"] == 1001


def test_the_clients_close_code_and_reason_reach_the_app(edge: Edge) -> None:
    sock = open_socket(edge, "/chat/bye")
    try:
        sock.sendall(masked(0x8, struct.pack("!H", 4002) + b"client-bye"))
        assert edge.close_of("/chat/bye") == {"path": "/chat/bye", "code": 4002, "reason": "client-bye"}
    finally:
        sock.close()
