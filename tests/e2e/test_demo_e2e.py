"""``meshgate up`` on the demo stack (examples/demo.yaml), as ``make demo`` runs it, with free ports.

1. The printed example commands behave as printed: each is run with bash and its output holds what
   the file's ``expect`` says (a 200 through five hops, 401, 201, 429, JSON from gRPC, 403, DENY, a
   trace, metrics); Ctrl-C (SIGINT) stops every process and ``up`` exits 0.
   A real Prometheus scrapes every admin port with the configuration ``up`` wrote.
2. With ``tracing.otlpEndpoint`` set to a receiver in this test, one request makes one trace whose spans
   chain gateway -> web's sidecar -> web -> web's sidecar -> orders' sidecar -> orders, each span's
   parent in the process before it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_lib import MESHGATE, REPO, free_port, wait_until
from test_otlp_e2e import Receiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def demo_copy(tmp: Path, otlp: str | None = None) -> Path:
    """examples/demo.yaml with every port free-picked and state under ``tmp``."""
    doc = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    doc["policies"] = str(REPO / "policies")
    doc["workdir"] = str(REPO / "examples" / "demo")
    doc["dataDir"] = str(tmp / "state")
    doc["controlPlane"]["listen"] = "127.0.0.1:0"
    doc["gateway"].update(listen="127.0.0.1:0", admin="127.0.0.1:0")
    doc["tracing"]["collector"] = "127.0.0.1:0"
    if otlp:
        doc["tracing"]["otlpEndpoint"] = otlp
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Up:
    """``meshgate up`` as a child process; its output is collected line by line."""

    def __init__(self, file: Path) -> None:
        self.state_dir = Path(yaml.safe_load(file.read_text())["dataDir"])
        self.proc = subprocess.Popen(
            [MESHGATE, "up", "-f", str(file), "--ready-timeout", "90s"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith("ready: "):
                    time.sleep(0.3)  # the examples follow the ready line
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("meshgate up not ready:\n" + "\n".join(self.lines[-80:]))

    def examples(self) -> list[tuple[str, str]]:
        """(comment, command) pairs printed after ``try:``."""
        start = self.lines.index("try:") + 1
        out, comment = [], ""
        for line in self.lines[start:]:
            if not line.startswith("  "):
                break
            if line.startswith("  # "):
                comment = line[4:]
            else:
                out.append((comment, line[2:]))
        return out

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("meshgate up did not stop:\n" + "\n".join(self.lines[-60:])) from None
        finally:
            self.reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@pytest.fixture
def up_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Up] = []

    def start(otlp: str | None = None) -> Up:
        up = Up(demo_copy(tmp_path, otlp))
        started.append(up)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.stop(signal.SIGTERM)


def scrape_with_prometheus(state_dir: Path, storage: Path) -> None:
    """A real Prometheus (Debian package ``prometheus``) runs the configuration ``up`` wrote, every
    target must be up and the gateway's request counter must reach it."""
    config = yaml.safe_load((state_dir / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    path = state_dir / "prometheus-test.yml"
    path.write_text(yaml.safe_dump(config))
    expected = sum(len(c["static_configs"]) for c in config["scrape_configs"])
    port = free_port()
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={path}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def query(q: str) -> list[Any]:
            url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return list(json.load(response)["data"]["result"])

        def all_up() -> bool:
            results = query("up")
            return len(results) == expected and all(r["value"][1] == "1" for r in results)

        wait_until(all_up, timeout=40, what=f"Prometheus to scrape all {expected} targets")
        wait_until(
            lambda: bool(query("sum(meshgate_gateway_requests_total)")), timeout=20, what="gateway counters"
        )
        workloads = {r["metric"]["workload"] for r in query("up")}
        assert {
            "gateway",
            "control-plane",
            "orders-1-sidecar",
            "orders-2-sidecar",
            "catalog-sidecar",
        } <= workloads
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(5)
        assert prometheus.stderr is not None
        prometheus.stderr.close()


def _parse_ready(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.removeprefix("ready: ").split())


def _refuses(url: str) -> bool:
    host, port = url.removeprefix("http://").removeprefix("https://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except OSError:
        return True


def test_make_demo_examples_behave_as_printed(up_factory: Any) -> None:
    up = up_factory()
    ready = _parse_ready(up.wait_ready())
    assert set(ready) >= {"gateway", "control-plane", "traces"}
    text = "\n".join(up.lines)
    assert "redis: none configured; running on the embedded defaults" in text

    spec = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())["examples"]
    printed = up.examples()
    assert [say for say, _ in printed] == [e["say"] for e in spec]
    for (say, command), example in zip(printed, spec, strict=True):
        result = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert example["expect"] in result.stdout, (
            f"{say}\n$ {command}\n{result.stdout}{result.stderr}\n--- up ---\n" + "\n".join(up.lines[-40:])
        )

    if shutil.which("prometheus") or os.environ.get("CI"):
        scrape_with_prometheus(up.state_dir, up.state_dir.parent / "prometheus")

    # Every process logged with its prefix; the gateway's access log names the route and principal.
    assert any(line.startswith("gateway ") and '"route": "orders-api"' in line for line in up.lines)
    assert any(line.startswith("orders-2-sidecar") for line in up.lines)

    assert up.stop(signal.SIGINT) == 0
    assert any(line.endswith("| stopping") for line in up.lines)
    for url in (ready["gateway"], ready["control-plane"], ready["traces"].removesuffix("/traces")):
        assert _refuses(url), f"{url} still accepts connections after up stopped"


def test_one_trace_chains_every_hop_over_otlp(up_factory: Any) -> None:
    receiver = Receiver()
    try:
        up = up_factory(receiver.url)
        ready = _parse_ready(up.wait_ready())
        assert "traces" not in ready  # spans go to the configured endpoint, no embedded collector
        request = urllib.request.Request(
            f"{ready['gateway']}/shop/", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

        def chain() -> list[tuple[str, str, int]]:
            spans = {s["span_id"]: s for s in receiver.of_trace(TRACE)}
            leaf = next(
                (s for s in spans.values() if s["service"] == "orders" and s["scope"] == "meshgate.demo"),
                None,
            )
            out = []
            while leaf is not None:
                out.append((leaf["service"], leaf["scope"], leaf["kind"]))
                parent = leaf["parent_id"]
                if parent == PARENT:
                    out.append(("caller", "", 0))
                leaf = spans.get(parent)
            return out[::-1]

        deadline = time.monotonic() + 15
        hops: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            found = chain()
            hops = [(service, scope) for service, scope, _ in found]
            if hops and hops[0][0] == "caller":
                break
            time.sleep(0.2)
        # Collapse consecutive spans of one process (server span, then its client span).
        processes = [h for i, h in enumerate(hops) if i == 0 or hops[i - 1] != h]
        assert processes == [
            ("caller", ""),
            ("gateway", "meshgate.gateway"),
            ("web", "meshgate.sidecar"),
            ("web", "meshgate.demo"),
            ("web", "meshgate.sidecar"),
            ("orders", "meshgate.sidecar"),
            ("orders", "meshgate.demo"),
        ], hops
        assert up.stop(signal.SIGTERM) == 0
    finally:
        receiver.close()
