"""``meshgate gateway --workers 2`` (our own server): two forked worker processes share the port
(SO_REUSEPORT), both serve, and SIGTERM to the gateway stops every one of them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from e2e_lib import MeshStack, copy_policies, running, start_echo_app, wait_until

pytestmark = pytest.mark.slow

WORKERS = 2
REQUESTS = 40
SHOP_200 = re.compile(r'^meshgate_gateway_requests_total\{route="shop",code="200"\} (\S+)$', re.M)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (its main thread's, as /proc lists them)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(part) for part in text.split()]


def alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]  # the command may hold spaces and parentheses
    return state not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def get_over_new_connection(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection (``Connection: close``); the status and the body."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return status, body


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def shop_count(admin_url: str) -> int:
    """One worker's count of 200s on route ``shop`` (each scrape is a new connection: any worker)."""
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = SHOP_200.search(text)
    return int(float(found.group(1))) if found else 0


def test_two_workers_serve_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    workers: list[int] = []
    try:
        with running(tmp_path) as procs:
            stack = MeshStack(procs, tmp_path)
            stack.start_control_plane(copy_policies(tmp_path / "policies"))
            stack.start_sidecar("web", start_echo_app(procs, "web"))
            gateway = stack.start_gateway("--workers", str(WORKERS), knows=["web"])
            proc = procs.procs["gateway"]

            wait_until(lambda: len(children(proc.pid)) == WORKERS, timeout=10, what="two gateway workers")
            workers = children(proc.pid)
            for pid in workers:
                assert alive(pid), pid
                assert "gateway" in cmdline(pid), cmdline(pid)

            answers = [get_over_new_connection(gateway.port, f"/shop/item/{i}") for i in range(REQUESTS)]
            statuses = [status for status, _ in answers]
            assert statuses == [200] * REQUESTS, statuses
            for _, body in answers:
                assert json.loads(body)["service"] == "web"

            # each worker counts its own requests: a scrape that shows some but not all of them proves
            # that another worker served the rest (the admin port is shared with SO_REUSEPORT too)
            seen = {shop_count(gateway.admin_url) for _ in range(20)}
            assert all(0 < count < REQUESTS for count in seen), (seen, REQUESTS)

            proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"gateway still running 10 s after SIGTERM; workers alive: "
                    f"{[pid for pid in workers if alive(pid)]}"
                ) from None
            wait_until(
                lambda: not any(alive(pid) for pid in workers),
                timeout=max(0.1, 10 - (time.monotonic() - stopped)),
                what="no orphan gateway workers",
            )
            assert code == 0, procs.log("gateway")[-2000:]
    finally:
        for pid in workers:  # never leave an orphan behind, whatever failed above
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
