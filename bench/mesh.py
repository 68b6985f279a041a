"""Sidecar data-plane benchmark, one invocation, four paths to the same app (nginx, 1 KiB body):

- meshgate: h2load (HTTP/1.1) -> outbound sidecar -> mTLS HTTP/2 -> inbound sidecar -> app
- nghttpx pair (reference): h2load -> nghttpx (plaintext in, TLS h2 out with a client certificate)
  -> nghttpx (TLS in, client certificate verified) -> app; one worker each, as our sidecars have one core
- floor: h2load -> bench/floor.py outbound -> mTLS HTTP/2 -> bench/floor.py inbound -> app: the same
  libraries as our sidecars (uvloop, httptools, h2, ssl) with none of their features, to tell what
  CPython and the libraries cost from what our code adds
- direct: h2load -> app

Reports the throughput ratio to the nghttpx pair, the latency each proxy pair adds at a fixed
1,000 requests/s (P50/P90/P99 over h2load's per-request log, minus the direct path's), CPU seconds per
1,000 requests per sidecar (from /proc) and sidecar RSS under that load. The fixed rate is measured
with evenly spaced arrivals (the headline) and with h2load's default synchronized bursts (``*_bursts``
fields): see the comment in ``main``. Last stdout line: one JSON
object. Everything on 127.0.0.1; every run bounded by h2load's duration.

    .venv/bin/python bench/mesh.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MESHGATE = str(Path(sys.executable).parent / "meshgate")
TD = "bench.meshgate.local"
BODY = b"x" * 1024
NGHTTPX_COMMON = ("--conf=/dev/null", "--workers=1", "--no-ocsp", "--no-server-push")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(check, timeout: float = 30.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def ok(url: str) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
        return bool(r.status == 200)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_children(pid: int) -> list[int]:
    """``pid`` and its direct children (nghttpx does its work in a worker child)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *(int(k) for k in kids)]


def process_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children."""
    return sum(cpu_seconds(p) for p in with_children(pid))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_nginx(
    stack: Stack, port: int, body: str = BODY.decode(), content_type: str = "text/plain", name: str = "nginx"
) -> subprocess.Popen[bytes]:
    """nginx (one worker) answering every request with 200 and ``body``; its files are ``name.*``."""
    conf = stack.tmp / f"{name}.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {stack.tmp}/{name}.pid; error_log {stack.tmp}/{name}.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type {content_type}; return 200 '{body}'; }} }} }}
"""
    )
    return stack.start(name, "nginx", "-c", str(conf), "-e", str(stack.tmp / f"{name}.err"))


def start_control_plane(stack: Stack, policies: Path) -> tuple[str, Path]:
    """``meshgate control-plane`` on a free port with ``policies``: its URL once ready, its data folder."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    data = stack.tmp / "cp"
    stack.start(
        "cp",
        MESHGATE,
        "control-plane",
        "--policies",
        str(policies),
        "--data-dir",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    )
    wait(lambda: ok(f"{url}/readyz"), what="control plane")
    return url, data


def join_token(stack: Stack, data: Path, service: str) -> Path:
    """A new join token file for ``service`` (``meshgate token create``; a fresh file every call)."""
    out = subprocess.run(
        [MESHGATE, "token", "create", "--data-dir", str(data), "--service", service],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = stack.tmp / f"{service}-{free_port()}.token"
    path.write_text(out)
    return path


def knows(admin: int, *services: str) -> bool:
    """True once the admin ``/config`` on port ``admin`` has endpoints for every one of ``services``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config", timeout=2) as r:
        endpoints = json.load(r)["endpoints"]
    return all(endpoints.get(s) for s in services)


def start_sidecar(
    stack: Stack, cp: str, data: Path, service: str, app_port: int, *extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A sidecar for ``service`` in front of ``app_port`` (``extra``: more arguments): the process once
    ready, and its admin port."""
    admin = free_port()
    proc = stack.start(
        f"sidecar-{service}",
        MESHGATE,
        "sidecar",
        "--service",
        service,
        "--app",
        f"http://127.0.0.1:{app_port}",
        "--control-plane",
        cp,
        "--token",
        str(join_token(stack, data, service)),
        "--cache-dir",
        str(stack.tmp / f"cache-{service}"),
        "--inbound",
        f"127.0.0.1:{free_port()}",
        "--outbound",
        f"127.0.0.1:{free_port()}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--log-level",
        "warning",
        *extra,
    )
    wait(lambda: ok(f"http://127.0.0.1:{admin}/readyz"), what=f"{service} sidecar")
    return proc, admin


def start_gateway(
    stack: Stack, cp: str, data: Path, *extra: str, name: str = "gateway", learn: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """``meshgate gateway`` (service ``gateway``; ``extra``: more arguments): the process once ready and
    once it has endpoints for every one of ``learn``, and its port."""
    port, admin = free_port(), free_port()
    proc = stack.start(
        name,
        MESHGATE,
        "gateway",
        "--control-plane",
        cp,
        "--token",
        str(join_token(stack, data, "gateway")),
        "--cache-dir",
        str(stack.tmp / f"cache-{name}"),
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--log-level",
        "warning",
        *extra,
    )
    wait(lambda: ok(f"http://127.0.0.1:{admin}/readyz"), what=name)
    if learn:
        wait(lambda: knows(admin, *learn), what=f"{name} to learn {', '.join(learn)}")
    return proc, port


def reference_certificates(
    stack: Stack, prefix: str, *names: str, root: str = "root.pem"
) -> dict[str, tuple[Path, Path]]:
    """A private CA (its root in ``root``, under the stack's folder) and, for each of ``names``, a
    certificate chain and key (SPIFFE ID ``prefix-name``): name -> (chain file, key file)."""
    from cryptography.hazmat.primitives import serialization

    from shared.identity.ca import CertificateAuthority, chain_pem
    from shared.identity.spiffeid import workload_id

    ca = CertificateAuthority.init(stack.tmp / f"{prefix}-ca", TD)
    files = {}
    for name in names:
        chain, key = ca.issue(workload_id(TD, f"{prefix}-{name}"))
        (stack.tmp / f"{name}.pem").write_bytes(chain_pem(chain))
        (stack.tmp / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        files[name] = (stack.tmp / f"{name}.pem", stack.tmp / f"{name}.key")
    (stack.tmp / root).write_bytes(ca.bundle().to_pem().encode())
    return files


def start_nghttpx_back(
    stack: Stack, port: int, app_port: int, cert: tuple[Path, Path]
) -> subprocess.Popen[bytes]:
    """nghttpx (one worker) on ``port``: TLS 1.3 in with a client certificate verified against
    ``root.pem``, HTTP/1.1 out to ``app_port``; ``cert``: its (chain file, key file)."""
    return stack.start(
        "nghttpx-back",
        "nghttpx",
        *NGHTTPX_COMMON,
        f"--frontend=127.0.0.1,{port}",
        f"--backend=127.0.0.1,{app_port};;proto=http/1.1",
        "--verify-client",
        f"--verify-client-cacert={stack.tmp / 'root.pem'}",
        "--tls-min-proto-version=TLSv1.3",
        "--pid-file",
        str(stack.tmp / "back.pid"),
        str(cert[1]),
        str(cert[0]),
    )


def start_meshgate(stack: Stack, app_port: int) -> tuple[int, list[int]]:
    policies = stack.tmp / "policies"
    policies.mkdir()
    (policies / "mesh.yaml").write_text(
        f"apiVersion: meshgate/v1\nkind: Mesh\ntrustDomain: {TD}\ndefaultAccess: deny\n---\n"
        "apiVersion: meshgate/v1\nkind: Service\nname: bench\n---\n"
        "apiVersion: meshgate/v1\nkind: Service\nname: orders\n---\n"
        "apiVersion: meshgate/v1\nkind: AccessPolicy\nname: orders\ntarget: {service: orders}\n"
        "rules:\n  - action: allow\n    from: {services: [bench]}\n"
        "    to: {methods: [GET, POST], paths: ['/*']}\n"
    )
    cp, data = start_control_plane(stack, policies)
    pids = []
    outbound = 0
    for service in ("orders", "bench"):
        upstream = free_port()
        proc, admin = start_sidecar(stack, cp, data, service, app_port, "--upstream", f"{upstream}=orders")
        pids.append(proc.pid)
        if service == "bench":
            outbound = upstream  # the per-upstream port: h2load cannot name the service in Host
            wait(lambda admin=admin: knows(admin, "orders"), what="bench sidecar to learn orders")
    return outbound, pids


def start_nghttpx_pair(stack: Stack, app_port: int) -> tuple[int, list[int]]:
    files = reference_certificates(stack, "nghttpx", "front", "back")
    front, back = free_port(), free_port()
    b = start_nghttpx_back(stack, back, app_port, files["back"])
    f = stack.start(
        "nghttpx-front",
        "nghttpx",
        *NGHTTPX_COMMON,
        f"--frontend=127.0.0.1,{front};no-tls",
        f"--backend=127.0.0.1,{back};;tls;proto=h2",
        "--insecure",
        f"--client-private-key-file={files['front'][1]}",
        f"--client-cert-file={files['front'][0]}",
        "--pid-file",
        str(stack.tmp / "front.pid"),
    )
    wait(lambda: ok(f"http://127.0.0.1:{front}/"), what="nghttpx pair")
    return front, [f.pid, b.pid]


def start_floor_pair(stack: Stack, app_port: int) -> tuple[int, list[int]]:
    """bench/floor.py's two roles: the same libraries as our sidecar pair, none of its features; the
    outbound's port and the pids (inbound first)."""
    files = reference_certificates(stack, "floor", "outbound", "inbound", root="floor-root.pem")
    out, inb = free_port(), free_port()
    # -P: bench/ not on sys.path, where this file (mesh.py) would shadow the package floor.py imports
    floor = [sys.executable, "-P", str(Path(__file__).resolve().parent / "floor.py")]
    pids = []
    for role, port, target in (("inbound", inb, ("--app", app_port)), ("outbound", out, ("--peer", inb))):
        chain, key = files[role]
        proc = stack.start(
            f"floor-{role}",
            *floor,
            role,
            "--listen",
            f"127.0.0.1:{port}",
            target[0],
            f"127.0.0.1:{target[1]}",
            "--cert",
            str(chain),
            "--key",
            str(key),
            "--ca",
            str(stack.tmp / "floor-root.pem"),
        )
        pids.append(proc.pid)
    wait(lambda: ok(f"http://127.0.0.1:{out}/"), what="floor pair")
    return out, pids


def h2load(url: str, *args: str, host: str | None = None) -> str:
    argv = ["h2load", "--h1", *args]
    if host:
        argv += ["-H", f"host: {host}"]
    return subprocess.run([*argv, url], capture_output=True, text=True, timeout=300).stdout


def throughput(output: str) -> tuple[float, int, int]:
    rps = 0.0
    ok_count = failed = 0
    for line in output.splitlines():
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
        if line.startswith("requests:"):
            parts = line.replace(",", "").split()
            failed = int(parts[parts.index("failed") - 1])
        if line.startswith("status codes:"):
            ok_count = int(line.split()[2])
    return rps, ok_count, failed


def latencies(log: Path) -> list[float]:
    values = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            values.append(int(parts[2]) / 1000.0)
    values.sort()
    return values


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each measured run")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    for tool in ("h2load", "nghttpx", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install nginx-light nghttp2-client nghttp2-proxy")
    tmp = Path(tempfile.mkdtemp(prefix="mg-bench-"))
    stack = Stack(tmp)
    try:
        app = free_port()
        start_nginx(stack, app)
        wait(lambda: ok(f"http://127.0.0.1:{app}/"), what="nginx")
        mg_port, sidecars = start_meshgate(stack, app)
        ref_port, ref_pids = start_nghttpx_pair(stack, app)
        floor_port, floor_pids = start_floor_pair(stack, app)
        targets = {
            "direct": (f"http://127.0.0.1:{app}/bench", None),
            "meshgate": (f"http://127.0.0.1:{mg_port}/bench", None),
            "nghttpx": (f"http://127.0.0.1:{ref_port}/bench", None),
            "floor": (f"http://127.0.0.1:{floor_port}/bench", None),
        }
        proxies = {"meshgate": sidecars, "nghttpx": ref_pids, "floor": floor_pids}
        results: dict[str, dict[str, float]] = {}
        for name, (url, host) in targets.items():  # throughput, closed loop
            h2load(url, "-n", "2000", "-c", "8", host=host)  # warm-up: connections, sessions, caches
            pids = proxies.get(name, [])
            before = [process_cpu(p) for p in pids]
            out = h2load(url, "-c", str(args.connections), "-D", str(args.seconds), "-t", "1", host=host)
            after = [process_cpu(p) for p in pids]
            rps, good, failed = throughput(out)
            cpu = [round((a - b) / max(good, 1) * 1000, 3) for a, b in zip(after, before, strict=True)]
            results[name] = {"rps": rps, "ok": good, "failed": failed, "cpu_closed": max(cpu, default=0.0)}
            print(f"throughput {name:9s} {rps:10.0f} req/s  ({good} ok, {failed} failed; cpu s/1000 {cpu})")
        rate_clients = 10
        # A fixed 1,000 requests/s from 10 clients at 100/s each, in two arrival patterns:
        # "even": the clients start 1 ms apart (h2load -r 1 --rate-period 1ms), so one request
        #   arrives every millisecond: the fixed rate the target is stated at (the headline figures);
        # "bursts": h2load's default, every client starts at once and their timers tick together,
        #   so 10 requests arrive at the same instant every 10 ms and queue behind each other.
        patterns = {
            "even": ("-n", str(1000 * args.seconds), "-r", "1", "--rate-period", "1ms"),
            "bursts": ("-D", str(args.seconds)),
        }
        for pattern, timing in patterns.items():
            for name, (url, host) in targets.items():
                log = tmp / f"{name}-{pattern}.tsv"
                pids = proxies.get(name, [])
                before = [process_cpu(p) for p in pids]
                h2load(
                    url,
                    "-c",
                    str(rate_clients),
                    "--rps",
                    "100",
                    *timing,
                    "-t",
                    "1",
                    f"--log-file={log}",
                    host=host,
                )
                after = [process_cpu(p) for p in pids]
                values = latencies(log)
                suffix = "" if pattern == "even" else "_bursts"
                results[name] |= {
                    "p50" + suffix: pct(values, 0.5),
                    "p90" + suffix: pct(values, 0.9),
                    "p99" + suffix: pct(values, 0.99),
                    "n" + suffix: len(values),
                    "cpu_per_1000" + suffix: max(
                        (a - b) / (len(values) / 1000) for a, b in zip(after, before, strict=True)
                    )
                    if pids
                    else 0.0,
                    "rss_mb" + suffix: max(sum(rss_mb(c) for c in with_children(p)) for p in pids)
                    if pids
                    else 0.0,
                }
                r = results[name]
                print(
                    f"at 1000/s {pattern:6s} {name:9s} p50 {r['p50' + suffix]:.3f} ms  "
                    f"p90 {r['p90' + suffix]:.3f} ms  p99 {r['p99' + suffix]:.3f} ms "
                    f"({len(values)} requests; per-proxy cpu {r['cpu_per_1000' + suffix]:.3f} s/1000, "
                    f"rss {r['rss_mb' + suffix]:.0f} MB)"
                )
    finally:
        stack.stop()
    d, m, n, f = results["direct"], results["meshgate"], results["nghttpx"], results["floor"]
    figures = {
        "ratio_vs_nghttpx": round(m["rps"] / n["rps"], 3) if n["rps"] else None,
        "added_p50_ms": round(m["p50"] - d["p50"], 3),
        "added_p90_ms": round(m["p90"] - d["p90"], 3),
        "added_p99_ms": round(m["p99"] - d["p99"], 3),
        "cpu_s_per_1000": round(m["cpu_per_1000"], 3),
        "rss_mb": round(m["rss_mb"], 1),
        "nghttpx_added_p90_ms": round(n["p90"] - d["p90"], 3),
        "added_p50_ms_bursts": round(m["p50_bursts"] - d["p50_bursts"], 3),
        "added_p90_ms_bursts": round(m["p90_bursts"] - d["p90_bursts"], 3),
        "added_p99_ms_bursts": round(m["p99_bursts"] - d["p99_bursts"], 3),
        "nghttpx_added_p90_ms_bursts": round(n["p90_bursts"] - d["p90_bursts"], 3),
        "cpu_s_per_1000_bursts": round(m["cpu_per_1000_bursts"], 3),
        "nghttpx_cpu_s_per_1000": round(n["cpu_per_1000"], 3),
        "floor_ratio_vs_nghttpx": round(f["rps"] / n["rps"], 3) if n["rps"] else None,
        "floor_added_p90_ms": round(f["p90"] - d["p90"], 3),
        "floor_cpu_s_per_1000": round(f["cpu_per_1000"], 3),
        "floor_rss_mb": round(f["rss_mb"], 1),
        "cpu_s_per_1000_closed_loop": m["cpu_closed"],
        "floor_cpu_s_per_1000_closed_loop": f["cpu_closed"],
        "meshgate_rps": round(m["rps"]),
        "nghttpx_rps": round(n["rps"]),
        "direct_rps": round(d["rps"]),
        "failed": int(m["failed"]),
    }
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, {args.connections} connections, "
        f"{args.seconds}s per run, 1 KiB responses"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
