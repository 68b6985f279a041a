"""The outbound mesh client: discover -> balance -> retry/timeout/breaker -> connect (mTLS HTTP/2).

Sidecars use it for their app's outbound calls and the gateway calls it in-process. Every locally
generated error carries ``x-meshgate-error`` (``no_healthy_upstream``, ``connect_failure``,
``upstream_timeout``, ``circuit_open``, ``upstream_reset``, ``tls_identity_mismatch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from opentelemetry.trace import SpanKind, Status, StatusCode

from mesh.outbound.balancer import Balancer, make_balancer
from mesh.outbound.endpoints import Endpoint, EndpointTable, now
from mesh.outbound.resilience import (
    IDEMPOTENT,
    Breaker,
    OutlierDetector,
    RetryBudgetTracker,
    backoff_delay,
    retry_after_seconds,
)
from mesh.transport.h1 import UpstreamError
from mesh.transport.h2conn import H2Protocol, StreamError
from mesh.transport.messages import (
    Request,
    Response,
    body_of,
    error_response,
    on_finish,
    ready_now,
)
from mesh.transport.pool import H2Pool
from shared.config.model.mesh import TrafficPolicy
from shared.telemetry.tracing import Tracing, end, finish

log = logging.getLogger("meshgate.outbound")

#: Request bodies up to this size are kept so that a failed attempt can be retried.
REPLAY_LIMIT = 64 * 1024
TRACE_HEADERS = ("traceparent", "tracestate")
RETRY_STATUSES = {"gateway-error": frozenset({502, 503, 504}), "5xx": frozenset(range(500, 600))}
#: The status of a locally made answer per error code (503 for the others).
ERROR_STATUS = {"upstream_timeout": 504, "headers_too_large": 431, "request_body_failed": 400}


@dataclass
class Upstream:
    """Per-service state: its traffic policy, balancer, breaker, budget and outlier detector."""

    policy: TrafficPolicy
    balancer: Balancer
    breaker: Breaker
    budget: RetryBudgetTracker
    outliers: OutlierDetector
    stats: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "retries": 0, "ejections": 0, "overflows": 0}
    )

    @classmethod
    def of(cls, policy: TrafficPolicy) -> Upstream:
        """Fresh state for ``policy``."""
        return cls(
            policy,
            make_balancer(policy.load_balancer.policy),
            Breaker(policy.circuit_breaker),
            RetryBudgetTracker(policy.retries.budget),
            OutlierDetector(policy.outlier_detection),
        )


class MeshClient:
    """Calls services of the mesh by name."""

    def __init__(self, pool: H2Pool, tracing: Tracing | None = None) -> None:
        self.pool = pool
        self.tracing = tracing or Tracing("meshgate")
        self.endpoints = EndpointTable()
        self._upstreams: dict[str, Upstream] = {}
        self.in_flight = 0
        self._stats: dict[str, dict[str, int]] = {}  # per service; outlives a rebuilt Upstream
        self._policies: Mapping[str, TrafficPolicy] = {}

    def update(
        self, endpoints: Mapping[str, list[Mapping[str, Any]]], policies: Mapping[str, TrafficPolicy]
    ) -> None:
        """Adopt a new snapshot: endpoints and each service's traffic policy."""
        self.endpoints.update(endpoints)
        self._policies = policies
        for name, upstream in list(self._upstreams.items()):
            if policies.get(name, TrafficPolicy()) != upstream.policy:
                del self._upstreams[name]  # rebuilt with the new policy on next use

    def upstream(self, service: str) -> Upstream:
        """The state for ``service``."""
        upstream = self._upstreams.get(service)
        if upstream is None:
            upstream = Upstream.of(self._policies.get(service, TrafficPolicy()))
            upstream.stats = self._stats.setdefault(service, upstream.stats)  # counters never go back
            self._upstreams[service] = upstream
        return upstream

    def upstream_stats(self) -> dict[str, dict[str, int]]:
        """Counters per service called so far (``requests``, ``retries``, ``ejections``, ``overflows``)."""
        return {service: dict(stats) for service, stats in self._stats.items()}

    async def request(
        self, service: str, request: Request, *, policy: TrafficPolicy | None = None
    ) -> Response:
        """Send ``request`` to some healthy instance of ``service``; never raises for upstream trouble.

        ``policy`` overrides the service's timeout and retries for this request (a gateway route's own);
        the breaker, budget and outlier detection stay the service's. ``in_flight`` counts requests
        from here until their response body is done (what a drain waits for)."""
        self.in_flight += 1
        try:
            response = await self._request(service, request, policy)
        except BaseException:
            self.in_flight -= 1
            raise
        on_finish(response, self._finished)
        return response

    def _finished(self) -> None:
        self.in_flight -= 1

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight, at most ``timeout`` seconds; True when none is."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.in_flight > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight <= 0

    async def _request(self, service: str, request: Request, policy: TrafficPolicy | None) -> Response:
        endpoints = self.endpoints.get(service)
        if not endpoints:  # before any per-service state: apps may name any host
            return error_response(503, "no_healthy_upstream", f"no healthy endpoint for service {service!r}")
        upstream = self.upstream(service)
        if not upstream.breaker.admit():
            upstream.stats["overflows"] += 1  # maxRequests reached: a refusal like maxPendingRequests'
            return error_response(503, "circuit_open", f"too many requests in flight to {service!r}")
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                upstream.breaker.done()

        try:
            response = await self._attempts(service, upstream, endpoints, request, policy or upstream.policy)
        except BaseException:
            release()
            raise
        on_finish(response, release)
        return response

    async def _replayable(self, request: Request, method_may_retry: bool) -> bytes | _Replay | None:
        """What a retry can send again: the whole body as bytes when it is known and small enough
        (then ``request.body`` is set to replay it), a :class:`_Replay` for a small body that streams
        to the first attempt while a copy is kept, or None (the body streams once: only failures that
        sent none of it, connect failures, are retried)."""
        if request.method == "CONNECT":  # a tunnel: its bytes are no request body to send again
            return None
        length = request.header("content-length")
        if length is not None:
            if length.isascii() and length.isdigit() and int(length) <= REPLAY_LIMIT:
                data = b"".join([chunk async for chunk in request.body])
                request.body = body_of(data)
                return data
            return None
        if request.method in ("GET", "HEAD", "DELETE", "OPTIONS"):
            # these rarely carry a body, and an HTTP/1.1 caller's empty one cannot say so without a
            # read: read at most REPLAY_LIMIT + 1 bytes (an empty body then ends the HEADERS frame,
            # no task pumps it); a larger body streams on, not retried
            body = request.body.__aiter__()
            head: list[bytes] = []
            size = 0
            async for chunk in body:
                head.append(chunk)
                size += len(chunk)
                if size > REPLAY_LIMIT:
                    request.body = _chain(head, body)
                    return None
            data = b"".join(head)
            request.body = body_of(data)
            if data:
                request.headers.append(("content-length", str(len(data))))
            return data
        ready = ready_now(request.body)
        if ready is not None and ready[1] and len(ready[0]) <= REPLAY_LIMIT:
            # all of it is here already (an h2c caller's body that ended): taken now, no waiting
            data = b"".join([chunk async for chunk in request.body])
            request.body = body_of(data)
            return data
        if not method_may_retry:
            return None
        # a retry is allowed for the method: the body streams to the first attempt at once (a gRPC
        # stream, a chunked upload) while up to REPLAY_LIMIT bytes of it are kept
        replay = _Replay(request.body)
        request.body = replay.body()
        return replay

    async def _attempts(
        self,
        service: str,
        upstream: Upstream,
        endpoints: list[Endpoint],
        request: Request,
        policy: TrafficPolicy,
    ) -> Response:
        retries = policy.retries
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.timeout.total_seconds()
        method_may_retry = request.method in IDEMPOTENT or retries.non_idempotent
        replay = await self._replayable(request, method_may_retry and retries.attempts > 0)
        trace_parent = [(k, v) for k, v in request.headers if k in TRACE_HEADERS]
        may_retry = replay is not None and method_may_retry
        upstream.stats["requests"] += 1
        upstream.budget.record_request()
        key = None
        if policy.load_balancer.hash_header:
            key = request.header(policy.load_balancer.hash_header.lower())
        attempt = 0
        tried: set[str] = set()
        waited = False  # a request waits for a reconnect backoff to end once at most
        try:
            while True:
                attempt += 1
                t = now()
                available = [e for e in endpoints if e.available(t)] or endpoints
                # a retry goes to an endpoint this request has not tried yet, while there is one, and
                # an endpoint backing off after failed connects only when every other does too
                candidates = [e for e in available if e.id not in tried] or available
                backing_off = self.pool.backing_off
                if backing_off:
                    candidates = _reachable(self.pool, candidates, available, endpoints)
                endpoint = upstream.balancer.pick(candidates, key)
                assert endpoint is not None
                tried.add(endpoint.id)
                may_wait = True
                if backing_off and self.pool.backoff_left(endpoint) > 0:
                    may_wait = not waited
                    waited = True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return _tried_error(attempt, 504, "upstream_timeout", f"{service}: timed out")
                per_try = retries.per_try_timeout.total_seconds() if retries.per_try_timeout else remaining
                if attempt > 1 and type(replay) is bytes:
                    request.body = body_of(replay)
                error, response = await self._try(
                    upstream,
                    endpoints,
                    endpoint,
                    request,
                    min(per_try, remaining),
                    attempt,
                    trace_parent,
                    may_wait,
                    service,
                )
                if error is not None:
                    code = error.code
                    if code == "circuit_open":  # a local limit: answered at once
                        upstream.stats["overflows"] += 1
                        return _tried_error(attempt, 503, "circuit_open", f"{service}: {error.message}")
                    if code == "request_body_failed":
                        # the caller's own body broke (a client gone, a body it framed wrongly): not the
                        # endpoint's failure, so no outlier count and no retry
                        return _tried_error(attempt, 400, "bad_request", f"{service}: {error.message}")
                    if code == "headers_too_large":
                        # the caller's header list is over what the peer takes: its fault too, and the
                        # same on every endpoint (never sent, so no outlier count, no retry, no budget)
                        return _tried_error(attempt, 431, "headers_too_large", f"{service}: {error.message}")
                    if error.refused:
                        # every candidate backs off after failed connects and this request has waited
                        # once already, or could not wait (its deadline, a wrong identity): nothing was
                        # tried, and a retry now would meet the same backoff
                        return _answer(service, attempt, error, response)
                connect_failure = error is not None and error.code == "connect_failure"
                # what went wrong before a connection was had is counted by the connect itself, once
                # (see _connection), not by each request that waited for it
                if (error is None or error.counted) and upstream.outliers.record(
                    endpoint,
                    status=response.status if response is not None else 503,
                    connect_failure=connect_failure,
                    all_eps=endpoints,
                    now=now(),
                ):
                    upstream.stats["ejections"] += 1
                    log.warning("ejected %s of %s after consecutive failures", endpoint.id, service)
                # may this answer be tried again? (each check only when the one before allows it)
                if attempt > retries.attempts:
                    return _answer(service, attempt, error, response)
                if response is not None:
                    if not (may_retry and _retryable_status(response.status, retries.retry_on)):
                        return _tried(response, attempt)
                else:
                    assert error is not None
                    if not (error.retryable and _retryable_error(error.code, retries.retry_on)):
                        return _answer(service, attempt, error, response)
                    # a connect failure sent nothing, whatever the body; a refused stream was never
                    # processed (RFC 9113 section 8.7), whatever the method, but may have taken body bytes
                    refused = error.code == "refused_stream" and replay is not None
                    never_processed = connect_failure or refused
                    if not (may_retry or never_processed):
                        return _answer(service, attempt, error, response)
                cap = retries.backoff.max.total_seconds()
                delay = backoff_delay(attempt, retries.backoff.base.total_seconds(), cap)
                if response is not None:
                    hinted = retry_after_seconds(response.header("retry-after"))
                    if hinted is not None:
                        if hinted > cap:  # the upstream wants more rest than we would wait: its answer
                            return _tried(response, attempt)
                        delay = hinted
                if loop.time() + delay >= deadline:  # the retry would not start in time: the real answer
                    return _answer(service, attempt, error, response)
                if isinstance(replay, _Replay) and not replay.can_replay():
                    return _answer(service, attempt, error, response)  # its copy is gone or still in use
                if not upstream.budget.try_retry():
                    return _answer(service, attempt, error, response, " (retry budget spent)")
                # committed to retry from here
                upstream.stats["retries"] += 1
                if isinstance(replay, _Replay):
                    request.body = replay.body()
                if response is not None:
                    _abandon(response)  # never read: a failed answer's body may stall or never end
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            if isinstance(replay, _Replay):
                replay.stop()  # the answer is final: no more copying (a long stream keeps only its start)

    async def _connection(
        self,
        upstream: Upstream,
        endpoint: Endpoint,
        endpoints: Sequence[Endpoint],
        timeout: float,
        may_wait: bool,
        service: str,
    ) -> H2Protocol:
        """A connection to ``endpoint`` within the circuit breaker's limits: at most
        ``maxConnections`` to the service, at most ``maxPendingRequests`` waiting for one to open
        (UpstreamError ``circuit_open`` beyond that: answered at once, never queued). A wait for the
        endpoint's reconnect backoff to end (``may_wait``) counts as waiting for a connection; one
        that leaves no time to connect within ``timeout`` is not begun (the last failure at once,
        ``refused``). A connect that fails counts once for outlier detection, here, with the service's
        policy as it is when the connect ends (it may have changed meanwhile)."""
        limits = upstream.breaker.limits

        def may_open() -> bool:
            return self.pool.count(endpoints) < limits.max_connections

        conn = self.pool.ready(endpoint, may_open)
        if conn is not None:
            return conn
        deadline = asyncio.get_running_loop().time() + timeout

        def failed(error: UpstreamError) -> None:
            current = self.upstream(service)
            if current.outliers.record(
                endpoint,
                status=503,
                connect_failure=error.code == "connect_failure",
                all_eps=self.endpoints.get(service) or endpoints,
                now=now(),
            ):
                current.stats["ejections"] += 1
                log.warning("ejected %s after consecutive failed connects", endpoint.id)

        if not upstream.breaker.wait_for_connection():
            raise UpstreamError(
                "circuit_open", f"{limits.max_pending_requests} requests wait for a connection"
            )
        try:
            return await self.pool.connection(
                endpoint, may_open, deadline=deadline, may_wait=may_wait, on_failure=failed
            )
        finally:
            upstream.breaker.connected()

    async def _try(
        self,
        upstream: Upstream,
        endpoints: Sequence[Endpoint],
        endpoint: Endpoint,
        request: Request,
        timeout: float,
        attempt: int,
        trace_parent: Sequence[tuple[str, str]],
        may_wait: bool,
        service: str,
    ) -> tuple[_Failure | None, Response | None]:
        endpoint.active += 1
        done = False
        connected = False  # a failure before this is the connect's, counted by it (see _connection)

        def finished() -> None:
            nonlocal done
            if not done:
                done = True
                endpoint.active -= 1

        if attempt > 1:
            request.headers = [(k, v) for k, v in request.headers if k != "x-meshgate-attempt"]
            request.headers.append(("x-meshgate-attempt", str(attempt)))
        # one CLIENT span per attempt, each a child of the caller's context (not of the previous attempt);
        # nothing to build on the hot path when tracing is off (the caller's context passes as it is)
        attributes: dict[str, Any] = {}
        base = request.headers
        if self.tracing.enabled:
            attributes = {
                "server.address": endpoint.address,
                "server.port": endpoint.port,
                "url.full": f"https://{request.authority}{request.path}",
                "url.scheme": "https",
                "network.protocol.version": "2",
            }
            if attempt > 1:
                attributes["http.request.resend_count"] = attempt - 1
            base = [(k, v) for k, v in request.headers if k not in TRACE_HEADERS] + list(trace_parent)
        # the span lasts until the response body is done (or the attempt failed), not just its head
        with self.tracing.span(SpanKind.CLIENT, request.method, base, attributes, end_on_exit=False) as (
            span,
            headers,
        ):
            request.headers = headers
            try:
                # one task from choosing the connection to opening the stream: no other request can
                # take the stream slot the pool found in between (asyncio.wait_for would run a new task)
                async with asyncio.timeout(timeout):
                    conn = await self._connection(upstream, endpoint, endpoints, timeout, may_wait, service)
                    connected = True
                    response = await conn.request(request)
            except UpstreamError as exc:
                finished()
                _failed(span, exc.code)
                end(span)
                return _Failure(exc.code, str(exc), exc.retryable, connected, exc.refused), None
            except StreamError as exc:
                finished()
                # REFUSED_STREAM or GOAWAY before processing: never processed, safe whatever the method
                code = "refused_stream" if exc.retryable else exc.code
                _failed(span, code)
                end(span)
                return _Failure(code, str(exc), True), None
            except TimeoutError:
                finished()
                _failed(span, "upstream_timeout")
                end(span)
                return _Failure(
                    "upstream_timeout",
                    f"no response from {endpoint.id} within {timeout:.3g}s"
                    + ("" if connected else " (no connection to it yet)"),
                    True,
                    connected,
                ), None
            except BaseException:  # cancelled: the caller went away
                finished()
                end(span)
                raise
            finish(span, response.status, client=True)
        if not conn.session_saved:
            conn.session_saved = True
            self.pool.remember_session(conn)

        def body_done() -> None:
            finished()
            end(span)

        on_finish(response, body_done)
        return None, response


#: The ``retryOn`` member that governs each retryable error of an attempt. A per-try timeout is
#: answered 504, a gateway error. GOAWAY before processing counts as a refused stream.
RETRY_ON_ERROR = {
    "connect_failure": ("connect-failure",),
    "upstream_reset": ("reset",),
    "refused_stream": ("refused-stream",),
    "upstream_timeout": ("gateway-error", "5xx"),
}


def _reachable(
    pool: H2Pool, candidates: list[Endpoint], available: list[Endpoint], every: list[Endpoint]
) -> list[Endpoint]:
    """``candidates`` without the endpoints backing off after failed connects; when that leaves none,
    the other ``available`` endpoints that do not back off (tried already), then the endpoints
    ejected for 5xx (one may well answer, a backing-off one cannot; one ejected for failed connects
    is probably down); when every one backs off, the one whose backoff ends first (one being probed
    ranks first)."""
    ejected_for_5xx = [e for e in every if not e.ejected_for_connects]
    for group in (candidates, available, ejected_for_5xx):
        ready = [e for e in group if pool.backoff_left(e) <= 0]
        if ready:
            return ready
    return [min(candidates, key=pool.backoff_left)]


def _retryable_error(code: str, retry_on: Sequence[str]) -> bool:
    return any(member in retry_on for member in RETRY_ON_ERROR.get(code, ()))


def _retryable_status(status: int, retry_on: Sequence[str]) -> bool:
    if status < 500:
        return False
    return any(status in RETRY_STATUSES.get(member, ()) for member in retry_on)


def _answer(
    service: str,
    attempts: int,
    error: _Failure | None,
    response: Response | None,
    note: str = "",
) -> Response:
    """The caller's answer from the last attempt: the upstream's response, else the attempt's error."""
    if response is not None:
        return _tried(response, attempts)
    assert error is not None
    code, message = error.code, error.message
    if code == "refused_stream":
        code = "upstream_reset"  # what callers know it as
    status = ERROR_STATUS.get(code, 503)
    return _tried_error(attempts, status, code, f"{service}: {message}{note}")


def _abandon(response: Response) -> None:
    """Drop a failed attempt's response unread: its stream is reset (RST_STREAM CANCEL) and its span
    and counts end now. Reading it first waited for a body that may stall, or fail, with no deadline."""
    if response.on_close is not None:
        with contextlib.suppress(Exception):
            response.on_close()


class _Failure(NamedTuple):
    """Why an attempt got no response: an ``x-meshgate-error`` code (or ``refused_stream``), a message,
    whether a retry may help, whether outlier detection counts it against the endpoint (not when it
    came before a connection was had: the connect counts its own failure, once), and whether nothing
    was tried at all (a reconnect backoff's refusal)."""

    code: str
    message: str
    retryable: bool
    counted: bool = True
    refused: bool = False


class _Superseded(Exception):
    """An attempt pulled the request body after a retry took it over."""


class _Replay:
    """A request body streamed to the attempts, with a copy of what was pulled so far while it stays
    within REPLAY_LIMIT: a retry sends the copy again, then goes on pulling from the caller. Only the
    newest attempt's view may pull (an earlier attempt's body sender fails instead: never two readers
    of the caller's body), and no retry while a pull is under way or after one failed."""

    __slots__ = (
        "_ends_next",
        "_source",
        "broken",
        "chunks",
        "ended",
        "generation",
        "over",
        "pulling",
        "size",
    )

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source.__aiter__()
        self.chunks: list[bytes] = []
        self.size = 0
        self.over = False  # more than REPLAY_LIMIT pulled: the copy was given up
        self.ended = False
        self.pulling = False
        self.broken = False  # a pull failed or was cancelled: what the caller's body holds is unknown
        self.generation = 0
        self._ends_next = False  # the source said its next chunk is its last

    def can_replay(self) -> bool:
        """True when a retry can send the body again (see :meth:`body`)."""
        return not (self.over or self.pulling or self.broken)

    def stop(self) -> None:
        """No retry will come: stop copying (what was copied stays, the last view may still send it)."""
        self.over = True

    def body(self) -> _ReplayBody:
        """A body for the next attempt: the copy, then the rest; earlier views stop working."""
        self.generation += 1
        return _ReplayBody(self, self.generation)

    def peek(self) -> tuple[bytes, bool] | None:
        if self.ended:
            return b"", True
        ready = ready_now(self._source)
        if ready is not None and ready[1]:
            if ready[0]:
                self._ends_next = True
            else:
                self.ended = True  # nothing more will come: no pull needed to learn it
        return ready

    async def pull(self) -> bytes:
        if self.ended:
            raise StopAsyncIteration
        self.pulling = True
        try:
            chunk = await self._source.__anext__()
        except StopAsyncIteration:
            self.ended = True
            raise
        except BaseException:
            self.broken = True
            raise
        finally:
            self.pulling = False
        if self._ends_next:
            self.ended = True
        if not self.over:
            self.size += len(chunk)
            if self.size > REPLAY_LIMIT:
                self.over = True
                self.chunks = []  # given up: the rest streams once
            else:
                self.chunks.append(chunk)
        return chunk


class _ReplayBody:
    """One attempt's view of a :class:`_Replay`."""

    __slots__ = ("_index", "_replay", "generation")

    def __init__(self, replay: _Replay, generation: int) -> None:
        self._replay = replay
        self.generation = generation
        self._index = 0

    def __aiter__(self) -> _ReplayBody:
        return self

    async def __anext__(self) -> bytes:
        replay = self._replay
        if replay.generation != self.generation:
            raise _Superseded("a retry took the request body over")
        if self._index < len(replay.chunks):
            self._index += 1
            return replay.chunks[self._index - 1]
        chunk = await replay.pull()
        self._index = len(replay.chunks)
        return chunk

    def ready_now(self) -> tuple[bytes, bool] | None:
        """As :func:`mesh.transport.messages.ready_now`: the copy's next chunk, else the caller's."""
        replay = self._replay
        if replay.generation != self.generation:
            return None
        if self._index < len(replay.chunks):
            last = self._index == len(replay.chunks) - 1
            return replay.chunks[self._index], last and replay.ended
        return replay.peek()


def _tried(response: Response, attempts: int) -> Response:
    response.attempts = attempts
    return response


def _tried_error(attempts: int, status: int, code: str, message: str) -> Response:
    return _tried(error_response(status, code, message), attempts)


def _failed(span: Any, code: str) -> None:
    if span is not None:
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR))


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk
