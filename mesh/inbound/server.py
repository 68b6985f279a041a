"""The inbound listener: TLS 1.3 mTLS (ALPN h2), the peer's SPIFFE ID checked right after the
handshake, then HTTP/2 requests handed to :class:`~mesh.inbound.handler.InboundHandler`."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable

from mesh.h2 import Limits
from mesh.inbound.handler import InboundHandler
from mesh.transport.h2conn import H2Protocol
from mesh.transport.messages import Request, Response
from shared.identity.tls import verify_peer

log = logging.getLogger("meshgate.inbound")


def switching_context(current: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """A server context whose every handshake moves to ``current()`` (rotated certificates apply to
    new connections; live ones keep theirs)."""
    base = current()

    def pick(ssl_obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        ctx = current()
        if ssl_obj.context is not ctx:
            ssl_obj.context = ctx

    base.sni_callback = pick
    return base


class InboundServer:
    """Accepts mesh peers and serves their requests."""

    def __init__(
        self,
        handler: Callable[[Request, str], Awaitable[Response]] | InboundHandler,
        context: Callable[[], ssl.SSLContext],
        trust_domain: str,
        limits: Limits | None = None,
        idle_timeout: float | None = 600.0,
        stream_idle_timeout: float | None = 300.0,  # as Envoy's default stream idle timeout
    ) -> None:
        self.idle_timeout = idle_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.handler = handler
        self.context = context
        self.trust_domain = trust_domain
        self.limits = limits or Limits()
        self.connections: set[H2Protocol] = set()
        self.refused = 0
        self.server: asyncio.Server | None = None
        self._bound: tuple[str, int] = ("127.0.0.1", 0)

    def _verify(self, proto: H2Protocol) -> None:
        assert proto.transport is not None
        try:
            proto.peer = str(
                verify_peer(proto.transport.get_extra_info("ssl_object"), self.trust_domain, alpn="h2")
            )
        except Exception:
            self.refused += 1
            raise
        self.connections.add(proto)

    async def _handle(self, request: Request, proto: H2Protocol) -> Response:
        return await self.handler(request, str(proto.peer))

    def _protocol(self) -> H2Protocol:
        """A protocol for one accepted connection. The event loop runs the TLS handshake before it
        calls ``connection_made``; when the handshake fails (expired certificate, unknown CA, wrong
        key usage, no certificate, plaintext, TLS 1.2) the protocol is dropped without ever being
        told, so its going away unopened is what counts and logs the refusal."""
        opened = [False]

        def on_open(proto: H2Protocol) -> None:
            opened[0] = True
            self._verify(proto)

        proto = H2Protocol(
            client_side=False,
            handler=self._handle,
            limits=self.limits,
            on_open=on_open,
            on_close=self.connections.discard,
            idle_timeout=self.idle_timeout,
            stream_idle_timeout=self.stream_idle_timeout,
        )
        weakref.finalize(proto, self._handshake_failed, opened)
        return proto

    def _handshake_failed(self, opened: list[bool]) -> None:
        if not opened[0]:
            self.refused += 1
            log.warning(
                "refused an inbound connection: its TLS handshake failed (certificate not valid for "
                "this mesh, no certificate, or not TLS 1.3)"
            )

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port. OSError (EADDRINUSE) when something listens there already:
        the listener binds with SO_REUSEPORT (so that :meth:`renew_listener` can rebind), which would
        otherwise let a second sidecar share the port and take half of the first one's connections."""
        if port and _in_use(host, port):
            taken = OSError(f"the inbound port {host}:{port} is in use (another sidecar's?)")
            taken.errno = errno.EADDRINUSE
            raise taken
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, host, port, ssl=switching_context(self.context), backlog=1024, reuse_port=True
        )
        self._bound = (host, int(self.server.sockets[0].getsockname()[1]))
        return self._bound[1]

    async def renew_listener(self) -> None:
        """Listen again with the current context, then stop the old listener (live connections stay).

        TLS 1.3 session tickets are sealed with the listening context's keys and a resumed session skips
        chain verification; after a trust-bundle change the old keys must go, or a peer whose
        certificate the new bundle no longer trusts could resume its way in.
        """
        old = self.server
        host, port = self._bound
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, host, port, ssl=switching_context(self.context), backlog=1024, reuse_port=True
        )
        if old is not None:
            old.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, send GOAWAY to every peer, wait up to ``timeout`` for streams to finish."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.goaway()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c.streams for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()


def _in_use(host: str, port: int) -> bool:
    """True when binding ``host:port`` without SO_REUSEPORT fails with EADDRINUSE (a listener is
    there). Any other failure (an unknown host, an address not on this machine) is left to the real
    bind, which reports it as it is."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's listeners do
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False
