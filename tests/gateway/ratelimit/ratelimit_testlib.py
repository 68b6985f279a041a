"""Helpers for the rate-limit tests.

- :class:`RedisServer`: a private ``redis-server`` on 127.0.0.1 (no persistence) on a free port, that a
  test may kill, restart on the same port, pause (SIGSTOP) and resume.
- fixtures ``redis_url`` (``REDIS_URL`` when set, else one private server per module) and ``own_redis``
  (always a private server: for tests that kill it or flush its scripts). ``conftest.py`` imports them.
- :func:`make_doc`, :func:`open_limiter`, :func:`fresh_prefix`, :func:`wait_until`.
- run as a script (``python ratelimit_testlib.py hammer ...``): the load worker of the accuracy test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from gateway.ratelimit.limiter import RateLimiter
from shared.config.model.edge import RateLimit

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
LOGGER = "meshgate.gateway.ratelimit"


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_prefix() -> str:
    """A key prefix of the test's own (tests may share one Redis, e.g. REDIS_URL)."""
    return f"mg:rl:t{uuid.uuid4().hex[:10]}:"


class RedisServer:
    """A private redis-server on 127.0.0.1:<port>; ``start`` again after ``kill`` reuses the port."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server on PATH")
        self.binary = binary
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client (close it: ``with server.client() as r``)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def ping(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self) -> RedisServer:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/tmp",
        )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server on port {self.port} exited with {proc.returncode}")
            return self.ping()

        wait_until(up, 10, f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a goodbye."""
        if self.proc is not None:
            self.resume()
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (timeouts)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` when set, else a private redis-server shared by the module's tests."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server this test may kill, pause, restart or flush."""
    server = RedisServer()
    with server:
        yield server


def make_doc(
    limits: Sequence[tuple[int, str] | tuple[int, str, int]] | None = None,
    *,
    name: str = "api",
    algorithm: str = "gcra",
    failure_mode: str = "allow-local",
) -> RateLimit:
    """A RateLimit document: ``limits`` as ``(requests, per)`` or ``(requests, per, burst)``."""
    entries: list[dict[str, Any]] = []
    for limit in limits or [(10, "1s")]:
        entry: dict[str, Any] = {"requests": limit[0], "per": limit[1]}
        if len(limit) == 3:
            entry["burst"] = limit[2]
        entries.append(entry)
    return RateLimit.model_validate(
        {
            "apiVersion": "meshgate/v1",
            "kind": "RateLimit",
            "name": name,
            "key": [{"type": "apiKey"}],
            "limits": entries,
            "algorithm": algorithm,
            "failureMode": failure_mode,
        }
    )


@contextlib.asynccontextmanager
async def open_limiter(url: str | None, **kwargs: Any) -> AsyncIterator[RateLimiter]:
    """A limiter with its own key prefix (unless given), closed on exit."""
    kwargs.setdefault("key_prefix", fresh_prefix())
    limiter = RateLimiter(url, **kwargs)
    try:
        yield limiter
    finally:
        await limiter.close()


def redis_time_s(url: str) -> float:
    """Redis's clock (what the script uses), in seconds."""
    with redis.Redis.from_url(url, socket_timeout=2) as client:
        seconds, micros = client.time()
        return float(seconds) + float(micros) / 1e6


# ----- the accuracy worker (a separate OS process) ----------------------------------------------------

ACCURACY_LIMIT = 1000
ACCURACY_PER = "10s"


async def hammer(url: str, key: str, algorithm: str, attempts: int, clients: int, seconds: float) -> None:
    """Print ``ready``, wait for ``go <epoch>`` on stdin and for that instant, then run ``clients``
    concurrent loops against one key until ``attempts`` checks were made or ``seconds`` passed; print
    the counts as JSON."""
    doc = make_doc(
        [(ACCURACY_LIMIT, ACCURACY_PER)], name="accuracy", algorithm=algorithm, failure_mode="deny"
    )
    limiter = RateLimiter(url, key_prefix="mg:rl:accuracy:", timeout=2.0)
    try:
        await limiter.check(doc, f"{key}-warmup")  # connect and load the script before the start
        print("ready", flush=True)
        line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), 30)
        word, _, start_at = line.strip().partition(" ")
        if word != "go":
            raise SystemExit(f"expected 'go <epoch seconds>', got {line!r}")
        await asyncio.sleep(min(5.0, max(0.0, float(start_at) - time.time())))  # all workers at once
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        made = 0
        admitted = 0
        sources: Counter[str] = Counter()
        first_admit_asked = math.inf  # wall clock (one clock for all workers on this host)
        last_admit_answered = -math.inf

        async def client() -> None:
            nonlocal made, admitted, first_admit_asked, last_admit_answered
            while made < attempts and loop.time() < deadline:
                made += 1
                asked = time.time()
                decision = await limiter.check(doc, key)
                sources[decision.source] += 1
                if decision.allowed:
                    admitted += 1
                    first_admit_asked = min(first_admit_asked, asked)
                    last_admit_answered = max(last_admit_answered, time.time())
                await asyncio.sleep(0)  # a real handler would do I/O here

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        print(
            json.dumps(
                {
                    "admitted": admitted,
                    "attempts": made,
                    "elapsed": elapsed,
                    "sources": dict(sources),
                    "round_trips": limiter.stats["round_trips"],
                    "first_admit_asked": first_admit_asked if admitted else None,
                    "last_admit_answered": last_admit_answered if admitted else None,
                }
            ),
            flush=True,
        )
    finally:
        await limiter.close()


if __name__ == "__main__":
    if len(sys.argv) != 8 or sys.argv[1] != "hammer":
        raise SystemExit("usage: ratelimit_testlib.py hammer URL KEY ALGORITHM ATTEMPTS CLIENTS SECONDS")
    _, _, url, key, algorithm, attempts, clients, seconds = sys.argv
    main = hammer(url, key, algorithm, int(attempts), int(clients), float(seconds))
    try:  # the gateway's own loop (gateway.cli runs on uvloop)
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
