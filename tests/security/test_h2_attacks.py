"""HTTP/2 attacks (STANDARDS "HTTP/2 abuse") against real listeners over real sockets: the sidecar's
mTLS inbound (a client SVID from the mesh CA, ALPN h2), its plaintext outbound (h2c) and the gateway
(h2c, ``--server meshgate``). Frames are built by hand (hyperframe, hpack); every attack asserts the
exact GOAWAY / RST_STREAM error code, what the upstream app received (it counts), and that a
well-behaved client on another connection still gets 200."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame
from security_lib import (
    GoodClient,
    Listener,
    RawH2,
    Stack,
    Watcher,
    good_get,
    rss_kib,
    security_stack,
)

# mesh/h2/limits.py defaults: every listener runs with them
MAX_STREAMS = 128
MAX_RESETS = 200
MAX_PINGS = MAX_SETTINGS = MAX_EMPTY_DATA = 100
MAX_WINDOW_UPDATES = 10_000
MAX_CONTINUATIONS = 32
MAX_HEADER_LIST = 65536
MAX_WINDOW = (1 << 31) - 1

ALL = ["inbound", "outbound", "gateway"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with security_stack(tmp_path_factory.mktemp("h2-attacks")) as running_stack:
        yield running_stack


@pytest.fixture(params=ALL)
def listener(request: pytest.FixtureRequest, stack: Stack) -> Listener:
    return stack.listeners[request.param]


def assert_serving(listener: Listener) -> None:
    """A fresh, well-behaved connection gets its 200."""
    assert good_get(listener) == 200


def assert_goaway(conn: RawH2, code: int, timeout: float = 5.0) -> GoAwayFrame:
    goaway = conn.goaway(timeout)
    assert goaway is not None, f"{conn.listener.name}: no GOAWAY; got {conn.frames[-5:]}"
    assert goaway.error_code == code, (goaway.error_code, goaway.additional_data)
    assert conn.wait_closed(5.0), "the connection stays open after GOAWAY"
    return goaway


# -- rapid reset (CVE-2023-44487) ----------------------------------------------------------------


def test_rapid_reset(stack: Stack, listener: Listener) -> None:
    mark = stack.app.count()
    batch = 20
    sent = 0
    with Watcher(listener) as watch, RawH2(listener) as conn:
        deadline = time.monotonic() + 10.0
        sid = 1
        while sent < 5000 and time.monotonic() < deadline:
            burst = b"".join(
                conn.headers(s) + conn.rst(s, ErrorCodes.CANCEL) for s in range(sid, sid + 2 * batch, 2)
            )
            if not conn.send(burst):
                break
            sid += 2 * batch
            sent += batch
            conn.pump(0.0)
            if any(isinstance(f, GoAwayFrame) for f in conn.frames):
                break
        goaway = assert_goaway(conn, ErrorCodes.ENHANCE_YOUR_CALM)
        time.sleep(0.3)  # the watcher keeps asking meanwhile
    # GOAWAY at the stream that went over max_resets, not thousands later (the client may have pushed
    # more into the socket buffers before it read the GOAWAY: the server never processed those)
    reason = (goaway.additional_data or b"").decode()
    assert reason == f"max_resets exceeded ({MAX_RESETS + 1} RST_STREAM)", reason
    assert goaway.last_stream_id <= 2 * 2 * (MAX_RESETS + 1), goaway.last_stream_id
    assert sent >= MAX_RESETS
    # next to nothing reached the app
    reached = len(stack.app.since(mark)) - len(watch.results)
    assert reached <= 20, reached
    # the other connection was served all along, without delay
    assert not watch.errors, watch.errors
    assert watch.results and all(status == 200 for status, _ in watch.results)
    assert max(latency for _, latency in watch.results) < 1.0, watch.results
    assert_serving(listener)


# -- CONTINUATION flood (CVE-2024-27316 family) --------------------------------------------------


def test_continuation_flood_of_empty_frames(stack: Stack, listener: Listener) -> None:
    mark = stack.app.count()
    with GoodClient(listener) as other, RawH2(listener) as conn:
        block = conn.block(conn.request_headers("/continuation"))
        flood = conn.headers(1, block=block[:1], end_headers=False)
        flood += b"".join(conn.continuation(1, b"") for _ in range(1000))
        conn.flood(flood, step=9 * 50)
        goaway = assert_goaway(conn, ErrorCodes.ENHANCE_YOUR_CALM)
        expected = f"max_continuation_frames exceeded ({MAX_CONTINUATIONS + 1} in one header block)"
        assert goaway.additional_data == expected.encode()
        assert other.get()[0] == 200
    assert [s.path for s in stack.app.since(mark)] == ["/ok"]


def test_continuation_flood_of_bytes_keeps_memory_bounded(stack: Stack, listener: Listener) -> None:
    mark = stack.app.count()
    before = rss_kib(listener.pid)
    chunk = b"\x00" * 16000  # never decoded: refused on size first
    with RawH2(listener) as conn:
        flood = conn.headers(1, block=chunk, end_headers=False) + conn.continuation(1, chunk) * 2000
        assert conn.flood(flood, step=16384) < 256 * 1024  # of 32 MB offered
        goaway = assert_goaway(conn, ErrorCodes.ENHANCE_YOUR_CALM)
        # the first block size over 64 KiB + 16 KiB: HEADERS and 5 CONTINUATION frames of 16000 bytes
        assert goaway.additional_data == b"max_header_block_bytes exceeded (96000 bytes in one header block)"
    grown = rss_kib(listener.pid) - before
    assert grown < 16 * 1024, f"{listener.name} grew by {grown} KiB"
    assert stack.app.since(mark) == []
    assert_serving(listener)


# -- HPACK bomb ----------------------------------------------------------------------------------


def test_hpack_bomb(stack: Stack, listener: Listener) -> None:
    """One 4 KB header in the dynamic table, then 40 one-byte references to it: ~160 KB decoded from
    ~4 KB on the wire, over the 64 KiB header list cap."""
    mark = stack.app.count()
    with GoodClient(listener) as other, RawH2(listener) as conn:
        block = conn.block([*conn.request_headers("/bomb"), (b"x-big", b"a" * 4000)], huffman=False)
        bomb = block + b"\xbe" * 40  # index 62: the newest dynamic-table entry (x-big)
        assert len(bomb) < 8 * 1024 and MAX_HEADER_LIST < 40 * 4000
        conn.send(conn.headers(1, block=bomb))
        assert_goaway(conn, ErrorCodes.ENHANCE_YOUR_CALM)
        assert other.get()[0] == 200
    assert [s.path for s in stack.app.since(mark)] == ["/ok"]


# -- SETTINGS / PING / empty DATA / WINDOW_UPDATE floods -----------------------------------------


def test_settings_flood(stack: Stack, listener: Listener) -> None:
    with GoodClient(listener) as other, RawH2(listener) as conn:
        conn.flood(
            b"".join(conn.settings({SettingsFrame.INITIAL_WINDOW_SIZE: 65535 + i}) for i in range(500))
        )
        goaway = assert_goaway(conn, ErrorCodes.ENHANCE_YOUR_CALM)
        assert goaway.additional_data == f"max_settings exceeded ({MAX_SETTINGS + 1})".encode()
        acks = [f for f in conn.frames if isinstance(f, SettingsFrame) and "ACK" in f.flags]
        assert len(acks) <= MAX_SETTINGS
        assert other.get()[0] == 200


def test_ping_flood(stack: Stack, listener: Listener) -> None:
    with GoodClient(listener) as other, RawH2(listener) as conn:
        conn.flood(b"".join(conn.ping(i.to_bytes(8, "big")) for i in range(1000)))
        goaway = assert_goaway(conn, ErrorCodes.ENHANCE_YOUR_CALM)
        assert goaway.additional_data == f"max_pings exceeded ({MAX_PINGS + 1})".encode()
        acks = [f for f in conn.frames if isinstance(f, PingFrame) and "ACK" in f.flags]
        assert len(acks) <= MAX_PINGS
        assert other.get()[0] == 200


def test_empty_data_flood(stack: Stack, listener: Listener) -> None:
    with GoodClient(listener) as other, RawH2(listener) as conn:
        post = conn.headers(1, conn.request_headers("/empty-data", "POST"), end_stream=False)
        conn.flood(post + b"".join(conn.data(1) for _ in range(1000)))
        goaway = assert_goaway(conn, ErrorCodes.ENHANCE_YOUR_CALM)
        assert goaway.additional_data == f"max_empty_data exceeded ({MAX_EMPTY_DATA + 1})".encode()
        assert other.get()[0] == 200


def test_window_update_flood(stack: Stack, listener: Listener) -> None:
    with GoodClient(listener) as other, RawH2(listener) as conn:
        conn.flood(conn.window_update(0, 1) * (MAX_WINDOW_UPDATES + 2000), step=13 * 1000)
        goaway = assert_goaway(conn, ErrorCodes.ENHANCE_YOUR_CALM)
        assert goaway.additional_data == f"max_window_updates exceeded ({MAX_WINDOW_UPDATES + 1})".encode()
        assert other.get()[0] == 200


# -- stream exhaustion ---------------------------------------------------------------------------


def test_streams_beyond_max_concurrent_are_refused(stack: Stack, listener: Listener) -> None:
    extra = 4
    with GoodClient(listener) as other, RawH2(listener) as conn:
        settings = conn.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        assert isinstance(settings, SettingsFrame)
        assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == MAX_STREAMS
        sids = list(range(1, 2 * (MAX_STREAMS + extra), 2))
        # one write: every HEADERS arrives before any answer could close a stream
        conn.send(b"".join(conn.get(sid, f"/many/{sid}") for sid in sids))
        over = sids[MAX_STREAMS:]
        for sid in over:
            assert conn.wait_reset(sid) == ErrorCodes.REFUSED_STREAM, sid
        deadline = time.monotonic() + 10.0
        answered: set[int] = set()
        while len(answered) < MAX_STREAMS and time.monotonic() < deadline and not conn.closed:
            conn.pump(0.2)
            answered = {f.stream_id for f in conn.frames if isinstance(f, HeadersFrame)}
        resets = conn.resets()
        assert sorted(resets) == over, resets  # the first 128 were served, not reset
        assert answered == set(sids[:MAX_STREAMS])
        assert not any(isinstance(f, GoAwayFrame) for f in conn.frames)
        assert other.get()[0] == 200


# -- flow-control abuse --------------------------------------------------------------------------


def test_connection_window_overflow_is_flow_control_error(stack: Stack, listener: Listener) -> None:
    with GoodClient(listener) as other, RawH2(listener) as conn:
        conn.send(conn.window_update(0, MAX_WINDOW))  # 65535 + 2**31-1 > 2**31-1
        assert_goaway(conn, ErrorCodes.FLOW_CONTROL_ERROR)
        assert other.get()[0] == 200


def test_stream_window_overflow_is_a_stream_flow_control_error(stack: Stack, listener: Listener) -> None:
    with RawH2(listener) as conn:
        conn.send(conn.headers(1, conn.request_headers("/window", "POST"), end_stream=False))
        conn.pump(0.2)
        conn.send(conn.window_update(1, MAX_WINDOW))
        assert conn.wait_reset(1) == ErrorCodes.FLOW_CONTROL_ERROR
        # a stream error: the connection goes on
        conn.send(conn.get(3))
        assert conn.wait_for(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3) is not None
        assert not any(isinstance(f, GoAwayFrame) for f in conn.frames)
    assert_serving(listener)


def test_zero_connection_window_update_is_a_connection_protocol_error(
    stack: Stack, listener: Listener
) -> None:
    with GoodClient(listener) as other, RawH2(listener) as conn:
        conn.send(conn.window_update(0, 0))
        assert_goaway(conn, ErrorCodes.PROTOCOL_ERROR)
        assert other.get()[0] == 200


def test_zero_stream_window_update_ends_the_connection_with_protocol_error(
    stack: Stack, listener: Listener
) -> None:
    """RFC 9113 section 6.9 names a zero increment on a stream a stream error; section 5.4.1 lets an
    endpoint treat a stream error as a connection error, which is what h2 (hyperframe refuses the frame
    while parsing it) does: GOAWAY PROTOCOL_ERROR. The stricter answer, and no one else affected."""
    with GoodClient(listener) as other, RawH2(listener) as conn:
        conn.send(conn.headers(1, conn.request_headers("/zero", "POST"), end_stream=False))
        conn.pump(0.2)
        conn.send(conn.window_update(1, 0))
        assert_goaway(conn, ErrorCodes.PROTOCOL_ERROR)
        assert other.get()[0] == 200


# -- malformed headers: a stream error, and the app never sees the request ------------------------

MALFORMED: dict[str, list[tuple[bytes, bytes]]] = {
    "upper-case name": [(b"X-Upper", b"1")],
    "CR in value": [(b"x-foo", b"a\rb")],
    "LF in value": [(b"x-foo", b"a\nx-injected: 1")],
    "NUL in value": [(b"x-foo", b"a\x00b")],
    "connection": [(b"connection", b"keep-alive")],
    "keep-alive": [(b"keep-alive", b"timeout=5")],
    "proxy-connection": [(b"proxy-connection", b"keep-alive")],
    "transfer-encoding": [(b"transfer-encoding", b"chunked")],
    "upgrade": [(b"upgrade", b"h2c")],
    "te gzip": [(b"te", b"gzip")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_headers(stack: Stack, listener: Listener, case: str) -> None:
    mark = stack.app.count()
    path = "/malformed/" + case.replace(" ", "-")
    with RawH2(listener) as conn:
        bad = conn.request_headers(path, "POST", MALFORMED[case])
        # the bad stream and a good one in one write: a stream error, not a connection error
        conn.send(conn.headers(1, bad, end_stream=True) + conn.get(3, "/after-malformed"))
        assert conn.wait_reset(1) == ErrorCodes.PROTOCOL_ERROR
        assert conn.wait_for(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3) is not None
        assert not any(isinstance(f, GoAwayFrame) for f in conn.frames)
    stack.app.settle(0.1, 2.0)
    assert [s.path for s in stack.app.since(mark)] == ["/after-malformed"]
    assert_serving(listener)


@pytest.mark.parametrize("sent", [0, 5, 15], ids=["end-stream-on-headers", "short-body", "long-body"])
def test_content_length_disagreeing_with_data(stack: Stack, listener: Listener, sent: int) -> None:
    mark = stack.app.count()
    with RawH2(listener) as conn:
        head = conn.request_headers("/content-length", "POST", [(b"content-length", b"10")])
        if sent:
            wire = conn.headers(1, head, end_stream=False) + conn.data(1, b"x" * sent, end_stream=True)
        else:
            wire = conn.headers(1, head, end_stream=True)
        conn.send(wire + conn.get(3, "/after-content-length"))
        assert conn.wait_reset(1) == ErrorCodes.PROTOCOL_ERROR
        assert conn.wait_for(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3) is not None
    stack.app.settle(0.1, 2.0)
    assert [s.path for s in stack.app.since(mark)] == ["/after-content-length"]
    assert_serving(listener)


# -- readers that never read (last: see test_abandoned_responses_do_not_wedge_the_upstream) --------


@pytest.mark.parametrize("window", [0, MAX_WINDOW], ids=["zero-window", "open-window-unread-socket"])
def test_a_reader_that_never_reads_cannot_grow_server_memory(
    stack: Stack, listener: Listener, window: int
) -> None:
    """4 streams asking for 40 MB each (160 MB): either the flow-control window stays 0, or it is wide
    open and the client simply never reads its socket. The server's RSS must stay bounded, and other
    clients are served while the stalled connection stays open."""
    streams, size = 4, 40_000_000
    before = rss_kib(listener.pid)
    mark = stack.app.count()
    with RawH2(listener, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window}) as conn:
        if window:
            conn.send(conn.window_update(0, MAX_WINDOW - 65535))
        conn.send(b"".join(conn.get(sid, f"/big/{size}") for sid in range(1, 2 * streams, 2)))
        peak = before
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # never reading: the server stalls, its memory must not grow
            time.sleep(0.2)
            peak = max(peak, rss_kib(listener.pid))
        assert len([s for s in stack.app.since(mark) if s.path.startswith("/big/")]) == streams
        with GoodClient(listener) as other:
            assert other.get()[0] == 200
    grown = peak - before
    assert grown < 48 * 1024, f"{listener.name}: RSS grew by {grown} KiB for {streams * size} bytes asked"


# -- found while writing these tests (each leaves the stack worse: they run last) ------------------


def test_outbound_h2c_get_with_end_stream_on_headers_is_answered(stack: Stack) -> None:
    outbound = stack.listeners["outbound"]
    with RawH2(outbound) as conn:
        conn.send(conn.headers(1, conn.request_headers("/end-on-headers")))  # END_STREAM on HEADERS
        answer = conn.wait_for(
            lambda f: isinstance(f, HeadersFrame | RstStreamFrame) and f.stream_id == 1, 3.0
        )
    assert isinstance(answer, HeadersFrame)


@pytest.mark.parametrize("name", ["outbound", "gateway"])
def test_abandoned_responses_do_not_wedge_the_upstream_connection(stack: Stack, name: str) -> None:
    """A client asks for large responses one at a time, never reads them, and cancels each
    (RST_STREAM) once the proxy has started relaying it. The proxy's pooled HTTP/2 connection to the
    service must get its flow-control window back each time, or it ends up wedged for everyone."""
    listener = stack.listeners[name]
    with RawH2(listener, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}) as conn:
        for sid in range(1, 2 * 24, 2):
            mark = stack.app.count()
            conn.send(conn.get(sid, "/big/40000000"))
            deadline = time.monotonic() + 3.0
            while stack.app.count() == mark and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.05)  # the proxy fills the stream window of its upstream connection
            conn.send(conn.rst(sid, ErrorCodes.CANCEL))
        assert not conn.closed
    with GoodClient(listener) as other:
        assert other.get(timeout=2.0)[0] == 200
