"""Reconnect backoff: a peer that cannot be reached is not dialled per request, yet is used again soon
after it comes back, and its backoff's refusals are no outlier strikes.

Each peer sits behind a loopback switch: while "down" it accepts TCP and closes at once (the TLS
handshake fails: a real ``connect_failure``), while "up" it pipes to a real inbound sidecar. The
switch counts the connections it saw, i.e. the connects the pool really made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from meshrig_testlib import mesh, ok_app, pipe, read_all, run, spiffe, traffic

from mesh.measure import upstream_families
from mesh.outbound.client import _reachable
from mesh.outbound.endpoints import Endpoint
from mesh.transport.h1 import UpstreamError
from mesh.transport.messages import Request, body_of
from mesh.transport.pool import PROBING, H2Pool


class Switch:
    """A loopback port in front of ``target``: ``up`` pipes to it, otherwise connections are closed."""

    def __init__(self, target: int, up: bool) -> None:
        self.target = target
        self.up = up
        self.hang = False  # while down: hold connections open, never answering (a black hole)
        self.accepted = 0
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.up:
                if self.hang:
                    await reader.read()  # until the caller gives up
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            self._writers.append(up_writer)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def switch(target: int, *, up: bool) -> AsyncIterator[Switch]:
    sw = Switch(target, up)
    server = await asyncio.start_server(sw._handle, "127.0.0.1", 0)
    sw.port = int(server.sockets[0].getsockname()[1])
    try:
        yield sw
    finally:
        server.close()
        for task in sw._tasks:
            task.cancel()
        await asyncio.gather(*sw._tasks, return_exceptions=True)
        for writer in sw._writers:
            writer.close()
        await asyncio.sleep(0.01)


def endpoint(eid: str, sw: Switch) -> dict[str, object]:
    return {"id": eid, "address": "127.0.0.1", "port": sw.port, "identity": spiffe("orders")}


def get() -> Request:
    return Request("GET", "/", "orders", headers=[], body=body_of(b""))


def test_a_dead_peer_is_dialled_a_few_times_a_second_not_per_request(tmp_path: Path) -> None:
    """Ten callers in a loop for 1.5 s against a single dead endpoint: every answer is a 503
    connect_failure (or a 504 when the deadline passed during a connect that followed a backoff's
    wait, as Envoy's route timeout answers), and the peer saw a handful of connects (the backoff's
    waits: 0.1-0.3 s growing to 1 s), not one per request and retry."""

    async def go() -> tuple[int, int, set[tuple[int, str | None]]]:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw:
                rig.update({"orders": [endpoint("orders-a", sw)]}, {"orders": traffic(timeout="300ms")})
                loop = asyncio.get_running_loop()
                stop = loop.time() + 1.5
                outcomes: set[tuple[int, str | None]] = set()
                requests = 0

                async def caller() -> None:
                    nonlocal requests
                    while loop.time() < stop:
                        response = await rig.client.request("orders", get())
                        await read_all(response)
                        requests += 1
                        outcomes.add((response.status, response.header("x-meshgate-error")))

                await asyncio.gather(*(caller() for _ in range(10)))
                # what a scrape shows: one failed connect per connect the peer saw
                (failed,) = [f for f in upstream_families(rig.client) if "connect_failures" in f.name]
                assert f"meshgate_upstream_connect_failures_total {sw.accepted}" in failed.render()
                return sw.accepted, requests, outcomes

    accepted, requests, outcomes = run(go())
    assert (503, "connect_failure") in outcomes
    assert outcomes <= {(503, "connect_failure"), (504, "upstream_timeout")}
    assert requests >= 20  # the callers were answered, not held
    assert 2 <= accepted <= 10, accepted  # before the backoff: one connect per try, over a hundred


def test_a_single_endpoint_is_used_again_soon_after_it_comes_back(tmp_path: Path) -> None:
    """A lone endpoint down for 2 s (its backoff grown to the cap), then up: a request sent just
    after waits out what is left of the backoff and succeeds, within about the cap (1 s; the
    reverted design of c2578e1 failed it at once, 5 s caps were seen)."""

    async def go() -> tuple[int, float]:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw:
                rig.update({"orders": [endpoint("orders-a", sw)]}, {"orders": traffic(timeout="300ms")})
                loop = asyncio.get_running_loop()
                stop = loop.time() + 2.0
                while loop.time() < stop:
                    response = await rig.client.request("orders", get())
                    await read_all(response)
                    # (504 when the deadline passed in a connect begun after a backoff's wait)
                    assert response.header("x-meshgate-error") in ("connect_failure", "upstream_timeout")
                sw.up = True
                start = loop.time()
                response = await rig.client.request(
                    "orders", get(), policy=traffic(timeout="3s", retries={"attempts": 0})
                )
                assert await read_all(response) == b"ok"
                return response.status, loop.time() - start

    status, took = run(go())
    assert status == 200
    assert took < 1.6, took


def test_a_backoff_outlasting_the_deadline_fails_at_once_without_a_connect(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path, pool_kwargs={"connect_backoff": 2.0, "connect_backoff_max": 2.0}) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw:
                rig.update({"orders": [endpoint("orders-a", sw)]})
                ep = rig.client.endpoints.get("orders")[0]
                loop = asyncio.get_running_loop()
                try:
                    await rig.pool.connection(ep, deadline=loop.time() + 5)
                except UpstreamError as exc:
                    assert exc.code == "connect_failure" and not exc.refused
                assert sw.accepted == 1
                assert rig.pool.backoff_left(ep) > 1.5
                start = loop.time()
                try:
                    await rig.pool.connection(ep, deadline=loop.time() + 0.5)
                except UpstreamError as exc:
                    assert exc.code == "connect_failure" and exc.retryable and exc.refused
                    assert "not tried again" in str(exc) and "1 failed connect" in str(exc)
                else:
                    raise AssertionError("connected during the backoff")
                assert loop.time() - start < 0.1
                assert sw.accepted == 1
                # the client's answer says so too, at once, and counts no strike against the endpoint
                response = await rig.client.request(
                    "orders", get(), policy=traffic(timeout="500ms", retries={"attempts": 0})
                )
                body = await read_all(response)
                assert (response.status, response.header("x-meshgate-error")) == (503, "connect_failure")
                assert b"not tried again" in body
                assert ep.consecutive_connect_failures == 0
                assert sw.accepted == 1

    run(go())


def test_one_failed_connect_is_one_strike_however_many_waited_for_it(tmp_path: Path) -> None:
    async def go() -> Endpoint:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw:
                rig.update(
                    {"orders": [endpoint("orders-a", sw)]},
                    {"orders": traffic(timeout="2s", retries={"attempts": 0})},
                )
                responses = await asyncio.gather(*(rig.client.request("orders", get()) for _ in range(20)))
                for response in responses:
                    await read_all(response)
                    assert response.header("x-meshgate-error") == "connect_failure"
                assert sw.accepted == 1
                return rig.client.endpoints.get("orders")[0]

    ep = run(go())
    assert ep.consecutive_connect_failures == 1
    assert ep.ejected_until == 0


def test_a_healthy_endpoint_whose_one_connect_failed_is_not_ejected(tmp_path: Path) -> None:
    """Two endpoints; A's first connect fails (a blip), B is fine. Steady traffic for 0.6 s: every
    request succeeds (the blip is retried on B), A is not ejected, and A serves again after its short
    backoff instead of being skipped for the 30 s of an ejection."""

    async def go() -> tuple[list[int], Endpoint, int]:
        async with mesh(tmp_path) as rig:
            up_a = await rig.upstream(ok_app(b"a"))
            up_b = await rig.upstream(ok_app(b"b"))
            async with switch(up_a.port, up=False) as sw_a, switch(up_b.port, up=True) as sw_b:
                rig.update(
                    {"orders": [endpoint("orders-a", sw_a), endpoint("orders-b", sw_b)]},
                    {"orders": traffic(timeout="2s", loadBalancer={"policy": "round-robin"})},
                )
                statuses: list[int] = []
                loop = asyncio.get_running_loop()
                stop = loop.time() + 0.6
                served_by_a = 0

                async def caller() -> None:
                    nonlocal served_by_a
                    while loop.time() < stop:
                        response = await rig.client.request("orders", get())
                        body = await read_all(response)
                        statuses.append(response.status)
                        served_by_a += body == b"a"
                        if sw_a.accepted >= 1:
                            sw_a.up = True  # the blip is over after its first connect

                await asyncio.gather(*(caller() for _ in range(5)))
                return statuses, rig.client.endpoints.get("orders")[0], served_by_a

    statuses, ep_a, served_by_a = run(go())
    assert set(statuses) == {200}
    assert ep_a.ejected_until == 0
    assert served_by_a > 0


async def _timed(rig: object, policy: object = None) -> tuple[int, str | None, float, bytes]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    response = await rig.client.request("orders", get(), policy=policy)  # type: ignore[attr-defined]
    body = await read_all(response)
    return response.status, response.header("x-meshgate-error"), loop.time() - start, body


def test_requests_that_time_out_while_a_connect_hangs_are_no_strikes(tmp_path: Path) -> None:
    """Ten requests with a 200 ms timeout wait for one connect to a black hole: all 504, none counted
    against the endpoint (each was one 5xx strike, so a blip ejected a healthy endpoint); the connect
    itself fails after the pool's connect timeout and is one connect strike, its callers long gone."""

    async def go() -> tuple[set[tuple[int, str | None]], int, int, int]:
        async with mesh(tmp_path, pool_kwargs={"connect_timeout": 0.6}) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw:
                sw.hang = True
                rig.update(
                    {"orders": [endpoint("orders-a", sw)]},
                    {"orders": traffic(timeout="200ms", retries={"attempts": 0})},
                )
                results = await asyncio.gather(*(_timed(rig) for _ in range(10)))
                ep = rig.client.endpoints.get("orders")[0]
                strikes_5xx = ep.consecutive_5xx
                await asyncio.sleep(0.7)
                return {r[:2] for r in results}, strikes_5xx, ep.consecutive_connect_failures, sw.accepted

    outcomes, strikes_5xx, connect_strikes, accepted = run(go())
    assert outcomes == {(504, "upstream_timeout")}
    assert strikes_5xx == 0
    assert connect_strikes == 1 and accepted == 1


def test_a_lone_dead_endpoint_is_answered_within_about_one_backoff(tmp_path: Path) -> None:
    """The default policy (15 s, two retries) against a single endpoint that refuses: a request waits
    for a backoff once at most, so every answer comes within about the backoff's cap (each retry
    waited again before: answers took up to 3 s and requests piled up)."""

    async def go() -> tuple[set[tuple[int, str | None]], float]:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw:
                rig.update({"orders": [endpoint("orders-a", sw)]})
                loop = asyncio.get_running_loop()
                stop = loop.time() + 2.5
                results: list[tuple[int, str | None, float, bytes]] = []

                async def caller() -> None:
                    while loop.time() < stop:
                        results.append(await _timed(rig))
                        await asyncio.sleep(0.05)

                await asyncio.gather(*(caller() for _ in range(5)))
                return {r[:2] for r in results}, max(r[2] for r in results)

    outcomes, slowest = run(go())
    assert outcomes == {(503, "connect_failure")}
    assert slowest < 1.5, slowest


def test_a_wrong_identity_is_answered_at_once_while_backing_off(tmp_path: Path) -> None:
    async def go() -> tuple[list[tuple[int, str | None, float, bytes]], int]:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app(), name="billing")  # presents billing's identity
            async with switch(up.port, up=True) as sw:
                rig.update({"orders": [endpoint("orders-a", sw)]})  # expects orders
                results = [await _timed(rig) for _ in range(6)]
                return results, sw.accepted

    results, accepted = run(go())
    assert {r[:2] for r in results} == {(503, "tls_identity_mismatch")}
    assert accepted == 1
    assert max(r[2] for r in results[1:]) < 0.1  # no wait for a backoff that cannot help


def test_an_endpoint_that_moved_does_not_wait_for_the_old_address(tmp_path: Path) -> None:
    """A connect to the endpoint's old address hangs; the snapshot moves it (same id, new port): a
    request for it connects to the new address at once instead of waiting on the old connect."""

    async def go() -> tuple[int, str | None, float, bytes]:
        async with mesh(tmp_path, pool_kwargs={"connect_timeout": 3.0}) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as old, switch(up.port, up=True) as new:
                old.hang = True
                rig.update({"orders": [endpoint("orders-a", old)]}, {"orders": traffic(timeout="5s")})
                stuck = asyncio.create_task(_timed(rig))
                await asyncio.sleep(0.2)
                assert old.accepted == 1
                rig.update({"orders": [endpoint("orders-a", new)]}, {"orders": traffic(timeout="5s")})
                result = await _timed(rig)
                stuck.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stuck
                return result

    status, error, took, body = run(go())
    assert (status, error, body) == (200, None, b"ok")
    assert took < 1.0, took


def test_an_identity_change_starts_the_endpoint_afresh(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            ep = {"id": "orders-a", "address": "127.0.0.1", "port": 1, "identity": spiffe("billing")}
            rig.update({"orders": [ep]})
            before = rig.client.endpoints.get("orders")[0]
            before.consecutive_5xx = 3
            rig.update({"orders": [dict(ep, identity=spiffe("orders"))]})
            after = rig.client.endpoints.get("orders")[0]
            assert after is not before and after.identity == spiffe("orders")
            assert after.consecutive_5xx == 0

    run(go())


class _Backoffs:
    """A pool stand-in for ``_reachable``: each endpoint's backoff_left."""

    def __init__(self, left: dict[str, float]) -> None:
        self.left = left

    def backoff_left(self, endpoint: Endpoint) -> float:
        return self.left[endpoint.id]


def _eps(*ids: str) -> list[Endpoint]:
    return [Endpoint(i, "127.0.0.1", 1, spiffe("orders")) for i in ids]


def test_when_every_endpoint_backs_off_the_one_free_first_is_chosen() -> None:
    a, b, c = _eps("a", "b", "c")
    pool = _Backoffs({"a": 0.9, "b": 0.05, "c": 0.0})
    every = [a, b, c]
    assert _reachable(pool, [a, b, c], [a, b, c], every) == [c]  # type: ignore[arg-type]
    assert _reachable(pool, [a, b], [a, b, c], every) == [c]  # type: ignore[arg-type]  # tried, but free
    pool.left["c"] = 0.4
    assert _reachable(pool, [a, b], [a, b], every) == [b]  # type: ignore[arg-type]
    pool.left["a"] = PROBING  # a connect to it is under way: joining it is quickest
    assert _reachable(pool, [a, b], [a, b], every) == [a]  # type: ignore[arg-type]


def test_backoff_entries_are_forgotten_after_a_quiet_minute_and_on_close(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw:
                rig.update({"orders": [endpoint("orders-a", sw)]})
                ep = rig.client.endpoints.get("orders")[0]
                pool: H2Pool = rig.pool
                with contextlib.suppress(UpstreamError):
                    await pool.connection(ep)
                assert pool.backing_off and pool.backoff_left(ep) > 0
                # a minute after its backoff ended with no new failure (the endpoint left, say)
                (state,) = pool._backoff.values()
                state.until -= 61 + state.delay
                pool._prune_at = 0.0
                assert not pool.backing_off and pool.backoff_left(ep) == 0
                # a close while a caller waits the backoff out: it fails, nothing is opened after
                with contextlib.suppress(UpstreamError):
                    await pool.connection(ep)
                sw.up = True
                waiter = asyncio.create_task(pool.connection(ep))
                await asyncio.sleep(0.02)
                pool.close()
                try:
                    await waiter
                except UpstreamError as exc:
                    assert "closed" in str(exc)
                else:
                    raise AssertionError("a connection was opened by a closed pool")
                assert pool.opened == 0 and not pool._conns

    run(go())


def test_an_ejected_endpoint_is_used_before_waiting_on_one_that_backs_off() -> None:
    a, b = _eps("a", "b")
    pool = _Backoffs({"a": 0.5, "b": 0.0})
    # b is ejected (not available), a backs off: b is tried rather than waiting for a
    assert _reachable(pool, [a], [a], [a, b]) == [b]  # type: ignore[arg-type]
    # but not when b was ejected for failed connects: it is probably down, a's wait is short
    b.ejected_for_connects = True
    assert _reachable(pool, [a], [a], [a, b]) == [a]  # type: ignore[arg-type]


def test_a_failed_connect_is_scored_with_the_policy_in_force_when_it_fails(tmp_path: Path) -> None:
    """The policy changes while a connect hangs: its failure is judged by the new thresholds (one
    failed connect ejects), not by those of the request that started it (five)."""

    async def go() -> Endpoint:
        async with mesh(tmp_path, pool_kwargs={"connect_timeout": 0.5}) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw, switch(up.port, up=True) as good:
                sw.hang = True
                eps = [endpoint("orders-a", sw), endpoint("orders-b", good)]
                rig.update({"orders": eps}, {"orders": traffic(timeout="200ms", retries={"attempts": 0})})
                ep_a = next(e for e in rig.client.endpoints.get("orders") if e.id == "orders-a")
                start = asyncio.create_task(
                    rig.client._try(
                        rig.client.upstream("orders"), [ep_a], ep_a, get(), 0.1, 1, (), True, "orders"
                    )
                )
                await asyncio.sleep(0.05)
                strict = traffic(timeout="200ms", outlierDetection={"consecutiveConnectFailures": 1})
                rig.update({"orders": eps}, {"orders": strict})
                await start
                await asyncio.sleep(0.6)  # the connect times out (0.5 s) and is scored
                return ep_a

    ep = run(go())
    assert ep.ejections == 1 and ep.ejected_until > 0


def test_backing_off_is_false_once_every_backoff_ended(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path, pool_kwargs={"connect_backoff": 0.05, "connect_backoff_max": 0.05}) as rig:
            up = await rig.upstream(ok_app())
            async with switch(up.port, up=False) as sw:
                rig.update({"orders": [endpoint("orders-a", sw)]})
                ep = rig.client.endpoints.get("orders")[0]
                with contextlib.suppress(UpstreamError):
                    await rig.pool.connection(ep)
                assert rig.pool.backing_off
                await asyncio.sleep(0.1)
                # remembered (the next failure would wait longer) but no longer in anyone's way
                assert rig.pool._backoff and not rig.pool.backing_off

    run(go())


def test_closed_connections_leave_no_empty_entries(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            rig.update({"orders": [up.endpoint()]})
            _, body = await rig.call()
            assert body == b"ok"
            assert len(rig.pool._conns) == 1
            for conns in list(rig.pool._conns.values()):
                for conn in list(conns):
                    conn.close()
            for _ in range(100):
                if not rig.pool._conns:
                    break
                await asyncio.sleep(0.01)
            assert not rig.pool._conns

    run(go())
