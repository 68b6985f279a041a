"""Closed-loop load on the sidecar pair of bench/mesh.py, optionally under py-spy: the quick A/B tool.

    .venv/bin/python bench/profile_mesh.py [--seconds 10] [--py-spy DIR]

Starts nginx, the control plane and the two sidecars exactly as bench/mesh.py does, runs h2load (32
connections, HTTP/1.1) against the outbound sidecar and prints throughput and CPU seconds per 1,000
requests of each sidecar (inbound first). With ``--py-spy DIR`` it records raw py-spy profiles of
both (``inbound.txt``, ``outbound.txt``; ``pip install py-spy``). To compare two versions, run it
alternately with ``PYTHONPATH=<worktree of the other commit>``: the sidecars import from there.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/mesh.py, beside this file (loaded by path: the name ``mesh`` is the product's package)
_spec = importlib.util.spec_from_file_location("bench_mesh", Path(__file__).resolve().parent / "mesh.py")
assert _spec is not None and _spec.loader is not None
m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(m)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--py-spy", dest="spy", type=Path, default=None, help="directory for profiles")
    args = parser.parse_args()
    stack = m.Stack(Path(tempfile.mkdtemp(prefix="mg-prof-")))
    try:
        app = m.free_port()
        m.start_nginx(stack, app)
        m.wait(lambda: m.ok(f"http://127.0.0.1:{app}/"), what="nginx")
        port, pids = m.start_meshgate(stack, app)
        url = f"http://127.0.0.1:{port}/bench"
        m.h2load(url, "-n", "2000", "-c", "8")
        spies = []
        if args.spy is not None:
            args.spy.mkdir(parents=True, exist_ok=True)
            spy = str(Path(sys.executable).parent / "py-spy")
            for name, pid in zip(("inbound", "outbound"), pids, strict=True):
                out = str(args.spy / f"{name}.txt")
                argv = [spy, "record", "-p", str(pid), "-d", str(args.seconds), "-r", "200", "-f", "raw"]
                spies.append(subprocess.Popen([*argv, "-o", out, "--nonblocking"]))
            time.sleep(1)
        before = [m.process_cpu(p) for p in pids]
        out = m.h2load(url, "-c", "32", "-D", str(args.seconds), "-t", "1")
        after = [m.process_cpu(p) for p in pids]
        rps, ok, failed = m.throughput(out)
        per = " ".join(f"{(b - a) / max(ok, 1) * 1000:.3f}" for a, b in zip(before, after, strict=True))
        print(f"rps {rps:.0f} ok {ok} failed {failed} cpu_s_per_1000 inbound,outbound {per}")
        for proc in spies:
            proc.wait(60)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
