"""``gateway.ratelimit.wire``: pipelined commands on redis-py connections, replies never misdelivered."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import redis.asyncio as aioredis
from ratelimit_testlib import make_doc, open_limiter
from redis.exceptions import NoScriptError, ResponseError

from gateway.ratelimit.wire import Connections, pack


def test_pack_is_resp_array_of_bulk_strings() -> None:
    assert pack(b"GET", b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert pack(b"SET", b"k", b"") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
    assert pack(b"ECHO", b"a\r\nb") == b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n"  # binary-safe


def test_replies_in_order_with_an_error_in_the_middle(redis_url: str) -> None:
    async def main() -> None:
        pool = aioredis.ConnectionPool.from_url(redis_url, socket_timeout=None)
        wire = Connections(pool)
        try:
            replies = await wire.execute(
                [pack(b"PING"), pack(b"EVALSHA", b"0" * 40, b"0"), pack(b"ECHO", b"after"), pack(b"NOPE")]
            )
            assert replies[0] in (b"PONG", True)
            assert isinstance(replies[1], NoScriptError)
            assert replies[2] == b"after"
            assert isinstance(replies[3], ResponseError)
            again = await wire.execute([pack(b"ECHO", b"next")])  # the same connection, still in step
            assert again == [b"next"]
            assert len(wire._idle) == 1
        finally:
            await wire.close()
            await pool.aclose()
        with pytest.raises(ConnectionError, match="closed"):
            await wire.execute([pack(b"PING")])

    asyncio.run(main())


async def _late_first_reply_server() -> tuple[asyncio.Server, int, list[int]]:
    """A RESP server answering every PING with ``+reply<k>`` (k counts PINGs over all connections;
    the reply to the first comes 0.3 s late) and anything else (a new connection's CLIENT SETINFO)
    with ``+OK``."""
    counter = itertools.count(1)
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readline()
                if not head:
                    return
                args = []
                for _ in range(int(head[1:])):  # *N, then N bulk strings
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                if args[0].upper() != b"PING":
                    writer.write(b"+OK\r\n")
                    continue
                k = next(counter)
                if k == 1:
                    await asyncio.sleep(0.3)
                writer.write(b"+reply%d\r\n" % k)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


def test_a_timed_out_round_trip_never_hands_its_late_reply_to_the_next_caller() -> None:
    async def main() -> None:
        server, port, connections = await _late_first_reply_server()
        pool = aioredis.ConnectionPool.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=None)
        wire = Connections(pool)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await wire.execute([pack(b"PING")])
            assert wire._idle == []  # that connection was closed, not kept
            assert await wire.execute([pack(b"PING")]) == [b"reply2"]  # not the late reply1
            assert len(connections) == 2
            await asyncio.sleep(0.3)  # let the late reply go out to the closed connection
        finally:
            await wire.close()
            await pool.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_limiter_reuses_one_connection_for_sequential_decisions(redis_url: str) -> None:
    async def main() -> None:
        async with open_limiter(redis_url) as limiter:
            doc = make_doc([(1000, "1h")])
            for _ in range(20):
                assert (await limiter.check(doc, "k")).source == "redis"
            assert limiter._wire is not None and len(limiter._wire._idle) == 1
            pool = limiter._client.connection_pool if limiter._client is not None else None
            assert pool is not None and pool._in_use_connections == set()

    asyncio.run(main())
