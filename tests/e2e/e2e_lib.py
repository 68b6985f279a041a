"""Helpers for whole-stack tests: free ports, processes that are always stopped, bounded waits."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MESHGATE = str(Path(sys.executable).parent / "meshgate")


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` every 50 ms until it is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200 (plain HTTP, or HTTPS without verification)."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, timeout=2, context=ctx) as response:
        return bool(response.status == 200)


class Processes:
    """Started processes, all stopped (SIGTERM, then SIGKILL) by :meth:`stop_all`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout/stderr to ``logs/name.log``."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})}
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout``."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process still running."""
        for name in list(self.procs):
            self.stop(name, 5.0)

    def log(self, name: str) -> str:
        """What ``name`` has written so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def copy_policies(target: Path) -> Path:
    """A private copy of the repository's example policies."""
    shutil.copytree(REPO / "policies", target)
    return target
