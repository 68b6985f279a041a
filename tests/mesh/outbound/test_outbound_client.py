"""MeshClient over real sockets: discover -> balance -> retry/timeout/breaker -> mTLS HTTP/2 -> app."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from meshrig_testlib import drain_body, mesh, ok_app, read_all, run, spiffe, traffic

from mesh.h2 import Limits
from mesh.outbound.listener import OutboundHandler
from mesh.transport.h1 import ClientInfo, H1Pool, H1Server
from mesh.transport.messages import Request, Response, body_of


def flaky_app(failures: list[Response | None], final: bytes = b"done"):  # type: ignore[no-untyped-def]
    """Answers with each of ``failures`` in turn (None: sleep forever-ish), then 200 ``final``."""
    queue = list(failures)

    async def app(request: Request, info: ClientInfo) -> Response:
        await drain_body(request)
        if queue:
            answer = queue.pop(0)
            if answer is None:
                await asyncio.sleep(5)
                return Response(200, [("content-length", "4")], body_of(b"late"))
            return answer
        return Response(200, [("content-length", str(len(final)))], body_of(final))

    return app


def status(code: int, *headers: tuple[str, str]) -> Response:
    return Response(code, [("content-length", "0"), *headers])


def test_get_is_retried_on_503_until_it_succeeds(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([status(503), status(503)]))
            rig.update({"orders": [up.endpoint()]})
            response, body = await rig.call("/orders/1")
            assert (response.status, body) == (200, b"done")
            assert len(up.seen) == 3
            assert [r.header("x-meshgate-attempt") for r in up.seen] == [None, "2", "3"]
            assert rig.client.upstream("orders").stats == {
                "requests": 1,
                "retries": 2,
                "ejections": 0,
                "overflows": 0,
            }

    run(go())


def test_retries_stop_after_the_configured_attempts(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([status(502)] * 5))
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(retries={"attempts": 1})})
            response, _ = await rig.call("/")
            assert response.status == 502 and response.header("x-meshgate-error") is None
            assert len(up.seen) == 2

    run(go())


def test_a_spent_retry_budget_returns_the_failed_response(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([status(503), status(503)]))
            policy = traffic(retries={"budget": {"percent": "0%", "minPerSecond": 0}})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            response, _ = await rig.call("/")
            assert response.status == 503 and len(up.seen) == 1
            assert rig.client.upstream("orders").stats["retries"] == 0

    run(go())


def test_post_is_not_retried_unless_non_idempotent_is_set(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([status(503), status(503)]))
            rig.update({"orders": [up.endpoint()]})
            response, _ = await rig.call("/orders", method="POST", body=b"{}")
            assert response.status == 503 and len(up.seen) == 1

            again = await rig.upstream(flaky_app([status(503), status(503)]))
            rig.update({"orders": [again.endpoint()]}, {"orders": traffic(retries={"nonIdempotent": True})})
            response, body = await rig.call("/orders", method="POST", body=b'{"a": 1}')
            assert (response.status, body) == (200, b"done")
            assert len(again.seen) == 3

    run(go())


def test_posted_body_is_replayed_on_each_attempt(tmp_path: Path) -> None:
    bodies: list[bytes] = []

    async def app(request: Request, info: ClientInfo) -> Response:
        bodies.append(await drain_body(request))
        return status(503) if len(bodies) < 3 else status(201)

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(retries={"nonIdempotent": True})})
            response, _ = await rig.call("/orders", method="POST", body=b"x" * 5000)
            assert response.status == 201

    run(go())
    assert bodies == [b"x" * 5000] * 3


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    times: list[float] = []

    async def app(request: Request, info: ClientInfo) -> Response:
        times.append(time.monotonic())
        return status(503, ("retry-after", "1")) if len(times) == 1 else status(200)

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            policy = traffic(retries={"backoff": {"base": "1ms", "max": "2s"}})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            response, _ = await rig.call("/")
            assert response.status == 200

    run(go())
    assert len(times) == 2
    assert 0.95 <= times[1] - times[0] < 2.0  # whole seconds only (RFC 9110): "0.4" is ignored


def test_retry_after_beyond_the_deadline_returns_the_upstreams_answer(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([status(503, ("retry-after", "3"))]))
            policy = traffic(timeout="500ms", retries={"backoff": {"max": "5s"}})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            started = time.monotonic()
            response, _ = await rig.call("/")
            assert time.monotonic() - started < 0.4  # answered at once, not after sleeping
            assert (response.status, response.header("retry-after")) == (503, "3")  # its own answer
            assert response.header("x-meshgate-error") is None
            assert len(up.seen) == 1

    run(go())


def test_connect_failure_is_retried_on_another_endpoint(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            live = await rig.upstream(ok_app(b"live"))
            dead = await rig.upstream(ok_app(b"dead"))
            dead_ep = dead.endpoint("dead")
            await dead.close()
            rig.upstreams.remove(dead)
            # one retry, and outlier detection set high, so that only the choice of the retry's endpoint
            # keeps requests working (a retry sent to the dead one again would fail a request in four)
            policy = traffic(retries={"attempts": 1}, outlierDetection={"consecutiveConnectFailures": 100})
            rig.update({"orders": [dead_ep, live.endpoint("live")]}, {"orders": policy})
            for i in range(24):
                response, body = await rig.call("/", method="POST" if i % 2 else "GET", body=b"p" * (i % 2))
                assert (response.status, body) == (200, b"live"), body
            assert rig.client.upstream("orders").stats["retries"] >= 1
            assert len(live.seen) == 24

    run(go())


def test_every_endpoint_dead_gives_connect_failure(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            dead = await rig.upstream(ok_app())
            ep = dead.endpoint()
            await dead.close()
            rig.upstreams.remove(dead)
            rig.update({"orders": [ep]})
            response, body = await rig.call("/")
            assert response.status == 503 and response.header("x-meshgate-error") == "connect_failure"
            assert b"cannot connect" in body

    run(go())


def test_per_try_timeout_retries_a_slow_attempt(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([None]))
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(retries={"perTryTimeout": "200ms"})})
            started = time.monotonic()
            response, body = await rig.call("/")
            assert (response.status, body) == (200, b"done")
            assert 0.2 <= time.monotonic() - started < 1.5
            assert len(up.seen) == 2

    run(go())


def test_every_try_too_slow_gives_upstream_timeout(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([None] * 5))
            rig.update(
                {"orders": [up.endpoint()]},
                {"orders": traffic(retries={"perTryTimeout": "100ms", "attempts": 2})},
            )
            response, _ = await rig.call("/")
            assert response.status == 504 and response.header("x-meshgate-error") == "upstream_timeout"
            assert len(up.seen) == 3

    run(go())


def test_overall_timeout_gives_upstream_timeout(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([None] * 5))
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(timeout="300ms")})
            started = time.monotonic()
            response, _ = await rig.call("/")
            elapsed = time.monotonic() - started
            assert response.status == 504 and response.header("x-meshgate-error") == "upstream_timeout"
            assert 0.25 <= elapsed < 1.0

    run(go())


def test_circuit_breaker_limit_answers_503_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        gate = asyncio.Event()

        async def app(request: Request, info: ClientInfo) -> Response:
            await asyncio.wait_for(gate.wait(), 5)
            return status(200)

        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(circuitBreaker={"maxRequests": 2})})
            slow = [asyncio.create_task(rig.call("/")) for _ in range(2)]
            while len(up.seen) < 2:
                await asyncio.sleep(0.01)
            response, _ = await rig.call("/")
            assert response.status == 503 and response.header("x-meshgate-error") == "circuit_open"
            assert len(up.seen) == 2
            gate.set()
            assert [r.status for r, _ in await asyncio.gather(*slow)] == [200, 200]
            response, _ = await rig.call("/")  # slots were given back
            assert response.status == 200
            assert rig.client.upstream("orders").breaker.active == 0

    run(go())


def _one_stream_per_connection(
    tmp_path: Path, breaker: dict[str, int] | None
) -> tuple[list[tuple[int, str | None]], int]:
    """Statuses of 4 concurrent calls to a peer allowing one stream per connection, and the number of
    connections opened (each call started once the one before is in the app or answered)."""

    async def go() -> tuple[list[tuple[int, str | None]], int]:
        gate = asyncio.Event()

        async def app(request: Request, info: ClientInfo) -> Response:
            await asyncio.wait_for(gate.wait(), 5)
            return status(200)

        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app, limits=Limits(max_concurrent_streams=1))
            policy = {"orders": traffic(circuitBreaker=breaker)} if breaker else {}
            rig.update({"orders": [up.endpoint()]}, policy)
            calls: list[asyncio.Task[tuple[Response, bytes]]] = []
            for _ in range(4):
                calls.append(asyncio.create_task(rig.call("/")))
                while len(up.seen) + sum(c.done() for c in calls) < len(calls):
                    await asyncio.sleep(0.01)
            gate.set()
            results = await asyncio.gather(*calls)
            return sorted(
                (r.status, r.header("x-meshgate-error")) for r, _ in results
            ), rig.client.pool.opened

    return run(go())


def test_a_full_connection_opens_another_up_to_max_connections(tmp_path: Path) -> None:
    assert _one_stream_per_connection(tmp_path / "a", None) == ([(200, None)] * 4, 4)
    limited = _one_stream_per_connection(tmp_path / "b", {"maxConnections": 2})
    assert limited == ([(200, None)] * 2 + [(503, "circuit_open")] * 2, 2)


def test_max_pending_requests_answers_503_instead_of_queueing_for_a_connection(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            policy = traffic(circuitBreaker={"maxPendingRequests": 0})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            # no connection yet and none may be waited for: refused before any byte is sent
            response, body = await rig.call("/")
            assert response.status == 503 and response.header("x-meshgate-error") == "circuit_open"
            assert b"wait for a connection" in body
            assert up.seen == [] and rig.client.pool.opened == 0
            upstream = rig.client.upstream("orders")
            assert upstream.stats["overflows"] == 1 and upstream.stats["retries"] == 0
            assert upstream.breaker.pending == 0 and upstream.breaker.active == 0

    run(go())


def test_no_endpoints_gives_no_healthy_upstream(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            rig.update({"orders": []})
            response, _ = await rig.call("/")
            assert response.status == 503 and response.header("x-meshgate-error") == "no_healthy_upstream"
            response, _ = await rig.call("/", service="unknown")
            assert response.header("x-meshgate-error") == "no_healthy_upstream"

    run(go())


def test_wrong_spiffe_id_is_refused_before_any_request(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            rig.update({"orders": [up.endpoint(identity=spiffe("billing"))]})
            response, body = await rig.call("/")
            assert response.header("x-meshgate-error") == "tls_identity_mismatch"
            assert response.status == 503
            assert spiffe("billing").encode() in body and spiffe("orders").encode() in body
            assert up.seen == [] and up.handler.stats["requests"] == 0

    run(go())


def test_endpoint_without_a_valid_identity_is_never_contacted(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            rig.update({"orders": [up.endpoint(identity="not-an-id")]})
            response, _ = await rig.call("/")
            assert response.header("x-meshgate-error") == "tls_identity_mismatch"
            assert rig.pool.opened == 0 and not up.inbound.connections

    run(go())


def test_outlier_detection_ejects_a_failing_endpoint(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            good = await rig.upstream(ok_app(b"good"))
            bad = await rig.upstream(flaky_app([status(500)] * 100))
            policy = traffic(
                loadBalancer={"policy": "round-robin"},
                retries={"attempts": 0},
                outlierDetection={"consecutive5xx": 2, "baseEjectionTime": "30s"},
            )
            rig.update({"orders": [good.endpoint("good"), bad.endpoint("bad")]}, {"orders": policy})
            statuses = [(await rig.call("/"))[0].status for _ in range(10)]
            assert statuses.count(500) == 2
            assert statuses[-6:] == [200] * 6
            assert len(bad.seen) == 2
            assert rig.client.upstream("orders").stats["ejections"] == 1

    run(go())


def test_ring_hash_pins_a_header_value_to_one_endpoint(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            ups = [await rig.upstream(ok_app(f"ep{i}".encode())) for i in range(3)]
            policy = traffic(loadBalancer={"policy": "ring-hash", "hashHeader": "x-user"})
            rig.update({"orders": [u.endpoint(f"ep{i}") for i, u in enumerate(ups)]}, {"orders": policy})
            for user in ("alice", "bob", "carol", "dave"):
                bodies = {(await rig.call("/", headers=[("x-user", user)]))[1] for _ in range(4)}
                assert len(bodies) == 1

    run(go())


def test_a_new_traffic_policy_applies_to_the_next_request(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(flaky_app([status(503)] * 3))
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(retries={"attempts": 0})})
            assert (await rig.call("/"))[0].status == 503
            rig.update({"orders": [up.endpoint()]}, {"orders": traffic(retries={"attempts": 3})})
            assert (await rig.call("/"))[0].status == 200
            assert len(up.seen) == 4

    run(go())


def test_streamed_request_and_response_bodies_arrive_intact(tmp_path: Path) -> None:
    big = bytes(range(256)) * (5 * 1024 * 4)  # 5 MiB
    upload = bytes(reversed(range(256))) * (2 * 1024 * 4)  # 2 MiB
    received: list[bytes] = []

    async def app(request: Request, info: ClientInfo) -> Response:
        received.append(await drain_body(request))

        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(big), 100_000):
                yield big[i : i + 100_000]

        return Response(200, [("content-length", str(len(big)))], chunks())

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            rig.update({"orders": [up.endpoint()]})

            async def parts():  # type: ignore[no-untyped-def]
                for i in range(0, len(upload), 65_536):
                    yield upload[i : i + 65_536]

            request = Request(
                "PUT", "/blob", "orders", headers=[("content-length", str(len(upload)))], body=parts()
            )
            response = await rig.client.request("orders", request)
            assert response.status == 200
            data = bytearray()
            async for chunk in response.body:
                data += chunk
                if len(data) < 1_000_000:
                    await asyncio.sleep(0.001)  # a slow reader for the first megabyte
            assert bytes(data) == big

    run(go())
    assert received == [upload]


def test_unread_response_holds_the_app_back(tmp_path: Path) -> None:
    produced = [0]
    total = 64 * 1024 * 1024

    async def app(request: Request, info: ClientInfo) -> Response:
        async def chunks():  # type: ignore[no-untyped-def]
            block = b"z" * 65_536
            while produced[0] < total:
                produced[0] += len(block)
                yield block

        return Response(200, [("content-length", str(total))], chunks())

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            rig.update({"orders": [up.endpoint()]})
            response = await rig.client.request("orders", Request("GET", "/", "orders"))
            await asyncio.sleep(0.5)
            stalled = produced[0]
            await asyncio.sleep(0.3)
            assert produced[0] == stalled  # nobody reads: the app is held back
            assert stalled < 24 * 1024 * 1024, stalled
            # read a little, then drop the rest: the stream is reset and the breaker slot returned
            body = response.body
            await anext(body)
            await body.aclose()  # type: ignore[attr-defined]
            assert rig.client.upstream("orders").breaker.active == 0

    run(go())


def test_response_body_is_read_after_breaker_slot_release(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app(b"abc"))
            rig.update({"orders": [up.endpoint()]})
            response = await rig.client.request("orders", Request("GET", "/", "orders"))
            assert rig.client.upstream("orders").breaker.active == 1  # until the body is read
            assert await read_all(response) == b"abc"
            assert rig.client.upstream("orders").breaker.active == 0
            assert all(e.active == 0 for e in rig.client.endpoints.get("orders"))

    run(go())


def test_outbound_listener_proxies_plain_http_into_the_mesh(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app(b"via proxy"))
            rig.update({"orders": [up.endpoint()], "billing": []})
            listener = await asyncio.start_server(H1Server(OutboundHandler(rig.client)), "127.0.0.1", 0)
            port = listener.sockets[0].getsockname()[1]
            app_side = H1Pool("127.0.0.1", port)
            try:
                target = "http://orders.mesh/items?x=1"
                response = await app_side.request(Request("GET", target, "orders.mesh"))
                assert (response.status, await read_all(response)) == (200, b"via proxy")
                (seen,) = up.seen
                assert (seen.path, seen.header("x-meshgate-peer")) == ("/items?x=1", rig.caller_id)
                response = await app_side.request(Request("GET", "/pay", "billing"))
                assert response.status == 503
                assert response.header("x-meshgate-error") == "no_healthy_upstream"
                await read_all(response)
            finally:
                await app_side.close()
                listener.close()
                await listener.wait_closed()

    run(go())


def test_a_request_body_that_fails_is_the_callers_fault_not_the_endpoints(tmp_path: Path) -> None:
    """A streamed body that breaks (a client gone, bad gRPC-Web base64) answers 400 bad_request, is not
    retried, and does not count toward ejecting the endpoint (it counted as an upstream 503)."""

    async def app(request: Request, info: ClientInfo) -> Response:
        await drain_body(request)
        return Response(200, [], body_of(b"ok"))

    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(app)
            policy = traffic(outlierDetection={"consecutive5xx": 1, "baseEjectionTime": "30s"})
            rig.update({"orders": [up.endpoint()]}, {"orders": policy})
            for _ in range(3):

                async def broken():  # type: ignore[no-untyped-def]
                    yield b"x" * 100_000  # over the replay limit: streamed, not buffered
                    await asyncio.sleep(0.01)
                    raise ValueError("the caller's body broke")

                request = Request("POST", "/up", "orders", headers=[], body=broken())
                response = await rig.client.request("orders", request)
                assert (response.status, response.header("x-meshgate-error")) == (400, "bad_request")
            stats = rig.client.upstream("orders").stats
            assert stats["ejections"] == 0 and stats["retries"] == 0
            assert (await rig.call("/"))[0].status == 200  # the endpoint still takes requests

    run(go())
