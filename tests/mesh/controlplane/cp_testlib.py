"""Helpers for the control-plane tests, all on 127.0.0.1 with bounded waits.

- :class:`InProcessControlPlane`: a real ControlPlane and its uvicorn HTTPS server on a thread of its
  own (own event loop), for tests that need short sweep/poll intervals or access to the object.
- :class:`ControlPlaneProcess`: the real ``meshgate control-plane`` CLI as a subprocess.
- :class:`RedisServer`: a private ``redis-server`` (no persistence), or ``REDIS_URL`` when set.
- clients: admin bearer, anonymous, and a workload with an SVID (mTLS), as httpx clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.controlplane.core import ControlPlane
from mesh.controlplane.server import bind, make_server
from mesh.controlplane.stores import open_store
from shared.identity.bundle import TrustBundle
from shared.identity.ca import load_chain_pem, make_csr
from shared.identity.spiffeid import SpiffeId, workload_id
from shared.identity.svid import check_leaf
from shared.identity.tls import client_context

REPO = Path(__file__).resolve().parents[3]
POLICIES = REPO / "policies"
MESHGATE = str(Path(sys.executable).parent / "meshgate")
TD = "demo.meshgate.local"

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_policies(dst: Path) -> Path:
    """A private copy of the repository's policy folder (for tests that edit it)."""
    shutil.copytree(POLICIES, dst)
    return dst


def verify_context(bundle_pem: str) -> ssl.SSLContext:
    """A client context that verifies the control plane's chain against the bundle (no host names:
    the control plane's certificate names a SPIFFE ID)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=bundle_pem)
    return ctx


def bundle_pem_of(jwks: dict[str, Any]) -> str:
    return TrustBundle.from_jwks(jwks).to_pem()


def error_of(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of an API error response."""
    data = response.json()
    return str(data["error"]), str(data["message"])


# ----- clients -----------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where a control plane is and how to trust it / act as its operator."""

    url: str
    admin_token: str
    bundle_pem: str

    def admin(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=verify_context(self.bundle_pem),
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=timeout,
        )

    def anon(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=verify_context(self.bundle_pem), timeout=timeout)

    def async_admin(self, timeout: float = 10.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            verify=verify_context(self.bundle_pem),
            headers={"authorization": f"Bearer {self.admin_token}"},
            timeout=timeout,
        )

    def token(self, service: str, *, ttl: str = "1h", reusable: bool = False) -> str:
        """A join token from ``POST /v1/tokens``."""
        with self.admin() as http:
            r = http.post("/v1/tokens", json={"service": service, "ttl": ttl, "reusable": reusable})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def index(self) -> int:
        with self.admin() as http:
            r = http.get("/v1/snapshot")
        assert r.status_code == 200, r.text
        return int(r.json()["index"])

    def status(self) -> dict[str, Any]:
        with self.admin() as http:
            r = http.get("/v1/status")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data


@dataclass
class Workload:
    """A workload that joined: its SVID (chain, key) and the trust bundle the control plane gave it."""

    endpoint: Endpoint
    identity: SpiffeId
    chain: list[x509.Certificate]
    key: ec.EllipticCurvePrivateKey
    bundle: TrustBundle

    def client(self, timeout: float = 10.0) -> httpx.Client:
        """An httpx client presenting the SVID (mTLS)."""
        ctx = client_context(self.chain, self.key, self.bundle)
        return httpx.Client(base_url=self.endpoint.url, verify=ctx, timeout=timeout)


def sign_with_token(
    endpoint: Endpoint, token: str, csr_identity: SpiffeId | None = None
) -> tuple[httpx.Response, ec.EllipticCurvePrivateKey]:
    """``POST /v1/sign`` with a join token; the CSR names ``csr_identity`` (or nothing)."""
    key = ec.generate_private_key(ec.SECP256R1())
    with endpoint.anon() as http:
        r = http.post(
            "/v1/sign",
            json={"csr": make_csr(key, csr_identity).decode()},
            headers={"authorization": f"Bearer {token}"},
        )
    return r, key


def join(endpoint: Endpoint, service: str, token: str | None = None) -> Workload:
    """Get an SVID for ``service`` with a (new) join token."""
    token = token or endpoint.token(service)
    identity = workload_id(TD, service)
    r, key = sign_with_token(endpoint, token, identity)
    assert r.status_code == 200, r.text
    data = r.json()
    chain = load_chain_pem(data["chain"].encode())
    assert check_leaf(chain[0], TD) == identity
    return Workload(endpoint, identity, chain, key, TrustBundle.from_jwks(data["bundle"]))


def register_body(service: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"service": service, "address": f"10.1.0.{n}", "port": 15006, **extra}


# ----- an in-process control plane ---------------------------------------------------------------------


class InProcessControlPlane:
    """ControlPlane + ``make_server`` on a background thread with its own event loop."""

    def __init__(
        self,
        data_dir: Path,
        policies: Path = POLICIES,
        *,
        store: str | None = None,
        sweep_interval: float = 0.1,
        policy_interval: float = 0.1,
        reap_after: float = 60.0,
    ) -> None:
        self.data_dir = data_dir
        self.policies = policies
        self.store_spec = store
        self.sweep_interval = sweep_interval
        self.policy_interval = policy_interval
        self.reap_after = reap_after
        self.cp: ControlPlane | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> Endpoint:
        assert self.cp is not None and self.cp.admin_token is not None
        return Endpoint(f"https://127.0.0.1:{self.port}", self.cp.admin_token, self.cp.ca.bundle().to_pem())

    def start(self, timeout: float = 15.0) -> InProcessControlPlane:
        self._thread = threading.Thread(target=self._thread_main, name="control-plane", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"in-process control plane not ready after {timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start() or stop()
            self._error = exc
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        cp = ControlPlane(
            policies=[self.policies],
            data_dir=self.data_dir,
            store=open_store(self.store_spec, self.data_dir),
            reap_after=self.reap_after,
            policy_interval=self.policy_interval,
            sweep_interval=self.sweep_interval,
        )
        await cp.start()
        self.cp = cp
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        server = make_server(cp, sock)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            for _ in range(1000):
                if server.started or task.done():
                    break
                await asyncio.sleep(0.01)
            if not server.started:
                raise AssertionError("uvicorn did not start")
            self._ready.set()
            await self._stop.wait()
            server.should_exit = True
            await asyncio.wait_for(task, 15)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await cp.stop()
            sock.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the control plane's loop (to reach its state safely)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "in-process control plane did not stop"
        if self._error is not None:
            raise self._error

    def __enter__(self) -> InProcessControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----- the real CLI as a subprocess --------------------------------------------------------------------


class ControlPlaneProcess:
    """``meshgate control-plane`` on an ephemeral port (read back from its log line)."""

    def __init__(
        self,
        data_dir: Path,
        policies: Path = POLICIES,
        *,
        store: str | None = None,
        admin_token_file: Path | None = None,
        log_path: Path | None = None,
        port: int = 0,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.listen_port = port
        self.policies = policies
        self.store = store
        self.admin_token_file = admin_token_file
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.endpoint: Endpoint | None = None

    def argv(self) -> list[str]:
        argv = [MESHGATE, "control-plane", "--policies", str(self.policies), "--data-dir", str(self.data_dir)]
        argv += ["--listen", f"127.0.0.1:{self.listen_port}", *self.extra]
        if self.store:
            argv += ["--store", self.store]
        if self.admin_token_file:
            argv += ["--admin-token-file", str(self.admin_token_file)]
        return argv

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_ready(self, timeout: float = 20.0) -> Endpoint:
        assert self.proc is not None

        def port() -> int:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"control plane exited with {self.proc.returncode}:\n{self.log_text()}")
            for line in reversed(self.log_text().splitlines()):
                with contextlib.suppress(ValueError):
                    msg = json.loads(line).get("msg", "")
                    if msg.startswith("control plane listening on https://127.0.0.1:"):
                        return int(msg.split("127.0.0.1:")[1].split()[0])
            return 0

        self.port = wait_until(port, timeout, "the control plane's listening log line")
        url = f"https://127.0.0.1:{self.port}"
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        with httpx.Client(verify=insecure, timeout=5) as http:
            bundle = http.get(f"{url}/v1/bundle").json()  # loopback, our own process: trust on first use
        token_file = self.admin_token_file or self.data_dir / "admin-token"
        self.endpoint = Endpoint(url, token_file.read_text().strip(), bundle_pem_of(bundle))
        with self.endpoint.anon() as http:  # now verified against the bundle
            assert http.get("/healthz").status_code == 200
        return self.endpoint

    def start(self, timeout: float = 20.0) -> Endpoint:
        self.spawn()
        return self.wait_ready(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills and fails if it does not exit in time)."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise AssertionError(
                f"control plane ignored SIGTERM for {timeout}s:\n{self.log_text()}"
            ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def run_cli(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``meshgate ARGV...`` and capture its output."""
    return subprocess.run(
        [MESHGATE, *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


# ----- Redis ---------------------------------------------------------------------------------------------


class RedisServer:
    """``REDIS_URL`` when set (the meshgate keys are deleted first), else a private redis-server."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        import redis

        external = os.environ.get("REDIS_URL")
        if external:
            self.url = external
        else:
            redis_server = shutil.which("redis-server")
            if redis_server is None:
                import pytest

                pytest.skip("no redis-server and no REDIS_URL")
            port = free_port()
            self.proc = subprocess.Popen(
                [
                    redis_server,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:

            def pong() -> bool:
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    return False

            wait_until(pong, 10, f"Redis at {self.url}")
            for key in client.scan_iter(match="meshgate:*"):
                client.delete(key)
        finally:
            client.close()
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
