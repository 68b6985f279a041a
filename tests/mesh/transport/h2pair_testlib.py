"""Two H2Protocol ends over a real loopback socket, for transport tests."""

from __future__ import annotations

import asyncio
from typing import Any

from mesh.transport.h2conn import H2Protocol


async def open_pair(
    handler: Any, *, server: dict[str, Any] | None = None, client: dict[str, Any] | None = None
) -> tuple[asyncio.Server, H2Protocol, list[H2Protocol]]:
    """A listening server whose connections run ``handler`` (``server``: more H2Protocol arguments) and
    one client connection to it (``client``: its arguments), ready; returns the listener, the client
    and the server-side protocols (one per accepted connection)."""
    loop = asyncio.get_running_loop()
    servers: list[H2Protocol] = []

    def make() -> H2Protocol:
        proto = H2Protocol(client_side=False, handler=handler, **(server or {}))
        servers.append(proto)
        return proto

    listener = await loop.create_server(make, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _, conn = await loop.create_connection(
        lambda: H2Protocol(client_side=True, **(client or {})), "127.0.0.1", port
    )
    await asyncio.wait_for(conn.ready, 5)
    return listener, conn, servers


async def close_pair(listener: asyncio.Server, conn: H2Protocol, servers: list[H2Protocol]) -> None:
    """Close both ends and the listener, and let the transports finish closing."""
    conn.close()
    for proto in servers:
        if proto.transport is not None:
            proto.transport.close()
    listener.close()
    await listener.wait_closed()
    await asyncio.sleep(0.05)
