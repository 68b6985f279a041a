"""A route's ``responseHeaders.set: {Connection: close}``, in any case, reaches the server."""

from __future__ import annotations

import asyncio

from gateway.app import _send
from mesh.transport.messages import Response, body_of
from shared.config.model.edge import HeaderOps


def test_connection_close_is_passed_on_whatever_its_case() -> None:
    """`Connection: Close` loads, so the gateway must honour it too (it compared with "close" only)."""
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    ops = HeaderOps.model_validate({"set": {"Connection": "Close"}})
    extra = [(k.lower(), v) for k, v in ops.set.items()]
    asyncio.run(_send(send, Response(200, [("content-length", "0")], body_of(b"")), extra))
    assert (b"connection", b"Close") in sent[0]["headers"]  # type: ignore[operator]
