"""A peer that cannot be reached is not tried again on every request: H2Pool backs off per endpoint.

The peer is a loopback port that accepts TCP and closes it at once (a crashed sidecar behind a live
port): every connect attempt is counted at its accept. Later the same port forwards to a real inbound
sidecar (the peer is back), and the next request after the back-off connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from meshrig_testlib import mesh, ok_app, read_all, run, spiffe

import mesh.transport.pool as pool_module
from mesh.outbound.endpoints import Endpoint
from mesh.transport.h1 import UpstreamError
from mesh.transport.messages import Request, body_of
from mesh.transport.pool import H2Pool


@dataclass
class Peer:
    """A loopback port: closes every connection at once while down, forwards to ``target`` when up."""

    port: int = 0
    target: int | None = None
    accepts: list[float] = field(default_factory=list)

    def endpoint(self, eid: str = "orders-1") -> Endpoint:
        return Endpoint(eid, "127.0.0.1", self.port, spiffe("orders"))

    def snapshot(self, eid: str = "orders-1") -> dict[str, Any]:
        """The endpoint as the control plane's snapshot lists it."""
        return {"id": eid, "address": "127.0.0.1", "port": self.port, "identity": spiffe("orders")}


@contextlib.asynccontextmanager
async def peer() -> AsyncIterator[Peer]:
    state = Peer()
    writers: list[asyncio.StreamWriter] = []
    handlers: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.accepts.append(time.monotonic())
        writers.append(writer)
        if state.target is None:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", state.target)
            writers.append(up_writer)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # stopped at the end of the test
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = int(server.sockets[0].getsockname()[1])
    try:
        yield state
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.01)


async def fails(pool: H2Pool, ep: Endpoint) -> UpstreamError:
    """The connect_failure a connection request for ``ep`` raises (never a connection)."""
    with pytest.raises(UpstreamError) as caught:
        await pool.connection(ep)
    assert caught.value.code == "connect_failure" and caught.value.retryable, caught.value
    return caught.value


def test_a_dead_peer_is_tried_a_few_times_a_second_not_on_every_request(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig, peer() as dead:
            ep = dead.endpoint()
            # one request every 10 ms for a second: each fails at once, few reach the peer
            start = time.monotonic()
            requests, backing_off, slowest = 0, 0, 0.0
            while time.monotonic() - start < 1.0 and requests < 500:
                t = time.monotonic()
                error = await fails(rig.pool, ep)
                requests += 1
                if "backing off" in str(error):
                    backing_off += 1
                    slowest = max(slowest, time.monotonic() - t)
                    assert dead.endpoint().id in str(error) and "s more after" in str(error)
                await asyncio.sleep(0.01)
            attempts = len(dead.accepts)
            assert requests >= 30
            assert 1 <= attempts <= 10, f"{attempts} connects for {requests} requests"
            assert backing_off == requests - attempts
            assert slowest < 0.05  # no connect, no wait: answered at once

            # 20 callers at once, each asking every 10 ms for a second: still a few connects only
            before = len(dead.accepts)
            seen: list[str] = []

            async def caller() -> None:
                end = time.monotonic() + 1.0
                for _ in range(200):
                    if time.monotonic() >= end:
                        break
                    seen.append(str(await fails(rig.pool, ep)))
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(caller() for _ in range(20)))
            attempts = len(dead.accepts) - before
            assert len(seen) >= 400
            assert attempts <= 8, f"{attempts} connects for {len(seen)} concurrent requests"
            assert rig.pool.opened == 0 and rig.pool.count([ep.id]) == 0

    run(go())


def test_callers_of_a_dead_peer_get_503_connect_failure_without_a_connect_each(tmp_path: Path) -> None:
    """The reviewer's case: 10 callers through MeshClient (with its retries) to one dead endpoint."""

    async def go() -> None:
        async with mesh(tmp_path) as rig, peer() as dead:
            rig.update({"orders": [dead.snapshot()]})
            answers: dict[tuple[int, str | None], int] = {}

            async def caller() -> None:
                end = time.monotonic() + 1.0
                for _ in range(200):
                    if time.monotonic() >= end:
                        break
                    response = await rig.client.request(
                        "orders", Request("GET", "/", "orders", headers=[], body=body_of(b""))
                    )
                    await read_all(response)
                    got = (response.status, response.header("x-meshgate-error"))
                    answers[got] = answers.get(got, 0) + 1
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(caller() for _ in range(10)))
            assert set(answers) == {(503, "connect_failure")}
            assert sum(answers.values()) >= 100
            assert len(dead.accepts) <= 10, f"{len(dead.accepts)} connects for {answers}"
            # outlier detection still sees each failed attempt as a connect failure
            assert rig.client.endpoints.get("orders")[0].consecutive_connect_failures > 0

    run(go())


def test_the_peer_back_is_connected_after_the_back_off_which_a_connect_resets(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig, peer() as flaky:
            up = await rig.upstream(ok_app())
            ep = flaky.endpoint()
            first = await fails(rig.pool, ep)
            failed_at = time.monotonic()
            assert "backing off" not in str(first) and len(flaky.accepts) == 1
            second = await fails(rig.pool, ep)
            assert "backing off" in str(second) and "after 1 failed connect," in str(second)
            assert len(flaky.accepts) == 1

            flaky.target = up.port  # the peer is back: still not tried before the back-off ends
            assert "backing off" in str(await fails(rig.pool, ep))
            assert len(flaky.accepts) == 1
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0
            conn = None
            while conn is None and loop.time() < deadline:
                try:
                    conn = await rig.pool.connection(ep)
                except UpstreamError as exc:
                    assert "backing off" in str(exc), exc
                    await asyncio.sleep(0.02)
            assert conn is not None
            assert time.monotonic() - failed_at < 0.3 + 0.2  # the first wait is 0.1 to 0.3 s
            assert len(flaky.accepts) == 2 and rig.pool.opened == 1
            rig.update({"orders": [flaky.snapshot()]})
            response, _ = await rig.call("/")
            assert response.status == 200 and rig.pool.opened == 1  # the warm connection, reused

            # down again: the successful connect reset the count, so the wait is the first one again
            flaky.target = None
            conn.close()
            deadline = loop.time() + 3.0
            while rig.pool.count([ep.id]) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            assert rig.pool.count([ep.id]) == 0
            assert "backing off" not in str(await fails(rig.pool, ep))
            again = str(await fails(rig.pool, ep))
            assert "backing off" in again and "after 1 failed connect," in again
            assert len(flaky.accepts) == 3

    run(go())


def test_the_back_off_grows_to_its_cap_and_its_state_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "BACKOFF_ENTRIES", 8)

    async def go() -> None:
        kwargs = {"connect_backoff": 0.02, "connect_backoff_max": 0.1}
        async with mesh(tmp_path, pool_kwargs=kwargs) as rig, peer() as dead:
            ep = dead.endpoint()
            start = time.monotonic()
            for _ in range(500):
                if time.monotonic() - start >= 1.0:
                    break
                error = str(await fails(rig.pool, ep))
                if "backing off" in error:
                    left = float(error.split("backing off for ")[1].split("s more")[0])
                    assert left <= 0.1
                await asyncio.sleep(0.005)
            gaps = [b - a for a, b in zip(dead.accepts, dead.accepts[1:], strict=False)]
            assert len(dead.accepts) >= 6  # never more than 0.1 s apart, so kept trying
            assert min(gaps) >= 0.02 - 0.005 and max(gaps) < 0.1 + 0.1

            # many dead endpoints: only the last few failures are remembered
            for i in range(20):
                await fails(rig.pool, dead.endpoint(f"orders-{i}"))
            assert len(rig.pool._backoff) == 8
            assert "backing off" in str(await fails(rig.pool, dead.endpoint("orders-19")))
            before = len(dead.accepts)
            assert "backing off" not in str(await fails(rig.pool, dead.endpoint("orders-0")))
            assert len(dead.accepts) == before + 1  # forgotten: tried again at once

    run(go())
