"""Outbound HTTP/2 connections to peer sidecars over mutual TLS: a few per endpoint, reused.

A connection is opened with the workload's current client context (so a renewed certificate is used
for new connections only), the peer is checked against the endpoint's SPIFFE ID right after the
handshake, and a connection that received GOAWAY takes no new streams while it finishes the old ones.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable

from mesh.h2 import Limits
from mesh.outbound.endpoints import Endpoint
from mesh.transport.h1 import UpstreamError
from mesh.transport.h2conn import H2Protocol
from shared.identity.spiffeid import InvalidSpiffeId, SpiffeId
from shared.identity.tls import PeerIdentityError, explain_tls_error, verify_peer

log = logging.getLogger("meshgate.transport.pool")


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
    ) -> None:
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.context = context
        self.trust_domain = trust_domain
        self.limits = limits or Limits()
        self.max_per_endpoint = max_per_endpoint
        self.connect_timeout = connect_timeout
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

    async def connection(self, endpoint: Endpoint, may_open: Callable[[], bool] | None = None) -> H2Protocol:
        """A connection with room for one more stream; opens one when none has room and ``may_open()``
        (the circuit breaker's connection limit) allows it.

        Raises UpstreamError: ``connect_failure`` (retryable), ``tls_identity_mismatch``, or
        ``circuit_open`` when every connection is full and no other may be opened.
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
                # opened in a task of its own, once per new connection: a caller cancelled while it
                # waits (its timeout, or its client gone) cancels only its own wait, never the
                # connect the others wait for too
                task = asyncio.get_running_loop().create_task(self._connect(endpoint))
                task.add_done_callback(_retrieved)
                if not task.done():
                    self._connecting[endpoint.id] = task
                return await asyncio.shield(task)
            await asyncio.shield(pending)  # a failed connect: every waiter raises its error
            # look again: the callers that waited with us may have filled the new connection

    async def _connect(self, endpoint: Endpoint) -> H2Protocol:
        """Open a connection to ``endpoint`` (run as the task every caller waiting for it shares)."""
        generation = self._generation
        try:
            conn = await self._open(endpoint)
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
        for conns in self._conns.values():
            for conn in list(conns):
                conn.close()
        self._conns.clear()
