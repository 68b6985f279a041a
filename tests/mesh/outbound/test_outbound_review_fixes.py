"""The outbound client's retry loop after the resilience review: failed answers are dropped unread,
Retry-After is parsed as RFC 9110 says and may decline a retry, the caller's oversized header list
is its own fault, the last real answer beats a made-up 504, counters count only what happened,
retryOn governs errors too, and small streamed bodies are kept for a retry."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import uvloop
from meshrig_testlib import drain_body, mesh, ok_app, read_all, run, traffic

import mesh.outbound.client as client_module
from mesh.h2 import Limits
from mesh.h2.errors import ErrorCode
from mesh.outbound.client import REPLAY_LIMIT, MeshClient
from mesh.outbound.endpoints import Endpoint, now
from mesh.outbound.resilience import retry_after_seconds
from mesh.transport.h1 import ClientInfo, UpstreamError
from mesh.transport.h2conn import StreamError
from mesh.transport.messages import Request, Response, body_of, empty_body
from mesh.transport.pool import H2Pool
from shared.config.model.mesh import TrafficPolicy

T = TypeVar("T")


def status(code: int, *headers: tuple[str, str]) -> Response:
    return Response(code, [("content-length", "0"), *headers])


def answers(*responses: Callable[[], Response]) -> Callable[[Request, ClientInfo], Any]:
    """An app answering the given responses in turn (after reading the body), then 200 ``done``."""
    queue = list(responses)

    async def app(request: Request, info: ClientInfo) -> Response:
        await drain_body(request)
        if queue:
            return queue.pop(0)()
        return Response(200, [("content-length", "4")], body_of(b"done"))

    return app


def on_uvloop(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run ``coro`` on uvloop, the sidecar's and the gateway's loop (stricter than asyncio's)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


def closed_port() -> int:
    """A loopback port nobody listens on (connect: refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----- 2: a failed answer is dropped, not read --------------------------------------------------------------


def test_a_503_whose_body_stalls_is_dropped_unread_and_the_retry_answers_in_time(tmp_path: Path) -> None:
    """The 503's body sends a few bytes and stalls for 3 s; the request's timeout is 1 s. Reading it
    before the retry held the caller for the whole stall."""

    async def stalled() -> AsyncIterator[bytes]:
        yield b"busy"
        await asyncio.sleep(3)
        yield b"!"

    def stalling_503() -> Response:
        return Response(503, [], stalled())

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(answers(stalling_503))
            policy = traffic(timeout="1s", retries={"backoff": {"base": "1ms", "max": "1ms"}})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            started = time.monotonic()
            response, body = await rig.call("/")
            assert (response.status, body) == (200, b"done")
            assert time.monotonic() - started < 0.9
            assert len(up.seen) == 2
            assert rig.client.in_flight == 0
            # the 503's stream was reset (RST_STREAM CANCEL), not left open: the peer let go of it
            for _ in range(100):
                if not any(conn.streams for conn in up.inbound.connections):
                    break
                await asyncio.sleep(0.01)
            assert not any(conn.streams for conn in up.inbound.connections)

    run(go())


def test_a_503_whose_body_then_breaks_is_retried_not_raised(tmp_path: Path) -> None:
    """The 503's body breaks off (the app dies mid-body): reading it raised StreamError out of the
    client, which the sidecar answered 500 internal_error."""

    async def breaking() -> AsyncIterator[bytes]:
        yield b"busy"
        await asyncio.sleep(0.2)
        raise ConnectionResetError("the app died mid-body")

    def breaking_503() -> Response:
        return Response(503, [], breaking())

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(answers(breaking_503))
            policy = traffic(timeout="2s", retries={"backoff": {"base": "1ms", "max": "1ms"}})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            response, body = await rig.call("/")
            assert (response.status, body) == (200, b"done")
            assert len(up.seen) == 2

    run(go())


# ----- 3: Retry-After -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("7", 7.0),
        (" 12\t", 12.0),
        ("0012", 12.0),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-inf", None),
        ("-1", None),
        ("+1", None),
        ("1e400", None),
        ("1.5", None),
        ("0x10", None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit, not to RFC 9110
        ("", None),
        ("soon", None),
        ("9" * 5000, 1e12),  # no int() of 5000 digits: just "very long"
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # a date in the past: now
        ("Sun, 31 Feb 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("06 Nov 1994 08:49:37 GMT", None),
    ],
)
def test_retry_after_takes_only_rfc_9110_forms(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value) == expected


def test_retry_after_http_dates_in_all_three_forms() -> None:
    now = 784111770.0  # Sun, 06 Nov 1994 08:49:30 GMT
    assert retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", now=now) == 7.0
    assert retry_after_seconds("Sunday, 06-Nov-94 08:49:37 GMT", now=now) == 7.0
    assert retry_after_seconds("Sun Nov  6 08:49:37 1994", now=now) == 7.0


def test_retry_after_nan_is_ignored_on_uvloop(tmp_path: Path) -> None:
    """``Retry-After: nan`` reached ``asyncio.sleep(nan)``, which raises on uvloop: a 500."""

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(
                answers(
                    lambda: status(503, ("retry-after", "nan")), lambda: status(503, ("retry-after", "inf"))
                )
            )
            policy = traffic(retries={"backoff": {"base": "1ms", "max": "1ms"}})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            response, body = await rig.call("/")
            assert (response.status, body) == (200, b"done")
            assert len(up.seen) == 3

    on_uvloop(go())


def test_a_retry_after_beyond_the_backoff_cap_returns_the_answer_without_retrying(tmp_path: Path) -> None:
    """Capped to the backoff maximum, a ``Retry-After: 100000`` was retried at once."""

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(answers(lambda: status(503, ("retry-after", "100000"))))
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(timeout="10s")})
            response, _ = await rig.call("/")
            assert response.status == 503 and response.header("retry-after") == "100000"
            assert response.header("x-meshgate-error") is None  # the upstream's own answer
            assert len(up.seen) == 1
            assert rig.client.upstream("orders").stats["retries"] == 0

    run(go())


def test_a_retry_after_http_date_is_honoured(tmp_path: Path) -> None:
    times: list[float] = []

    async def app(request: Request, info: ClientInfo) -> Response:
        times.append(time.monotonic())
        if len(times) == 1:
            when = email.utils.formatdate(time.time() + 2, usegmt=True)  # in 1 to 2 s (whole seconds)
            return status(503, ("retry-after", when))
        return status(200)

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            policy = traffic(timeout="10s", retries={"backoff": {"base": "1ms", "max": "5s"}})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            response, _ = await rig.call("/")
            assert response.status == 200

    run(go())
    assert len(times) == 2
    assert 0.9 <= times[1] - times[0] < 3.0


# ----- 4: a header list too large for the peer --------------------------------------------------------------


def test_headers_too_large_is_the_callers_fault_no_retry_no_outlier_count(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            small = Limits(max_header_list_size=4096)
            ups = [await rig.upstream(ok_app(), limits=small) for _ in range(2)]
            policy = traffic(
                outlierDetection={
                    "consecutive5xx": 1,
                    "maxEjectionPercent": "100%",
                    "baseEjectionTime": "30s",
                }
            )
            rig.update({"orders": [up.endpoint() for up in ups]}, {"orders": policy})
            big = [(f"x-big-{i}", "v" * 40) for i in range(200)]
            for _ in range(3):
                response, _ = await rig.call("/", headers=big)
                assert (response.status, response.header("x-meshgate-error")) == (431, "headers_too_large")
                assert response.attempts == 1
            assert all(up.seen == [] for up in ups)  # never sent (a new connection waits for SETTINGS)
            upstream = rig.client.upstream("orders")
            assert upstream.stats["retries"] == 0 and upstream.stats["ejections"] == 0
            assert upstream.budget._total_retries == 0
            endpoints = rig.client.endpoints.get("orders")
            assert all(e.available(now()) and e.consecutive_5xx == 0 for e in endpoints)
            assert (await rig.call("/"))[0].status == 200  # and they still take requests

    run(go())


# ----- 7 and 8: the deadline --------------------------------------------------------------------------------


def test_a_retry_after_past_the_deadline_returns_the_503_and_counts_no_retry(tmp_path: Path) -> None:
    """It answered 504 upstream_timeout "timed out after 1 attempts" a few ms later."""

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(answers(lambda: status(503, ("retry-after", "1"))))
            policy = traffic(timeout="500ms", retries={"backoff": {"base": "25ms", "max": "5s"}})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            started = time.monotonic()
            response, _ = await rig.call("/")
            assert time.monotonic() - started < 0.4  # at once, no sleeping
            assert (response.status, response.header("retry-after")) == (503, "1")
            assert response.header("x-meshgate-error") is None
            assert len(up.seen) == 1
            upstream = rig.client.upstream("orders")
            assert upstream.stats["retries"] == 0 and upstream.budget._total_retries == 0

    run(go())


def test_a_connect_failure_whose_backoff_passes_the_deadline_answers_connect_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "backoff_delay", lambda *args, **kwargs: 5.0)

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            endpoint = {
                "id": "gone",
                "address": "127.0.0.1",
                "port": closed_port(),
                "identity": "spiffe://rig.test/ns/default/sa/orders",
            }
            rig.update({"orders": [endpoint]}, {"orders": traffic(timeout="2s")})
            started = time.monotonic()
            response, _ = await rig.call("/")
            assert time.monotonic() - started < 1.5
            assert (response.status, response.header("x-meshgate-error")) == (503, "connect_failure")
            upstream = rig.client.upstream("orders")
            assert upstream.stats["retries"] == 0 and upstream.budget._total_retries == 0

    run(go())


def test_a_request_that_times_out_counts_no_retry(tmp_path: Path) -> None:
    """The overall timeout passed during the first attempt: the retry that cannot happen was counted
    (meshgate_upstream_retries_total) and took from the budget."""

    async def slow(request: Request, info: ClientInfo) -> Response:
        await asyncio.sleep(1)
        return status(200)

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(slow)
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(timeout="300ms")})
            for _ in range(2):
                response, _ = await rig.call("/")
                assert (response.status, response.header("x-meshgate-error")) == (504, "upstream_timeout")
            upstream = rig.client.upstream("orders")
            assert upstream.stats["retries"] == 0 and upstream.budget._total_retries == 0
            assert len(up.seen) == 2

    run(go())


# ----- 9: maxRequests refusals are overflows ----------------------------------------------------------------


def test_max_requests_refusals_count_as_overflows(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def held(request: Request, info: ClientInfo) -> Response:
        await release.wait()
        return status(200)

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(held)
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(circuitBreaker={"maxRequests": 1})})
            first = asyncio.ensure_future(rig.call("/"))
            for _ in range(200):  # until the first is in flight
                if up.seen:
                    break
                await asyncio.sleep(0.01)
            for _ in range(3):
                response, _ = await rig.call("/")
                assert (response.status, response.header("x-meshgate-error")) == (503, "circuit_open")
            release.set()
            assert (await first)[0].status == 200
            assert rig.client.upstream_stats()["orders"]["overflows"] == 3

    run(go())


# ----- 10: retryOn governs errors too -----------------------------------------------------------------------


class _Conn:
    """A connection whose every request fails with ``error`` (or never answers: None)."""

    session_saved = True

    def __init__(self, error: Exception | None, log: list[str]) -> None:
        self.error = error
        self.log = log

    async def request(self, request: Request) -> Response:
        self.log.append("request")
        if self.error is None:
            await asyncio.sleep(10)
        assert self.error is not None
        raise self.error


class _Pool:
    """An H2Pool stand-in: connects fail with ``connect_error``, else hand out a failing ``_Conn``."""

    backing_off = False

    def __init__(self, connect_error: Exception | None, error: Exception | None) -> None:
        self.connect_error = connect_error
        self.log: list[str] = []
        self.conn = _Conn(error, self.log)

    def count(self, endpoints: list[Endpoint]) -> int:
        return 0

    def ready(self, endpoint: Endpoint, may_open: Any = None) -> _Conn | None:
        return None if self.connect_error is not None else self.conn

    async def connection(self, endpoint: Endpoint, may_open: Any = None, **kwargs: Any) -> _Conn:
        self.log.append("connect")
        assert self.connect_error is not None
        raise self.connect_error

    def remember_session(self, conn: Any) -> None:
        pass


def _tries(kind: str, retry_on: list[str] | None, method: str = "GET") -> tuple[int, int, str | None]:
    """(status, tries, x-meshgate-error) of one request whose every attempt fails with ``kind``."""
    connect = UpstreamError("connect_failure", "refused", retryable=True) if kind == "connect" else None
    error: Exception | None = {
        "connect": None,
        "reset": StreamError("stream reset (8)", ErrorCode.CANCEL),
        "refused": StreamError("stream reset (7)", ErrorCode.REFUSED_STREAM, retryable=True),
        "goaway": StreamError("connection going away", ErrorCode.NO_ERROR, "upstream_reset", True),
        "timeout": None,
    }[kind]
    pool = _Pool(connect, error)
    retries: dict[str, Any] = {
        "attempts": 2,
        "backoff": {"base": "1ms", "max": "1ms"},
        "perTryTimeout": "50ms",
    }
    if retry_on is not None:
        retries["retryOn"] = retry_on
    policy = TrafficPolicy.model_validate({"timeout": "5s", "retries": retries})

    async def go() -> tuple[int, int, str | None]:
        client = MeshClient(cast(H2Pool, pool))
        endpoint = {"id": "a", "address": "127.0.0.1", "port": 1, "identity": "spiffe://t/ns/default/sa/s"}
        client.update({"s": [endpoint]}, {"s": policy})
        request = Request(method, "/", "s", headers=[("content-length", "0")], body=empty_body())
        response = await client.request("s", request)
        await read_all(response)
        return response.status, len(pool.log), response.header("x-meshgate-error")

    return run(go())


def test_retry_on_governs_connect_failures_resets_refused_streams_and_timeouts() -> None:
    # each error kind is retried only when retryOn names its member
    assert _tries("connect", ["5xx"]) == (503, 1, "connect_failure")
    assert _tries("connect", ["connect-failure"]) == (503, 3, "connect_failure")
    assert _tries("reset", ["connect-failure", "refused-stream", "gateway-error"]) == (
        503,
        1,
        "upstream_reset",
    )
    assert _tries("reset", ["reset"]) == (503, 3, "upstream_reset")
    assert _tries("refused", ["connect-failure", "reset", "gateway-error"]) == (503, 1, "upstream_reset")
    assert _tries("refused", ["refused-stream"]) == (503, 3, "upstream_reset")
    assert _tries("goaway", ["reset"]) == (503, 1, "upstream_reset")
    assert _tries("goaway", ["refused-stream"]) == (503, 3, "upstream_reset")
    assert _tries("timeout", ["connect-failure", "reset", "refused-stream"]) == (504, 1, "upstream_timeout")
    assert _tries("timeout", ["gateway-error"]) == (504, 3, "upstream_timeout")
    assert _tries("timeout", ["5xx"]) == (504, 3, "upstream_timeout")
    # the defaults keep their behaviour: all of them retried; never-processed ones whatever the method
    for kind in ("connect", "reset", "refused", "goaway", "timeout"):
        assert _tries(kind, None)[1] == 3
    assert _tries("refused", None, method="POST")[1] == 3
    assert _tries("connect", None, method="POST")[1] == 3
    assert _tries("reset", None, method="POST")[1] == 1  # may have been processed


# ----- 11: streamed bodies kept for a retry -----------------------------------------------------------------


def test_a_chunked_put_and_a_non_idempotent_chunked_post_are_retried_with_their_whole_body(
    tmp_path: Path,
) -> None:
    bodies: list[tuple[str, bytes]] = []
    head_seen = asyncio.Event()
    early = asyncio.Event()  # set: answer 503 at once, reading nothing

    async def app(request: Request, info: ClientInfo) -> Response:
        head_seen.set()
        if early.is_set():
            bodies.append((request.method, b""))
            return status(503)
        data = await drain_body(request)
        bodies.append((request.method, data))
        return status(503) if len(bodies) % 2 == 1 else status(201)

    async def streamed(parts: list[bytes]) -> AsyncIterator[bytes]:
        """A body without Content-Length whose second part comes only once the app has the request:
        buffering it all before the first attempt would never end."""
        yield parts[0]
        await asyncio.wait_for(head_seen.wait(), 5)
        for part in parts[1:]:
            yield part

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            backoff = {"base": "1ms", "max": "1ms"}
            policies = {
                "orders": traffic(retries={"backoff": backoff}),
                "billing": traffic(retries={"backoff": backoff, "nonIdempotent": True}),
            }
            rig.update({"orders": [up.endpoint()], "billing": [up.endpoint("billing-ep")]}, policies)
            parts = [b"a" * 500, b"b" * 700, b"c" * 300]
            for method, service in (("PUT", "orders"), ("POST", "billing")):
                head_seen.clear()
                request = Request(method, "/up", service, headers=[], body=streamed(parts))
                response = await rig.client.request(service, request)
                await read_all(response)
                assert response.status == 201, method
                assert response.attempts == 2
            assert bodies == [("PUT", b"".join(parts))] * 2 + [("POST", b"".join(parts))] * 2

            # over REPLAY_LIMIT: streamed once, the copy given up, the 503 answered
            bodies.clear()
            head_seen.clear()
            big = [b"x" * (REPLAY_LIMIT // 2)] * 3
            request = Request("PUT", "/up", "orders", headers=[], body=streamed(big))
            response = await rig.client.request("orders", request)
            await read_all(response)
            assert response.status == 503 and bodies == [("PUT", b"".join(big))]

            # a POST that may not be retried streams once, untouched
            bodies.clear()
            head_seen.clear()
            request = Request("POST", "/up", "orders", headers=[], body=streamed(parts))
            response = await rig.client.request("orders", request)
            await read_all(response)
            assert response.status == 503 and len(bodies) == 1

            # a 503 while the first attempt still waits for the caller's next part: no retry may read
            # the caller's body at the same time (the caller gets the 503)
            bodies.clear()
            early.set()
            gate = asyncio.Event()

            async def waiting() -> AsyncIterator[bytes]:
                yield b"first"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gate.wait(), 1)
                yield b"second"

            request = Request("PUT", "/up", "orders", headers=[], body=waiting())
            response = await rig.client.request("orders", request)
            await read_all(response)
            assert response.status == 503 and len(bodies) == 1
            gate.set()

    run(go())
