"""The outbound mesh client: discover -> balance -> retry/timeout/breaker -> connect (mTLS HTTP/2).

Sidecars use it for their app's outbound calls and the gateway calls it in-process. Every locally
generated error carries ``x-meshgate-error`` (``no_healthy_upstream``, ``connect_failure``,
``upstream_timeout``, ``circuit_open``, ``upstream_reset``, ``tls_identity_mismatch``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
from mesh.transport.messages import Request, Response, body_of, error_response, on_finish
from mesh.transport.pool import H2Pool
from shared.config.model.mesh import TrafficPolicy
from shared.telemetry.tracing import Tracing, end, finish

log = logging.getLogger("meshgate.outbound")

#: Request bodies up to this size are kept so that a failed attempt can be retried.
REPLAY_LIMIT = 64 * 1024
TRACE_HEADERS = ("traceparent", "tracestate")
RETRY_STATUSES = {"gateway-error": {502, 503, 504}, "5xx": set(range(500, 600))}


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

    async def _replayable(self, request: Request) -> bytes | None:
        """The whole body when it is small enough to send again on a retry (then ``request.body`` is
        set to replay it), else None (the body streams once and only connect failures are retried)."""
        length = request.header("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) <= REPLAY_LIMIT:
            data = b"".join([chunk async for chunk in request.body])
            request.body = body_of(data)
            return data
        if length is None and request.method in ("GET", "HEAD", "DELETE", "OPTIONS"):
            # read at most REPLAY_LIMIT + 1 bytes: a larger body streams on, not retried
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
        return None

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
        body = await self._replayable(request)
        replayable = body is not None
        trace_parent = [(k, v) for k, v in request.headers if k in TRACE_HEADERS]
        may_retry = replayable and (request.method in IDEMPOTENT or retries.non_idempotent)
        retry_statuses: set[int] = set()
        for kind in retries.retry_on:
            retry_statuses |= RETRY_STATUSES.get(kind, set())
        upstream.stats["requests"] += 1
        upstream.budget.record_request()
        key = None
        if policy.load_balancer.hash_header:
            key = request.header(policy.load_balancer.hash_header.lower())
        attempt = 0
        tried: set[str] = set()
        while True:
            attempt += 1
            t = now()
            available = [e for e in endpoints if e.available(t)] or endpoints
            # a retry goes to an endpoint this request has not tried yet, while there is one
            candidates = [e for e in available if e.id not in tried] or available
            endpoint = upstream.balancer.pick(candidates, key)
            assert endpoint is not None
            tried.add(endpoint.id)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return _tried_error(attempt, 504, "upstream_timeout", f"{service}: timed out")
            per_try = retries.per_try_timeout.total_seconds() if retries.per_try_timeout else remaining
            if body is not None:
                request.body = body_of(body)
            outcome = await self._try(
                upstream, endpoints, endpoint, request, min(per_try, remaining), attempt, trace_parent
            )
            error, response = outcome
            if error is not None and error[0] == "circuit_open":  # a local limit: answered at once
                upstream.stats["overflows"] += 1
                return _tried_error(attempt, 503, "circuit_open", f"{service}: {error[1]}")
            if error is not None and error[0] == "request_body_failed":
                # the caller's own body broke (a client gone, a body it framed wrongly): not the
                # endpoint's failure, so no outlier count and no retry
                return _tried_error(attempt, 400, "bad_request", f"{service}: {error[1]}")
            status = response.status if response is not None else None
            connect_failure = error is not None and error[0] == "connect_failure"
            refused = error is not None and error[0] == "refused_stream"
            if error is not None and refused:
                error = ("upstream_reset", error[1], error[2])
            if upstream.outliers.record(
                endpoint,
                status=status if error is None else 503,
                connect_failure=connect_failure,
                all_eps=endpoints,
                now=now(),
            ):
                upstream.stats["ejections"] += 1
                log.warning("ejected %s of %s after consecutive failures", endpoint.id, service)
            retryable_error = error is not None and error[2]
            retryable_status = response is not None and response.status in retry_statuses
            can_retry = attempt <= retries.attempts and (
                (retryable_error and (may_retry or connect_failure or (refused and replayable)))
                or (retryable_status and may_retry)
            )
            if response is not None and not (retryable_status and can_retry):
                return _tried(response, attempt)
            if error is not None and not can_retry:
                code, message, _ = error
                status = {"upstream_timeout": 504, "headers_too_large": 431}.get(code, 503)
                return _tried_error(attempt, status, code, f"{service}: {message}")
            if not upstream.budget.try_retry():
                if response is not None:
                    return _tried(response, attempt)
                assert error is not None
                return _tried_error(attempt, 503, error[0], f"{service}: {error[1]} (retry budget spent)")
            upstream.stats["retries"] += 1
            delay = backoff_delay(
                attempt, retries.backoff.base.total_seconds(), retries.backoff.max.total_seconds()
            )
            if response is not None:
                hinted = retry_after_seconds(
                    response.header("retry-after"), retries.backoff.max.total_seconds()
                )
                if hinted is not None:
                    delay = hinted
                async for _ in response.body:  # drain and drop the failed attempt
                    pass
            if loop.time() + delay >= deadline:
                return _tried_error(
                    attempt, 504, "upstream_timeout", f"{service}: timed out after {attempt} attempts"
                )
            await asyncio.sleep(delay)

    async def _connection(
        self, upstream: Upstream, endpoint: Endpoint, endpoints: Sequence[Endpoint]
    ) -> H2Protocol:
        """A connection to ``endpoint`` within the circuit breaker's limits: at most
        ``maxConnections`` to the service, at most ``maxPendingRequests`` waiting for one to open
        (UpstreamError ``circuit_open`` beyond that: answered at once, never queued)."""
        limits = upstream.breaker.limits
        ids = [e.id for e in endpoints]

        def may_open() -> bool:
            return self.pool.count(ids) < limits.max_connections

        conn = self.pool.ready(endpoint, may_open)
        if conn is not None:
            return conn
        if not upstream.breaker.wait_for_connection():
            raise UpstreamError(
                "circuit_open", f"{limits.max_pending_requests} requests wait for a connection"
            )
        try:
            return await self.pool.connection(endpoint, may_open)
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
        trace_parent: Sequence[tuple[str, str]] = (),
    ) -> tuple[tuple[str, str, bool] | None, Response | None]:
        endpoint.active += 1
        done = False

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
                    conn = await self._connection(upstream, endpoint, endpoints)
                    response = await conn.request(request)
            except UpstreamError as exc:
                finished()
                _failed(span, exc.code)
                end(span)
                return (exc.code, str(exc), exc.retryable), None
            except StreamError as exc:
                finished()
                # REFUSED_STREAM or GOAWAY before processing: never processed, safe whatever the method
                code = "refused_stream" if exc.retryable else exc.code
                _failed(span, code)
                end(span)
                return (code, str(exc), True), None
            except TimeoutError:
                finished()
                _failed(span, "upstream_timeout")
                end(span)
                return (
                    "upstream_timeout",
                    f"no response from {endpoint.id} within {timeout:.3g}s",
                    True,
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
