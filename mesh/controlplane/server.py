"""Run the control plane: HTTPS (TLS 1.3, optional client certificates) on uvicorn.

No ASGI server hands the TLS peer certificate to the application, so a small subclass of uvicorn's
h11 protocol puts the DER of the verified client certificate into the request state; the chain was
already checked against the trust bundle by the TLS handshake, and :mod:`mesh.controlplane.auth` then
applies the SVID rules to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mesh.controlplane.api import build_app
from mesh.controlplane.auth import PEER_CERT_KEY
from mesh.controlplane.core import ControlPlane

log = logging.getLogger("meshgate.controlplane")


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus the client certificate in ``scope["state"]``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """After the TLS handshake: remember the peer certificate for every request on this connection."""
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app_state = {**self.app_state, PEER_CERT_KEY: der}


#: asyncio allocates a read buffer of ``SSLProtocol.max_size`` (256 KiB) per TLS connection: 1,000 parked
#: watchers cost ~240 MB for it alone. TLS records are at most 16 KiB, so 32 KiB loses nothing here.
TLS_READ_BUFFER = 32 * 1024


def small_tls_read_buffers() -> None:
    """Shrink asyncio's per-connection TLS read buffer for this process (see TLS_READ_BUFFER)."""
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def make_server(cp: ControlPlane, sock: socket.socket) -> uvicorn.Server:
    """A uvicorn server for ``cp`` on an already bound socket, using ``cp``'s TLS context."""
    small_tls_read_buffers()

    def context(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return cp.server_ssl_context()

    config = uvicorn.Config(
        build_app(cp),
        http=PeerCertH11Protocol,
        ssl_context_factory=context,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv4 or IPv6 by ``host``); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: accepted sockets inherit it, and asyncio only sets TCP_NODELAY on sockets
    # whose proto is IPPROTO_TCP; with proto 0 Nagle holds each response body ~40 ms (delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def run(cp: ControlPlane, host: str, port: int, on_ready: Callable[[int], Any] | None = None) -> None:
    """Start ``cp`` and serve until SIGTERM/SIGINT; then drain and stop."""
    await cp.start()
    sock = bind(host, port)
    actual_port = sock.getsockname()[1]
    server = make_server(cp, sock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    server.config.load()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        log.info(
            "control plane listening on https://%s:%d (trust domain %s)", host, actual_port, cp.trust_domain
        )
        if on_ready is not None:
            on_ready(actual_port)
    try:
        await task
    finally:
        await cp.stop()
