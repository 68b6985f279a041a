"""Plain TCP through the mesh: app -> caller's sidecar (per-upstream port) -> HTTP/2 CONNECT over mTLS ->
callee's sidecar -> the TCP app. The tunnel is authorized when it opens; bytes flow both ways, and a
server that speaks first is heard before the client says anything."""

from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2e_lib import MeshStack, Processes, dump_logs, free_port

POLICIES = """
apiVersion: meshgate/v1
kind: Mesh
trustDomain: tcp.test
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: web
---
apiVersion: meshgate/v1
kind: Service
name: db
protocol: tcp
---
apiVersion: meshgate/v1
kind: Service
name: closed
protocol: tcp
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: db-access
target: {service: db}
rules:
  - action: allow
    from: {services: [web]}
    to: {methods: [CONNECT]}
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: closed-access
target: {service: closed}
rules:
  - action: allow
    from: {services: [nobody]}
"""

# A line server that greets first, then answers each line in upper case.
APP = textwrap.dedent(
    """
    import asyncio, sys
    async def serve(reader, writer):
        writer.write(b"220 ready\\n")
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), limit=1 << 20)
        await server.serve_forever()
    asyncio.run(main())
    """
)


@dataclass
class Ports:
    db: int
    closed: int


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ports]:
    tmp = tmp_path_factory.mktemp("tcp")
    procs = Processes(tmp)
    try:
        (tmp / "app.py").write_text(APP)
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "mesh.yaml").write_text(POLICIES)
        stack = MeshStack(procs, tmp)
        stack.start_control_plane(policies)
        app_port = free_port()
        procs.start("app", sys.executable, str(tmp / "app.py"), str(app_port))
        local = Ports(free_port(), free_port())
        stack.start_sidecar("db", app_port)
        stack.start_sidecar("closed", app_port)
        web = stack.start_sidecar(
            "web", free_port(), "--upstream", f"{local.db}=db", "--upstream", f"{local.closed}=closed"
        )
        web.wait_knows("db", "closed")
        yield local
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def test_server_speaks_first_and_lines_go_both_ways(ports: Ports) -> None:
    with socket.create_connection(("127.0.0.1", ports.db), timeout=10) as sock:
        assert _read_line(sock) == b"220 ready\n"
        sock.sendall(b"hello mesh\n")
        assert _read_line(sock) == b"HELLO MESH\n"
        big = b"x" * 300_000 + b"\n"
        sock.sendall(big)
        received = b""
        while len(received) < len(big):
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
        assert received == big.upper()


def test_a_tunnel_the_policy_denies_is_closed_without_a_byte(ports: Ports) -> None:
    with socket.create_connection(("127.0.0.1", ports.closed), timeout=10) as sock:
        sock.settimeout(10)
        assert sock.recv(1024) == b""  # closed at once: the app never saw the connection
