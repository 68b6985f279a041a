"""The admin port's answers and ``meshgate wait-ready``'s edge cases."""

from __future__ import annotations

import argparse
import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mesh.admin import admin_response
from mesh.cli import cmd_wait_ready
from mesh.transport.messages import Request, Response, body_of


def admin(method: str, target: str, quit_calls: list[int]) -> Response:
    async def go() -> Response:
        return await admin_response(
            Request(method, target, "admin", body=body_of(b"")),
            ready=lambda: True,
            metrics=lambda: "",
            describe=dict,
            quit=lambda: quit_calls.append(1),
        )

    return asyncio.run(go())


def test_quitquitquit_takes_post_only_and_says_so() -> None:
    calls: list[int] = []
    for method in ("GET", "PUT"):
        response = admin(method, "/quitquitquit", calls)
        assert response.status == 405 and response.header("allow") == "POST"
    assert calls == []
    assert admin("POST", "/quitquitquit", calls).status == 200 and calls == [1]


def test_absolute_form_targets_are_served() -> None:
    assert admin("GET", "http://127.0.0.1:15000/readyz", []).status == 200
    assert admin("GET", "http://127.0.0.1:15000", []).status == 404  # "/" is no admin page
    assert admin("GET", "/nope", []).status == 404


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def ready_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def wait_ready(admin_url: str, timeout: float) -> int:
    return cmd_wait_ready(argparse.Namespace(admin=admin_url, timeout=timeout))


def test_wait_ready_tries_once_even_with_no_time_left() -> None:
    with ready_server() as url:
        assert wait_ready(url, 0.0) == 0


def test_wait_ready_refuses_an_address_that_is_not_a_url() -> None:
    assert wait_ready("127.0.0.1:9", 5.0) == 2


def test_wait_ready_keeps_to_its_timeout_against_a_port_that_never_answers() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts (the kernel does), never answers
        started = time.monotonic()
        assert wait_ready(f"http://127.0.0.1:{silent.getsockname()[1]}", 0.3) == 1
        assert time.monotonic() - started < 1.5  # each try was bounded by the time left, not 2 s


def test_readyz_answers_the_reason_it_is_given() -> None:
    async def go() -> tuple[int, bytes]:
        response = await admin_response(
            Request("GET", "/readyz", "admin", body=body_of(b"")),
            ready=lambda: False,
            metrics=lambda: "",
            describe=dict,
            why_not_ready=lambda: "stopping",
        )
        return response.status, b"".join([chunk async for chunk in response.body])

    assert asyncio.run(go()) == (503, b"not ready: stopping\n")


class NotReady(Ready):
    def do_GET(self) -> None:
        body = b"not ready: no configuration yet\n"
        self.send_response(503)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_wait_ready_says_what_it_saw_last(capsys: pytest.CaptureFixture[str]) -> None:
    """It said only "not ready after 6s": whether nothing listened or the sidecar said why not was lost."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert wait_ready(f"http://127.0.0.1:{server.server_address[1]}", 0.3) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert "(last: HTTP 503 'not ready: no configuration yet')" in capsys.readouterr().err
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        assert wait_ready(f"http://127.0.0.1:{port}", 0.2) == 1
    assert "refused" in capsys.readouterr().err.lower()
