"""Helpers for the attacks in tests/security: a whole stack of real processes (control plane, one
sidecar in front of a request-counting app, ``meshgate gateway``), sockets to each listener (the
sidecar's mTLS inbound with a client SVID from the mesh CA, its plaintext outbound, the gateway's
plaintext port), a raw HTTP/2 frame client and a well-behaved HTTP/2 client (the ``h2`` library).

Every wait and loop is bounded in count and in time; every socket is closed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_lib import MESHGATE, Gateway, MeshStack, Processes, Sidecar, running

TD = "sec.meshgate.local"
ATTACKER = f"spiffe://{TD}/ns/default/sa/attacker"
API_KEY = "sec-key-alice"
SMALL_BODY = 1024  # maxBodySize of the /small route

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Headers = list[tuple[bytes, bytes]]


def policies(target: Path) -> Path:
    """The policy set of the security stack: service ``web`` (the counting app) open to ``gateway``,
    ``web`` itself (its own outbound port) and ``attacker`` (the test's client SVID); gateway routes
    ``/`` (public), ``/small`` (1 KiB body cap) and ``/keyed`` (API key)."""
    import hashlib

    sha = hashlib.sha256(API_KEY.encode()).hexdigest()
    target.mkdir(parents=True, exist_ok=True)
    (target / "mesh.yaml").write_text(
        f"""apiVersion: meshgate/v1
kind: Mesh
name: security
trustDomain: {TD}
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: web
port: 8080
---
apiVersion: meshgate/v1
kind: Service
name: gateway
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: web-access
target: {{service: web}}
rules:
  - action: allow
    from: {{services: [gateway, web, attacker]}}
"""
    )
    (target / "edge.yaml").write_text(
        f"""apiVersion: meshgate/v1
kind: Route
name: all
hosts: ["*"]
match: {{path: {{prefix: /}}}}
backends: [{{service: web}}]
timeout: 20s
---
apiVersion: meshgate/v1
kind: Route
name: small
match: {{path: {{prefix: /small}}}}
backends: [{{service: web}}]
maxBodySize: {SMALL_BODY}
---
apiVersion: meshgate/v1
kind: Route
name: keyed
match: {{path: {{prefix: /keyed}}}}
backends: [{{service: web}}]
auth: [keys]
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  header: x-api-key
  keys: [{{name: alice, sha256: {sha}}}]
"""
    )
    return target


# -- the upstream app: counts and echoes ---------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request head the app received."""

    method: str
    path: str
    headers: dict[str, str]


class CountingApp:
    """An HTTP/1.1 app on 127.0.0.1 (in this process, threads) that records every request head it
    receives before reading its body, and answers JSON describing it (as examples/echo_app.py).
    ``/big/N`` answers N bytes (streamed in 64 KiB writes), ``/slow/MS`` answers after MS milliseconds,
    ``/status/N`` answers status N."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with app.lock:
                    app.seen.append(Seen(self.command, self.path, headers))
                if self.path.startswith("/big/"):
                    self._big(int(self.path.split("/")[2]))
                    return
                if self.path.startswith("/slow/"):  # /slow/MS: answers after MS milliseconds
                    time.sleep(min(int(self.path.split("/")[2]), 10_000) / 1000)
                body = b""
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = self._chunked()
                elif headers.get("content-length"):
                    body = self.rfile.read(int(headers["content-length"]))
                status = int(self.path.split("/")[2] or 200) if self.path.startswith("/status/") else 200
                data = json.dumps(
                    {"method": self.command, "path": self.path, "headers": headers, "bodyBytes": len(body)}
                ).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _chunked(self) -> bytes:
                parts: list[bytes] = []
                for _ in range(100_000):
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if not size:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(parts)

            def _big(self, size: int) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(size))
                self.end_headers()
                chunk = b"x" * 65536
                left = size
                with contextlib.suppress(OSError):
                    while left > 0:
                        n = min(left, len(chunk))
                        self.wfile.write(chunk[:n])
                        left -= n

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a peer that went away mid-answer is what these tests do on purpose

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})

    def start(self) -> CountingApp:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def since(self, mark: int) -> list[Seen]:
        """What arrived after ``count()`` returned ``mark``."""
        with self.lock:
            return list(self.seen[mark:])

    def settle(self, quiet: float = 0.3, timeout: float = 5.0) -> int:
        """Wait until no request arrived for ``quiet`` seconds (bounded); the count then."""
        deadline = time.monotonic() + timeout
        last, since = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.count()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


# -- the stack -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """One port under attack: ``tls`` (mTLS with the attacker's SVID, ALPN h2) or plaintext; ``pid``
    is the process behind it (its RSS is measured)."""

    name: str
    port: int
    pid: int
    tls: ssl.SSLContext | None = None
    authority: str = "web"
    #: How a well-behaved client ends a bodyless request: END_STREAM on HEADERS (the usual way), or an
    #: empty DATA frame with END_STREAM (the outbound h2c listener: see
    #: test_h2_attacks.py::test_outbound_h2c_get_with_end_stream_on_headers_is_answered)
    end_on_headers: bool = True

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


@dataclass
class Stack:
    """The running stack (see module docstring)."""

    procs: Processes
    app: CountingApp
    sidecar: Sidecar
    gateway: Gateway
    client_tls: ssl.SSLContext
    listeners: dict[str, Listener] = field(default_factory=dict)


def client_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting ``cert``, ALPN h2, not checking the server (the attacks
    are about what the server does, not about its certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def issue_svid(stack: MeshStack, spiffe_id: str) -> tuple[Path, Path]:
    """An SVID from the control plane's CA (``meshgate ca issue``)."""
    cert, key = stack.tmp / "attacker.pem", stack.tmp / "attacker.key"
    argv = [MESHGATE, "ca", "issue", "--dir", str(stack.data / "ca"), "--id", spiffe_id]
    subprocess.run(
        [*argv, "--cert", str(cert), "--key", str(key), "--ttl", "2h"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return cert, key


@contextlib.contextmanager
def security_stack(tmp: Path, *gateway_args: str) -> Iterator[Stack]:
    """Start everything; stop everything (and the app) on exit."""
    app = CountingApp().start()
    try:
        with running(tmp) as procs:
            mesh = MeshStack(procs, tmp)
            mesh.start_control_plane(policies(tmp / "policies"))
            sidecar = mesh.start_sidecar("web", app.port)
            sidecar.wait_knows("web")
            gateway = mesh.start_gateway(*gateway_args, knows=["web"])
            cert, key = issue_svid(mesh, ATTACKER)
            tls = client_context(cert, key)
            side_pid = procs.procs[sidecar.name].pid
            stack = Stack(procs, app, sidecar, gateway, tls)
            stack.listeners = {
                "inbound": Listener("inbound", sidecar.inbound, side_pid, tls),
                "outbound": Listener("outbound", sidecar.outbound, side_pid, end_on_headers=False),
                "gateway": Listener("gateway", gateway.port, procs.procs[gateway.name].pid),
            }
            try:
                yield stack
            finally:
                stop_quickly(procs)
    finally:
        app.stop()


def stop_quickly(procs: Processes, timeout: float = 3.0) -> None:
    """SIGTERM to every process at once, SIGKILL to those still running after ``timeout`` (attacks
    leave requests in flight that a graceful drain would wait for)."""
    for proc in procs.procs.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs.procs.values():
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS in /proc, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# -- sockets ---------------------------------------------------------------------------------------


def connect(listener: Listener, timeout: float = 5.0) -> socket.socket:
    """A connected socket to ``listener`` (TLS handshake done for the inbound one)."""
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=timeout)
    if listener.tls is None:
        return sock
    try:
        return listener.tls.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def recv_some(sock: socket.socket, timeout: float) -> bytes | None:
    """What arrives within ``timeout`` (b"" on a quiet socket), None once the peer closed."""
    sock.settimeout(max(timeout, 0.001))
    try:
        data = sock.recv(65536)
    except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
        return b""
    except (ConnectionError, ssl.SSLError, OSError):
        return None
    return data if data else None


# -- raw HTTP/2 ------------------------------------------------------------------------------------


class RawH2:
    """A hand-driven HTTP/2 client connection: frames built with hyperframe, header blocks with hpack,
    everything the server sends parsed and kept (``frames``); nothing is answered automatically."""

    def __init__(self, listener: Listener, *, settings: dict[int, int] | None = None) -> None:
        self.listener = listener
        self.sock = connect(listener)
        self.encoder = Encoder()
        self.frames: list[Frame] = []
        self.closed = False  # the server closed (we read its end)
        self.send_failed = False
        self._buffer = b""
        start = SettingsFrame(0)
        for key, value in (settings or {}).items():
            start.settings[key] = value
        self.send(PREFACE + start.serialize())

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # building frames

    def request_headers(
        self, path: str = "/ok", method: str = "GET", extra: Headers | None = None
    ) -> Headers:
        head: Headers = [
            (b":method", method.encode()),
            (b":scheme", self.listener.scheme.encode()),
            (b":authority", self.listener.authority.encode()),
            (b":path", path.encode()),
        ]
        return head + list(extra or [])

    def block(self, headers: Iterable[tuple[bytes, bytes]], *, huffman: bool = False) -> bytes:
        return bytes(self.encoder.encode(list(headers), huffman=huffman))

    def headers(
        self,
        sid: int,
        headers: Headers | None = None,
        *,
        end_stream: bool = True,
        end_headers: bool = True,
        block: bytes | None = None,
    ) -> bytes:
        frame = HeadersFrame(sid)
        frame.data = self.block(headers or self.request_headers()) if block is None else block
        if end_stream:
            frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return bytes(frame.serialize())

    def get(self, sid: int, path: str = "/ok") -> bytes:
        """A well-formed bodyless GET on ``sid`` (ended the listener's way, see ``Listener``)."""
        if self.listener.end_on_headers:
            return self.headers(sid, self.request_headers(path))
        return self.headers(sid, self.request_headers(path), end_stream=False) + self.data(
            sid, end_stream=True
        )

    @staticmethod
    def continuation(sid: int, data: bytes, *, end_headers: bool = False) -> bytes:
        frame = ContinuationFrame(sid, flags=["END_HEADERS"] if end_headers else [])
        frame.data = data
        return bytes(frame.serialize())

    @staticmethod
    def data(sid: int, data: bytes = b"", *, end_stream: bool = False) -> bytes:
        return bytes(DataFrame(sid, data=data, flags=["END_STREAM"] if end_stream else []).serialize())

    @staticmethod
    def rst(sid: int, code: int = 8) -> bytes:
        return bytes(RstStreamFrame(sid, error_code=code).serialize())

    @staticmethod
    def ping(payload: bytes = b"\0" * 8) -> bytes:
        return bytes(PingFrame(0, opaque_data=payload).serialize())

    @staticmethod
    def settings(values: dict[int, int] | None = None, *, ack: bool = False) -> bytes:
        frame = SettingsFrame(0, flags=["ACK"] if ack else [])
        for key, value in (values or {}).items():
            frame.settings[key] = value
        return bytes(frame.serialize())

    @staticmethod
    def window_update(sid: int, increment: int) -> bytes:
        return bytes(WindowUpdateFrame(sid, window_increment=increment).serialize())

    # I/O

    def send(self, data: bytes) -> bool:
        """Send; False once the server no longer takes bytes (what it sent before stays readable)."""
        if self.send_failed:
            return False
        try:
            self.sock.settimeout(5.0)
            self.sock.sendall(data)
        except (OSError, ssl.SSLError):
            self.send_failed = True
            return False
        return True

    def flood(self, data: bytes, step: int = 4096, pause: float = 0.01, timeout: float = 10.0) -> int:
        """Send ``data`` ``step`` bytes at a time, reading between sends, and stop at the server's
        GOAWAY or close: what the server answered to the first bytes decides, not how many megabytes the
        kernel would have buffered meanwhile. Returns how many bytes were sent."""
        sent = 0
        deadline = time.monotonic() + timeout
        while sent < len(data) and time.monotonic() < deadline:
            if not self.send(data[sent : sent + step]):
                break
            sent += min(step, len(data) - sent)
            self.pump(pause)
            if self.closed or any(isinstance(f, GoAwayFrame) for f in self.frames):
                break
        return sent

    def pump(self, timeout: float = 0.0) -> list[Frame]:
        """Read what arrives within ``timeout`` (at least one poll); parse it; return the new frames."""
        new: list[Frame] = []
        deadline = time.monotonic() + timeout
        while not self.closed:
            chunk = recv_some(self.sock, deadline - time.monotonic())
            if chunk is None:
                self.closed = True
                break
            if not chunk:
                break
            self._buffer += chunk
            new += self._parse()
            if time.monotonic() >= deadline:
                break
        self.frames += new
        return new

    def _parse(self) -> list[Frame]:
        out: list[Frame] = []
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
            self._buffer = self._buffer[9 + length :]
            out.append(frame)
        return out

    def wait_for(self, check: Callable[[Frame], bool], timeout: float = 5.0) -> Frame | None:
        """The first frame (already read or arriving within ``timeout``) passing ``check``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for frame in self.frames[seen:]:
                if check(frame):
                    return frame
            seen = len(self.frames)
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return None
            self.pump(min(left, 0.2))

    def goaway(self, timeout: float = 5.0) -> GoAwayFrame | None:
        """The server's GOAWAY, waiting up to ``timeout``."""
        frame = self.wait_for(lambda f: isinstance(f, GoAwayFrame), timeout)
        return frame if isinstance(frame, GoAwayFrame) else None

    def resets(self) -> dict[int, int]:
        """stream id -> error code of every RST_STREAM received so far."""
        return {f.stream_id: f.error_code for f in self.frames if isinstance(f, RstStreamFrame)}

    def wait_reset(self, sid: int, timeout: float = 5.0) -> int | None:
        """The error code of the server's RST_STREAM on ``sid``, or None."""
        frame = self.wait_for(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == sid, timeout)
        return frame.error_code if isinstance(frame, RstStreamFrame) else None

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the server closed the connection (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.pump(min(0.2, max(deadline - time.monotonic(), 0.001)))
        return self.closed


# -- a well-behaved HTTP/2 client ----------------------------------------------------------------


class GoodClient:
    """An ``h2``-library client on its own connection: what every other user of the listener is."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.sock = connect(listener)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def __enter__(self) -> GoodClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def get(self, path: str = "/ok", timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path``; (status, body). Raises AssertionError when no answer comes in ``timeout``."""
        conn = self.conn
        sid = conn.get_next_available_stream_id()
        end_on_headers = self.listener.end_on_headers
        conn.send_headers(
            sid,
            [
                (b":method", b"GET"),
                (b":scheme", self.listener.scheme.encode()),
                (b":authority", self.listener.authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=end_on_headers,
        )
        if not end_on_headers:
            conn.end_stream(sid)
        self.sock.sendall(conn.data_to_send())
        status = 0
        body = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = recv_some(self.sock, min(0.5, deadline - time.monotonic()))
            if chunk is None:
                raise AssertionError(f"{self.listener.name}: connection closed before the answer")
            for event in conn.receive_data(chunk) if chunk else []:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    self.sock.sendall(conn.data_to_send())
                    return status, body
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                    raise AssertionError(f"{self.listener.name}: stream reset ({event.error_code})")
            out = conn.data_to_send()
            if out:
                self.sock.sendall(out)
        raise AssertionError(f"{self.listener.name}: no answer to GET {path} within {timeout}s")


def good_get(listener: Listener, path: str = "/ok", timeout: float = 5.0) -> int:
    """A fresh well-behaved connection's GET: the status."""
    with GoodClient(listener) as client:
        return client.get(path, timeout)[0]


class Watcher:
    """A well-behaved client asking every ``interval`` seconds on its own connection, in a thread,
    while an attack runs: statuses and latencies are kept."""

    def __init__(self, listener: Listener, interval: float = 0.1) -> None:
        self.listener = listener
        self.interval = interval
        self.results: list[tuple[int, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._client = GoodClient(listener)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(1000):
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                status, _ = self._client.get("/ok", 5.0)
            except (AssertionError, OSError) as exc:
                self.errors.append(str(exc))
                return
            self.results.append((status, time.monotonic() - started))
            self._stop.wait(self.interval)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()


# -- raw HTTP/1.1 ----------------------------------------------------------------------------------


@dataclass
class H1Answer:
    """What came back on one raw HTTP/1.1 connection."""

    data: bytes
    closed: bool  # the server closed the connection

    @property
    def status(self) -> int:
        line = self.data.split(b"\r\n", 1)[0]
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 and line.startswith(b"HTTP/1.1 ") else 0

    @property
    def responses(self) -> int:
        return self.data.count(b"HTTP/1.1 ")

    def header(self, name: str) -> str | None:
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None

    def json(self) -> dict[str, Any]:
        body = self.data.split(b"\r\n\r\n", 1)[1]
        return dict(json.loads(body))


def h1_exchange(
    port: int, data: bytes, *, wait: float = 3.0, until_close: bool = True, close_wait: float = 1.0
) -> H1Answer:
    """Send raw bytes; read until the server closes, at most ``wait`` seconds, and at most
    ``close_wait`` seconds after a first complete response (with a Content-Length) came in; without
    ``until_close``, stop at that first complete response."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(OSError):  # a server may refuse before it has read everything
            sock.sendall(data)
        out = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            chunk = recv_some(sock, deadline - time.monotonic())
            if chunk is None:
                return H1Answer(out, True)
            out += chunk
            if _complete(out):
                if not until_close:
                    return H1Answer(out, False)
                deadline = min(deadline, time.monotonic() + close_wait)
        return H1Answer(out, False)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False
