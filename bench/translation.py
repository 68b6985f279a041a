"""Protocol translation benchmark, one invocation (h2load as the client everywhere):

- gRPC: unary calls per second through gateway (h2c) -> mTLS HTTP/2 -> the service's sidecar -> a
  grpcio server (h2c), against the same grpcio server called directly (target ratio >= 0.2);
- JSON transcoding: not built yet (issue 7), reported as null.

Last stdout line: {"grpc_vs_direct": ..., "transcoded_vs_plain": ...}. Everything on 127.0.0.1.

    .venv/bin/python bench/translation.py [--seconds 5] [--rounds 3] [--clients 8] [--streams 8]
"""

from __future__ import annotations

import argparse
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
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_mesh", HERE / "mesh.py")
assert _spec is not None and _spec.loader is not None
bm: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bm)

TD = "bench.meshgate.local"
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
name: echo
protocol: grpc
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: echo
target: {{service: echo}}
rules:
  - action: allow
    from: {{services: [gateway]}}
---
apiVersion: meshgate/v1
kind: Route
name: echo
match: {{path: {{prefix: /echo.Echo}}}}
backends: [{{service: echo}}]
translate: grpc
"""

GRPC_SERVER = """
import sys, time
from concurrent import futures
import grpc

def say(request, context):
    return request

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


def h2load(url: str, data: Path, seconds: int, clients: int, streams: int) -> tuple[float, int, int]:
    argv = [
        "h2load",
        "-D",
        str(seconds),
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-t",
        "1",
        "-d",
        str(data),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", out).group(1)) if "req/s" in out else 0.0  # type: ignore[union-attr]
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    ok = int(done.group(2)) if done else 0
    failed = int(done.group(3)) if done else 0
    return rps, ok, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams per connection")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: apt-get install nghttp2-client")
    tmp = Path(tempfile.mkdtemp(prefix="mg-trbench-"))
    stack = bm.Stack(tmp)
    message = b"x" * 100
    data = tmp / "call.bin"
    data.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    results: dict[str, float] = {}
    try:
        app = bm.free_port()
        stack.start("grpc-app", sys.executable, "-c", GRPC_SERVER, str(app))
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(POLICIES)
        cp_port = bm.free_port()
        cp = f"https://127.0.0.1:{cp_port}"
        stack.start(
            "cp",
            bm.MESHGATE,
            "control-plane",
            "--policies",
            str(policies),
            "--data-dir",
            str(tmp / "cp"),
            "--listen",
            f"127.0.0.1:{cp_port}",
            "--log-level",
            "warning",
        )
        bm.wait(lambda: bm.ok(f"{cp}/readyz"), what="control plane")

        def token(service: str) -> str:
            out = subprocess.run(
                [bm.MESHGATE, "token", "create", "--data-dir", str(tmp / "cp"), "--service", service],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            path = tmp / f"{service}.token"
            path.write_text(out)
            return str(path)

        admin = bm.free_port()
        sidecar = stack.start(
            "sidecar-echo",
            bm.MESHGATE,
            "sidecar",
            "--service",
            "echo",
            "--app",
            f"http://127.0.0.1:{app}",
            "--control-plane",
            cp,
            "--token",
            token("echo"),
            "--cache-dir",
            str(tmp / "cache-echo"),
            "--inbound",
            f"127.0.0.1:{bm.free_port()}",
            "--outbound",
            f"127.0.0.1:{bm.free_port()}",
            "--admin",
            f"127.0.0.1:{admin}",
            "--log-level",
            "warning",
        )
        bm.wait(lambda: bm.ok(f"http://127.0.0.1:{admin}/readyz"), what="echo sidecar")
        gw_port, gw_admin = bm.free_port(), bm.free_port()
        gateway = stack.start(
            "gateway",
            bm.MESHGATE,
            "gateway",
            "--control-plane",
            cp,
            "--token",
            token("gateway"),
            "--cache-dir",
            str(tmp / "cache-gw"),
            "--listen",
            f"127.0.0.1:{gw_port}",
            "--admin",
            f"127.0.0.1:{gw_admin}",
            "--log-level",
            "warning",
            "--trace-sample",
            "0",
        )
        bm.wait(lambda: bm.ok(f"http://127.0.0.1:{gw_admin}/readyz"), what="gateway")

        def knows() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{gw_admin}/config", timeout=2) as r:
                return bool(json.load(r)["endpoints"].get("echo"))

        bm.wait(knows, what="gateway to learn echo")
        targets = {
            "direct": (f"http://127.0.0.1:{app}/echo.Echo/Say", []),
            "gateway": (f"http://127.0.0.1:{gw_port}/echo.Echo/Say", [gateway.pid, sidecar.pid]),
        }
        for url, _ in targets.values():
            h2load(url, data, 2, 2, 2)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[list[float]]] = {name: [] for name in targets}
        for _round in range(args.rounds):
            for name, (url, pids) in targets.items():
                before = [bm.process_cpu(p) for p in pids]
                rps, ok, failed = h2load(url, data, args.seconds, args.clients, args.streams)
                after = [bm.process_cpu(p) for p in pids]
                if failed:
                    print(f"{name}: {failed} calls failed")
                runs[name].append(rps)
                cpu[name].append([(a - b) / max(ok, 1) * 1000 for a, b in zip(after, before, strict=True)])
        for name, rates in runs.items():
            results[name] = statistics.median(rates)
            per = (
                [round(statistics.median(c[i] for c in cpu[name]), 3) for i in range(len(cpu[name][0]))]
                if cpu[name][0]
                else []
            )
            listed = ", ".join(f"{r:.0f}" for r in sorted(rates))
            print(
                f"grpc {name:8s} median {results[name]:8.0f} calls/s (runs {listed}; "
                f"CPU s/1000 per process {per})"
            )
    finally:
        stack.stop()
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, h2load {args.clients} connections x "
        f"{args.streams} streams, 100-byte unary messages, {args.rounds} rounds of {args.seconds}s"
    )
    figures = {
        "grpc_vs_direct": round(results["gateway"] / results["direct"], 3) if results.get("direct") else None,
        "transcoded_vs_plain": None,
        "grpc_gateway_cps": round(results["gateway"]),
        "grpc_direct_cps": round(results["direct"]),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
