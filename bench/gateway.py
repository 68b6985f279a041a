"""Edge gateway benchmark, one invocation, wrk (HTTP/1.1 keep-alive), every path ending at the same small
app (nginx returning 1 KiB), so that like is compared with like (an edge proxy plus an mTLS hop):

- reference: nginx (edge) -> HTTPS with a client certificate -> nghttpx (client certificate verified)
  -> app; one worker each;
- meshgate plain: gateway route (default server, 1 worker) -> mTLS HTTP/2 -> the app's sidecar
  inbound -> app; also under granian and uvicorn (the server comparison of docs/gateway.md);
- meshgate full: the same with API-key auth + Redis rate limit (never triggered) + 1% trace sampling;
- hand-rolled: the Starlette + httpx proxy most Python teams write (uvicorn, 1 worker), straight to the app;
- floor: bench/floor.py's pair (HTTP/1.1 in -> mTLS HTTP/2 -> HTTP/1.1 to the app), the plain path's
  shape built from the same libraries with no gateway or sidecar feature: what CPython and the libraries
  alone cost.

Last stdout line: {"plain_vs_reference": ..., "full_vs_reference": ..., "plain_vs_handrolled": ...}.
Everything on 127.0.0.1; every run bounded by wrk's duration.

    .venv/bin/python bench/gateway.py [--seconds 5] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_mesh", HERE / "mesh.py")
assert _spec is not None and _spec.loader is not None
bm: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bm)

TD = bm.TD
API_KEY = "bench-key-0123456789"

POLICIES = f"""\
apiVersion: meshgate/v1
kind: Mesh
trustDomain: {TD}
defaultAccess: deny
---
apiVersion: meshgate/v1
kind: Service
name: gateway
---
apiVersion: meshgate/v1
kind: Service
name: orders
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: orders
target: {{service: orders}}
rules:
  - action: allow
    from: {{services: [gateway]}}
---
apiVersion: meshgate/v1
kind: Route
name: plain
match: {{path: {{prefix: /plain}}}}
backends: [{{service: orders}}]
---
apiVersion: meshgate/v1
kind: Route
name: full
match: {{path: {{prefix: /full}}}}
backends: [{{service: orders}}]
auth: [keys]
rateLimit: generous
---
apiVersion: meshgate/v1
kind: AuthProvider
name: keys
type: apiKey
apiKey:
  keys: [{{name: bench, sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}}}]
---
apiVersion: meshgate/v1
kind: RateLimit
name: generous
key: [{{type: apiKey}}]
limits: [{{requests: 100000000, per: 1s}}]
failureMode: deny
"""

HANDROLLED = """\
import httpx
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = "http://127.0.0.1:{port}"
client = httpx.AsyncClient(base_url=UPSTREAM)

async def proxy(request):
    upstream = await client.request(
        request.method, request.url.path, headers=[(k, v) for k, v in request.headers.items() if k != "host"],
        content=await request.body(),
    )
    drop = ("content-length", "connection")
    return Response(upstream.content, status_code=upstream.status_code,
                    headers={{k: v for k, v in upstream.headers.items() if k not in drop}})

app = Starlette(routes=[Route("/{{path:path}}", proxy, methods=["GET", "POST"])])
"""


def start_redis(stack: Any) -> str:
    port = bm.free_port()
    stack.start(
        "redis",
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    )
    bm.wait(lambda: _redis_ping(port), what="redis")
    return f"redis://127.0.0.1:{port}/0"


def _redis_ping(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def start_mesh(stack: Any, app_port: int, redis_url: str) -> tuple[dict[str, tuple[int, int]], int]:
    """Control plane, the app's sidecar, the gateways (plain, full, plain on uvicorn and on granian):
    name -> (port, pid), and the sidecar's pid."""
    policies = stack.tmp / "policies"
    policies.mkdir()
    (policies / "bench.yaml").write_text(POLICIES)
    cp, data = bm.start_control_plane(stack, policies)
    sidecar, _admin = bm.start_sidecar(stack, cp, data, "orders", app_port)
    gateways = {}
    for name, extra in (
        ("plain", ["--trace-sample", "0"]),
        ("uvicorn", ["--trace-sample", "0", "--server", "uvicorn"]),
        ("granian", ["--trace-sample", "0", "--server", "granian"]),
        (
            "full",
            ["--redis", redis_url, "--trace-sample", "0.01", "--trace-file", str(stack.tmp / "spans.jsonl")],
        ),
    ):
        proc, port = bm.start_gateway(stack, cp, data, *extra, name=f"gateway-{name}", learn=("orders",))
        gateways[name] = (port, proc.pid)
    return gateways, sidecar.pid


def start_reference(stack: Any, app_port: int) -> tuple[int, list[int]]:
    """nginx edge -> HTTPS + client certificate -> nghttpx (verifies it) -> app."""
    files = bm.reference_certificates(stack, "ref", "edge", "back")
    back, edge = bm.free_port(), bm.free_port()
    b = bm.start_nghttpx_back(stack, back, app_port, files["back"])
    conf = stack.tmp / "edge.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {stack.tmp}/edge.pid; error_log {stack.tmp}/edge.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream back {{ server 127.0.0.1:{back}; keepalive 64; }}
  server {{ listen 127.0.0.1:{edge};
    location / {{ proxy_pass https://back; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate {files["edge"][0]}; proxy_ssl_certificate_key {files["edge"][1]};
      proxy_ssl_trusted_certificate {stack.tmp / "root.pem"}; proxy_ssl_verify off;
      proxy_ssl_session_reuse on; proxy_ssl_protocols TLSv1.3; }} }} }}
"""
    )
    e = stack.start("nginx-edge", "nginx", "-c", str(conf), "-e", str(stack.tmp / "edge.err"))
    bm.wait(lambda: bm.ok(f"http://127.0.0.1:{edge}/"), what="reference chain")
    return edge, [e.pid, b.pid]


def start_handrolled(stack: Any, app_port: int) -> tuple[int, int]:
    folder = stack.tmp / "handrolled"
    folder.mkdir()
    (folder / "handrolled_proxy.py").write_text(HANDROLLED.format(port=app_port))
    port = bm.free_port()
    proc = stack.start(
        "handrolled",
        str(Path(sys.executable).parent / "uvicorn"),
        "--app-dir",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "handrolled_proxy:app",
    )
    bm.wait(lambda: bm.ok(f"http://127.0.0.1:{port}/"), what="hand-rolled proxy")
    return port, proc.pid


def wrk(url: str, seconds: int, connections: int, *headers: str) -> tuple[float, int, int]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) if "Requests/sec" in out else 0.0  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1)) if "requests in" in out else 0  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return rps, total, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per target (median kept)")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("wrk", "nghttpx", "nginx", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install nginx-light nghttp2-proxy wrk redis-server")
    tmp = Path(tempfile.mkdtemp(prefix="mg-gwbench-"))
    stack = bm.Stack(tmp)
    results: dict[str, dict[str, float]] = {}
    try:
        app = bm.free_port()
        bm.start_nginx(stack, app)
        bm.wait(lambda: bm.ok(f"http://127.0.0.1:{app}/"), what="app")
        redis_url = start_redis(stack)
        gateways, sidecar_pid = start_mesh(stack, app, redis_url)
        (plain_port, plain_pid), (full_port, full_pid) = gateways["plain"], gateways["full"]
        uv_port, uv_pid = gateways["uvicorn"]
        gr_port, gr_pid = gateways["granian"]
        ref_port, ref_pids = start_reference(stack, app)
        hand_port, hand_pid = start_handrolled(stack, app)
        floor_port, floor_pids = bm.start_floor_pair(stack, app)
        key = f"x-api-key: {API_KEY}"
        targets = {
            "direct": (f"http://127.0.0.1:{app}/x", (), []),
            "reference": (f"http://127.0.0.1:{ref_port}/x", (), ref_pids),
            "plain": (f"http://127.0.0.1:{plain_port}/plain/x", (), [plain_pid, sidecar_pid]),
            "full": (f"http://127.0.0.1:{full_port}/full/x", (key,), [full_pid, sidecar_pid]),
            "plain-uvicorn": (f"http://127.0.0.1:{uv_port}/plain/x", (), [uv_pid, sidecar_pid]),
            "plain-granian": (f"http://127.0.0.1:{gr_port}/plain/x", (), [gr_pid, sidecar_pid]),
            "handrolled": (f"http://127.0.0.1:{hand_port}/x", (), [hand_pid]),
            "floor": (f"http://127.0.0.1:{floor_port}/x", (), floor_pids[::-1]),
        }
        for url, headers, _ in targets.values():
            wrk(url, 2, 8, *headers)  # warm-up: connections, sessions, caches
        runs: dict[str, list[tuple[float, int, int, list[float]]]] = {name: [] for name in targets}
        for _round in range(args.rounds):  # interleaved rounds: a noisy neighbour hits every target alike
            for name, (url, headers, pids) in targets.items():
                before = [bm.process_cpu(p) for p in pids]
                rps, total, failed = wrk(url, args.seconds, args.connections, *headers)
                after = [bm.process_cpu(p) for p in pids]
                cpu = [(a - b) / max(total, 1) * 1000 for a, b in zip(after, before, strict=True)]
                runs[name].append((rps, total, failed, cpu))
        for name, samples in runs.items():
            rates = sorted(r for r, _, _, _ in samples)
            median = rates[len(rates) // 2]
            cpus = [round(statistics.median(c[i] for *_, c in samples), 3) for i in range(len(samples[0][3]))]
            failed = sum(f for _, _, f, _ in samples)
            results[name] = {"rps": median, "failed": failed}
            print(
                f"{name:15s} median {median:8.0f} req/s  (runs {', '.join(f'{r:.0f}' for r in rates)}; "
                f"{failed} failed; CPU s/1000 per process {cpus})"
            )
    finally:
        stack.stop()
    ref = results["reference"]["rps"]
    figures = {
        "plain_vs_reference": round(results["plain"]["rps"] / ref, 3) if ref else None,
        "full_vs_reference": round(results["full"]["rps"] / ref, 3) if ref else None,
        "plain_vs_handrolled": round(results["plain"]["rps"] / results["handrolled"]["rps"], 2)
        if results["handrolled"]["rps"]
        else None,
        "floor_vs_reference": round(results["floor"]["rps"] / ref, 3) if ref else None,
        **{f"{k.replace('-', '_')}_rps": round(v["rps"]) for k, v in results.items()},
        "failed": int(sum(v["failed"] for k, v in results.items() if k != "direct")),
    }
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, {args.connections} connections, "
        f"{args.rounds} rounds of {args.seconds}s per target, 1 KiB responses, wrk HTTP/1.1 keep-alive"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
