"""Outbound HTTP/2 connections to peer sidecars over mutual TLS: a few per endpoint, reused.

A connection is opened with the workload's current client context (so a renewed certificate is used
for new connections only), the peer is checked against the endpoint's SPIFFE ID right after the
handshake, and a connection that received GOAWAY takes no new streams while it finishes the old ones.
Connections are kept per peer: endpoint id, address, port and identity (an endpoint that moved never
shares the old address's connections or connects).

Reconnects back off: after a failed connect to a peer no new connect to it starts for a while (0.1 s
to ``connect_backoff_max``, decorrelated jitter, reset by a connect that succeeds). A caller that needs
the peer meanwhile may wait the backoff out once (``may_wait``) when its deadline leaves room for the
connect too; otherwise, and always for a wrong peer identity, it gets the last failure again at once
as an UpstreamError with ``refused`` set: no connect was made. A connect's failure is reported once,
to the ``on_failure`` of the caller that started it, however many callers waited for it (outlier
detection counts that, not the callers' errors).
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

#: At most this many peers' connect failures are remembered (the least recently failed go first).
BACKOFF_ENTRIES = 4096
#: A failure count is forgotten this many seconds after its backoff ended with no new failure.
BACKOFF_FORGET = 60.0
#: What a peer's reconnect backoff ranks as while a connect to it, after failures, is under way: the
#: least there is (joining that connect is the quickest way to the peer) but not "free to use".
PROBING = 1e-3

#: Who a connect goes to: endpoint id, address, port, identity.
Peer = tuple[str, str, int, str]

#: Called once with the error when a connect fails (not when the pool was closed meanwhile).
OnFailure = Callable[[UpstreamError], None]


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
    """Connections to peer sidecars, keyed by peer (endpoint id, address, port, identity)."""

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
        """``connect_backoff`` is the least wait after a failed connect to a peer (0: none); it grows
        with decorrelated jitter to ``connect_backoff_max`` while connects keep failing."""
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.context = context
        self.trust_domain = trust_domain
        self.limits = limits or Limits()
        self.max_per_endpoint = max_per_endpoint
        self.connect_timeout = connect_timeout
        self.connect_backoff = max(connect_backoff, 0.0)
        self.connect_backoff_max = max(connect_backoff_max, self.connect_backoff)
        self._backoff: dict[Peer, _Backoff] = {}  # peers whose last connect failed, oldest failure first
        self._prune_at = 0.0
        self._latest_until = 0.0  # the end of the last backoff to end
        self._conns: dict[Peer, list[H2Protocol]] = {}
        self._connecting: dict[Peer, asyncio.Task[H2Protocol]] = {}
        self._generation = 0  # bumped by close(): a connect still running then is closed when done
        self.opened = 0
        self.connects_failed = 0  # connects made that failed (refusals during a backoff not counted)
        self.connect_seconds = 0.05  # a moving average of how long a successful connect takes

    def _usable(self, key: Peer) -> H2Protocol | None:
        conns = self._conns.get(key)
        if not conns:
            return None
        best = None
        for conn in conns:
            if conn.available and (best is None or conn.endpoint.open_streams < best.endpoint.open_streams):
                best = conn
        return best

    def count(self, endpoints: Iterable[Endpoint]) -> int:
        """Connections open to these endpoints."""
        return sum(len(self._conns.get(e.peer, ())) for e in endpoints)

    @property
    def backing_off(self) -> bool:
        """True while some peer backs off, or is being probed after failed connects (so that
        :meth:`backoff_left` may be non-zero); cheap when none does."""
        if not self._backoff:
            return False
        now = time.monotonic()
        if now >= self._prune_at:  # forget peers whose backoff ended long ago (gone, or quiet)
            self._prune_at = now + 1.0
            for key in [k for k, st in self._backoff.items() if now - st.until > BACKOFF_FORGET]:
                del self._backoff[key]
        if not self._backoff:
            return False
        if now < self._latest_until:
            return True
        return any(key in self._backoff for key in self._connecting)

    def backoff_left(self, endpoint: Endpoint) -> float:
        """Seconds before a connect to ``endpoint`` may start: 0 when one may start now, when a
        connection to it has room, or when its connects never failed lately; ``PROBING`` while a
        connect to it after failures is under way."""
        if not self._backoff:
            return 0.0
        key = endpoint.peer
        state = self._backoff.get(key)
        if state is None or self._usable(key) is not None:
            return 0.0
        if key in self._connecting:
            return PROBING
        return max(state.until - time.monotonic(), 0.0)

    def ready(self, endpoint: Endpoint, may_open: Callable[[], bool] | None = None) -> H2Protocol | None:
        """The connection :meth:`connection` would return at once, without waiting, else None."""
        key = endpoint.peer
        conn = self._usable(key)
        if conn is None or conn.endpoint.open_streams == 0:
            return conn
        if len(self._conns.get(key, [])) >= self.max_per_endpoint:
            return conn
        if key not in self._connecting:
            return conn  # nothing is being opened: :meth:`connection` shares this one at once
        return conn if may_open is not None and not may_open() else None

    async def connection(
        self,
        endpoint: Endpoint,
        may_open: Callable[[], bool] | None = None,
        *,
        deadline: float | None = None,
        may_wait: bool = True,
        on_failure: OnFailure | None = None,
    ) -> H2Protocol:
        """A connection with room for one more stream; opens one when none has room and ``may_open()``
        (the circuit breaker's connection limit) allows it. While the peer backs off after failed
        connects, waits for the backoff to end when ``may_wait`` and that leaves time for the connect
        before ``deadline`` (the loop's clock). ``on_failure`` hears of the failure of a connect this
        call starts (once, even when this caller has gone by then).

        Raises UpstreamError: ``connect_failure`` (retryable), ``tls_identity_mismatch``, or
        ``circuit_open`` when every connection is full and no other may be opened. ``refused`` is set
        when no connect was made (the backoff).
        """
        key = endpoint.peer
        while True:
            conn = self._usable(key)
            if conn is not None and conn.endpoint.open_streams == 0:
                return conn
            count = len(self._conns.get(key, []))
            if conn is not None and count >= self.max_per_endpoint:
                return conn
            if may_open is not None and key not in self._connecting and not may_open():
                if conn is not None:
                    return conn  # share a busy connection rather than open one over the limit
                raise UpstreamError("circuit_open", f"connection limit reached for {endpoint.id}")
            pending = self._connecting.get(key)
            if pending is None:
                if conn is not None:
                    return conn
                state = self._backoff.get(key) if self._backoff else None
                if state is not None:
                    left = state.until - time.monotonic()
                    if left > 0:
                        loop = asyncio.get_running_loop()
                        allowance = min(2 * self.connect_seconds, self.connect_timeout)
                        if (
                            not may_wait
                            or state.code != "connect_failure"  # a wrong identity stays wrong: no wait
                            or (deadline is not None and loop.time() + left + allowance >= deadline)
                        ):
                            raise self._refusal(endpoint, state, left)
                        generation = self._generation
                        await asyncio.sleep(left)
                        if generation != self._generation:
                            raise UpstreamError(
                                "connect_failure", f"connection pool closed while waiting for {endpoint.id}"
                            )
                        may_wait = False  # once
                        continue  # look again: another waiter may have started the connect meanwhile
                # opened in a task of its own, once per new connection: a caller cancelled while it
                # waits (its timeout, or its client gone) cancels only its own wait, never the
                # connect the others wait for too
                task = asyncio.get_running_loop().create_task(self._connect(endpoint, key, on_failure))
                task.add_done_callback(_retrieved)
                if not task.done():
                    self._connecting[key] = task
                return await asyncio.shield(task)
            await asyncio.shield(pending)  # a failed connect: every waiter raises its error
            # look again: the callers that waited with us may have filled the new connection

    def _refusal(self, endpoint: Endpoint, state: _Backoff, left: float) -> UpstreamError:
        s = "s" if state.failures > 1 else ""
        return UpstreamError(
            state.code,
            f"cannot connect to {endpoint.id} ({endpoint.address}:{endpoint.port}): not tried again for "
            f"{left:.2f}s after {state.failures} failed connect{s} (the last: {state.why})",
            retryable=state.code == "connect_failure",
            refused=True,
        )

    def _connect_failed(self, key: Peer, error: UpstreamError) -> None:
        """Back off from ``key``: no connect to it for a while (decorrelated jitter, capped)."""
        self.connects_failed += 1
        if self.connect_backoff <= 0:
            return
        now = time.monotonic()
        state = self._backoff.pop(key, None)  # re-added last: the dict stays in order of last failure
        if state is not None and now - state.until > BACKOFF_FORGET:
            state = None
        low = self.connect_backoff
        high = low * 3 if state is None else state.delay * 3
        delay = min(self.connect_backoff_max, random.uniform(low, max(high, low)))
        failures = 1 if state is None else state.failures + 1
        self._backoff[key] = _Backoff(failures, delay, now + delay, error.code, str(error))
        self._latest_until = max(self._latest_until, now + delay)
        while len(self._backoff) > BACKOFF_ENTRIES:
            del self._backoff[next(iter(self._backoff))]

    async def _connect(self, endpoint: Endpoint, key: Peer, on_failure: OnFailure | None) -> H2Protocol:
        """Open a connection to ``endpoint`` (run as the task every caller waiting for it shares)."""
        generation = self._generation
        started = time.monotonic()
        try:
            conn = await self._open(endpoint, key)
        except UpstreamError as exc:
            if generation == self._generation:
                self._connect_failed(key, exc)
                if on_failure is not None:
                    try:
                        on_failure(exc)
                    except Exception:  # a caller's bookkeeping never changes what the waiters get
                        log.exception("connect failure callback failed")
            raise
        else:
            self.connect_seconds = 0.8 * self.connect_seconds + 0.2 * (time.monotonic() - started)
            if self._backoff:
                self._backoff.pop(key, None)  # reachable again: the next failure waits the least
        finally:
            if self._connecting.get(key) is asyncio.current_task():
                del self._connecting[key]
        if generation != self._generation:  # the pool was closed meanwhile: keep nothing open
            conns = self._conns.get(key)
            if conns and conn in conns:
                conns.remove(conn)
            conn.close()
            raise UpstreamError(
                "connect_failure", f"connection pool closed while connecting to {endpoint.id}"
            )
        return conn

    async def _open(self, endpoint: Endpoint, key: Peer) -> H2Protocol:
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
            conns = self._conns.get(key)
            if conns and proto in conns:
                conns.remove(proto)
                if not conns:  # peers come and go (the key holds the address): keep no empty entry
                    del self._conns[key]

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
        self._conns.setdefault(key, []).append(proto)
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
