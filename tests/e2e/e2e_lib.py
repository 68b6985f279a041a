"""Helpers for whole-stack tests: free ports, processes that are always stopped, bounded waits."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MESHGATE = str(Path(sys.executable).parent / "meshgate")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()
_ports = random.Random()


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1), below the kernel's ephemeral range when
    there is room: a port from that range may be taken as the source port of some outgoing
    connection before the process it was meant for binds it ("address already in use", seen in CI).
    Never the same port twice in one test run."""
    for _ in range(200):
        if _EPHEMERAL_LOW > 12000:
            port = _ports.randrange(10000, _EPHEMERAL_LOW)
        else:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` every 50 ms until it is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200 (plain HTTP, or HTTPS without verification)."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, timeout=2, context=ctx) as response:
        return bool(response.status == 200)


class Processes:
    """Started processes, all stopped (SIGTERM, then SIGKILL) by :meth:`stop_all`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout/stderr to ``logs/name.log``."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})}
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout``."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process still running, newest first: workloads before the control plane they
        deregister from (the other way round each waits for a dead control plane)."""
        for name in reversed(list(self.procs)):
            self.stop(name, 5.0)

    def log(self, name: str) -> str:
        """What ``name`` has written so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def copy_policies(target: Path) -> Path:
    """A private copy of the repository's example policies."""
    shutil.copytree(REPO / "policies", target)
    return target


class MeshStack:
    """A control plane and sidecars as real processes: the start-up every whole-stack test shares."""

    def __init__(self, procs: Processes, tmp: Path) -> None:
        self.procs = procs
        self.tmp = tmp
        self.data = tmp / "cp"
        self.cp_url = ""
        self.cp_argv: tuple[str, ...] = ()

    def start_control_plane(self, policies: Path) -> str:
        """Start it on a free port; returns its URL once ready."""
        port = free_port()
        self.cp_url = f"https://127.0.0.1:{port}"
        self.cp_argv = (
            MESHGATE,
            "control-plane",
            "--policies",
            str(policies),
            "--data-dir",
            str(self.data),
            "--listen",
            f"127.0.0.1:{port}",
        )
        self.procs.start("cp", *self.cp_argv)
        wait_until(lambda: http_ok(f"{self.cp_url}/readyz"), what="control plane ready")
        return self.cp_url

    def token(self, service: str, *extra: str) -> Path:
        """A join token file for ``service`` (``meshgate token create``)."""
        out = subprocess.run(
            [MESHGATE, "token", "create", "--data-dir", str(self.data), "--service", service, *extra],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        path = self.tmp / f"{service}.token"
        path.write_text(out.stdout)
        return path

    def start_sidecar(
        self, service: str, app_port: int, *extra: str, name: str | None = None, token: Path | None = None
    ) -> Sidecar:
        """Start a sidecar for ``service`` in front of ``app_port``; returns its ports once ready."""
        name = name or f"sidecar-{service}"
        sidecar = Sidecar(name, service, free_port(), free_port(), free_port())
        self.procs.start(
            name,
            MESHGATE,
            "sidecar",
            "--service",
            service,
            "--app",
            f"http://127.0.0.1:{app_port}",
            "--control-plane",
            self.cp_url,
            "--token",
            str(token or self.token(service)),
            "--cache-dir",
            str(self.tmp / f"cache-{name}"),
            "--inbound",
            f"127.0.0.1:{sidecar.inbound}",
            "--outbound",
            f"127.0.0.1:{sidecar.outbound}",
            "--admin",
            f"127.0.0.1:{sidecar.admin}",
            *extra,
        )
        wait_until(lambda: http_ok(f"{sidecar.admin_url}/readyz"), what=f"{name} ready")
        return sidecar

    def start_gateway(self, *extra: str, knows: Sequence[str] = (), name: str = "gateway") -> Gateway:
        """Start ``meshgate gateway`` (joining as service ``gateway``) with ``extra`` arguments; returns
        its ports once ready and once it has endpoints for every one of ``knows``."""
        gateway = Gateway(name, free_port(), free_port())
        self.procs.start(
            name,
            MESHGATE,
            "gateway",
            "--control-plane",
            self.cp_url,
            "--token",
            str(self.token("gateway")),
            "--cache-dir",
            str(self.tmp / f"cache-{name}"),
            "--listen",
            f"127.0.0.1:{gateway.port}",
            "--admin",
            f"127.0.0.1:{gateway.admin_port}",
            *extra,
        )
        wait_until(lambda: http_ok(f"{gateway.admin_url}/readyz"), what=f"{name} ready")
        if knows:
            wait_until(
                lambda: admin_knows(gateway.admin_url, knows), what=f"{name} to learn {', '.join(knows)}"
            )
        return gateway


def admin_knows(admin_url: str, services: Sequence[str]) -> bool:
    """True once the admin ``/config`` at ``admin_url`` has endpoints for every one of ``services``."""
    with urllib.request.urlopen(f"{admin_url}/config", timeout=2) as response:
        endpoints = json.load(response)["endpoints"]
    return all(endpoints.get(s) for s in services)


@dataclass(frozen=True)
class Gateway:
    """The ports of a started gateway."""

    name: str
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


class Sidecar:
    """The ports of a started sidecar."""

    def __init__(self, name: str, service: str, inbound: int, outbound: int, admin: int) -> None:
        self.name, self.service = name, service
        self.inbound, self.outbound, self.admin = inbound, outbound, admin

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.outbound}"

    def knows(self, *services: str) -> bool:
        """True once this sidecar has endpoints for every one of ``services``."""
        return admin_knows(self.admin_url, services)

    def wait_knows(self, *services: str) -> None:
        """Wait until :meth:`knows` is true."""
        wait_until(lambda: self.knows(*services), what=f"{self.name} to learn {', '.join(services)}")


def dump_logs(procs: Processes) -> None:
    """Every process's recent output on stderr (for a failing whole-stack test)."""
    for name in list(procs.procs):
        sys.stderr.write(f"--- {name} ---\n{procs.log(name)[-3000:]}\n")


@contextlib.contextmanager
def running(tmp: Path) -> Iterator[Processes]:
    """:class:`Processes` logging to ``tmp``, every one stopped on exit; their output dumped on an error."""
    procs = Processes(tmp)
    try:
        yield procs
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()


@contextlib.contextmanager
def grpc_server(service: str, handlers: Mapping[str, Any], workers: int = 8) -> Iterator[int]:
    """A grpcio server (h2c on 127.0.0.1) for ``service`` with ``handlers`` (method name -> RPC method
    handler); yields its port and stops it on exit."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def start_echo_app(procs: Processes, name: str) -> int:
    """Start examples/echo_app.py as service ``name`` on a free port; returns the port."""
    port = free_port()
    procs.start(f"app-{name}", sys.executable, "examples/echo_app.py", "--name", name, "--port", str(port))
    return port
