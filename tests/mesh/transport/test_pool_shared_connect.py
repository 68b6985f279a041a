"""Callers sharing one connection being opened: one caller's cancellation is never the others' result.

The peer accepts TCP at once but answers the TLS handshake late (a loopback proxy that waits before
forwarding to a real inbound sidecar, like a stalled peer sidecar): the request that started the
connect is cancelled (its timeout, or its caller gone) while a second one waits for the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from meshrig_testlib import mesh, ok_app, pipe, read_all, run, spiffe, traffic

from mesh.outbound.endpoints import Endpoint
from mesh.transport.messages import Request, Response, body_of


@contextlib.asynccontextmanager
async def slow_handshake(target: int, delay: float, *, refuse: bool = False) -> AsyncIterator[int]:
    """A loopback port that accepts TCP at once and forwards to ``target`` only after ``delay``
    seconds (so the TLS handshake waits that long); with ``refuse`` it closes instead."""
    writers: list[asyncio.StreamWriter] = []
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await asyncio.sleep(delay)
            if refuse:
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            writers.append(up_writer)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # stopped at the end of the test (Python 3.11's server callback would log a cancelled one)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.01)


def request() -> Request:
    return Request("GET", "/", "orders", headers=[], body=body_of(b""))


async def outcome(response: Response) -> tuple[int, str | None]:
    await read_all(response)
    return response.status, response.header("x-meshgate-error")


@pytest.mark.parametrize(
    ("opener", "case"),
    [
        ("timeout", "handshake_completes"),
        ("caller_gone", "handshake_completes"),
        ("timeout", "own_timeout"),
        ("timeout", "connect_failure"),
    ],
)
def test_a_cancelled_opener_leaves_the_other_waiter_its_own_outcome(
    tmp_path: Path, opener: str, case: str
) -> None:
    delay = {"handshake_completes": 0.8, "own_timeout": 1.5, "connect_failure": 0.6}[case]
    second_timeout = "600ms" if case == "own_timeout" else "4s"
    expected = {
        "handshake_completes": (200, None),
        "own_timeout": (504, "upstream_timeout"),
        "connect_failure": (503, "connect_failure"),
    }[case]

    async def go() -> None:
        async with mesh(tmp_path, pool_kwargs={"connect_timeout": 3.0}) as rig:
            up = await rig.upstream(ok_app())
            async with slow_handshake(up.port, delay, refuse=case == "connect_failure") as port:
                ep = {"id": "orders-slow", "address": "127.0.0.1", "port": port, "identity": spiffe("orders")}
                rig.update({"orders": [ep]}, {"orders": traffic(timeout="4s", retries={"attempts": 0})})
                loop = asyncio.get_running_loop()
                start = loop.time()
                first_policy = traffic(
                    timeout="300ms" if opener == "timeout" else "4s", retries={"attempts": 0}
                )
                first = asyncio.create_task(rig.client.request("orders", request(), policy=first_policy))
                await asyncio.sleep(0.1)
                second_policy = traffic(timeout=second_timeout, retries={"attempts": 0})
                second = asyncio.create_task(rig.client.request("orders", request(), policy=second_policy))
                if opener == "caller_gone":
                    await asyncio.sleep(0.2)
                    first.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await first
                else:
                    assert await outcome(await first) == (504, "upstream_timeout")
                assert loop.time() - start < 0.6  # the first one's own deadline, not the handshake's
                got = await outcome(await second)  # never CancelledError
                elapsed = loop.time() - start
                assert got == expected
                if case == "own_timeout":
                    assert 0.6 <= elapsed < delay  # at its own deadline (started at 0.1 s, 600 ms)
                else:
                    assert elapsed >= delay - 0.05  # when the handshake completed or failed
                if case == "handshake_completes":
                    assert rig.pool.opened == 1
                    assert (await rig.call("/again"))[0].status == 200
                    assert rig.pool.opened == 1  # the connection opened for both is kept and reused

    run(go())


def test_a_connect_whose_callers_all_went_away_is_kept_unless_the_pool_closed(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path, pool_kwargs={"connect_timeout": 3.0}) as rig:
            up = await rig.upstream(ok_app())
            async with slow_handshake(up.port, 0.6) as port, slow_handshake(up.port, 0.6) as port2:
                kept = Endpoint("orders-a", "127.0.0.1", port, spiffe("orders"))
                dropped = Endpoint("orders-b", "127.0.0.1", port2, spiffe("orders"))
                loop = asyncio.get_running_loop()
                for ep in (kept, dropped):
                    waiter = asyncio.create_task(rig.pool.connection(ep))
                    await asyncio.sleep(0.2)
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
                    if ep is kept:
                        # nobody waits any more: the connect still finishes, and the pool keeps it
                        deadline = loop.time() + 3.0
                        while rig.pool.count([kept]) == 0 and loop.time() < deadline:
                            await asyncio.sleep(0.02)
                        assert rig.pool.count([kept]) == 1 and rig.pool.opened == 1
                        conn = await rig.pool.connection(kept)  # ready at once, no new connect
                        assert rig.pool.opened == 1 and not conn.closed.done()
                rig.pool.close()  # "orders-b" is still in its handshake
                assert rig.pool.count([kept, dropped]) == 0
                deadline = loop.time() + 3.0
                while (rig.pool.opened < 2 or up.inbound.connections) and loop.time() < deadline:
                    await asyncio.sleep(0.02)
                # the late one finished its handshake but was closed, not kept in a closed pool
                assert rig.pool.opened == 2
                assert rig.pool.count([kept, dropped]) == 0
                assert not up.inbound.connections

    run(go())
