"""Pipelined Redis commands on redis-py connections, without the client's ``Pipeline`` and pool.

A rate-limit decision makes one Redis round trip per event-loop tick, so its CPU cost is mostly that
round trip's. redis-py's ``Pipeline.execute`` spent ~270 us of CPU on one (measured with
``bench``-style loops on loopback, redis-py 8.1): the pool's lock, observability events, a readiness
probe of the socket before every use, a task per write under ``socket_timeout``, command packing.
:class:`Connections` keeps a few connected ``redis.asyncio.Connection`` objects made by the client's
own pool (so URL options, AUTH, SELECT and TLS stay redis-py's) and talks on them through the
connection's public ``send_packed_command`` and ``read_response``. Callers bound the time (the
limiter wraps every round trip in ``asyncio.timeout``); a connection whose round trip failed or was
cancelled is closed, never reused, so replies cannot go to the wrong caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

Reply = object  # a reply as redis-py parses it, or the ResponseError of an error reply


def pack(*args: bytes) -> bytes:
    """One RESP command: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(b"\r\n")
    return b"".join(parts)


class Connections:
    """Idle connections of one pool, used one round trip at a time (several at once if needed)."""

    def __init__(self, pool: aioredis.ConnectionPool, *, max_idle: int = 8) -> None:
        self._pool = pool
        self._max_idle = max_idle
        self._idle: list[aioredis.Connection] = []
        self._closed = False

    async def execute(self, commands: Sequence[bytes]) -> list[Reply]:
        """Send packed ``commands`` in one write, read one reply each, in order.

        An error reply (``-ERR``, ``-NOSCRIPT``...) comes back as its ``ResponseError`` in its place;
        a failed connection, a protocol error or cancellation raises, and that connection is closed.
        """
        if self._closed:
            raise ConnectionError("redis connections closed")
        conn = self._idle.pop() if self._idle else self._pool.make_connection()  # type: ignore[no-untyped-call]
        reusable = False
        try:
            await conn.send_packed_command(list(commands), check_health=False)  # connects if needed
            replies: list[Reply] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # the connection is still in step: the reply was read
                    replies.append(exc)
            reusable = True
            return replies
        finally:
            if reusable and conn.is_connected and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                await _close(conn)

    async def clear(self) -> None:
        """Close the idle connections (after an outage they point at a server that went away)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)

    async def close(self) -> None:
        """Close the idle connections; later :meth:`execute` calls raise ConnectionError."""
        self._closed = True
        await self.clear()


async def _close(conn: aioredis.Connection) -> None:
    with contextlib.suppress(Exception):
        await conn.disconnect(nowait=True)
