"""Outbound HTTP/2 connections to peer sidecars over mutual TLS: a few per endpoint, reused.

A connection is opened with the workload's current client context (so a renewed certificate is used
for new connections only), the peer is checked against the endpoint's SPIFFE ID right after the
handshake, and a connection that received GOAWAY takes no new streams while it finishes the old ones.

Reconnects back off: after a failed connect to an endpoint no new connect to it starts for a while
(0.1-0.3 s at first, growing with decorrelated jitter to ``connect_backoff_max`` while connects keep
failing; reset by one that succeeds). A caller that needs the endpoint meanwhile waits the backoff out
when its deadline allows, and otherwise fails at once with a retryable ``connect_failure`` marked
``attempted=False``: no connect was made, so outlier detection must not count it (see
:meth:`H2Pool.backoff_left`, which the mesh client uses to prefer endpoints that do not back off).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mesh.h2 import Limits
from mesh.outbound.endpoints import Endpoint
from mesh.transport.h1 import UpstreamError
from mesh.transport.h2conn import H2Protocol
from shared.identity.spiffeid import InvalidSpiffeId, SpiffeId
from shared.identity.tls import PeerIdentityError, explain_tls_error, verify_peer

log = logging.getLogger("meshgate.transport.pool")

#: At most this many endpoints' connect failures are remembered (the least recently failed go first).
BACKOFF_ENTRIES = 4096
#: A failure count is forgotten this many seconds after its backoff ended with no new failure.
BACKOFF_FORGET = 60.0

#: Who a connect goes to: endpoint id, address, port, identity (a new address starts without backoff).
_Peer = tuple[str, str, int, str]


def _peer(endpoint: Endpoint) -> _Peer:
    return (endpoint.id, endpoint.address, endpoint.port, endpoint.identity)


@dataclass(slots=True)
class _Backoff:
    """Consecutive failed connects to one peer; no new connect before ``until`` (monotonic)."""

    failures: int
    delay: float
    until: float
    code: str
    why: str


def _retrieved(task: asyncio.Task[H2Protocol]) -> None:
    """Mark a connect's failure as seen: every caller that waited for it may have gone away."""
    if not task.cancelled():
        task.exception()


class H2Pool:
    """Connections to peer sidecars, keyed by endpoint id."""

    def __init__(
        self,
        context: Callable[[], ssl.SSLContext],
        trust_domain: str,
        *,
        limits: Limits | None = None,
        max_per_endpoint: int = 4,
        connect_timeout: float = 1.0,
        keepalive: float | None = 30.0,
        idle_timeout: float | None = 300.0,
        connect_backoff: float = 0.1,
        connect_backoff_max: float = 1.0,
    ) -> None:
        """``connect_backoff`` is the least wait after a failed connect to an endpoint (0: none); it
        grows with decorrelated jitter to ``connect_backoff_max`` while connects keep failing."""
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.context = context
        self.trust_domain = trust_domain
        self.limits = limits or Limits()
        self.max_per_endpoint = max_per_endpoint
        self.connect_timeout = connect_timeout
        self.connect_backoff = max(connect_backoff, 0.0)
        self.connect_backoff_max = max(connect_backoff_max, self.connect_backoff)
        self._backoff: dict[_Peer, _Backoff] = {}  # peers whose last connect failed, oldest failure first
        self.connects_failed = 0  # real connect attempts that failed (a backoff's refusals not counted)
        self._conns: dict[str, list[H2Protocol]] = {}
        self._connecting: dict[str, asyncio.Task[H2Protocol]] = {}
        self._generation = 0  # bumped by close(): a connect still running then is closed when done
        self.opened = 0

    def _usable(self, endpoint: Endpoint) -> H2Protocol | None:
        conns = self._conns.get(endpoint.id)
        if not conns:
            return None
        best = None
        for conn in conns:
            if conn.available and (best is None or conn.endpoint.open_streams < best.endpoint.open_streams):
                best = conn
        return best

    def count(self, endpoint_ids: Iterable[str]) -> int:
        """Connections open to these endpoints."""
        return sum(len(self._conns.get(eid, ())) for eid in endpoint_ids)

    @property
    def backing_off(self) -> bool:
        """True when some endpoint's last connect failed (so :meth:`backoff_left` may be non-zero)."""
        return bool(self._backoff)

    def backoff_left(self, endpoint: Endpoint) -> float:
        """Seconds before a connect to ``endpoint`` may start (0 when one may start now, or when a
        connection to it has room, or one is being opened: no backoff stands in the way then)."""
        if not self._backoff:
            return 0.0
        state = self._backoff.get(_peer(endpoint))
        if state is None or endpoint.id in self._connecting or self._usable(endpoint) is not None:
            return 0.0
        return max(state.until - time.monotonic(), 0.0)

    def ready(self, endpoint: Endpoint, may_open: Callable[[], bool] | None = None) -> H2Protocol | None:
        """The connection :meth:`connection` would return at once, without waiting, else None."""
        conn = self._usable(endpoint)
        if conn is None or conn.endpoint.open_streams == 0:
            return conn
        if len(self._conns.get(endpoint.id, [])) >= self.max_per_endpoint:
            return conn
        if endpoint.id not in self._connecting:
            return conn  # nothing is being opened: :meth:`connection` shares this one at once
        return conn if may_open is not None and not may_open() else None

    async def connection(
        self,
        endpoint: Endpoint,
        may_open: Callable[[], bool] | None = None,
        *,
        deadline: float | None = None,
    ) -> H2Protocol:
        """A connection with room for one more stream; opens one when none has room and ``may_open()``
        (the circuit breaker's connection limit) allows it. While the endpoint backs off after failed
        connects, waits for the backoff to end when that is before ``deadline`` (the loop's clock).

        Raises UpstreamError: ``connect_failure`` (retryable), ``tls_identity_mismatch``, or
        ``circuit_open`` when every connection is full and no other may be opened. Its ``attempted``
        is False when this caller's connect was never made (the backoff outlasts ``deadline``) or
        another caller's connect failed: one failed connect is one failure, however many waited.
        """
        while True:
            conn = self._usable(endpoint)
            if conn is not None and conn.endpoint.open_streams == 0:
                return conn
            count = len(self._conns.get(endpoint.id, []))
            if conn is not None and count >= self.max_per_endpoint:
                return conn
            if may_open is not None and endpoint.id not in self._connecting and not may_open():
                if conn is not None:
                    return conn  # share a busy connection rather than open one over the limit
                raise UpstreamError("circuit_open", f"connection limit reached for {endpoint.id}")
            pending = self._connecting.get(endpoint.id)
            if pending is None:
                if conn is not None:
                    return conn
                state = self._backoff.get(_peer(endpoint)) if self._backoff else None
                if state is not None:
                    left = state.until - time.monotonic()
                    if left > 0:
                        loop = asyncio.get_running_loop()
                        if deadline is not None and loop.time() + left >= deadline:
                            raise self._refusal(endpoint, state, left)
                        await asyncio.sleep(left)
                        continue  # look again: another waiter may have started the connect meanwhile
                # opened in a task of its own, once per new connection: a caller cancelled while it
                # waits (its timeout, or its client gone) cancels only its own wait, never the
                # connect the others wait for too
                task = asyncio.get_running_loop().create_task(self._connect(endpoint))
                task.add_done_callback(_retrieved)
                if not task.done():
                    self._connecting[endpoint.id] = task
                return await asyncio.shield(task)
            try:
                await asyncio.shield(pending)
            except UpstreamError as exc:  # another caller's connect failed: its error, counted once
                raise UpstreamError(exc.code, str(exc), retryable=exc.retryable, attempted=False) from exc
            # look again: the callers that waited with us may have filled the new connection

    def _refusal(self, endpoint: Endpoint, state: _Backoff, left: float) -> UpstreamError:
        s = "s" if state.failures > 1 else ""
        return UpstreamError(
            state.code,
            f"cannot connect to {endpoint.id} ({endpoint.address}:{endpoint.port}): not tried again for "
            f"{left:.2f}s after {state.failures} failed connect{s} (the last: {state.why})",
            retryable=True,
            attempted=False,
        )

    def _connect_failed(self, endpoint: Endpoint, error: UpstreamError) -> None:
        """Back off from ``endpoint``: no connect to it for a while (decorrelated jitter, capped)."""
        self.connects_failed += 1
        if self.connect_backoff <= 0:
            return
        key = _peer(endpoint)
        now = time.monotonic()
        state = self._backoff.pop(key, None)  # re-added last: the dict stays in order of last failure
        if state is not None and now - state.until > BACKOFF_FORGET:
            state = None
        low = self.connect_backoff
        high = low * 3 if state is None else state.delay * 3
        delay = min(self.connect_backoff_max, random.uniform(low, max(high, low)))
        failures = 1 if state is None else state.failures + 1
        self._backoff[key] = _Backoff(failures, delay, now + delay, error.code, str(error))
        while len(self._backoff) > BACKOFF_ENTRIES:
            del self._backoff[next(iter(self._backoff))]

    async def _connect(self, endpoint: Endpoint) -> H2Protocol:
        """Open a connection to ``endpoint`` (run as the task every caller waiting for it shares)."""
        generation = self._generation
        try:
            conn = await self._open(endpoint)
        except UpstreamError as exc:
            if generation == self._generation:
                self._connect_failed(endpoint, exc)
            raise
        else:
            if self._backoff:
                self._backoff.pop(_peer(endpoint), None)  # reachable again: the next failure waits least
        finally:
            if self._connecting.get(endpoint.id) is asyncio.current_task():
                del self._connecting[endpoint.id]
        if generation != self._generation:  # the pool was closed meanwhile: keep nothing open
            conns = self._conns.get(endpoint.id)
            if conns and conn in conns:
                conns.remove(conn)
            conn.close()
            raise UpstreamError(
                "connect_failure", f"connection pool closed while connecting to {endpoint.id}"
            )
        return conn

    async def _open(self, endpoint: Endpoint) -> H2Protocol:
        try:
            expected = SpiffeId.parse(endpoint.identity)
        except InvalidSpiffeId as exc:
            raise UpstreamError(
                "tls_identity_mismatch", f"endpoint {endpoint.id} has no valid identity: {exc}"
            ) from exc
        failure: list[Exception] = []

        def verify(proto: H2Protocol) -> None:
            assert proto.transport is not None
            try:
                proto.peer = verify_peer(
                    proto.transport.get_extra_info("ssl_object"), self.trust_domain, expected, alpn="h2"
                )
            except PeerIdentityError as exc:
                failure.append(exc)
                raise

        def closed(proto: H2Protocol) -> None:
            conns = self._conns.get(endpoint.id)
            if conns and proto in conns:
                conns.remove(proto)

        loop = asyncio.get_running_loop()
        ctx = self.context()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: H2Protocol(
                        client_side=True,
                        limits=self.limits,
                        on_open=verify,
                        on_close=closed,
                        keepalive=self.keepalive,
                        idle_timeout=self.idle_timeout,
                    ),
                    endpoint.address,
                    endpoint.port,
                    ssl=ctx,
                    server_hostname=expected.service or "mesh",
                ),
                self.connect_timeout,
            )
            try:
                await asyncio.wait_for(asyncio.shield(proto.ready), self.connect_timeout)
            except TimeoutError:
                proto.close()
                raise
        except PeerIdentityError as exc:
            raise UpstreamError("tls_identity_mismatch", str(exc)) from exc
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            if failure:
                raise UpstreamError("tls_identity_mismatch", str(failure[0])) from exc
            why = explain_tls_error(exc) if isinstance(exc, ssl.SSLError) else str(exc) or type(exc).__name__
            raise UpstreamError(
                "connect_failure",
                f"cannot connect to {endpoint.id} ({endpoint.address}:{endpoint.port}): {why}",
                retryable=True,
            ) from exc
        self.opened += 1
        self._conns.setdefault(endpoint.id, []).append(proto)
        return proto

    def remember_session(self, conn: H2Protocol) -> None:
        """Keep the TLS session of ``conn`` for cheap reconnects (after its first response)."""
        ctx = self.context()
        remember = getattr(ctx, "remember_session", None)
        if remember is not None and conn.transport is not None:
            remember(conn.transport.get_extra_info("ssl_object"))

    def close(self) -> None:
        """GOAWAY and close every connection (and those still being opened, once they are)."""
        self._generation += 1
        self._backoff.clear()
        for conns in self._conns.values():
            for conn in list(conns):
                conn.close()
        self._conns.clear()
