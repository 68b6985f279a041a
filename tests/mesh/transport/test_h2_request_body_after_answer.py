"""Request bodies and answers that end at different times. Client side: a request body still
sending when its answer has ended keeps its stream while it makes progress and is reset (RST_STREAM
CANCEL) after SENDER_GRACE without progress, never once per early answer; a body that fails while
the answer streams fails the answer's reader. Server side: a reader of an answered stream's request
body learns how it ends.

Most peers here are raw ``h2`` servers with a 100-byte initial stream window that answer at once, in
full, without reading the request body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2pair_testlib import close_pair, open_pair

from mesh.transport.h2conn import H2Protocol, StreamError
from mesh.transport.messages import Request, Response, body_of


async def _answering_server(
    resets: list[int], *, read_every: float | None = None, seen: list[str] | None = None
) -> asyncio.Server:
    """A raw h2 server with a 100-byte stream window that answers each request at once, in full. With
    ``read_every`` it gives 100 bytes of window back that often (a slow reader), else never; ``seen``
    collects ``data:N`` and ``end`` as the request body arrives."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
        writer.write(conn.data_to_send())
        open_streams: list[int] = []

        async def slow_reader() -> None:
            while read_every is not None:
                await asyncio.sleep(read_every)
                for sid in open_streams:
                    with contextlib.suppress(Exception):
                        conn.increment_flow_control_window(100, stream_id=sid)
                        conn.increment_flow_control_window(100)
                writer.write(conn.data_to_send())

        reading = asyncio.create_task(slow_reader())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        sid = event.stream_id
                        open_streams.append(sid)
                        conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
                        conn.send_data(sid, b"ok", end_stream=True)
                    elif isinstance(event, h2.events.DataReceived) and seen is not None:
                        seen.append(f"data:{len(event.data)}")
                    elif isinstance(event, h2.events.StreamEnded) and seen is not None:
                        seen.append("end")
                    elif isinstance(event, h2.events.StreamReset):
                        resets.append(int(event.error_code))
                writer.write(conn.data_to_send())
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _read_body_later(request: Request, delay: float) -> asyncio.Task[str]:
    """A task that reads ``request``'s body after ``delay`` (as a relay's pump in another task
    would): "ended", or "error: ..." for a StreamError."""

    async def read() -> str:
        await asyncio.sleep(delay)
        try:
            async for _ in request.body:
                pass
        except StreamError as exc:
            return f"error: {exc}"
        return "ended"

    return asyncio.create_task(read())


async def _answered(
    resets: list[int], body: AsyncIterator[bytes], **server: object
) -> tuple[bytes, list[object], H2Protocol, asyncio.Server]:
    """One request with ``body`` to an :func:`_answering_server`; its answer read to the end."""
    srv = await _answering_server(resets, **server)  # type: ignore[arg-type]
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: H2Protocol(client_side=True), "127.0.0.1", port)
    await asyncio.wait_for(conn.ready, 5)
    response = await asyncio.wait_for(conn.request(Request("POST", "/", "peer", headers=[], body=body)), 5)
    streams: list[object] = list(conn.streams.values())
    data = b"".join([chunk async for chunk in response.body])
    return data, streams, conn, srv


async def _until(condition: object, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not condition() and loop.time() < end:  # type: ignore[operator]
        await asyncio.sleep(0.05)


def test_a_peer_that_reads_on_slowly_gets_the_whole_body() -> None:
    """Window comes back 100 bytes per 0.2 s after the answer: the upload makes progress, so it is not
    cancelled (a check of "blocked on window" at 0.5 s intervals cancelled it after 1.5 s)."""

    async def go() -> tuple[list[int], list[str]]:
        resets: list[int] = []
        seen: list[str] = []

        async def body() -> AsyncIterator[bytes]:
            await asyncio.sleep(0)
            yield b"x" * 1500

        data, _, conn, srv = await _answered(resets, body(), read_every=0.2, seen=seen)
        assert data == b"ok"
        await _until(lambda: "end" in seen, 8)
        conn.close()
        srv.close()
        await srv.wait_closed()
        return resets, seen

    resets, seen = asyncio.run(asyncio.wait_for(go(), 20))
    assert resets == []
    assert seen[-1] == "end" and sum(int(x[5:]) for x in seen if x.startswith("data:")) == 1500


def test_an_answered_stream_whose_body_source_fails_or_stalls_is_reset_not_left_open() -> None:
    """After the answer, the body's source fails (a relayed body abandoned upstream: a StreamError) or
    never yields again: the stream is reset (CANCEL) after SENDER_GRACE instead of staying open in the
    core with no owner (the peer never learnt the request ended)."""

    async def case(kind: str) -> tuple[list[int], int, int]:
        resets: list[int] = []

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 50
            await asyncio.sleep(0.1)
            if kind == "fails":
                raise StreamError("request body abandoned: the response is complete", 8)
            await asyncio.sleep(60)  # stalls
            yield b"y"

        data, _, conn, srv = await _answered(resets, body())
        assert data == b"ok"
        await _until(lambda: resets, 4)
        await asyncio.sleep(0.05)
        result = resets, conn.endpoint.open_streams, len(conn.streams)
        conn.close()
        srv.close()
        await srv.wait_closed()
        return result

    for kind in ("fails", "stalls"):
        resets, open_streams, table = asyncio.run(asyncio.wait_for(case(kind), 20))
        assert (resets, open_streams, table) == ([8], 0, 0), kind


def test_a_request_body_blocked_on_window_stops_when_the_response_has_ended() -> None:
    async def go() -> tuple[bytes, list[int], int, bool]:
        resets: list[int] = []
        server = await _answering_server(resets)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: H2Protocol(client_side=True), "127.0.0.1", port)
        await asyncio.wait_for(conn.ready, 5)

        async def body() -> AsyncIterator[bytes]:
            await asyncio.sleep(0)
            yield b"x" * 1000  # 100 bytes fit the window; the rest waits for a WINDOW_UPDATE

        request = Request("POST", "/", "peer", headers=[], body=body())
        response: Response = await asyncio.wait_for(conn.request(request), 5)
        streams = list(conn.streams.values())
        assert len(streams) == 1 and streams[0].task is not None
        await asyncio.sleep(0.1)  # the sender sent 100 bytes and waits for the window
        assert not streams[0].task.done()
        data = b"".join([chunk async for chunk in response.body])
        # the sender task of the stream ends (it was waiting on the window for ever before the fix):
        # reset once it has waited SENDER_GRACE (1 s) after the answer
        for _ in range(60):
            if all(s.task is not None and s.task.done() for s in streams):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        senders_done = all(s.task is not None and s.task.done() for s in streams)
        open_streams = conn.endpoint.open_streams
        conn.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return data, resets, open_streams, senders_done

    data, resets, open_streams, senders_done = asyncio.run(asyncio.wait_for(go(), 20))
    assert data == b"ok"
    assert resets == [8]  # RST_STREAM CANCEL: the rest of the body is not wanted
    assert open_streams == 0
    assert senders_done


def test_a_reader_of_an_answered_streams_request_body_is_told_it_ends() -> None:
    """A handler answers while its request body still streams, and something else (a relay's request
    pump, on another connection) reads that body: once the answer is complete the stream leaves the
    table, so no END_STREAM, RST_STREAM or connection loss would reach the reader. It gets a
    StreamError instead of waiting for ever (two tasks were left per early-answered gRPC stream)."""

    async def go() -> tuple[str, bytes]:
        readers: list[asyncio.Task[str]] = []

        async def handler(request: Request, proto: H2Protocol) -> Response:
            readers.append(_read_body_later(request, 0))
            await asyncio.sleep(0.05)
            return Response(200, [("content-length", "2")], body_of(b"ok"))

        listener, conn, servers = await open_pair(handler)
        gate = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            await gate.wait()
            yield b"second"

        response = await conn.request(Request("POST", "/", "svc", headers=[], body=body()))
        data = b"".join([chunk async for chunk in response.body])
        gate.set()
        try:
            outcome = await asyncio.wait_for(readers[0], 2)
        finally:
            await close_pair(listener, conn, servers)
        return outcome, data

    outcome, data = asyncio.run(asyncio.wait_for(go(), 20))
    assert data == b"ok"
    assert outcome.startswith("error: request body abandoned")


def test_early_answers_while_the_body_streams_send_no_resets() -> None:
    """260 gRPC-like calls on one connection, each answered in full while the client's body is still
    open (it ends a moment later): no RST_STREAM from the client, so the peer's rapid-reset guard
    (200 resets in 10 s) is never tripped (a CANCEL per early answer got the connection closed after
    201 calls)."""

    async def go() -> tuple[int, bool]:
        async def handler(request: Request, proto: H2Protocol) -> Response:
            return Response(200, [("content-type", "application/grpc")], body_of(b"reply"))

        listener, conn, servers = await open_pair(handler)
        answered = 0
        try:
            for _ in range(260):
                gate = asyncio.Event()

                async def body(gate: asyncio.Event = gate) -> AsyncIterator[bytes]:
                    yield b"msg"
                    await gate.wait()  # the client half-closes after it saw the answer

                response = await conn.request(Request("POST", "/svc/M", "svc", headers=[], body=body()))
                if b"".join([chunk async for chunk in response.body]) == b"reply":
                    answered += 1
                gate.set()
                await asyncio.sleep(0)
            await asyncio.sleep(0.1)
            return answered, conn.draining
        finally:
            await close_pair(listener, conn, servers)

    answered, draining = asyncio.run(asyncio.wait_for(go(), 30))
    assert answered == 260
    assert not draining


def test_a_late_reader_of_a_body_that_had_fully_arrived_is_not_left_waiting() -> None:
    """The body and its END_STREAM had arrived, unread, when the answer completed: they were dropped
    (their window given back) and nothing told a reader that came later, which then waited for ever."""

    async def go() -> str:
        readers: list[asyncio.Task[str]] = []

        async def handler(request: Request, proto: H2Protocol) -> Response:
            readers.append(_read_body_later(request, 0.2))  # reads only after the answer is complete
            await asyncio.sleep(0.05)  # the whole body arrives meanwhile
            return Response(200, [("content-length", "2")], body_of(b"ok"))

        listener, conn, servers = await open_pair(handler)
        try:
            request = Request("POST", "/", "svc", headers=[("content-length", "5")], body=body_of(b"hello"))
            response = await conn.request(request)
            assert b"".join([chunk async for chunk in response.body]) == b"ok"
            return await asyncio.wait_for(readers[0], 2)
        finally:
            await close_pair(listener, conn, servers)

    outcome = asyncio.run(asyncio.wait_for(go(), 20))
    assert outcome.startswith("error: request body abandoned")


def test_a_body_that_fails_while_the_answer_streams_fails_the_answer_not_hangs_it() -> None:
    """The request body's source fails after the response headers, while the response body is still
    coming: its reader gets the error (the reset emptied the inbox after the error was put in, so the
    reader waited for ever)."""

    async def go(kind: str) -> tuple[list[bytes], str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            writer.write(conn.data_to_send())
            try:
                while data := await reader.read(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            conn.send_headers(event.stream_id, [(":status", "200")])
                            conn.send_data(event.stream_id, b"part1")  # the rest never comes in time
                    writer.write(conn.data_to_send())
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: H2Protocol(client_side=True), "127.0.0.1", srv.sockets[0].getsockname()[1]
        )
        await asyncio.wait_for(conn.ready, 5)

        async def body() -> AsyncIterator[bytes]:
            yield b"x"
            await asyncio.sleep(0.2)
            if kind == "stream":
                raise StreamError("request body abandoned: the response is complete", 8)
            raise RuntimeError("source broke")

        request = Request("POST", "/", "peer", headers=[], body=body())
        response = await asyncio.wait_for(conn.request(request), 5)
        got: list[bytes] = []
        outcome = "ended"

        async def read() -> None:
            async for chunk in response.body:
                got.append(chunk)

        try:
            await asyncio.wait_for(read(), 3)
        except TimeoutError:
            outcome = "hang"
        except StreamError as exc:
            outcome = f"error: {exc}"
        conn.close()
        srv.close()
        await srv.wait_closed()
        return got, outcome

    for kind in ("stream", "runtime"):
        got, outcome = asyncio.run(asyncio.wait_for(go(kind), 20))
        assert got == [b"part1"], kind
        assert outcome.startswith("error: request body failed"), (kind, outcome)
