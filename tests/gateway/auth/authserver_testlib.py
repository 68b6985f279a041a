"""A real HTTP auth service for the ext_authz and introspection tests, on 127.0.0.1 with bounded waits.

:class:`AuthServer` runs a Starlette app under uvicorn on a thread of its own (own event loop). It
records every request it receives (method, raw target, headers in order, body) and answers with
``server.reply``: a fixed :class:`Reply` or a function of the :class:`Received` request, switchable
between tests or mid-test (``allow``, ``deny``, ``fail``, ``slow``). Slow answers end early when the
server stops, so stopping never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

T = TypeVar("T")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]


@dataclass(frozen=True)
class Received:
    """One request as the auth service saw it."""

    method: str
    target: str  # raw path, plus '?' and the raw query when there is one
    headers: list[tuple[str, str]]  # lower-case names, in order, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def names(self) -> list[str]:
        return [key for key, _ in self.headers]


@dataclass
class Reply:
    """What the auth service answers; ``delay`` seconds first (ends early when the server stops)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0


def json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(status, [("content-type", "application/json")], json.dumps(data).encode())


class AuthServer:
    """See the module docstring. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self) -> None:
        self.reply: Reply | Callable[[Received], Reply] = Reply()
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0

    # ----- modes ----------------------------------------------------------------------------------

    def allow(self, headers: list[tuple[str, str]] | None = None) -> None:
        self.reply = Reply(200, headers or [])

    def deny(
        self, status: int = 403, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> None:
        self.reply = Reply(status, headers or [], body)

    def fail(self, status: int = 500) -> None:
        self.reply = Reply(status, [("content-type", "text/plain")], b"auth service is broken")

    def slow(self, delay: float, then: Reply | None = None) -> None:
        base = then or Reply()
        self.reply = Reply(base.status, base.headers, base.body, delay)

    # ----- what it saw ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self._received)

    def last(self) -> Received:
        received = self.received
        assert received, "the auth service received no request"
        return received[-1]

    def clear(self) -> None:
        with self._lock:
            self._received.clear()

    # ----- the app --------------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        query = request.scope.get("query_string", b"")
        target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        received = Received(request.method, target, headers, await request.body())
        with self._lock:
            self._received.append(received)
            reply = self.reply(received) if callable(self.reply) else self.reply
        if reply.delay > 0:
            assert self._stop is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), reply.delay)
        response = Response(reply.body, status_code=reply.status)
        for key, value in reply.headers:
            response.raw_headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
        return response

    # ----- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> AuthServer:
        self._thread = threading.Thread(target=self._thread_main, name="auth-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"auth server not ready after {timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start() or stop()
            self._error = exc
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=ALL_METHODS)])
        config = uvicorn.Config(
            app,
            lifespan="off",
            http="h11",
            ws="none",
            log_level="warning",
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            deadline = time.monotonic() + 10
            while not server.started and not task.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if not server.started:
                raise AssertionError("uvicorn did not start")
            self._ready.set()
            await self._stop.wait()
            server.should_exit = True
            await asyncio.wait_for(task, 10)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            sock.close()

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "auth server did not stop"
        if self._error is not None:
            raise self._error

    def __enter__(self) -> AuthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    """``asyncio.run`` with an overall bound."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())
