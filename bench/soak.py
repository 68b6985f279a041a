"""Soak test: steady traffic through the demo stack for a bounded time, watching every process for leaks.

Starts ``meshgate up`` on a copy of examples/demo.yaml with free ports and its state in a temporary
folder (control plane, gateway, web, orders x2, catalog, each app behind its sidecar), then drives a
steady open-loop rate (default 50 requests/s, at most ``--concurrency`` in flight) of:

- ``GET /shop/``                     gateway -> web -> orders + catalog (gRPC)      expects 200
- ``GET /api/catalog/products`` JWT  gateway -> catalog, gRPC-JSON transcoding      expects 200
- ``GET /api/orders`` with the key   API key + rate limit 5 per 10 s                expects 200 or 429
- ``GET /api/orders`` anonymous      refused at the edge                            expects 401

After a warm-up (default 60 s) it samples every process's RSS (``/proc/PID/status`` VmRSS) and open file
descriptors (``/proc/PID/fd``) every ``--interval`` seconds; the processes are the ones ``up`` lists in
DATA_DIR/stack.json, plus ``up`` itself (which hosts the embedded trace collector). At the end it prints
Markdown tables (paste into bench/RESULTS.md) and exits 1 unless: RSS grew less than ``--max-rss-growth``
percent (default 10) in every process from the first sample after warm-up to the last, no process gained
more than ``--max-fd-growth`` descriptors (default 10), no process died, and there was no unexpected
answer (any status a route does not expect, or a transport error or timeout).

    .venv/bin/python bench/soak.py [--duration 600] [--rate 50] [--warmup 60] [--interval 10]
    make soak SOAK_ARGS="--duration 180"

Everything on 127.0.0.1. Not part of CI (it runs for minutes); every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
MESHGATE = str(Path(sys.executable).parent / "meshgate")
API_KEY = "demo-key-alice"


def _mint_module() -> Any:
    spec = importlib.util.spec_from_file_location("demo_mint_jwt", REPO / "examples" / "demo" / "mint_jwt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----- the stack ------------------------------------------------------------------------------------------


def stack_file(tmp: Path, source: Path) -> Path:
    """``source`` (a LocalStack file) with every port free-picked, absolute paths and state under ``tmp``."""
    doc = yaml.safe_load(source.read_text())
    folder = source.resolve().parent
    doc["policies"] = str((folder / doc.get("policies", "policies")).resolve())
    doc["workdir"] = str((folder / doc.get("workdir", ".")).resolve())
    doc["dataDir"] = str(tmp / "state")
    doc.setdefault("controlPlane", {})["listen"] = "127.0.0.1:0"
    if doc.get("gateway") is not None:
        doc.setdefault("gateway", {}).update(listen="127.0.0.1:0", admin="127.0.0.1:0")
    doc.setdefault("tracing", {})["collector"] = "127.0.0.1:0"
    path = tmp / "soak-stack.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Up:
    """``meshgate up`` as a child process; its output is drained continuously (the access log alone is
    one line per request) and the last lines kept for the report."""

    def __init__(self, file: Path, log: Path) -> None:
        self.state_dir = Path(yaml.safe_load(file.read_text())["dataDir"])
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [MESHGATE, "up", "-f", str(file), "--ready-timeout", "150s"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C on the soak reaches only us; we stop up ourselves
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.ready: str | None = None
        self.tracebacks = 0
        self.error_lines = 0
        self._ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            line = line.rstrip("\n")
            self.tail.append(line)
            if "Traceback (most recent call last)" in line:
                self.tracebacks += 1
            if " ERROR " in line or '"level": "error"' in line.lower():
                self.error_lines += 1
            if self.ready is None and line.startswith("ready: "):
                self.ready = line
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float) -> dict[str, str]:
        if not self._ready.wait(timeout) or self.ready is None:
            raise SystemExit("meshgate up did not get ready:\n" + "\n".join(list(self.tail)[-60:]))
        return dict(part.split("=", 1) for part in self.ready.removeprefix("ready: ").split())

    def processes(self) -> list[dict[str, Any]]:
        state = json.loads((self.state_dir / "stack.json").read_text())
        up = {"name": "up (supervisor, collector)", "role": "up", "pid": self.proc.pid}
        return [up, *state["processes"]]

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            code = None
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        return code


# ----- sampling -------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class Series:
    """Samples of one process."""

    name: str
    role: str
    pid: int
    rss: list[int] = field(default_factory=list)  # KiB
    fds: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    died: bool = False

    def sample(self, now: float) -> None:
        rss, fds = rss_kib(self.pid), fd_count(self.pid)
        if rss is None or fds is None:
            self.died = True
            return
        self.rss.append(rss)
        self.fds.append(fds)
        self.times.append(now)

    @property
    def rss_growth(self) -> float:
        return (self.rss[-1] - self.rss[0]) * 100.0 / self.rss[0] if self.rss else 0.0

    @property
    def fd_growth(self) -> int:
        return self.fds[-1] - self.fds[0] if self.fds else 0

    @property
    def rss_slope_mib_per_hour(self) -> float:
        """Least-squares slope of RSS over the sampled time (a steady leak shows here before it shows
        as growth over a short run)."""
        if len(self.rss) < 3:
            return 0.0
        t0 = self.times[0]
        xs = [t - t0 for t in self.times]
        mx, my = statistics.fmean(xs), statistics.fmean(self.rss)
        den = sum((x - mx) ** 2 for x in xs)
        if den == 0:
            return 0.0
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, self.rss, strict=True)) / den  # KiB/s
        return slope * 3600 / 1024


# ----- traffic --------------------------------------------------------------------------------------------


@dataclass
class Kind:
    """One kind of request in the mix."""

    label: str
    path: str
    weight: float
    expected: frozenset[int]
    headers: Callable[[], dict[str, str]]
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)  # ms, answered requests
    unexpected_samples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def unexpected(self) -> int:
        return sum(
            n
            for status, n in self.statuses.items()
            if not status.isdigit() or int(status) not in self.expected
        )


class Jwt:
    """A demo token, minted again before it expires."""

    def __init__(self) -> None:
        self._mint = _mint_module().mint
        self._token = ""
        self._until = 0.0

    def header(self) -> dict[str, str]:
        now = time.time()
        if now > self._until:
            self._token = self._mint("soak", ttl=3600)
            self._until = now + 1800
        return {"authorization": f"Bearer {self._token}"}


def request_mix() -> list[Kind]:
    jwt = Jwt()
    return [
        Kind("GET /shop/", "/shop/", 0.50, frozenset({200}), dict),
        Kind("GET /api/catalog/products (JWT)", "/api/catalog/products", 0.25, frozenset({200}), jwt.header),
        Kind(
            "GET /api/orders (API key)",
            "/api/orders",
            0.20,
            frozenset({200, 429}),
            lambda: {"x-api-key": API_KEY},
        ),
        Kind("GET /api/orders (anonymous)", "/api/orders", 0.05, frozenset({401}), dict),
    ]


class Driver:
    """Open-loop traffic: one request every 1/rate s on a fixed schedule, at most ``concurrency`` in
    flight (a start that finds every slot busy waits, and is counted as late)."""

    def __init__(self, base: str, rate: float, concurrency: int, timeout: float, seed: int) -> None:
        self.base = base
        self.rate = rate
        self.concurrency = concurrency
        self.timeout = timeout
        self.kinds = request_mix()
        self.random = random.Random(seed)
        self.late = 0
        self.sent = 0
        self.window: list[tuple[float, float]] = []  # (finish time, latency ms) of the current window

    def pick(self) -> Kind:
        return self.random.choices(self.kinds, weights=[k.weight for k in self.kinds])[0]

    async def one(self, client: httpx.AsyncClient, kind: Kind, slots: asyncio.Semaphore) -> None:
        start = time.perf_counter()
        try:
            response = await client.get(kind.path, headers=kind.headers())
            await response.aread()
            status = str(response.status_code)
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        finally:
            slots.release()
        ms = (time.perf_counter() - start) * 1000
        kind.statuses[status] += 1
        if status.isdigit():
            kind.latencies.append(ms)
            self.window.append((time.monotonic(), ms))
        if (not status.isdigit() or int(status) not in kind.expected) and len(kind.unexpected_samples) < 5:
            kind.unexpected_samples.append(status)

    async def run(self, until: float) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=self.base, limits=limits, timeout=self.timeout) as client:
            step = 1.0 / self.rate
            next_at = time.monotonic()
            while next_at < until:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if slots.locked():
                    self.late += 1
                await slots.acquire()
                task = asyncio.create_task(self.one(client, self.pick(), slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                next_at += step
                if time.monotonic() - next_at > 5:  # far behind (the stack stalled): do not burst
                    next_at = time.monotonic()
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout + 5)


# ----- the run --------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def soak(args: argparse.Namespace, base: str, up: Up) -> tuple[Driver, list[Series], list[str]]:
    driver = Driver(base, args.rate, args.concurrency, args.timeout, args.seed)
    start = time.monotonic()
    end = start + args.duration
    traffic = asyncio.create_task(driver.run(end))
    series = [Series(p["name"], p["role"], int(p["pid"])) for p in up.processes()]
    progress: list[str] = []
    next_sample = start + args.warmup
    while time.monotonic() < end and not traffic.done():
        await asyncio.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
        now = time.monotonic()
        if now >= next_sample:
            for s in series:
                if not s.died:
                    s.sample(now)
            recent = [ms for t, ms in driver.window if t > now - args.interval]
            driver.window = [(t, ms) for t, ms in driver.window if t > now - args.interval]
            unexpected = sum(k.unexpected for k in driver.kinds)
            line = (
                f"t={now - start:6.0f}s sent={driver.sent} unexpected={unexpected} late={driver.late} "
                f"p50={percentile(recent, 0.5):.1f}ms p99={percentile(recent, 0.99):.1f}ms "
                f"rss_total={sum(s.rss[-1] for s in series if s.rss) / 1024:.0f}MiB "
                f"fds_total={sum(s.fds[-1] for s in series if s.fds)}"
            )
            progress.append(line)
            print(line, file=sys.stderr, flush=True)
            next_sample += args.interval
        if up.proc.poll() is not None:
            print("meshgate up exited during the soak", file=sys.stderr)
            break
    await traffic
    return driver, series, progress


def report(
    args: argparse.Namespace, driver: Driver, series: list[Series], elapsed: float, up: Up
) -> tuple[str, bool]:
    """The Markdown report and whether the run passed."""
    out: list[str] = []
    ok = True
    answered = sum(k.requests for k in driver.kinds)
    unexpected = sum(k.unexpected for k in driver.kinds)
    shortened = " (shortened run)" if args.duration < 600 else ""
    out.append(f"### Soak (bench/soak.py), {args.duration:.0f} s{shortened}")
    out.append("")
    out.append(
        f"Run: `.venv/bin/python bench/soak.py --duration {args.duration:.0f} --rate {args.rate:g} "
        f"--warmup {args.warmup:.0f} --interval {args.interval:.0f}`. "
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end, Python "
        f"{platform.python_version()}. Stack: examples/demo.yaml via `meshgate up` (free ports)."
    )
    out.append("")
    out.append(
        f"Traffic: {answered} answers in {elapsed:.0f} s ({answered / elapsed:.1f}/s, "
        f"target {args.rate:g}/s, "
        f"{driver.late} starts waited for a free slot of {args.concurrency}); unexpected: **{unexpected}**."
    )
    out.append("")
    out.append("| request | expected | answers | statuses | unexpected | p50 ms | p99 ms |")
    out.append("|---|---|---:|---|---:|---:|---:|")
    for k in driver.kinds:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(k.statuses.items()))
        expected = "/".join(str(s) for s in sorted(k.expected))
        out.append(
            f"| {k.label} | {expected} | {k.requests} | {statuses} | {k.unexpected} | "
            f"{percentile(k.latencies, 0.5):.1f} | {percentile(k.latencies, 0.99):.1f} |"
        )
        if k.unexpected:
            ok = False
    out.append("")
    samples = max((len(s.rss) for s in series), default=0)
    out.append(
        f"Memory and descriptors: first sample after the {args.warmup:.0f} s warm-up vs the last, "
        f"{samples} samples every {args.interval:.0f} s. Limits: RSS growth < {args.max_rss_growth:g} %, "
        f"fd growth <= {args.max_fd_growth}."
    )
    out.append("")
    out.append(
        "| process | role | RSS warm-up MiB | RSS end MiB | RSS max MiB | growth % | slope MiB/h | "
        "fds warm-up | fds end | fds max | verdict |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in series:
        problems = []
        if s.died:
            problems.append("died")
        if not s.rss:
            problems.append("no samples")
        else:
            if s.rss_growth >= args.max_rss_growth:
                problems.append("RSS")
            if s.fd_growth > args.max_fd_growth:
                problems.append("fds")
        verdict = "ok" if not problems else "FAIL: " + ", ".join(problems)
        ok = ok and not problems
        if s.rss:
            out.append(
                f"| {s.name} | {s.role} | {s.rss[0] / 1024:.1f} | {s.rss[-1] / 1024:.1f} | "
                f"{max(s.rss) / 1024:.1f} | {s.rss_growth:+.1f} | {s.rss_slope_mib_per_hour:+.1f} | "
                f"{s.fds[0]} | {s.fds[-1]} | {max(s.fds)} | {verdict} |"
            )
        else:
            out.append(f"| {s.name} | {s.role} | - | - | - | - | - | - | - | - | {verdict} |")
    if samples < 2:
        ok = False
        out.append("")
        out.append("Too few samples: make --duration longer than --warmup plus two intervals.")
    out.append("")
    out.append(
        f"Logs: {up.tracebacks} tracebacks, {up.error_lines} error lines in the stack's output "
        "(informational; the full log is kept with --keep)."
    )
    out.append("")
    out.append(f"Result: **{'PASS' if ok else 'FAIL'}**")
    return "\n".join(out), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the first sample (60)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (10)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (50; bounded 1-200)")
    parser.add_argument("--concurrency", type=int, default=16, help="most requests in flight (16)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (10)")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="percent (10)")
    parser.add_argument("--max-fd-growth", type=int, default=10, help="descriptors (10)")
    parser.add_argument("--file", type=Path, default=REPO / "examples" / "demo.yaml", help="LocalStack file")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--keep", action="store_true", help="keep the state folder and the stack's log")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the samples as JSON")
    args = parser.parse_args()
    if not 1 <= args.rate <= 200:
        parser.error("--rate must be between 1 and 200")
    if args.duration < args.warmup + 2 * args.interval:
        parser.error("--duration must cover --warmup plus at least two --interval")

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-soak-"))
    up = Up(stack_file(tmp, args.file), tmp / "stack.log")
    code = 1
    try:
        ready = up.wait_ready(180)
        print(f"stack ready: {ready}", file=sys.stderr, flush=True)
        time.sleep(1.0)
        started = time.monotonic()
        driver, series, progress = asyncio.run(soak(args, ready["gateway"], up))
        elapsed = time.monotonic() - started
        text, ok = report(args, driver, series, elapsed, up)
        print(text)
        for k in driver.kinds:
            if k.unexpected_samples:
                print(f"\nunexpected answers to {k.label}: {k.unexpected_samples}", file=sys.stderr)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "progress": progress,
                        "processes": [s.__dict__ for s in series],
                        "requests": {k.label: dict(k.statuses) for k in driver.kinds},
                    },
                    indent=2,
                )
            )
        code = 0 if ok else 1
    finally:
        stopped = up.stop()
        if stopped not in (0, None):
            print(f"meshgate up exited {stopped} when stopped", file=sys.stderr)
        if args.keep:
            print(f"state and log kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
