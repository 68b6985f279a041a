"""The edge end to end: control plane, ``orders`` and ``web`` behind sidecars, ``meshgate gateway``
(granian) in front; curl over HTTP/1.1 and h2c; raw sockets for what curl will not send."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2e_lib import MESHGATE, MeshStack, Processes, copy_policies, dump_logs, free_port, http_ok, wait_until


@dataclass
class Edge:
    procs: Processes
    url: str
    port: int
    admin: str


@pytest.fixture(scope="module", params=["granian", "meshgate"])
def edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp(f"edge-{request.param}")
    procs = Processes(tmp)
    try:
        stack = MeshStack(procs, tmp)
        stack.start_control_plane(copy_policies(tmp / "policies"))
        for name in ("orders", "web"):
            port = free_port()
            procs.start(
                f"app-{name}", sys.executable, "examples/echo_app.py", "--name", name, "--port", str(port)
            )
            stack.start_sidecar(name, port)
        port, admin = free_port(), free_port()
        procs.start(
            "gateway",
            MESHGATE,
            "gateway",
            "--control-plane",
            stack.cp_url,
            "--token",
            str(stack.token("gateway")),
            "--cache-dir",
            str(tmp / "cache-gateway"),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
            "--server",
            request.param,
        )
        admin_url = f"http://127.0.0.1:{admin}"
        wait_until(lambda: http_ok(f"{admin_url}/readyz"), what="gateway ready")

        def knows_orders() -> bool:
            with urllib.request.urlopen(f"{admin_url}/config", timeout=2) as response:
                return bool(json.load(response)["endpoints"].get("orders"))

        wait_until(knows_orders, what="gateway to learn orders")
        yield Edge(procs, f"http://127.0.0.1:{port}", port, admin_url)
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()


def curl(url: str, *extra: str) -> tuple[int, dict[str, str], str]:
    out = subprocess.run(
        ["curl", "-s", "-i", "--max-time", "10", *extra, url], capture_output=True, text=True, timeout=20
    ).stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1]) if lines else 0
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


def raw(port: int, data: bytes, wait: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out


def test_api_key_route_over_http11_and_h2c(edge: Edge) -> None:
    for extra in ((), ("--http2-prior-knowledge",)):
        status, headers, body = curl(f"{edge.url}/api/orders/7", "-H", "x-api-key: demo-key-alice", *extra)
        assert status == 200, body
        seen = json.loads(body)
        assert seen["service"] == "orders" and seen["path"] == "/orders/7"
        assert seen["headers"]["x-meshgate-principal"] == "alice"
        assert seen["headers"]["x-meshgate-peer"].endswith("/sa/gateway")
        assert "ratelimit" in headers and "ratelimit-policy" in headers


def test_missing_or_wrong_key_is_401_and_never_reaches_the_service(edge: Edge) -> None:
    status, headers, _ = curl(f"{edge.url}/api/orders/1")
    assert status == 401 and headers["x-meshgate-error"] == "unauthenticated"
    status, _, _ = curl(f"{edge.url}/api/orders/1", "-H", "x-api-key: guessed")
    assert status == 401


def test_public_route_and_unknown_route(edge: Edge) -> None:
    status, _, body = curl(f"{edge.url}/shop/cart")
    assert status == 200 and json.loads(body)["service"] == "web"
    status, headers, _ = curl(f"{edge.url}/nowhere")
    assert status == 404 and headers["x-meshgate-error"] == "route_not_found"


def test_host_rules_and_header_cap_at_the_edge(edge: Edge) -> None:
    two = raw(edge.port, b"GET /shop/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert two.startswith(b"HTTP/1.1 400"), two[:80]
    none = raw(edge.port, b"GET /shop/ HTTP/1.1\r\n\r\n")
    assert none.startswith(b"HTTP/1.1 400"), none[:80]
    big = raw(edge.port, b"GET /shop/ HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431") or big.startswith(b"HTTP/1.1 400") or big == b"", big[:80]


def test_a_smuggled_request_never_reaches_the_service(edge: Edge) -> None:
    smuggle = (
        b"POST /shop/a HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /shop/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    answer = raw(edge.port, smuggle)
    assert b"/smuggled" not in answer
    assert answer.startswith(b"HTTP/1.1 400") or answer.count(b"HTTP/1.1 ") <= 2


def test_admin_metrics_count_requests_by_route(edge: Edge) -> None:
    curl(f"{edge.url}/shop/x")
    with urllib.request.urlopen(f"{edge.admin}/metrics", timeout=2) as response:
        text = response.read().decode()
    assert 'meshgate_gateway_requests_total{route="shop",code="200"}' in text
