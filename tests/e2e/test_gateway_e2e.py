"""The edge end to end: control plane, ``orders`` and ``web`` behind sidecars, ``meshgate gateway``
(granian) in front; curl over HTTP/1.1 and h2c; raw sockets for what curl will not send."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
from e2e_lib import Gateway, MeshStack, copy_policies, running, start_echo_app


@pytest.fixture(scope="module", params=["granian", "meshgate"])
def edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp(f"edge-{request.param}")
    with running(tmp) as procs:
        stack = MeshStack(procs, tmp)
        stack.start_control_plane(copy_policies(tmp / "policies"))
        for name in ("orders", "web"):
            stack.start_sidecar(name, start_echo_app(procs, name))
        yield stack.start_gateway("--server", request.param, knows=["orders"])


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


def test_api_key_route_over_http11_and_h2c(edge: Gateway) -> None:
    for extra in ((), ("--http2-prior-knowledge",)):
        status, headers, body = curl(f"{edge.url}/api/orders/7", "-H", "x-api-key: demo-key-alice", *extra)
        assert status == 200, body
        seen = json.loads(body)
        assert seen["service"] == "orders" and seen["path"] == "/orders/7"
        assert seen["headers"]["x-meshgate-principal"] == "alice"
        assert seen["headers"]["x-meshgate-peer"].endswith("/sa/gateway")
        assert "ratelimit" in headers and "ratelimit-policy" in headers


def test_missing_or_wrong_key_is_401_and_never_reaches_the_service(edge: Gateway) -> None:
    status, headers, _ = curl(f"{edge.url}/api/orders/1")
    assert status == 401 and headers["x-meshgate-error"] == "unauthenticated"
    status, _, _ = curl(f"{edge.url}/api/orders/1", "-H", "x-api-key: guessed")
    assert status == 401


def test_public_route_and_unknown_route(edge: Gateway) -> None:
    status, _, body = curl(f"{edge.url}/shop/cart")
    assert status == 200 and json.loads(body)["service"] == "web"
    status, headers, _ = curl(f"{edge.url}/nowhere")
    assert status == 404 and headers["x-meshgate-error"] == "route_not_found"


def test_host_rules_and_header_cap_at_the_edge(edge: Gateway) -> None:
    two = raw(edge.port, b"GET /shop/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert two.startswith(b"HTTP/1.1 400"), two[:80]
    none = raw(edge.port, b"GET /shop/ HTTP/1.1\r\n\r\n")
    assert none.startswith(b"HTTP/1.1 400"), none[:80]
    big = raw(edge.port, b"GET /shop/ HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431") or big.startswith(b"HTTP/1.1 400") or big == b"", big[:80]


def test_a_smuggled_request_never_reaches_the_service(edge: Gateway) -> None:
    smuggle = (
        b"POST /shop/a HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /shop/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    answer = raw(edge.port, smuggle)
    assert b"/smuggled" not in answer
    assert answer.startswith(b"HTTP/1.1 400") or answer.count(b"HTTP/1.1 ") <= 2


def test_admin_metrics_count_requests_by_route(edge: Gateway) -> None:
    curl(f"{edge.url}/shop/x")
    with urllib.request.urlopen(f"{edge.admin_url}/metrics", timeout=2) as response:
        text = response.read().decode()
    assert 'meshgate_gateway_requests_total{route="shop",code="200"}' in text
