"""Helpers for the chaos tests: a bounded background load generator that records every answer, policy
folders written for one scenario, admin-port and control-plane readers, SIGKILL and restart.

The stack itself (control plane, sidecars, gateway as real processes on free ports) is the one the
whole-stack tests use: ``tests/e2e/e2e_lib.py`` (``MeshStack``, ``Processes``, ...), imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_E2E = str(Path(__file__).resolve().parents[1] / "e2e")
if _E2E not in sys.path:
    sys.path.insert(0, _E2E)

from e2e_lib import (  # noqa: E402
    MESHGATE,
    REPO,
    Gateway,
    MeshStack,
    Processes,
    Sidecar,
    dump_logs,
    free_port,
    http_ok,
    start_echo_app,
    wait_until,
)

__all__ = [
    "MESHGATE",
    "REPO",
    "TRUST_DOMAIN",
    "ControlPlaneAdmin",
    "Gateway",
    "LoadGenerator",
    "MeshStack",
    "Outcome",
    "Processes",
    "RedisProcess",
    "Sidecar",
    "Target",
    "admin_config",
    "assert_no_failures",
    "between",
    "burst",
    "chaos_stack",
    "dump_logs",
    "endpoint_count",
    "failures",
    "free_port",
    "http_ok",
    "mesh_policies",
    "meshgate",
    "metric",
    "policy_version",
    "poll_until",
    "route",
    "sigkill",
    "sigterm",
    "start_echo_app",
    "start_slow_echo_app",
    "summary",
    "wait_until",
    "write_atomic",
    "write_policies",
]

TRUST_DOMAIN = "chaos.meshgate.test"

# ----- policies --------------------------------------------------------------------------------------


def mesh_policies(certificate_ttl: str = "24h") -> dict[str, str]:
    """The base policy folder every scenario starts from (file name -> YAML): a Mesh that allows by
    default, services ``orders`` (retries and outlier detection as policies/services.yaml, with timeouts
    generous enough for a busy 2-core machine), ``catalog``, ``web`` and ``gateway``, and the edge route
    ``/api`` -> ``orders`` (rewritten to ``/orders``)."""
    return {
        "mesh.yaml": f"""\
apiVersion: meshgate/v1
kind: Mesh
name: chaos
trustDomain: {TRUST_DOMAIN}
defaultAccess: allow
certificateTTL: {certificate_ttl}
""",
        "services.yaml": """\
apiVersion: meshgate/v1
kind: Service
name: orders
trafficPolicy:
  timeout: 10s
  retries:
    attempts: 2
    perTryTimeout: 4s
    budget: {percent: 20%, minPerSecond: 10}
  outlierDetection: {consecutive5xx: 5, baseEjectionTime: 30s, maxEjectionPercent: 50%}
---
apiVersion: meshgate/v1
kind: Service
name: catalog
trafficPolicy:
  timeout: 10s
  retries: {attempts: 2, perTryTimeout: 4s}
---
apiVersion: meshgate/v1
kind: Service
name: web
---
apiVersion: meshgate/v1
kind: Service
name: gateway
""",
        "edge.yaml": route("orders-api", "/api", "orders"),
    }


def route(
    name: str, prefix: str, backend: str, *, rate_limit: str | None = None, timeout: str = "10s"
) -> str:
    """A ``Route`` document: ``prefix`` -> ``backend``, the prefix rewritten to ``/orders``."""
    limit = f"rateLimit: {rate_limit}\n" if rate_limit else ""
    return f"""\
apiVersion: meshgate/v1
kind: Route
name: {name}
match: {{path: {{prefix: {prefix}}}}}
backends: [{{service: {backend}}}]
rewrite: {{prefix: /orders}}
timeout: {timeout}
{limit}"""


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` at once (a hidden temporary file, then a rename: the control plane polls the
    folder and skips hidden files, so it never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_policies(folder: Path, files: Mapping[str, str]) -> Path:
    """Create ``folder`` with ``files`` (name -> YAML); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_atomic(folder / name, text)
    return folder


def policy_version(folder: Path) -> str:
    """The content version the control plane computes for ``folder`` (the same loader, the same path)."""
    from shared.config.loader import load_policy_set

    result = load_policy_set([str(folder)])
    assert result.policy_set is not None, result.errors
    return result.policy_set.version


# ----- the stack -------------------------------------------------------------------------------------


@contextlib.contextmanager
def chaos_stack(tmp: Path, files: Mapping[str, str]) -> Iterator[tuple[MeshStack, Path]]:
    """A started control plane serving ``files`` (written to ``tmp/policies``); every process stopped on
    exit, and their logs dumped when the body raised (xfail included: the logs are the evidence)."""
    procs = Processes(tmp)
    try:
        stack = MeshStack(procs, tmp)
        policies = write_policies(tmp / "policies", files)
        stack.start_control_plane(policies)
        yield stack, policies
    except BaseException:
        dump_logs(procs)
        raise
    finally:
        procs.stop_all()


def sigkill(procs: Processes, name: str) -> None:
    """SIGKILL process ``name`` (no clean-up of any kind) and reap it."""
    proc = procs.procs.pop(name)
    proc.kill()
    proc.wait(10)


def sigterm(procs: Processes, name: str, timeout: float) -> tuple[int | None, float]:
    """SIGTERM process ``name`` and wait up to ``timeout`` seconds for it to exit; returns its exit code
    (None when it had to be SIGKILLed after ``timeout``: it hung) and the seconds it took."""
    proc = procs.procs.pop(name)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        code = None
    return code, time.monotonic() - started


def poll_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Like ``wait_until`` but returns False after ``timeout`` instead of raising (for scenarios that
    record what happened and assert later); exceptions from ``check`` count as False."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class RedisProcess:
    """A private ``redis-server`` (no persistence) on a fixed free port, that can be killed and started
    again on the same port."""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        """Start it and wait for PONG."""
        self.procs.start(
            "redis",
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        )
        wait_until(self.ping, what="redis-server answering PING")

    def kill(self) -> None:
        """SIGKILL: no shutdown, connections reset."""
        sigkill(self.procs, "redis")

    def dbsize(self) -> int:
        """Keys in database 0."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2) as client:
            return int(client.dbsize())


#: examples/echo_app.py, with ``delay=SECONDS`` in the query making it wait before it answers (requests
#: that are still in flight when something is killed or drained).
SLOW_ECHO_APP = """
import sys, time, urllib.parse
from http.server import ThreadingHTTPServer
sys.path.insert(0, "examples")
from echo_app import make_handler

class Slow(make_handler(sys.argv[1])):
    def _answer(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        time.sleep(float(query.get("delay", ["0"])[0]))
        super()._answer()

    do_GET = do_POST = do_HEAD = _answer

ThreadingHTTPServer.request_queue_size = 1024
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Slow)
server.daemon_threads = True
server.serve_forever()
"""


def start_slow_echo_app(procs: Processes, name: str) -> int:
    """Start :data:`SLOW_ECHO_APP` as ``app-NAME`` on a free port; returns the port."""
    port = free_port()
    procs.start(f"app-{name}", sys.executable, "-c", SLOW_ECHO_APP, name, str(port))
    wait_until(lambda: _listening(port), what=f"app-{name} listening")
    return port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ----- reading state ---------------------------------------------------------------------------------


def _get_json(url: str, headers: Mapping[str, str] | None = None) -> Any:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the control plane's certificate names a SPIFFE ID, not a host
    req = urllib.request.Request(url, headers=dict(headers or {}))
    with urllib.request.urlopen(req, timeout=5, context=ctx) as response:
        return json.load(response)


def admin_config(admin_url: str) -> dict[str, Any]:
    """A sidecar's or gateway's admin ``/config``."""
    data: dict[str, Any] = _get_json(f"{admin_url}/config")
    return data


def endpoint_count(admin_url: str, service: str) -> int:
    """How many endpoints of ``service`` a sidecar or gateway knows (sidecars list ids, gateways count)."""
    known = admin_config(admin_url)["endpoints"].get(service) or 0
    return known if isinstance(known, int) else len(known)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(admin_url: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels`` on ``admin_url``'s
    ``/metrics`` (None when there is none)."""
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found is None or found.group(1) != name:
            continue
        have = dict(_LABEL.findall(found.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(found.group(3))
    return None


class ControlPlaneAdmin:
    """The control plane's API with the admin token (``DATA_DIR/admin-token``)."""

    def __init__(self, stack: MeshStack) -> None:
        self.stack = stack

    def get(self, path: str) -> Any:
        token = (self.stack.data / "admin-token").read_text().strip()
        return _get_json(f"{self.stack.cp_url}{path}", {"authorization": f"Bearer {token}"})

    def instances(self, service: str) -> list[dict[str, Any]]:
        """``/v1/services/SERVICE``: every registered instance with its health."""
        data: list[dict[str, Any]] = self.get(f"/v1/services/{service}")
        return data

    def health(self, service: str) -> dict[str, str]:
        """instance id -> health."""
        return {str(i["id"]): str(i["health"]) for i in self.instances(service)}


def meshgate(*argv: str) -> str:
    """Run a ``meshgate`` command; its stdout (CalledProcessError when it fails)."""
    out = subprocess.run([MESHGATE, *argv], capture_output=True, text=True, check=True, timeout=60, cwd=REPO)
    return out.stdout


# ----- load ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a worker sends its GETs: a URL, optionally through an HTTP proxy (a sidecar's outbound)."""

    name: str
    url: str
    proxy: str | None = None
    workers: int | None = None  # default: the generator's


@dataclass(frozen=True)
class Outcome:
    """One request: when it started and ended (``time.monotonic``), the status (None: no HTTP answer),
    the transport error or ``x-meshgate-error``, the answering echo app's service name."""

    target: str
    started: float
    ended: float
    status: int | None
    error: str | None = None
    service: str | None = None
    retry_after: str | None = None


@dataclass
class LoadGenerator:
    """``workers`` threads per target, each with its own keep-alive client, sending GETs in a loop with
    ``pause`` seconds between requests until stopped, ``max_seconds`` passed or ``max_requests`` were
    sent in all. Every answer and error is recorded; nothing raises in the workers."""

    targets: Sequence[Target]
    workers: int = 1
    pause: float = 0.02
    max_seconds: float = 60.0
    max_requests: int = 20_000
    timeout: float = 20.0
    _outcomes: list[Outcome] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sent: int = 0

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every worker."""
        deadline = time.monotonic() + self.max_seconds
        for target in self.targets:
            for i in range(target.workers or self.workers):
                thread = threading.Thread(
                    target=self._work, args=(target, deadline), name=f"load-{target.name}-{i}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def stop(self) -> list[Outcome]:
        """Stop and join every worker (each finishes its request in flight); returns every outcome."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a load worker did not stop"
        return self.outcomes

    @property
    def outcomes(self) -> list[Outcome]:
        """What was recorded so far, in completion order."""
        with self._lock:
            return list(self._outcomes)

    def count(self, target: str | None = None) -> int:
        """Requests completed so far (for one target, or all)."""
        with self._lock:
            return sum(1 for o in self._outcomes if target is None or o.target == target)

    def wait_progress(self, requests: int = 20, timeout: float = 20.0, only: Sequence[str] = ()) -> None:
        """Wait until every target (or every one named in ``only``) has completed ``requests`` more
        requests (so that the load really runs across whatever happens next)."""
        names = list(only) or [t.name for t in self.targets]
        base = {name: self.count(name) for name in names}
        wait_until(
            lambda: all(self.count(name) >= base[name] + requests for name in names),
            timeout=timeout,
            what=f"{requests} more requests on {', '.join(names)}",
        )

    def _take(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _work(self, target: Target, deadline: float) -> None:
        n = 0
        with httpx.Client(proxy=target.proxy, timeout=self.timeout, trust_env=False) as client:
            while not self._stop.is_set() and time.monotonic() < deadline and self._take():
                n += 1
                started = time.monotonic()
                try:
                    sep = "&" if "?" in target.url else "?"
                    response = client.get(f"{target.url}{sep}n={n}")
                except Exception as exc:  # recorded: a request that got no HTTP answer is a failure
                    outcome = Outcome(
                        target.name, started, time.monotonic(), None, f"{type(exc).__name__}: {exc}"
                    )
                else:
                    service = None
                    if response.headers.get("content-type", "").startswith("application/json"):
                        with contextlib.suppress(ValueError, AttributeError):
                            service = response.json().get("service")
                    outcome = Outcome(
                        target.name,
                        started,
                        time.monotonic(),
                        response.status_code,
                        response.headers.get("x-meshgate-error"),
                        service,
                        response.headers.get("retry-after"),
                    )
                with self._lock:
                    self._outcomes.append(outcome)
                self._stop.wait(self.pause)


def burst(target: Target, requests: int = 40, timeout: float = 20.0) -> list[Outcome]:
    """``requests`` GETs to ``target`` all at once (one connection each), for what only concurrency
    shows (several pipelines to Redis in flight, several streams per mesh connection)."""

    async def one(client: httpx.AsyncClient, n: int) -> Outcome:
        started = time.monotonic()
        try:
            sep = "&" if "?" in target.url else "?"
            response = await client.get(f"{target.url}{sep}burst={n}")
        except Exception as exc:
            return Outcome(target.name, started, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
        return Outcome(
            target.name,
            started,
            time.monotonic(),
            response.status_code,
            response.headers.get("x-meshgate-error"),
            None,
            response.headers.get("retry-after"),
        )

    async def main() -> list[Outcome]:
        limits = httpx.Limits(max_connections=requests, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            proxy=target.proxy, timeout=timeout, trust_env=False, limits=limits
        ) as client:
            return list(await asyncio.gather(*(one(client, n) for n in range(requests))))

    return asyncio.run(main())


def failures(outcomes: Iterable[Outcome], ok: Sequence[int] = (200,)) -> list[Outcome]:
    """Outcomes whose status is not one of ``ok`` (no answer at all included)."""
    return [o for o in outcomes if o.status not in ok]


def summary(outcomes: Iterable[Outcome]) -> str:
    """Counts by (target, status, error), for assertion messages."""
    counts = Counter((o.target, o.status, o.error) for o in outcomes)
    return ", ".join(
        f"{t} {s} {e or ''}: {n}".replace("  ", " ") for (t, s, e), n in sorted(counts.items(), key=str)
    )


def assert_no_failures(outcomes: Sequence[Outcome], minimum: int = 1) -> None:
    """Every target answered 200 every time, and at least ``minimum`` requests were made per target."""
    per_target = Counter(o.target for o in outcomes)
    assert per_target and min(per_target.values()) >= minimum, f"too little load: {dict(per_target)}"
    bad = failures(outcomes)
    assert not bad, f"{len(bad)} of {len(outcomes)} requests failed: {summary(bad)}; first: {bad[:3]}"


def between(outcomes: Iterable[Outcome], start: float, end: float) -> list[Outcome]:
    """Outcomes of requests started in [start, end)."""
    return [o for o in outcomes if start <= o.started < end]
