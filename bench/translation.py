"""Protocol translation benchmark, one invocation (h2load as the client everywhere):

- gRPC: unary calls per second through gateway (h2c) -> mTLS HTTP/2 -> the service's sidecar -> a
  grpcio server (h2c), against the same grpcio server called directly (target ratio >= 0.2);
- JSON transcoding: GET calls per second (wrk, HTTP/1.1) of a route transcoded to gRPC (a grpcio
  server behind its sidecar) against a plain JSON route through the same gateway (nginx answering the
  same JSON behind its sidecar) (target ratio >= 0.5).

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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_mesh", HERE / "mesh.py")
assert _spec is not None and _spec.loader is not None
bm: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bm)
_gw_spec = importlib.util.spec_from_file_location("bench_gateway", HERE / "gateway.py")
assert _gw_spec is not None and _gw_spec.loader is not None
gw: Any = importlib.util.module_from_spec(_gw_spec)
_gw_spec.loader.exec_module(gw)
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))
from protos_testlib import compile_protos  # noqa: E402  (the test protos: shop.proto)

TD = bm.TD
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
---
apiVersion: meshgate/v1
kind: Service
name: shop
protocol: grpc
---
apiVersion: meshgate/v1
kind: Service
name: books
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: shop
target: {{service: shop}}
rules:
  - action: allow
    from: {{services: [gateway]}}
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: books
target: {{service: books}}
rules:
  - action: allow
    from: {{services: [gateway]}}
---
apiVersion: meshgate/v1
kind: Route
name: transcoded
match: {{path: {{prefix: /v1}}}}
backends: [{{service: shop}}]
translate: grpc-json
grpcJson: {{descriptorSet: shop.pb}}
---
apiVersion: meshgate/v1
kind: Route
name: plain-json
match: {{path: {{prefix: /plain}}}}
backends: [{{service: books}}]
"""

SHOP_SERVER = """
import sys
from concurrent import futures
import grpc
sys.path.insert(0, sys.argv[2])
import shop_pb2 as pb

def get_book(request, context):
    return pb.Book(id=request.id, title="fiction-%d" % request.id, in_stock=True)

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
handler = grpc.unary_unary_rpc_method_handler(
    get_book, pb.GetBookRequest.FromString, pb.Book.SerializeToString)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("shop.v1.Shop", {"GetBook": handler}),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""

BOOK_JSON = '{"id": "42", "title": "fiction-42", "inStock": true}'

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


def start_json_app(stack: Any, port: int) -> None:
    """nginx answering every request with the book as JSON (the plain route's app)."""
    bm.start_nginx(stack, port, BOOK_JSON, "application/json", name="json-app")
    bm.wait(lambda: bm.ok(f"http://127.0.0.1:{port}/"), what="json app")


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
    for tool in ("h2load", "wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install nghttp2-client wrk nginx-light")
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
        compile_protos(policies)
        cp, cp_data = bm.start_control_plane(stack, policies)
        sidecar, _ = bm.start_sidecar(stack, cp, cp_data, "echo", app)
        shop_port, books_port = bm.free_port(), bm.free_port()
        stack.start("shop-app", sys.executable, "-c", SHOP_SERVER, str(shop_port), str(policies))
        start_json_app(stack, books_port)
        shop_sidecar, _ = bm.start_sidecar(stack, cp, cp_data, "shop", shop_port)
        books_sidecar, _ = bm.start_sidecar(stack, cp, cp_data, "books", books_port)
        gateway, gw_port = bm.start_gateway(
            stack, cp, cp_data, "--trace-sample", "0", learn=("echo", "shop", "books")
        )
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
        json_targets = {
            "transcoded": (
                f"http://127.0.0.1:{gw_port}/v1/shelves/fiction/books/42",
                [gateway.pid, shop_sidecar.pid],
            ),
            "plain-json": (f"http://127.0.0.1:{gw_port}/plain/books/42", [gateway.pid, books_sidecar.pid]),
        }
        for url, _ in json_targets.values():
            gw.wrk(url, 2, 8)  # warm-up
        json_runs: dict[str, list[float]] = {name: [] for name in json_targets}
        for _round in range(args.rounds):
            for name, (url, _pids) in json_targets.items():
                rps, _total, failed = gw.wrk(url, args.seconds, args.clients * args.streams)
                if failed:
                    print(f"{name}: {failed} requests failed")
                json_runs[name].append(rps)
        for name, rates in json_runs.items():
            results[name] = statistics.median(rates)
            listed = ", ".join(f"{r:.0f}" for r in sorted(rates))
            print(f"json {name:10s} median {results[name]:8.0f} req/s (runs {listed})")
    finally:
        stack.stop()
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, h2load {args.clients} connections x "
        f"{args.streams} streams, 100-byte unary messages, {args.rounds} rounds of {args.seconds}s"
    )
    figures = {
        "grpc_vs_direct": round(results["gateway"] / results["direct"], 3) if results.get("direct") else None,
        "transcoded_vs_plain": round(results["transcoded"] / results["plain-json"], 3)
        if results.get("plain-json")
        else None,
        "transcoded_rps": round(results["transcoded"]),
        "plain_json_rps": round(results["plain-json"]),
        "grpc_gateway_cps": round(results["gateway"]),
        "grpc_direct_cps": round(results["direct"]),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
