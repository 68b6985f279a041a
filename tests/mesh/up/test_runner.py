"""``meshgate up``: the runner's pure helpers, its example commands, and real runs of tiny stacks.

The real runs start ``meshgate up`` as a subprocess on a stack whose only service is a stdlib HTTP
server behind its sidecar (no gateway), then stop it with SIGTERM and check nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.up.plan import StackPlan, plan_stack, plan_workloads
from mesh.up.runner import Stack, _count, shown_path
from mesh.up.spec import load_localstack
from shared.cli import main as meshgate_main
from shared.telemetry.collector import Collector

REPO = Path(__file__).resolve().parents[3]

READY_WITHIN = 60.0
STOP_WITHIN = 30.0

#: The app: answers 200 on /healthz (what the sidecar checks), 404 elsewhere; no braces (placeholders).
HEALTHZ_APP = """\
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
print("web app on port", os.environ["PORT"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


# -- pure helpers ------------------------------------------------------------------------------------------


def test_shown_path_is_relative_below_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "a" / "b" / "c.py") == str(Path("a") / "b" / "c.py")
    assert shown_path(Path("a") / "b") == str(Path("a") / "b")
    assert shown_path(tmp_path) == "."
    assert shown_path(Path(".")) == "."


def test_shown_path_is_absolute_outside_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert shown_path(tmp_path / "there" / "x") == str(tmp_path / "there" / "x")
    assert shown_path(Path("/")) == "/"


def test_count_of_endpoints_in_an_admin_config() -> None:
    assert _count([{"address": "a"}, {"address": "b"}]) == 2  # a sidecar lists them
    assert _count({"i-1": {}, "i-2": {}, "i-3": {}}) == 3
    assert _count(4) == 4  # the gateway counts them
    assert _count(0) == 0 and _count([]) == 0
    assert _count(None) == 0  # a service not known (yet)
    assert _count("2") == 0 and _count(2.0) == 0


# -- Stack.examples -----------------------------------------------------------------------------------------


def planned(path: Path) -> StackPlan:
    """The full plan of ``path`` with fake token paths and ports from a counter (nothing starts)."""
    ports = itertools.count(31000)

    def pick(host: str) -> int:
        return next(ports)

    stack = load_localstack(path)
    plan = plan_stack(stack, path, pick=pick)
    names = [s.name for s in stack.services] + ["gateway"]
    return plan_workloads(plan, {n: path.parent / f"{n}.token" for n in names}, pick=pick)


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A collector that is bound (for its URL) but not serving."""
    c = Collector("127.0.0.1", 0)
    try:
        yield c
    finally:
        c._server.server_close()


EVERY_PLACEHOLDER = (
    "{gateway} {gatewayAdmin} {controlPlane} {traces} {python} {meshgate} {dir} {workdir} {policies} "
    "{admin:web} {admin:orders} -w '%{http_code}' {unknown}"
)


def write_stack(folder: Path, doc: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stack.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "meshgate/v1", "kind": "LocalStack", **doc}))
    return path


def test_examples_fill_every_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    path = write_stack(
        tmp_path / "stacks",
        {
            "name": "s",
            "policies": "../policies",
            "workdir": "../apps",
            "services": [
                {"name": "web", "command": ["x"]},
                {"name": "orders", "command": ["y"], "replicas": 2},
            ],
            "examples": [
                {"say": "everything", "run": EVERY_PLACEHOLDER},
                {"say": "plain", "run": "echo hi", "expect": "hi"},
            ],
        },
    )
    monkeypatch.chdir(tmp_path)
    plan = planned(path)
    stack = Stack(plan)
    stack.collector = collector
    (say, run), plain = stack.examples()
    assert say == "everything" and plain == ("plain", "echo hi")
    sidecars = {app.name: sidecar for app, sidecar in plan.services}
    assert plan.gateway is not None and plan.gateway_url is not None
    python = str(Path(sys.executable).absolute())  # outside the cwd: shown whole
    meshgate_script = Path(sys.executable).parent / "meshgate"
    meshgate = str(meshgate_script.absolute()) if meshgate_script.exists() else f"{python} -m shared.cli"
    expected = [
        plan.gateway_url,
        plan.gateway.admin,
        plan.control_plane_url,
        f"{collector.url}/traces",
        python,
        meshgate,
        "stacks",  # the file's folder, relative to the cwd
        "apps",
        "policies",
        sidecars["web"].admin,
        sidecars["orders-1"].admin,  # the first replica's admin
        "-w",
        "'%{http_code}'",  # not a placeholder of ours: kept
        "{unknown}",
    ]
    assert run.split(" ") == [*expected[:5], *meshgate.split(" "), *expected[6:]]
    assert plan.gateway_url.startswith("http://127.0.0.1:") and collector.url.startswith("http://127.0.0.1:")


def test_examples_without_gateway_or_collector_fill_empty(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path,
        {
            "name": "s",
            "gateway": None,
            "tracing": {"otlpEndpoint": "http://127.0.0.1:4318/v1/traces"},
            "examples": [{"say": "x", "run": "[{gateway}][{gatewayAdmin}][{traces}][{admin:web}]"}],
        },
    )
    stack = Stack(planned(path))
    assert stack.examples() == [("x", "[][][][{admin:web}]")]


def test_the_demo_examples_leave_no_placeholder_unfilled(
    monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    monkeypatch.chdir(REPO)
    stack = Stack(planned(REPO / "examples" / "demo.yaml"))
    stack.collector = collector
    examples = stack.examples()
    assert len(examples) == len(stack.plan.stack.examples) > 0
    for say, run in examples:
        for match in re.finditer(r"\{([A-Za-z][\w:]*)\}", run):
            assert run[match.start() - 1] == "%", f"{say!r}: {match.group(0)} left in {run!r}"
    runs = "\n".join(run for _, run in examples)
    assert "curl -s http://127.0.0.1:8000/shop/" in runs
    assert f"curl -s {collector.url}/traces/last" in runs
    assert "examples/demo/mint_jwt.py" in runs and (REPO / "examples/demo/mint_jwt.py").is_file()
    assert " policy explain policies " in runs
    assert "curl -s http://127.0.0.1:9901/metrics" in runs


# -- the command: quick paths (in process) --------------------------------------------------------------


def test_up_check_validates_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    path = write_stack(tmp_path, {"name": "s", "services": [{"name": "web", "command": ["x"]}]})
    assert meshgate_main(["up", "-f", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert out == f"{path}: valid; 1 service(s), control plane https://127.0.0.1:15010\n"
    assert not (tmp_path / ".meshgate").exists()


def test_up_with_an_invalid_file_prints_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_stack(tmp_path, {"name": "s", "servics": []})
    assert meshgate_main(["up", "-f", str(path), "--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:4: LocalStack/s: servics: unknown field 'servics'")


def test_up_without_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert meshgate_main(["up", "-f", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml not found" in capsys.readouterr().err


def test_up_without_the_policies_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_stack(tmp_path, {"name": "s", "policies": "missing"})
    assert meshgate_main(["up", "-f", str(path), "--check"]) == 1
    assert f"policies folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


# -- real runs -----------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (of any of its threads)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            out += [int(part) for part in (task / "children").read_text().split()]
    return out


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


class Up:
    """``meshgate up -f stack.yaml`` in ``folder``; its merged output is collected line by line."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "-f", "stack.yaml", "--ready-timeout", "40s"],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.seen_children: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, test: Callable[[str], bool], timeout: float) -> str:
        """The first line passing ``test``; AssertionError (with the output) after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if test(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (not self._reader.is_alive() and self.proc.poll() is not None):
                    raise AssertionError(f"no such line within {timeout}s; output:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.5))

    def remember_children(self) -> list[int]:
        found = children(self.proc.pid)
        self.seen_children.update(found)
        return found

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def cleanup(self) -> None:
        """Whatever the test did: stop ``up`` and every child it was seen with."""
        if self.proc.poll() is None:
            self.remember_children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.seen_children:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def run_up(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Up]]:
    started: list[Up] = []

    def start(service: dict[str, Any]) -> Up:
        shutil.copytree(REPO / "policies", tmp_path / "policies")
        write_stack(
            tmp_path,
            {
                "name": "tiny",
                "controlPlane": {"listen": "127.0.0.1:0"},
                "gateway": None,
                "tracing": {"collector": "127.0.0.1:0"},
                "services": [service],
            },
        )
        up = Up(tmp_path)
        started.append(up)
        return up

    try:
        yield start
    finally:
        for up in started:
            up.cleanup()


def test_up_runs_a_tiny_stack_and_stops_it_cleanly_on_sigterm(run_up: Callable[[dict[str, Any]], Up]) -> None:
    started = time.monotonic()
    up = run_up({"name": "web", "command": ["{python}", "-c", HEALTHZ_APP]})
    ready = up.wait_for_line(lambda line: line.startswith("ready: "), READY_WITHIN)
    assert re.fullmatch(
        r"ready: control-plane=https://127\.0\.0\.1:\d+ traces=http://127\.0\.0\.1:\d+/traces", ready
    )
    assert "gateway=" not in ready
    assert re.search(r"^web\s+\| web app on port \d+$", up.output, re.M), "the app's output is shown"
    assert re.search(r"^up\s+\| web-sidecar is ready$", up.output, re.M)

    kids = up.remember_children()
    commands = {pid: cmdline(pid) for pid in kids}
    roles = sorted(
        next((word for word in ("control-plane", "sidecar") if word in argv), "app")
        for argv in commands.values()
    )
    assert roles == ["app", "control-plane", "sidecar"], commands
    [sidecar_argv] = [argv for argv in commands.values() if "sidecar" in argv]
    admin_port = int(sidecar_argv[sidecar_argv.index("--admin") + 1].rpartition(":")[2])
    [cp_argv] = [argv for argv in commands.values() if "control-plane" in argv]
    cp_port = int(cp_argv[cp_argv.index("--listen") + 1].rpartition(":")[2])
    assert not refuses(admin_port) and not refuses(cp_port)
    state = json.loads((up.folder / ".meshgate" / "tiny" / "stack.json").read_text())
    assert {p["pid"] for p in state["processes"]} == set(kids)
    assert {p["name"]: p["role"] for p in state["processes"]} == {
        "control-plane": "control-plane",
        "web": "app",
        "web-sidecar": "sidecar",
    }
    assert [p["admin"] for p in state["processes"] if p["admin"]] == [f"http://127.0.0.1:{admin_port}"]

    up.proc.send_signal(signal.SIGTERM)
    assert up.wait(STOP_WITHIN) == 0, up.output
    assert re.search(r"^up\s+\| stopping$", up.output, re.M)
    assert [pid for pid in kids if alive(pid)] == [], "children outlived meshgate up"
    assert refuses(admin_port), "the sidecar's admin port still answers"
    assert refuses(cp_port), "the control plane still answers"
    assert time.monotonic() - started < 60


def test_up_exits_1_naming_a_command_that_exits_at_once(run_up: Callable[[dict[str, Any]], Up]) -> None:
    up = run_up({"name": "web", "command": ["{python}", "-c", "raise SystemExit(3)"]})
    assert up.wait(READY_WITHIN) == 1, up.output
    line = up.wait_for_line(lambda line: "error:" in line, 1.0)
    assert re.fullmatch(r"up\s+\| error: web exited with code 3 before the stack was ready.*", line), line
    assert not any(line.startswith("ready: ") for line in up.lines)


def test_stopping_a_wrapper_command_stops_what_it_started(tmp_path: Path) -> None:
    """``sh -c "app; echo ended"`` does not pass SIGTERM on: the whole process group is signalled, so
    the app does not outlive ``meshgate up`` holding its port."""
    import io
    from types import SimpleNamespace

    from mesh.up.runner import Running

    pid_file = tmp_path / "app.pid"
    app = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"

    async def go() -> int:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", f'{sys.executable} -c "{app}"; echo ended', process_group=0
        )
        for _ in range(100):
            if pid_file.exists() and pid_file.read_text():
                break
            await asyncio.sleep(0.05)
        stack = Stack(SimpleNamespace(), out=io.StringIO())  # type: ignore[arg-type]
        pump = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        await stack._stop(Running(SimpleNamespace(name="hs", role="app"), proc, pump))  # type: ignore[arg-type]
        return int(pid_file.read_text())

    app_pid = asyncio.run(asyncio.wait_for(go(), 30))
    for _ in range(50):
        if not alive(app_pid):
            break
        time.sleep(0.05)
    assert not alive(app_pid), "the app outlived its wrapper's stop"
