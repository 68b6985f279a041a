"""A route's own ``timeout`` and ``retries`` (gateway/proxy.py ``route_policy``), through the gateway's ASGI
app and a real mesh hop: a slow app is cut off with 504, a flaky app is retried (``x-meshgate-attempt``
on each retry) or not, as the route says."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from gateway_testlib import edge, run

from mesh.transport.h1 import ClientInfo
from mesh.transport.messages import Request, Response, body_of

ROUTES = """\
apiVersion: meshgate/v1
kind: Route
name: slow
match: {path: {prefix: /slow}}
backends: [{service: orders}]
timeout: 300ms
---
apiVersion: meshgate/v1
kind: Route
name: retried
match: {path: {prefix: /retried}}
backends: [{service: orders}]
retries: {attempts: 2}
---
apiVersion: meshgate/v1
kind: Route
name: once
match: {path: {prefix: /once}}
backends: [{service: orders}]
retries: {attempts: 0}
---
apiVersion: meshgate/v1
kind: Route
name: per-try
match: {path: {prefix: /per-try}}
backends: [{service: orders}]
timeout: 5s
retries: {attempts: 2, perTryTimeout: 250ms}
"""

SLOW = 2.0  # seconds the slow app takes


def answer(status: int, text: bytes) -> Response:
    return Response(
        status, [("content-type", "text/plain"), ("content-length", str(len(text)))], body_of(text)
    )


class FlakyApp:
    """Per path: ``/slow...`` sleeps SLOW seconds; ``/per-try...`` sleeps SLOW seconds on its first
    attempt only; anything else fails with 503 on its first ``failures`` attempts, then answers 200.
    ``attempts`` records the ``x-meshgate-attempt`` header of every call (None when absent)."""

    def __init__(self, failures: int = 2) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()
        self.attempts: dict[str, list[str | None]] = {}

    async def __call__(self, request: Request, info: ClientInfo) -> Response:
        async for _ in request.body:
            pass
        path = request.path
        self.calls[path] += 1
        self.attempts.setdefault(path, []).append(request.header("x-meshgate-attempt"))
        if path.startswith("/slow") or (path.startswith("/per-try") and self.calls[path] == 1):
            await asyncio.sleep(SLOW)
            return answer(200, b"late")
        if self.calls[path] <= self.failures:
            return answer(503, b"app says try later")
        return answer(200, b"finally")


def test_a_route_timeout_answers_504_upstream_timeout_without_waiting_for_the_app(tmp_path: Path) -> None:
    app = FlakyApp()

    async def go() -> None:
        async with edge(tmp_path, ROUTES, apps={"orders": app}) as gw:
            started = time.monotonic()
            response = await gw.http.get("/slow/report")
            elapsed = time.monotonic() - started
            assert response.status_code == 504, response.text
            assert response.headers["x-meshgate-error"] == "upstream_timeout"
            assert 0.25 <= elapsed < 1.0, f"answered after {elapsed:.3f}s"

    run(go())


def test_a_route_with_retries_tries_again_on_503_until_the_app_answers(tmp_path: Path) -> None:
    app = FlakyApp(failures=2)

    async def go() -> None:
        async with edge(tmp_path, ROUTES, apps={"orders": app}) as gw:
            response = await gw.http.get("/retried/item")
            assert response.status_code == 200, response.text
            assert response.text == "finally"
            assert "x-meshgate-error" not in response.headers
            assert len(gw.upstreams["orders"].seen) == 3

    run(go())
    assert app.calls["/retried/item"] == 3
    assert app.attempts["/retried/item"] == [None, "2", "3"]


def test_a_route_with_retries_gives_up_after_its_attempts(tmp_path: Path) -> None:
    app = FlakyApp(failures=5)

    async def go() -> None:
        async with edge(tmp_path, ROUTES, apps={"orders": app}) as gw:
            response = await gw.http.get("/retried/broken")
            assert response.status_code == 503
            assert response.text == "app says try later"  # the app's last answer, not a gateway error
            assert "x-meshgate-error" not in response.headers

    run(go())
    assert app.attempts["/retried/broken"] == [None, "2", "3"]


def test_a_post_is_not_retried_even_on_a_route_with_retries(tmp_path: Path) -> None:
    app = FlakyApp(failures=2)

    async def go() -> None:
        async with edge(tmp_path, ROUTES, apps={"orders": app}) as gw:
            response = await gw.http.post("/retried/order", content=b"{}")
            assert response.status_code == 503
            assert response.text == "app says try later"

    run(go())
    assert app.calls["/retried/order"] == 1


def test_a_route_with_zero_retries_passes_the_503_through_after_one_attempt(tmp_path: Path) -> None:
    app = FlakyApp(failures=2)

    async def go() -> None:
        async with edge(tmp_path, ROUTES, apps={"orders": app}) as gw:
            response = await gw.http.get("/once/item")
            assert response.status_code == 503
            assert response.text == "app says try later"
            assert "x-meshgate-error" not in response.headers
            # the same app on a route with retries would have succeeded: the difference is the route's
            response = await gw.http.get("/retried/item")
            assert response.status_code == 200

    run(go())
    assert app.calls["/once/item"] == 1
    assert app.attempts["/once/item"] == [None]


def test_a_route_per_try_timeout_retries_a_slow_first_attempt(tmp_path: Path) -> None:
    app = FlakyApp(failures=0)

    async def go() -> None:
        async with edge(tmp_path, ROUTES, apps={"orders": app}) as gw:
            started = time.monotonic()
            response = await gw.http.get("/per-try/item")
            elapsed = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert response.text == "finally"
            assert elapsed < 1.5, f"answered after {elapsed:.3f}s"

    run(go())
    assert app.attempts["/per-try/item"] == [None, "2"]
