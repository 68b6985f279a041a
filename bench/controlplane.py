"""Control-plane benchmark: registrations per second, blocking-query fan-out to 1,000 watchers, RSS.

What it does, all on 127.0.0.1 and bounded in time (well under 3 minutes on 2 cores):

1. starts a real ``meshgate control-plane`` (subprocess; SQLite store unless ``--store``) on a private
   copy of ``policies/``;
2. registers ``--instances`` instances (admin token, ``--concurrency`` keep-alive HTTPS connections),
   spread over ``--services`` services, ``ttl: 1h`` so that none turns critical while the benchmark
   runs (real sidecars would heartbeat instead);
3. opens ``--watchers`` concurrent blocking queries (``GET /v1/snapshot?index=N&wait=60s``, one TLS
   connection each, verified against the mesh's bundle), and waits until the control plane reports
   them all parked;
4. registry change: registers one more instance and measures, per watcher, the time from just before
   the request to the watcher holding the whole new snapshot (no polling involved);
5. policy edit: appends a harmless ``Service`` document to the policy copy and measures, per watcher,
   the time from the file write to holding a snapshot with the new ``policyVersion``. The control
   plane polls the folder every 0.25 s, so this includes 0-0.25 s of detection delay, reported apart
   (from ``/v1/status`` ``loadedAt``);
6. control-plane RSS from ``/proc/PID/status`` (``VmHWM`` peak and ``VmRSS`` after the fan-out);
7. reference: the same watcher fan-out against a minimal Starlette+uvicorn long-poll server over the
   same TLS, returning a fixed body of the same size as the control plane's snapshot, so that the
   ratio shows the control plane's own overhead rather than the cost of moving the bytes.

The watchers read the whole body and take its index from the ``x-meshgate-index`` header and the
``policyVersion`` from the first bytes of the body (parsing 1,000 copies of a multi-megabyte JSON
document in the one client process would measure the client, not the control plane).

Usage: ``.venv/bin/python bench/controlplane.py [--instances 10000] [--watchers 1000]
[--store redis://HOST:PORT/DB | --store redis] [--profile]``. ``--store redis`` starts a private
``redis-server``; a ``redis://`` URL is used as given and its ``meshgate:*`` keys are DELETED first.
The last stdout line is one JSON object:
``{"propagation_p99_s": ..., "rss_mb": ..., "registrations_per_s": ..., "watchers": ..., "instances": ...}``
(``propagation_p99_s`` is the policy-edit figure; ``registry_propagation_p99_s`` the registry one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# httpcore tries ``import sniffio`` on every lock it creates; without sniffio installed each failed import
# searches sys.path (~0.3 ms, a third of this client's CPU at 1,000 watchers). Fail it at once instead:
# httpcore then assumes asyncio, which is what runs here. (Only this measuring client is affected.)
sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MESHGATE = str(Path(sys.executable).parent / "meshgate")
BUDGET_S = 170.0
NEW_SERVICE = "\n---\napiVersion: meshgate/v1\nkind: Service\nname: bench-added\nport: 9999\n"
VERSION_RE = re.compile(rb'"policyVersion":"([^"]*)"')


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min": min(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log(f"raised the open-file limit from {soft} to {target}")


def verify_context(bundle_pem: str) -> ssl.SSLContext:
    """Verify the server's chain against the mesh bundle; no host names (SPIFFE IDs in the SAN)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=bundle_pem)
    return ctx


# ----- processes ---------------------------------------------------------------------------------------


class Proc:
    """A child process whose stderr/stdout go to a log file."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise SystemExit(f"{self.popen.args[0]} exited with {self.popen.returncode}:\n{self.text()}")
            found = regex.search(self.text())
            if found:
                return found
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for /{pattern}/ in {self.log_path}:\n{self.text()[-2000:]}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)


def start_redis(workdir: Path) -> tuple[Proc, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("--store redis needs redis-server on PATH (or give --store redis://HOST:PORT/DB)")
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = Proc(argv, workdir / "redis.log")
    proc.wait_for_log(r"Ready to accept connections", 10)
    return proc, f"redis://127.0.0.1:{port}/0"


def clear_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        for key in client.scan_iter(match="meshgate:*"):
            client.delete(key)
    finally:
        client.close()


# ----- the watcher fan-out (shared by the control plane and the reference) -----------------------------


@dataclass
class Arrival:
    at: float
    index: int
    version: bytes | None


@dataclass
class Watcher:
    index: int
    arrivals: list[Arrival] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def failed(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


@dataclass
class Target:
    """How to watch a server and how many watchers it reports parked."""

    base_url: str
    path: Callable[[int], str]
    parked: Callable[[httpx.AsyncClient], Awaitable[int]]
    headers: dict[str, str]


async def watch_loop(http: Any, target: Target, w: Watcher, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            r = await http.get(target.path(w.index))
        except httpx.HTTPError as exc:
            w.failed(type(exc).__name__)
            await asyncio.sleep(0.2)
            continue
        at = time.monotonic()
        if r.status_code != 200:
            w.failed(f"HTTP {r.status_code}")
            await asyncio.sleep(0.2)
            continue
        found = VERSION_RE.search(r.content[:1024])
        index = int(r.headers["x-meshgate-index"])
        w.arrivals.append(Arrival(at, index, found.group(1) if found else None))
        w.index = index


def one_connection_client(
    base_url: str, verify: ssl.SSLContext, headers: dict[str, str]
) -> httpx.AsyncClient:
    """An AsyncClient with a pool of one connection. httpcore's pool scans all its connections for every
    request it assigns, so one client holding 1,000 connections costs O(n^2) client CPU per fan-out."""
    return httpx.AsyncClient(
        base_url=base_url,
        verify=verify,
        headers=headers,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=httpx.Timeout(120.0, connect=60.0, pool=60.0),
    )


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes


class RawClient:
    """The leanest keep-alive HTTP/1.1 client over one TLS connection (GET only, Content-Length bodies).

    With 1,000 watchers in one process, httpx's own per-request cost (~0.5 ms) is what a fan-out
    measures; real watchers are one per sidecar process. ``--client httpx`` uses httpx instead.
    """

    def __init__(self, base_url: str, verify: ssl.SSLContext, headers: dict[str, str]) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.verify = verify
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> RawResponse:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.verify, server_hostname="control-plane"
            )
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nhost: {self.host}\r\n{self.extra}\r\n".encode())
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.writer.close()
            raise httpx.ReadError(str(exc)) from exc
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(status, headers, body)

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


class FanOut:
    """``n`` watchers, each with its own client and TLS connection, looping on blocking queries."""

    def __init__(
        self, target: Target, n: int, start_index: int, verify: ssl.SSLContext, client: str = "raw"
    ) -> None:
        self.target = target
        self.verify = verify
        self.watchers = [Watcher(start_index) for _ in range(n)]
        self.stop = asyncio.Event()
        make: Any = RawClient if client == "raw" else one_connection_client
        self.clients = [make(target.base_url, verify, target.headers) for _ in range(n)]
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, timeout: float) -> float:
        started = time.monotonic()
        self.tasks = [
            asyncio.create_task(watch_loop(http, self.target, w, self.stop))
            for http, w in zip(self.clients, self.watchers, strict=True)
        ]
        await self.wait_parked(timeout)
        return time.monotonic() - started

    async def wait_parked(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(
            base_url=self.target.base_url, verify=self.verify, headers=self.target.headers, timeout=10
        ) as probe:
            while True:
                parked = await self.target.parked(probe)
                if parked >= len(self.watchers):
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"only {parked} of {len(self.watchers)} watchers parked after {timeout}s"
                    )
                await asyncio.sleep(0.1)

    async def measure(
        self, trigger: Callable[[], Awaitable[float]], done: Callable[[Arrival], bool], timeout: float
    ) -> list[float]:
        """Run ``trigger`` (returns its start time); per watcher, seconds until an arrival meets ``done``."""
        marks = [len(w.arrivals) for w in self.watchers]
        t0 = await trigger()
        deadline = time.monotonic() + timeout
        while True:
            latencies = []
            for w, mark in zip(self.watchers, marks, strict=True):
                hit = next((a for a in w.arrivals[mark:] if a.at >= t0 and done(a)), None)
                if hit is not None:
                    latencies.append(hit.at - t0)
            if len(latencies) == len(self.watchers):
                return latencies
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"only {len(latencies)} of {len(self.watchers)} watchers got the change in {timeout}s"
                )
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(http.aclose() for http in self.clients))

    @property
    def errors(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for w in self.watchers:
            for what, n in w.errors.items():
                total[what] = total.get(what, 0) + n
        return total


class RssSampler:
    """Samples a process's VmRSS every 0.2 s; ``peak`` is the highest seen (VmHWM covers the gaps)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, rss_mb(self.pid)[0])
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# ----- the control plane run ---------------------------------------------------------------------------


async def register_all(
    url: str, verify: ssl.SSLContext, headers: dict[str, str], instances: int, services: int, concurrency: int
) -> tuple[float, int]:
    """Register ``instances`` instances with ``concurrency`` workers (one keep-alive connection each);
    returns (seconds, failures)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(instances):
        queue.put_nowait(i)
    failures = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal failures
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {
                "id": f"svc-{i % services:03d}-{i}",
                "service": f"svc-{i % services:03d}",
                "address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                "port": 8080,
                "ttl": "1h",
                "metadata": {"zone": f"z{i % 3}", "version": "v1"},
            }
            r = await http.post("/v1/register", json=body)
            if r.status_code != 201:
                failures += 1

    clients = [one_connection_client(url, verify, headers) for _ in range(concurrency)]
    try:
        started = time.monotonic()
        await asyncio.gather(*(worker(http) for http in clients))
        return time.monotonic() - started, failures
    finally:
        await asyncio.gather(*(http.aclose() for http in clients))


async def run_control_plane(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    policies = work / "policies"
    shutil.copytree(REPO / "policies", policies)
    data = work / "data"
    argv = [MESHGATE, "control-plane", "--policies", str(policies), "--data-dir", str(data)]
    argv += ["--listen", "127.0.0.1:0"]
    if args.profile:  # the console script itself, run under cProfile (written on the SIGTERM exit)
        argv = [sys.executable, "-m", "cProfile", "-o", str(work / "cp.prof"), *argv]
    if args.store_url:
        argv += ["--store", args.store_url]
    cp = Proc(argv, work / "control-plane.log")
    try:
        port = int(cp.wait_for_log(r"listening on https://127\.0\.0\.1:(\d+)", 30).group(1))
        url = f"https://127.0.0.1:{port}"
        admin = (data / "admin-token").read_text().strip()
        headers = {"authorization": f"Bearer {admin}"}
        # Trust on first use over loopback, from our own child process; everything after is verified.
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        async with httpx.AsyncClient(verify=insecure, timeout=10) as http:
            jwks = (await http.get(f"{url}/v1/bundle")).json()
        from shared.identity.bundle import TrustBundle

        bundle_pem = TrustBundle.from_jwks(jwks).to_pem()
        verify = verify_context(bundle_pem)
        pid = cp.popen.pid
        sampler = RssSampler(pid)
        sampler.start()
        result: dict[str, Any] = {"pid": pid, "url": url}
        result["rss_start_mb"] = rss_mb(pid)[0]

        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(
            base_url=url, verify=verify, headers=headers, limits=limits, timeout=30
        ) as admin_http:
            log(f"registering {args.instances} instances ({args.concurrency} connections)...")
            seconds, failures = await register_all(
                url, verify, headers, args.instances, args.services, args.concurrency
            )
            if failures:
                raise SystemExit(f"{failures} registrations failed")
            result["registrations_per_s"] = args.instances / seconds
            result["registration_seconds"] = seconds
            result["rss_registered_mb"] = rss_mb(pid)[0]
            log(f"  {result['registrations_per_s']:.0f}/s; RSS {result['rss_registered_mb']:.0f} MB")

            first = await admin_http.get("/v1/snapshot")
            snapshot = first.content
            index0 = int(first.headers["x-meshgate-index"])
            version0 = json.loads(snapshot)["policyVersion"].encode()
            result["snapshot_bytes"] = len(snapshot)
            result["endpoints"] = sum(len(v) for v in json.loads(snapshot)["endpoints"].values())
            (work / "snapshot.json").write_bytes(snapshot)

            async def parked(probe: httpx.AsyncClient) -> int:
                return int((await probe.get("/v1/status")).json()["registry"]["watchers"])

            query = "" if args.full else "&delta=1"  # deltas are what RegistryClient asks for
            target = Target(url, lambda i: f"/v1/snapshot?index={i}&wait=60s{query}", parked, headers)
            fan = FanOut(target, args.watchers, index0, verify, args.client)
            try:
                log(f"opening {args.watchers} blocking watchers...")
                result["watchers_open_seconds"] = await fan.open(90)
                result["rss_watchers_mb"] = rss_mb(pid)[0]
                log(
                    f"  parked in {result['watchers_open_seconds']:.1f}s; "
                    f"RSS {result['rss_watchers_mb']:.0f} MB"
                )

                async def register_one() -> float:
                    t0 = time.monotonic()
                    body = {
                        "id": "bench-extra",
                        "service": "svc-000",
                        "address": "10.255.255.1",
                        "port": 8080,
                    }
                    r = await admin_http.post("/v1/register", json={**body, "ttl": "1h"})
                    assert r.status_code == 201, r.text
                    return t0

                log("registry change (one registration) -> every watcher...")
                registry = await fan.measure(register_one, lambda a: a.index > index0, 90)
                result["registry"] = summary(registry)
                log(f"  {fmt(result['registry'])}")
                if not args.full:  # what each watcher received for that change; the reference sends it too
                    d = await admin_http.get(f"/v1/snapshot?index={index0}&delta=1")
                    (work / "snapshot.json").write_bytes(d.content)
                    result["delta_bytes"] = len(d.content)
                    result["delta_bytes_on_wire"] = d.num_bytes_downloaded
                    log(f"  delta: {len(d.content)} bytes, {d.num_bytes_downloaded} on the wire (gzip)")
                await fan.wait_parked(60)

                write_wall: list[float] = []

                async def edit_policy() -> float:
                    t0 = time.monotonic()
                    write_wall.append(time.time())
                    with open(policies / "services.yaml", "a", encoding="utf-8") as fh:
                        fh.write(NEW_SERVICE)
                    return t0

                log("policy edit (append a Service document) -> every watcher...")
                policy = await fan.measure(
                    edit_policy, lambda a: a.version is not None and a.version != version0, 90
                )
                result["policy"] = summary(policy)
                status = (await admin_http.get("/v1/status")).json()["policy"]
                result["policy_detection_s"] = status["loadedAt"] - write_wall[0]
                fanout_only = [x - result["policy_detection_s"] for x in policy]
                result["policy_fanout"] = summary(fanout_only)
                log(
                    f"  {fmt(result['policy'])}; "
                    f"detected by the folder poll after {result['policy_detection_s']:.2f}s"
                )
                await fan.wait_parked(60)
                result["rss_after_mb"], result["rss_hwm_mb"] = rss_mb(pid)
                result["watch_errors"] = fan.errors
            finally:
                await fan.close()
        await sampler.stop()
        result["rss_sampled_peak_mb"] = sampler.peak
    finally:
        result_code = cp.stop()
        if result_code != 0:
            log(f"control plane exited with {result_code}; log in {cp.log_path}")
    if args.profile:
        result["profile"] = profile_text(work / "cp.prof")
    return result


def fmt(s: dict[str, float]) -> str:
    return f"p50 {s['p50'] * 1000:.0f} ms, p99 {s['p99'] * 1000:.0f} ms, max {s['max'] * 1000:.0f} ms"


def profile_text(path: Path) -> str:
    import io
    import pstats

    if not path.exists():
        return "(no profile written)"
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


# ----- the reference: a bare Starlette long-poll endpoint with a fixed body -----------------------------


def reference_server(port: int, body_file: Path, cert: Path, key: Path) -> None:
    """``GET /wait?index=N&wait=60s``: at once if N is behind, else when ``POST /bump`` is called."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    body = body_file.read_bytes()
    state: dict[str, Any] = {"index": 1, "event": None, "waiting": 0}

    async def wait(request: Request) -> Response:
        if state["event"] is None:
            state["event"] = asyncio.Event()
        if int(request.query_params.get("index", "0")) >= state["index"]:
            event = state["event"]
            state["waiting"] += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), 60)
            finally:
                state["waiting"] -= 1
        return Response(
            body, media_type="application/json", headers={"x-meshgate-index": str(state["index"])}
        )

    async def bump(request: Request) -> Response:
        state["index"] += 1
        event, state["event"] = state["event"], asyncio.Event()
        if event is not None:
            event.set()
        return JSONResponse({"index": state["index"]})

    async def count(request: Request) -> Response:
        return JSONResponse({"watchers": state["waiting"]})

    app = Starlette(
        routes=[
            Route("/wait", wait),
            Route("/bump", bump, methods=["POST"]),
            Route("/count", count),
        ]
    )
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=2048,
        timeout_keep_alive=75,  # as the control plane's server: a busy client must not find it closed
    )
    print(f"reference listening on {port}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()


async def run_reference(
    args: argparse.Namespace, work: Path, bundle_pem: str, ca_dir: Path
) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    from shared.identity.ca import CertificateAuthority, chain_pem
    from shared.identity.spiffeid import workload_id

    ca = CertificateAuthority.load(ca_dir)
    chain, key = ca.issue(workload_id(ca.trust_domain, "reference"))
    cert_file, key_file = work / "ref.pem", work / "ref.key"
    cert_file.write_bytes(chain_pem(chain))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    port = free_port()
    argv = [
        sys.executable,
        __file__,
        "--reference-server",
        str(port),
        "--body-file",
        str(work / "snapshot.json"),
    ]
    argv += ["--cert", str(cert_file), "--key", str(key_file)]
    ref = Proc(argv, work / "reference.log")
    result: dict[str, Any] = {}
    try:
        ref.wait_for_log(r"Uvicorn running|reference listening", 20)
        url = f"https://127.0.0.1:{port}"
        verify = verify_context(bundle_pem)
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(base_url=url, verify=verify, timeout=5) as http:
            while True:
                try:
                    await http.get("/count")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"reference server not answering:\n{ref.text()}") from None
                    await asyncio.sleep(0.1)

            async def parked(probe: httpx.AsyncClient) -> int:
                return int((await probe.get("/count")).json()["watchers"])

            target = Target(url, lambda i: f"/wait?index={i}&wait=60s", parked, {})
            fan = FanOut(target, args.watchers, 1, verify, args.client)
            try:
                log(f"reference: opening {args.watchers} watchers...")
                result["watchers_open_seconds"] = await fan.open(90)

                async def bump() -> float:
                    t0 = time.monotonic()
                    await http.post("/bump")
                    return t0

                log("reference: change -> every watcher...")
                result["change"] = summary(await fan.measure(bump, lambda a: a.index > 1, 90))
                log(f"  {fmt(result['change'])}")
                result["rss_mb"] = rss_mb(ref.popen.pid)[1]
                result["watch_errors"] = fan.errors
            finally:
                await fan.close()
    finally:
        ref.stop()
    return result


# ----- main --------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit(args.watchers * 2 + 512)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mg-bench-cp-") as tmp:
        work = Path(tmp)
        redis_proc: Proc | None = None
        args.store_url = None
        if args.store == "redis":
            redis_proc, args.store_url = start_redis(work)
        elif args.store:
            args.store_url = args.store
            clear_redis(args.store_url)
        try:
            cp = await run_control_plane(args, work)
            bundle_pem = ""
            from shared.identity.ca import CertificateAuthority

            bundle_pem = CertificateAuthority.load(work / "data" / "ca").bundle().to_pem()
            ref = (
                None
                if args.no_reference
                else await run_reference(args, work, bundle_pem, work / "data" / "ca")
            )
        finally:
            if redis_proc is not None:
                redis_proc.stop()
    elapsed = time.monotonic() - started

    rss = max(cp["rss_hwm_mb"], cp["rss_sampled_peak_mb"])
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"store {'redis' if args.store else 'sqlite'}, "
        f"{args.instances} instances over {args.services} services, {args.watchers} watchers, "
        f"snapshot {cp['snapshot_bytes'] / 1e6:.2f} MB ({cp['endpoints']} endpoints), total {elapsed:.0f} s"
    )
    print(f"registrations: {cp['registrations_per_s']:.0f}/s ({args.concurrency} connections)")
    print(f"watchers opened and parked in {cp['watchers_open_seconds']:.1f} s")
    print(f"registry change -> all watchers: {fmt(cp['registry'])}")
    print(
        f"policy edit -> all watchers: {fmt(cp['policy'])} "
        f"(of which {cp['policy_detection_s'] * 1000:.0f} ms until the folder poll saw it; "
        f"fan-out alone {fmt(cp['policy_fanout'])})"
    )
    print(
        f"control-plane RSS: start {cp['rss_start_mb']:.0f} MB, {args.instances} instances "
        f"{cp['rss_registered_mb']:.0f} MB, + {args.watchers} watchers {cp['rss_watchers_mb']:.0f} MB, "
        f"after the fan-outs {cp['rss_after_mb']:.0f} MB, peak {rss:.0f} MB"
    )
    print(
        f"watch errors: control plane {cp['watch_errors']}"
        + (f", reference {ref['watch_errors']}" if ref else "")
    )
    out: dict[str, Any] = {
        "propagation_p99_s": round(cp["policy"]["p99"], 3),
        "rss_mb": round(rss, 1),
        "registrations_per_s": round(cp["registrations_per_s"], 1),
        "watchers": args.watchers,
        "instances": args.instances,
        "propagation_p50_s": round(cp["policy"]["p50"], 3),
        "propagation_max_s": round(cp["policy"]["max"], 3),
        "policy_detection_s": round(cp["policy_detection_s"], 3),
        "registry_propagation_p50_s": round(cp["registry"]["p50"], 3),
        "registry_propagation_p99_s": round(cp["registry"]["p99"], 3),
        "registry_propagation_max_s": round(cp["registry"]["max"], 3),
        "rss_steady_mb": round(cp["rss_after_mb"], 1),
        "snapshot_bytes": cp["snapshot_bytes"],
        "store": "redis" if args.store else "sqlite",
    }
    if ref is not None:
        print(
            f"reference (bare Starlette long-poll, same TLS, the same "
            f"{cp.get('delta_bytes', cp['snapshot_bytes'])} byte body the watchers got): "
            f"{fmt(ref['change'])}; RSS peak {ref['rss_mb']:.0f} MB"
        )
        ratio = cp["registry"]["p99"] / ref["change"]["p99"]
        print(f"control plane / reference, p99 of a change reaching every watcher: {ratio:.2f}x")
        out["reference_p99_s"] = round(ref["change"]["p99"], 3)
        out["reference_p50_s"] = round(ref["change"]["p50"], 3)
        out["registry_vs_reference_p99_ratio"] = round(ratio, 2)
    if args.profile:
        print("control-plane profile (cProfile, whole run, by own time):")
        print(cp["profile"])
    targets = [
        ("propagation p99 <= 1 s", cp["policy"]["p99"] <= 1.0),
        ("RSS <= 300 MB", rss <= 300.0),
    ]
    for name, ok in targets:
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    print(json.dumps(out))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--watchers", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=32, help="connections used to register")
    parser.add_argument(
        "--store", help="redis (a private redis-server) or redis://HOST:PORT/DB; default SQLite"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the reference server run")
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="watcher client (default: raw HTTP/1.1)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="watchers ask for full snapshots instead of deltas (as before deltas)",
    )
    parser.add_argument("--profile", action="store_true", help="run the control plane under cProfile")
    parser.add_argument("--reference-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--body-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cert", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_server:
        reference_server(args.reference_server, args.body_file, args.cert, args.key)
        return 0

    async def bounded() -> int:
        return await asyncio.wait_for(main_async(args), BUDGET_S)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        log(f"benchmark exceeded its {BUDGET_S:.0f} s budget")
        return 1


if __name__ == "__main__":
    sys.exit(main())
