"""HTTP/2 conformance (RFC 9113) of the real listeners, frame by frame, in the spirit of h2spec.

Every case runs against two listeners of one module-scoped stack (control plane, sidecar ``web`` in
front of a request-recording app, ``meshgate gateway`` with the repository's policies):

- ``gateway``: the gateway's plaintext port, h2c with prior knowledge (``--server meshgate``);
- ``sidecar``: the sidecar's inbound mTLS port (TLS 1.3, ALPN h2, a client SVID from the mesh CA).

Frames are built by hand (hyperframe, hpack; ``h2_client.py``) and the exact GOAWAY / RST_STREAM
error code is asserted. After a connection error, a new connection must still get its 200; after a
stream error, the same connection must; a malformed request must never reach the app. A case that
shows a product defect asserts the correct behaviour and is ``xfail(strict=True)`` on the listener
it fails on (the README lists them).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from h2.errors import ErrorCodes
from h2_client import (
    ACK,
    CONTINUATION,
    DATA,
    HEADERS,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2Conn,
    Headers,
    Outcome,
    Target,
    new_token,
    parse_frames,
    raw_frame,
)
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_lib import MESHGATE, MeshStack, copy_policies, running

pytestmark = pytest.mark.slow

LISTENERS = ("gateway", "sidecar")
MAX_WINDOW = (1 << 31) - 1
MAX_FRAME = 16384  # mesh/h2/limits.py: max_frame_size (the RFC's initial value)
MAX_STREAMS = 128  # mesh/h2/limits.py: max_concurrent_streams
DEFAULT_WINDOW = 65535  # RFC 9113 section 6.9.2: every window starts here
BIG_BODY = 100_000  # larger than a default window

PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
FLOW_CONTROL_ERROR = ErrorCodes.FLOW_CONTROL_ERROR
STREAM_CLOSED = ErrorCodes.STREAM_CLOSED
FRAME_SIZE_ERROR = ErrorCodes.FRAME_SIZE_ERROR
REFUSED_STREAM = ErrorCodes.REFUSED_STREAM
COMPRESSION_ERROR = ErrorCodes.COMPRESSION_ERROR

# SETTINGS identifiers (RFC 9113 section 6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 2, 3, 4, 5


# -- the upstream app: records every request it gets ----------------------------------------------


class RecordingApp:
    """HTTP/1.1 app behind the sidecar: answers 200 with JSON, remembers every path it was asked for.
    Paths with ``-hold-`` wait (up to 5 s, or until teardown) without reading the body; paths with
    ``-big-`` get a body of ``BIG_BODY`` octets."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                with app.lock:
                    app.paths.append(self.path)
                if "-hold-" in self.path:
                    app.release.wait(5)
                    self.close_connection = True
                    body = b"{}"
                elif "-big-" in self.path:
                    body = b"B" * BIG_BODY
                else:
                    length = int(self.headers.get("content-length") or 0)
                    got = self.rfile.read(length) if length else b""
                    body = json.dumps({"path": self.path, "bodyBytes": len(got)}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="recording-app", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def saw(self, token: str) -> bool:
        with self.lock:
            return any(token in p for p in self.paths)

    def wait_saw(self, token: str, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.saw(token):
                return True
            time.sleep(0.01)
        return False


# -- the stack ------------------------------------------------------------------------------------


@dataclass
class Stack:
    targets: dict[str, Target]
    app: RecordingApp


def client_context(ca_dir: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """As shared.identity.tls.client_context: TLS 1.3, ALPN h2, our SVID, the server's chain verified
    against the mesh roots (SPIFFE IDs, not host names, identify peers)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    state = json.loads((ca_dir / "ca.json").read_text())
    for authority in state["authorities"]:
        ctx.load_verify_locations(cafile=str(ca_dir / authority["root"]))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("h2-conformance")
    app = RecordingApp()
    app.start()
    try:
        with running(tmp) as procs:
            mesh = MeshStack(procs, tmp)
            policies = copy_policies(tmp / "policies")
            trust_domain = yaml.safe_load((policies / "mesh.yaml").read_text())["trustDomain"]
            mesh.start_control_plane(policies)
            sidecar = mesh.start_sidecar("web", app.port)
            gateway = mesh.start_gateway(knows=["web"])
            # the test client calls the sidecar as the gateway would (AccessPolicy web-access lets it in)
            ca_dir = mesh.data / "ca"
            cert, key = tmp / "client.pem", tmp / "client.key"
            subprocess.run(
                [
                    MESHGATE,
                    "ca",
                    "issue",
                    "--dir",
                    str(ca_dir),
                    "--id",
                    f"spiffe://{trust_domain}/ns/default/sa/gateway",
                    "--cert",
                    str(cert),
                    "--key",
                    str(key),
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            targets = {
                "gateway": Target("gateway", gateway.port, b"http", b"conformance.test", "/shop"),
                "sidecar": Target(
                    "sidecar", sidecar.inbound, b"https", b"web", "", tls=client_context(ca_dir, cert, key)
                ),
            }
            try:
                yield Stack(targets, app)
            finally:
                app.release.set()  # held requests end before the processes are asked to stop
                # clients first, the control plane last: each stops in well under a second that way
                for name in reversed(list(procs.procs)):
                    procs.stop(name)
    finally:
        app.stop()


@pytest.fixture
def target(request: pytest.FixtureRequest, stack: Stack) -> Target:
    return stack.targets[request.param]


def listeners(**defects: str) -> pytest.MarkDecorator:
    """Parametrize a test over both listeners; ``name="why"`` marks that listener's run as a known
    product defect (xfail, strict: it must fail until fixed)."""
    params = [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=f"product: {defects[name]}")]
            if name in defects
            else [],
        )
        for name in LISTENERS
    ]
    return pytest.mark.parametrize("target", params, indirect=True)


# -- assertions -----------------------------------------------------------------------------------


def _code(code: int | None) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def connect(target: Target, settings: dict[int, int] | None = None) -> H2Conn:
    conn = H2Conn(target, timeout=5.0)
    try:
        conn.start(settings)
    except BaseException:
        conn.close()
        raise
    return conn


def assert_serving(stack: Stack, target: Target) -> None:
    """A new, well-behaved connection gets 200 and the request reaches the app."""
    token = new_token("alive")
    with connect(target) as conn:
        status = conn.get(1, token)
    assert status == 200, f"{target.name}: a good request on a new connection got {status}"
    assert stack.app.wait_saw(token), f"{target.name}: the good request never reached the app"


def assert_connection_error(
    stack: Stack,
    conn: H2Conn,
    code: int,
    *,
    since: int = 0,
    last_stream_id: int | None = None,
    barrier: bool = True,
) -> GoAwayFrame:
    """RFC 9113 section 5.4.1: GOAWAY with ``code``, then the connection closes; the listener still
    serves new connections. With ``barrier`` a PING follows the offending frames: its ACK coming back
    before any GOAWAY proves the server read them and found nothing wrong (no need to wait out a
    timeout); after a connection error the server reads nothing more, so the PING stays unanswered."""
    ping = conn.ping_frame() if barrier else b""
    if barrier:
        conn.send(ping)

    def settles(f: Frame) -> bool:
        return isinstance(f, GoAwayFrame) or (
            barrier and isinstance(f, PingFrame) and "ACK" in f.flags and f.opaque_data == ping[9:]
        )

    frame = conn.wait_for(settles, 5.0, since)
    seen = [type(f).__name__ for f in conn.frames[since:]][-6:]
    assert frame is not None, f"{conn.target.name}: no GOAWAY (closed={conn.closed}; {seen})"
    assert isinstance(frame, GoAwayFrame), (
        f"{conn.target.name}: no GOAWAY, expected {_code(code)}: the server answered a PING sent after "
        f"the offending frame ({seen})"
    )
    assert frame.error_code == code, (
        f"{conn.target.name}: GOAWAY {_code(frame.error_code)} ({frame.additional_data!r}), "
        f"expected {_code(code)}"
    )
    if last_stream_id is not None:
        assert frame.last_stream_id == last_stream_id
    assert conn.wait_closed(3.0), f"{conn.target.name}: the connection stays open after GOAWAY"
    assert_serving(stack, conn.target)
    return frame


def assert_stream_or_connection_error(stack: Stack, conn: H2Conn, sid: int, code: int, since: int) -> Outcome:
    """An error the RFC makes a stream error: RST_STREAM(code) on ``sid``; a GOAWAY(code) is allowed
    too (section 5.4.2: an endpoint MAY treat a stream error as a connection error)."""
    result = conn.outcome(sid, 5.0, since)
    assert result.kind in ("rst", "goaway") and result.code == code, (
        f"{conn.target.name}: stream {sid}: {result}, expected RST_STREAM or GOAWAY {_code(code)}"
    )
    if result.kind == "goaway":
        assert conn.wait_closed(3.0)
        assert_serving(stack, conn.target)
    else:
        assert conn.ping(), f"{conn.target.name}: the connection died after a stream error"
    return result


def assert_refused(
    stack: Stack, conn: H2Conn, sid: int, token: str, since: int, code: int = PROTOCOL_ERROR
) -> None:
    """A stream error (RST_STREAM ``code``, connection still usable), and the request never reached
    the app (RFC 9113 section 8.1.1: a malformed request is not forwarded)."""
    result = conn.outcome(sid, 5.0, since)
    assert (result.kind, result.code) == ("rst", code), (
        f"{conn.target.name}: stream {sid}: {result}, expected RST_STREAM {_code(code)}"
    )
    good = new_token("after")
    assert conn.get(sid + 2, good) == 200, f"{conn.target.name}: the connection is unusable after RST_STREAM"
    assert stack.app.wait_saw(good)
    assert not stack.app.saw(token), f"{conn.target.name}: the refused request reached the app"


def served_once(conn: H2Conn, sid: int = 1) -> None:
    """Complete one exchange on ``sid`` (both sides' END_STREAM): the stream ends up closed."""
    assert conn.get(sid, new_token("once")) == 200
    assert conn.body(sid) is not None


def no_error(conn: H2Conn, since: int) -> None:
    """Nothing went wrong: a PING round trip comes back and no GOAWAY or RST_STREAM arrived."""
    assert conn.ping(), f"{conn.target.name}: no PING ACK (closed={conn.closed})"
    bad = [f for f in conn.frames[since:] if isinstance(f, GoAwayFrame | RstStreamFrame)]
    assert not bad, f"{conn.target.name}: unexpected {bad}"


# == 3.4 connection preface ========================================================================


@listeners()
def test_server_preface_is_settings_and_acks_ours(stack: Stack, target: Target) -> None:
    """RFC 9113 section 3.4: the server's preface is a SETTINGS frame, its first frame; section 6.5.3:
    our SETTINGS is acknowledged. The advertised values are the ones mesh/h2/limits.py sets."""
    with connect(target, {MAX_FRAME_SIZE: MAX_FRAME}) as conn:
        assert conn.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags, 5.0)
        settings = conn.server_settings
        assert settings.get(MAX_CONCURRENT_STREAMS) == MAX_STREAMS
        assert settings.get(MAX_FRAME_SIZE, 16384) == MAX_FRAME
        assert settings.get(ENABLE_PUSH, 0) == 0  # a server never sends 1 (section 6.5.2)
        assert conn.get(1, new_token("preface")) == 200


def assert_preface_refused(stack: Stack, conn: H2Conn) -> None:
    """After an invalid preface: over ALPN h2, GOAWAY(PROTOCOL_ERROR) and close; on the h2c port, which
    also serves HTTP/1.1, an HTTP/1.1 4xx may come instead of frames; either way the connection closes."""
    if conn.target.tls is not None:
        assert_connection_error(stack, conn, PROTOCOL_ERROR, barrier=False)
        return
    data = conn.drain(2.0)
    assert conn.closed, (
        f"{conn.target.name}: the connection stays open after an invalid preface ({data[:60]!r})"
    )
    if data.startswith(b"HTTP/1.1 "):
        assert data[9:10] == b"4", data[:60]
    else:
        goaways = [f for f in parse_frames(data) if isinstance(f, GoAwayFrame)]
        assert [g.error_code for g in goaways] in ([], [PROTOCOL_ERROR]), goaways
    assert_serving(stack, conn.target)


@listeners()
def test_invalid_preface_is_a_connection_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 3.4: an invalid connection preface (h2spec's "INVALID CONNECTION PREFACE") MUST be
    a connection error PROTOCOL_ERROR; the GOAWAY MAY be omitted."""
    with H2Conn(target) as conn:
        conn.send(b"INVALID CONNECTION PREFACE\r\n\r\n" + conn.settings({}))
        assert_preface_refused(stack, conn)


@listeners()
def test_corrupted_preface_magic_is_a_connection_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 3.4: a preface that starts like HTTP/2's ("PRI * HTTP/2.0") but is not the exact
    24 octets is invalid: connection error PROTOCOL_ERROR, so the connection closes (section 5.4.1)."""
    with H2Conn(target) as conn:
        conn.send(PREFACE[:-4] + b"XXXX" + conn.settings({}))
        assert_preface_refused(stack, conn)


@listeners()
@pytest.mark.parametrize("first", ["ping", "headers"])
def test_preface_not_followed_by_settings_is_a_connection_error(
    stack: Stack, target: Target, first: str
) -> None:
    """RFC 9113 section 3.4: the client connection preface is the magic "MUST be followed by a SETTINGS
    frame"; an invalid preface MUST be a connection error PROTOCOL_ERROR (here the first frame after
    the magic is a PING, or a request's HEADERS)."""
    token = new_token("no-settings")
    with H2Conn(target) as conn:
        frame = (
            conn.ping_frame()
            if first == "ping"
            else conn.headers_frame(1, target.request(token), end_stream=True)
        )
        conn.send(PREFACE + frame)
        assert_connection_error(stack, conn, PROTOCOL_ERROR, last_stream_id=0)
    assert not stack.app.saw(token)


# == 4.1 frame format, 5.5 extending HTTP/2 ========================================================


@listeners()
def test_unknown_frame_types_are_ignored(stack: Stack, target: Target) -> None:
    """RFC 9113 sections 4.1 and 5.5: frames of unknown type are ignored and discarded, on stream 0
    and on an open stream alike."""
    with connect(target) as conn:
        since = conn.mark()
        token = new_token("unknown-type")
        conn.send(
            raw_frame(0xFA, 0xFF, 0, b"hello"),
            conn.headers_frame(1, target.request(token)),
            raw_frame(0xFB, 0x00, 1, b"\x00" * 32),
            conn.data(1, end_stream=True),
        )
        assert conn.outcome(1, 5.0, since).code == 200
        no_error(conn, since)


@listeners()
def test_unknown_flags_and_the_reserved_bit_are_ignored(stack: Stack, target: Target) -> None:
    """RFC 9113 section 4.1: flags without a meaning for a frame type are ignored; the reserved bit of
    the stream identifier MUST be ignored on receipt (a PING with it set is a PING on stream 0)."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(raw_frame(PING, 0xFE, 0, b"flags..."), raw_frame(PING, 0, 1 << 31, b"reserved"))
        for payload in (b"flags...", b"reserved"):
            ack = conn.wait_for(
                lambda f, p=payload: isinstance(f, PingFrame) and "ACK" in f.flags and f.opaque_data == p,
                5.0,
                since,
            )
            assert ack is not None, f"{target.name}: no PING ACK for {payload!r}"
        no_error(conn, since)


# == 4.2 frame size ================================================================================


@listeners()
def test_data_frame_of_exactly_max_frame_size_is_accepted(stack: Stack, target: Target) -> None:
    """RFC 9113 section 4.2: every implementation MUST be capable of receiving frames up to 2**14
    octets: a 16384-octet DATA frame is a body, not an error."""
    token = new_token("max-frame")
    with connect(target) as conn:
        head = target.request(token, b"POST", [(b"content-length", str(MAX_FRAME).encode())])
        conn.send(conn.headers_frame(1, head), conn.data(1, b"x" * MAX_FRAME, end_stream=True))
        assert conn.outcome(1).code == 200
        body = conn.body(1)
        assert body is not None and json.loads(body)["bodyBytes"] == MAX_FRAME


@listeners()
def test_data_frame_over_max_frame_size_is_frame_size_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 4.2: a frame over SETTINGS_MAX_FRAME_SIZE is FRAME_SIZE_ERROR (a stream error is
    allowed for a DATA frame; the listener ends the connection)."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(
            conn.headers_frame(1, target.request(new_token("big-data"), b"POST")),
            conn.data(1, b"x" * (MAX_FRAME + 1)),
        )
        assert_stream_or_connection_error(stack, conn, 1, FRAME_SIZE_ERROR, since)


@listeners()
def test_headers_frame_over_max_frame_size_is_a_connection_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 4.2: a frame that could alter the connection's state (any frame carrying a field
    block) over SETTINGS_MAX_FRAME_SIZE MUST be a connection error FRAME_SIZE_ERROR."""
    with connect(target) as conn:
        block = conn.block(target.request(new_token("big-headers")))
        value = b"a" * (MAX_FRAME + 1)
        # a literal field, not indexed, name "x-big", raw (not Huffman) value of 16385 octets
        literal = b"\x00\x05x-big\x7f" + _varint(len(value) - 127) + value
        conn.send(raw_frame(HEADERS, 0x5, 1, block + literal))
        assert_connection_error(stack, conn, FRAME_SIZE_ERROR)


def _varint(n: int) -> bytes:
    """HPACK integer continuation octets (RFC 7541 section 5.1) for what exceeds the prefix."""
    out = bytearray()
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


@listeners()
@pytest.mark.parametrize(
    ("ftype", "sid", "payload"),
    [
        pytest.param(RST_STREAM, 1, b"\x00\x00\x00", id="rst_stream-3-octets"),  # 6.4: 4 octets
        pytest.param(WINDOW_UPDATE, 0, b"\x00\x00\x01", id="window_update-3-octets"),  # 6.9: 4
        pytest.param(PRIORITY, 1, b"\x00\x00\x00\x00", id="priority-4-octets"),  # 6.3: 5
        pytest.param(PING, 0, b"1234567", id="ping-7-octets"),  # 6.7: 8
        pytest.param(SETTINGS, 0, b"\x00\x01\x00\x00\x10\x00\x00", id="settings-7-octets"),  # 6.5: 6n
    ],
)
def test_frames_of_a_wrong_fixed_length_are_frame_size_errors(
    stack: Stack, target: Target, ftype: int, sid: int, payload: bytes
) -> None:
    """RFC 9113 sections 6.3, 6.4, 6.5, 6.7, 6.9 (and 4.2): a PRIORITY other than 5 octets, a RST_STREAM
    or WINDOW_UPDATE other than 4, a PING other than 8, a SETTINGS whose length is not a multiple of 6
    is FRAME_SIZE_ERROR (PRIORITY: a stream error, which a connection error may replace)."""
    with connect(target) as conn:
        since = conn.mark()
        opened = conn.headers_frame(1, target.request(new_token("len"), b"POST")) if sid else b""
        conn.send(opened, raw_frame(ftype, 0, sid, payload))
        if ftype == PRIORITY:
            assert_stream_or_connection_error(stack, conn, 1, FRAME_SIZE_ERROR, since)
        else:
            assert_connection_error(stack, conn, FRAME_SIZE_ERROR, since=since)


# == 4.3 field section compression =================================================================


@listeners()
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\xff\xff\xff\xff\x0f", id="index-beyond-both-tables"),
        pytest.param(b"\x3f\xe2\x1f\x82", id="table-size-update-over-4096"),  # RFC 7541 section 6.3
        pytest.param(b"\x82\x20", id="table-size-update-after-a-field"),  # RFC 7541 section 4.2
        pytest.param(b"\x82\x86\x84\x01", id="truncated-literal"),
    ],
)
def test_undecodable_field_block_is_compression_error(stack: Stack, target: Target, block: bytes) -> None:
    """RFC 9113 section 4.3: a field block that cannot be decompressed MUST be a connection error
    COMPRESSION_ERROR (an index beyond both tables; a dynamic table size update above
    SETTINGS_HEADER_TABLE_SIZE or not at the start of the block; a literal cut short)."""
    with connect(target) as conn:
        conn.send(conn.headers_frame(1, block=block, end_stream=True))
        assert_connection_error(stack, conn, COMPRESSION_ERROR)


@listeners()
def test_the_servers_encoder_honours_settings_header_table_size(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.5.2 and RFC 7541 section 4.2: after SETTINGS_HEADER_TABLE_SIZE=0 is
    acknowledged, the server's next field block starts with a dynamic table size update to 0 and never
    refers to a dynamic entry (our decoder allows no table at all)."""
    with connect(target, {HEADER_TABLE_SIZE: 0}) as conn:
        conn.decoder.max_allowed_table_size = 0  # a larger table, or an entry in it, fails decoding
        assert conn.get(1, new_token("table-0")) == 200
        assert conn.get(3, new_token("table-0-again")) == 200
        first = next(f for f in conn.frames if isinstance(f, HeadersFrame))
        assert bytes(first.data[:1]) == b"\x20", bytes(first.data[:8])


# == 5.1 stream states =============================================================================


@listeners()
@pytest.mark.parametrize("after_a_request", [False, True], ids=["fresh", "after-a-request"])
def test_data_on_an_idle_stream_is_protocol_error(
    stack: Stack, target: Target, after_a_request: bool
) -> None:
    """RFC 9113 section 5.1 (idle): any frame other than HEADERS or PRIORITY on an idle stream MUST be a
    connection error PROTOCOL_ERROR (here DATA on a stream never opened)."""
    with connect(target) as conn:
        if after_a_request:
            served_once(conn)
        since = conn.mark()
        conn.send(conn.data(3, b"x"))
        assert_connection_error(stack, conn, PROTOCOL_ERROR, since=since, last_stream_id=int(after_a_request))


@listeners()
def test_window_update_on_an_idle_stream_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 5.1 (idle): WINDOW_UPDATE on an idle stream MUST be a connection error
    PROTOCOL_ERROR."""
    with connect(target) as conn:
        served_once(conn)
        since = conn.mark()
        conn.send(conn.window_update(3, 1))
        assert_connection_error(stack, conn, PROTOCOL_ERROR, since=since)


@listeners()
def test_rst_stream_on_an_idle_stream_of_a_fresh_connection_is_protocol_error(
    stack: Stack, target: Target
) -> None:
    """RFC 9113 section 5.1 (idle): RST_STREAM on an idle stream MUST be a connection error
    PROTOCOL_ERROR (first frame after the prefaces)."""
    with connect(target) as conn:
        conn.send(conn.rst(1))
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


@listeners()
@pytest.mark.parametrize("sid", [3, 2], ids=["odd-client-id", "even-server-id"])
def test_rst_stream_on_an_idle_stream_after_a_request_is_protocol_error(
    stack: Stack, target: Target, sid: int
) -> None:
    """RFC 9113 section 5.1 (idle): RST_STREAM on an idle stream MUST be a connection error
    PROTOCOL_ERROR, also once other streams exist (stream 3: never opened by us; stream 2: a server
    stream, and this server never pushes)."""
    with connect(target) as conn:
        served_once(conn)
        since = conn.mark()
        conn.send(conn.rst(sid))
        assert_connection_error(stack, conn, PROTOCOL_ERROR, since=since, last_stream_id=1)


@listeners()
@pytest.mark.parametrize("kind", ["headers", "data"])
def test_frames_on_a_half_closed_remote_stream_are_stream_closed(
    stack: Stack, target: Target, kind: str
) -> None:
    """RFC 9113 section 5.1 (half-closed (remote)): after the client's END_STREAM, a HEADERS or DATA frame
    on that stream MUST be a stream error STREAM_CLOSED; the request is withdrawn (sent in one write)."""
    token = new_token(f"half-closed-{kind}")
    with connect(target) as conn:
        since = conn.mark()
        # header blocks are encoded in the order they go out: HPACK state is shared by the connection
        request = conn.headers_frame(1, target.request(token), end_stream=True)
        if kind == "headers":
            late = conn.headers_frame(1, [(b"x-late", b"1")], end_stream=True)
        else:
            late = conn.data(1, b"late", end_stream=True)
        conn.send(request, late)
        assert_refused(stack, conn, 1, token, since, STREAM_CLOSED)


@listeners()
def test_window_update_and_priority_on_a_half_closed_remote_stream_are_allowed(
    stack: Stack, target: Target
) -> None:
    """RFC 9113 section 5.1 (half-closed (remote)): WINDOW_UPDATE, PRIORITY and RST_STREAM may still be
    received; WINDOW_UPDATE and PRIORITY are no error, the response comes."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(
            conn.headers_frame(1, target.request(new_token("hc-allowed")), end_stream=True),
            conn.window_update(1, 1024),
            raw_frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
        )
        assert conn.outcome(1, 5.0, since).code == 200
        no_error(conn, since)


@listeners()
@pytest.mark.parametrize("kind", ["data", "headers"])
def test_frames_after_the_clients_rst_stream_are_stream_closed(
    stack: Stack, target: Target, kind: str
) -> None:
    """RFC 9113 section 5.1 (closed) and 5.4.2: frames other than PRIORITY received on a stream the peer
    reset are a stream error STREAM_CLOSED; section 6.1: DATA on a closed stream MUST be a stream error
    STREAM_CLOSED."""
    with connect(target) as conn:
        conn.send(
            conn.headers_frame(1, target.request(new_token("rst-then"), b"POST")),
            conn.rst(1, ErrorCodes.CANCEL),
        )
        assert conn.ping()
        since = conn.mark()
        late = (
            conn.data(1, b"x") if kind == "data" else conn.headers_frame(1, [(b"x-t", b"1")], end_stream=True)
        )
        conn.send(late)
        assert_stream_or_connection_error(stack, conn, 1, STREAM_CLOSED, since)


@listeners()
def test_data_on_a_closed_stream_is_stream_closed(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.1: DATA on a stream that is not open or half-closed (local) MUST be a stream
    error STREAM_CLOSED (section 5.1 (closed) lets a connection error replace it)."""
    with connect(target) as conn:
        served_once(conn)
        since = conn.mark()
        conn.send(conn.data(1, b"x"))
        assert_stream_or_connection_error(stack, conn, 1, STREAM_CLOSED, since)


@listeners()
def test_headers_on_a_closed_stream_is_stream_closed(stack: Stack, target: Target) -> None:
    """RFC 9113 section 5.1 (closed) and 5.1.1: HEADERS on a stream closed by both END_STREAMs (a stream
    id reused) is STREAM_CLOSED, as a connection error."""
    with connect(target) as conn:
        served_once(conn)
        since = conn.mark()
        conn.send(conn.headers_frame(1, target.request(new_token("reuse")), end_stream=True))
        assert_connection_error(stack, conn, STREAM_CLOSED, since=since, last_stream_id=1)


@listeners()
def test_priority_and_window_update_on_a_closed_stream_are_ignored(stack: Stack, target: Target) -> None:
    """RFC 9113 section 5.1 (closed): PRIORITY may be received on a closed stream, and WINDOW_UPDATE or
    RST_STREAM shortly after it closed; none is an error."""
    with connect(target) as conn:
        served_once(conn)
        since = conn.mark()
        conn.send(
            raw_frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"), conn.window_update(1, 1), conn.rst(1, 0)
        )
        no_error(conn, since)
        assert conn.get(3, new_token("after-closed")) == 200


# == 5.1.1 stream identifiers ======================================================================


@listeners()
def test_even_stream_id_from_the_client_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 5.1.1: streams initiated by a client MUST use odd identifiers; an unexpected
    stream identifier is a connection error PROTOCOL_ERROR."""
    token = new_token("even")
    with connect(target) as conn:
        conn.send(conn.headers_frame(2, target.request(token), end_stream=True))
        assert_connection_error(stack, conn, PROTOCOL_ERROR, last_stream_id=0)
    assert not stack.app.saw(token)


@listeners()
def test_decreasing_stream_id_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 5.1.1: a new stream id MUST exceed every id the client opened before; otherwise
    connection error PROTOCOL_ERROR. Section 6.8: the GOAWAY names stream 5 as the last processed."""
    token = new_token("decreasing")
    with connect(target) as conn:
        assert conn.get(5, new_token("five")) == 200
        since = conn.mark()
        conn.send(conn.headers_frame(3, target.request(token), end_stream=True))
        assert_connection_error(stack, conn, PROTOCOL_ERROR, since=since, last_stream_id=5)
    assert not stack.app.saw(token)


# == 5.1.2 stream concurrency ======================================================================


@listeners()
def test_streams_over_max_concurrent_streams_are_refused(stack: Stack, target: Target) -> None:
    """RFC 9113 section 5.1.2: a HEADERS frame that takes the peer over its advertised
    SETTINGS_MAX_CONCURRENT_STREAMS MUST be a stream error PROTOCOL_ERROR or REFUSED_STREAM; the
    connection goes on (the refused request never reaches the app)."""
    token = new_token("over-limit")
    with connect(target) as conn:
        limit = conn.server_settings[MAX_CONCURRENT_STREAMS]
        assert limit == MAX_STREAMS
        # MAX_STREAMS requests whose bodies stay open (they count as open), then one more
        heads = [
            conn.headers_frame(2 * i + 1, target.request(f"{token}-{i}", b"POST")) for i in range(limit + 1)
        ]
        since = conn.mark()
        conn.send(*heads)
        over = 2 * limit + 1
        result = conn.outcome(over, 10.0, since)
        assert result.kind == "rst" and result.code in (REFUSED_STREAM, PROTOCOL_ERROR), str(result)
        assert conn.ping()
        assert not [f for f in conn.frames[since:] if isinstance(f, GoAwayFrame)]
        assert not [f for f in conn.of_type(RstStreamFrame) if f.stream_id < over and f.error_code != 0]
    assert not stack.app.saw(f"{token}-{limit}")
    assert_serving(stack, target)


# == 6.1-6.4 DATA, HEADERS, PRIORITY, RST_STREAM ==================================================


@listeners()
@pytest.mark.parametrize(
    "ftype", [DATA, HEADERS, RST_STREAM, CONTINUATION], ids=["data", "headers", "rst_stream", "continuation"]
)
def test_stream_frames_on_stream_zero_are_protocol_error(stack: Stack, target: Target, ftype: int) -> None:
    """RFC 9113 sections 6.1, 6.2, 6.4, 6.10: DATA, HEADERS, RST_STREAM and CONTINUATION on stream 0 MUST
    be a connection error PROTOCOL_ERROR."""
    payload = {DATA: b"x", HEADERS: b"\x82", RST_STREAM: b"\x00\x00\x00\x08", CONTINUATION: b"\x82"}[ftype]
    with connect(target) as conn:
        conn.send(raw_frame(ftype, 0x4 if ftype in (HEADERS, CONTINUATION) else 0, 0, payload))
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


@listeners()
@pytest.mark.parametrize("ftype", [DATA, HEADERS], ids=["data", "headers"])
def test_padding_longer_than_the_payload_is_protocol_error(stack: Stack, target: Target, ftype: int) -> None:
    """RFC 9113 sections 6.1 and 6.2: a Pad Length not less than the frame payload length MUST be a
    connection error PROTOCOL_ERROR."""
    with connect(target) as conn:
        since = conn.mark()
        opened = conn.headers_frame(1, target.request(new_token("pad"), b"POST")) if ftype == DATA else b""
        flags = 0x8 | (0x4 if ftype == HEADERS else 0)  # PADDED (| END_HEADERS)
        conn.send(opened, raw_frame(ftype, flags, 1, b"\x06abcde"))
        assert_connection_error(stack, conn, PROTOCOL_ERROR, since=since)


@listeners()
def test_priority_on_an_idle_stream_is_allowed(stack: Stack, target: Target) -> None:
    """RFC 9113 section 5.1 (idle) and 6.3: PRIORITY may be sent on an idle stream; it is no error (and
    the stream can then be opened)."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(raw_frame(PRIORITY, 0, 9, b"\x00\x00\x00\x00\x10"))
        no_error(conn, since)
        assert conn.get(9, new_token("prio-idle")) == 200


@listeners()
@pytest.mark.parametrize("carrier", ["priority", "headers"])
def test_a_stream_depending_on_itself_is_protocol_error(stack: Stack, target: Target, carrier: str) -> None:
    """RFC 9113 section 5.3.1: a stream cannot depend on itself; a PRIORITY frame or a HEADERS frame with
    the PRIORITY flag that says so is a stream error PROTOCOL_ERROR (a connection error is allowed)."""
    with connect(target) as conn:
        since = conn.mark()
        self_dependency = b"\x00\x00\x00\x01\x10"
        if carrier == "priority":
            conn.send(raw_frame(PRIORITY, 0, 1, self_dependency))
        else:  # END_STREAM | END_HEADERS | PRIORITY
            block = conn.block(target.request(new_token("self-dependent")))
            conn.send(raw_frame(HEADERS, 0x25, 1, self_dependency + block))
        assert_stream_or_connection_error(stack, conn, 1, PROTOCOL_ERROR, since)


@listeners()
def test_push_promise_from_a_client_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 8.4: a client cannot push; a server MUST treat PUSH_PROMISE as a connection error
    PROTOCOL_ERROR."""
    with connect(target) as conn:
        since = conn.mark()
        opened = conn.headers_frame(1, target.request(new_token("pp"), b"POST"))
        block = conn.block(target.request(new_token("push")))
        conn.send(opened, raw_frame(5, 0x4, 1, b"\x00\x00\x00\x02" + block))
        assert_connection_error(stack, conn, PROTOCOL_ERROR, since=since)


# == 6.5 SETTINGS ==================================================================================


@listeners()
def test_settings_ack_with_a_payload_is_frame_size_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.5: a SETTINGS frame with ACK and a length other than 0 MUST be a connection
    error FRAME_SIZE_ERROR."""
    with connect(target) as conn:
        conn.send(raw_frame(SETTINGS, ACK, 0, b"\x00\x01\x00\x00\x10\x00"))
        assert_connection_error(stack, conn, FRAME_SIZE_ERROR)


@listeners()
@pytest.mark.parametrize(
    ("values", "code"),
    [
        pytest.param({ENABLE_PUSH: 2}, PROTOCOL_ERROR, id="enable_push-2"),
        pytest.param({INITIAL_WINDOW_SIZE: MAX_WINDOW + 1}, FLOW_CONTROL_ERROR, id="initial_window-2^31"),
        pytest.param({MAX_FRAME_SIZE: 16383}, PROTOCOL_ERROR, id="max_frame_size-16383"),
        pytest.param({MAX_FRAME_SIZE: 1 << 24}, PROTOCOL_ERROR, id="max_frame_size-2^24"),
    ],
)
def test_settings_values_out_of_range(
    stack: Stack, target: Target, values: dict[int, int], code: int
) -> None:
    """RFC 9113 section 6.5.2: SETTINGS_ENABLE_PUSH other than 0 or 1 MUST be PROTOCOL_ERROR;
    SETTINGS_INITIAL_WINDOW_SIZE above 2**31-1 MUST be FLOW_CONTROL_ERROR; SETTINGS_MAX_FRAME_SIZE
    outside [2**14, 2**24-1] MUST be PROTOCOL_ERROR (all connection errors)."""
    with connect(target) as conn:
        conn.send(conn.settings(values))
        assert_connection_error(stack, conn, code)


@listeners()
def test_settings_on_a_stream_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.5: a SETTINGS frame whose stream identifier is not 0 MUST be a connection error
    PROTOCOL_ERROR."""
    with connect(target) as conn:
        conn.send(raw_frame(SETTINGS, 0, 1))
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


@listeners()
def test_unknown_settings_are_ignored_and_acknowledged(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.5.2: a setting with an unknown identifier MUST be ignored; section 6.5.3: the
    SETTINGS frame is still acknowledged. Boundary values are accepted too."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(conn.settings({0xFF: 1, 0x4242: 0xFFFFFFFF, MAX_FRAME_SIZE: (1 << 24) - 1, ENABLE_PUSH: 0}))
        assert conn.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags, 5.0, since)
        no_error(conn, since)
        assert conn.get(1, new_token("settings")) == 200


# == 6.7 PING ======================================================================================


@listeners()
def test_ping_is_answered_with_the_same_payload(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.7: a PING without ACK MUST be answered by a PING with ACK and an identical
    payload; a PING with ACK MUST NOT be answered."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(conn.ping_frame(b"unasked!", ack=True), conn.ping_frame(b"\x00\xffecho\x01\x02"))
        ack = conn.wait_for(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags, 5.0, since)
        assert isinstance(ack, PingFrame) and ack.opaque_data == b"\x00\xffecho\x01\x02"
        no_error(conn, since)
        assert not [f for f in conn.of_type(PingFrame) if f.opaque_data == b"unasked!"]


@listeners()
def test_ping_on_a_stream_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.7: a PING whose stream identifier is not 0 MUST be a connection error
    PROTOCOL_ERROR."""
    with connect(target) as conn:
        conn.send(raw_frame(PING, 0, 1, b"12345678"))
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


# == 6.8 GOAWAY ====================================================================================


@listeners()
def test_goaway_on_a_stream_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.8: a GOAWAY whose stream identifier is not 0 MUST be a connection error
    PROTOCOL_ERROR."""
    with connect(target) as conn:
        conn.send(conn.goaway_frame(0, sid=1))
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


@listeners()
def test_client_goaway_lets_the_request_in_flight_finish(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.8: GOAWAY starts a graceful shutdown; a request the client already sent is
    still answered in full, then the connection ends (without an error code of the server's)."""
    token = new_token("goaway-in-flight")
    with connect(target) as conn:
        conn.send(conn.headers_frame(1, target.request(token), end_stream=True), conn.goaway_frame(0))
        assert conn.outcome(1).code == 200
        assert conn.body(1) is not None
        assert conn.wait_closed(3.0), f"{target.name}: the connection stays open after both ends are done"
        assert all(g.error_code == 0 for g in conn.of_type(GoAwayFrame))
    assert stack.app.saw(token)


# == 6.9 flow control ==============================================================================


@listeners()
def test_zero_window_update_on_the_connection_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.9: a WINDOW_UPDATE with an increment of 0 on the connection MUST be a connection
    error PROTOCOL_ERROR."""
    with connect(target) as conn:
        conn.send(conn.window_update(0, 0))
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


@listeners()
def test_zero_window_update_on_a_stream_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.9: a WINDOW_UPDATE with an increment of 0 on a stream MUST be a stream error
    PROTOCOL_ERROR (the listener makes it a connection error, which section 5.4.2 allows)."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(conn.headers_frame(1, target.request(new_token("wu0"), b"POST")), conn.window_update(1, 0))
        assert_stream_or_connection_error(stack, conn, 1, PROTOCOL_ERROR, since)


@listeners()
def test_connection_window_over_the_maximum_is_flow_control_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.9.1: a WINDOW_UPDATE that takes the connection window over 2**31-1 MUST end
    the connection with FLOW_CONTROL_ERROR."""
    with connect(target) as conn:
        conn.send(conn.window_update(0, MAX_WINDOW))
        assert_connection_error(stack, conn, FLOW_CONTROL_ERROR)


@listeners()
def test_stream_window_over_the_maximum_is_a_stream_flow_control_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.9.1: a WINDOW_UPDATE that takes a stream window over 2**31-1 terminates the
    stream: RST_STREAM FLOW_CONTROL_ERROR; the connection goes on."""
    token = new_token("stream-window")
    with connect(target) as conn:
        since = conn.mark()
        conn.send(conn.headers_frame(1, target.request(token, b"POST")), conn.window_update(1, MAX_WINDOW))
        assert_refused(stack, conn, 1, token, since, FLOW_CONTROL_ERROR)


@listeners()
def test_initial_window_size_change_overflowing_a_stream_is_flow_control_error(
    stack: Stack, target: Target
) -> None:
    """RFC 9113 section 6.9.2: a change of SETTINGS_INITIAL_WINDOW_SIZE that takes a stream window over
    2**31-1 MUST be a connection error FLOW_CONTROL_ERROR."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(
            conn.headers_frame(1, target.request(new_token("iws"), b"POST")),
            conn.window_update(1, MAX_WINDOW - 65535),  # the stream send window is now 2**31-1
            conn.settings({INITIAL_WINDOW_SIZE: 65536}),
        )
        assert_connection_error(stack, conn, FLOW_CONTROL_ERROR, since=since)


@listeners()
def test_the_server_respects_the_clients_flow_control_window(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.9.1: the sender MUST NOT send more than the receiver's window allows. With
    SETTINGS_INITIAL_WINDOW_SIZE=1 the response body arrives one octet at a time, per WINDOW_UPDATE."""
    with connect(target, {INITIAL_WINDOW_SIZE: 1}) as conn:
        assert conn.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags, 5.0)
        since = conn.mark()
        conn.send(conn.headers_frame(1, target.request(new_token("window-1")), end_stream=True))
        assert conn.outcome(1, 5.0, since).code == 200
        first = conn.wait_for(lambda f: isinstance(f, DataFrame) and f.stream_id == 1, 5.0, since)
        assert isinstance(first, DataFrame) and len(first.data) == 1
        more = conn.wait_for(lambda f: isinstance(f, DataFrame) and f is not first, 0.3, since)
        assert more is None, f"{target.name}: sent beyond the window: {more!r}"
        conn.send(conn.window_update(1, 1 << 20))
        body = conn.body(1)
        assert body is not None and b"conf-window-1" in body


@listeners()
def test_the_connection_window_bounds_the_server_whatever_the_stream_window(
    stack: Stack, target: Target
) -> None:
    """RFC 9113 sections 6.9.1 and 6.9.2: SETTINGS_INITIAL_WINDOW_SIZE changes stream windows only; the
    connection window stays 65535 until a WINDOW_UPDATE on stream 0, and the server MUST NOT send more
    DATA than it allows (here: a 100000-octet response stops at 65535 octets)."""
    with connect(target, {INITIAL_WINDOW_SIZE: MAX_WINDOW}) as conn:
        assert conn.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags, 5.0)
        conn.send(conn.headers_frame(1, target.request(new_token("big")), end_stream=True))
        assert conn.outcome(1).code == 200

        def received() -> int:
            return sum(len(f.data) for f in conn.of_type(DataFrame) if f.stream_id == 1)

        deadline = time.monotonic() + 5.0
        while received() < DEFAULT_WINDOW and time.monotonic() < deadline:
            conn.next_frame(0.1)
        assert conn.wait_for(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags, 0.3) is None
        assert received() == DEFAULT_WINDOW, f"{target.name}: {received()} octets in a 65535-octet window"
        conn.send(conn.window_update(0, BIG_BODY))
        body = conn.body(1)
        assert body is not None and len(body) == BIG_BODY


@listeners()
def test_data_beyond_the_flow_control_window_is_flow_control_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.9.1: a sender MUST NOT send DATA beyond the receiver's window; a receiver MAY
    answer with FLOW_CONTROL_ERROR (stream or connection). The app holds the request without reading
    it, so the listener's windows (1 MiB per stream, 16 MiB for the connection) run out."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(conn.headers_frame(1, target.request(new_token("hold"), b"POST")))
        chunk = conn.data(1, b"w" * MAX_FRAME) * 8  # 128 KiB per write
        sent = 0
        found = None
        while sent < (32 << 20) and not conn.write_failed:
            if not conn.send(chunk):
                break
            sent += 8 * MAX_FRAME
            found = conn.wait_for(lambda f: isinstance(f, GoAwayFrame | RstStreamFrame), 0.001, since)
            if found is not None:
                break
        if found is None:
            found = conn.wait_for(lambda f: isinstance(f, GoAwayFrame | RstStreamFrame), 5.0, since)
        assert found is not None, f"{target.name}: {sent} octets on one stream and no error"
        assert isinstance(found, GoAwayFrame) or found.stream_id == 1, repr(found)
        assert found.error_code == FLOW_CONTROL_ERROR, f"{target.name}: {found!r} after {sent} octets"
    assert_serving(stack, target)


# == 6.10 CONTINUATION =============================================================================


@listeners()
def test_request_split_over_continuation_frames_is_served(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.10: a field block may go on in CONTINUATION frames until END_HEADERS."""
    token = new_token("continued")
    with connect(target) as conn:
        block = conn.block(target.request(token, extra=[(b"x-pad", b"p" * 100)]))
        conn.send(
            conn.headers_frame(1, block=block[:7], end_headers=False, end_stream=True),
            conn.continuation(1, block[7:20]),
            conn.continuation(1, block[20:], end_headers=True),
        )
        assert conn.outcome(1).code == 200
    assert stack.app.saw(token)


@listeners()
def test_continuation_without_headers_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.10: a CONTINUATION not preceded by HEADERS, PUSH_PROMISE or CONTINUATION
    without END_HEADERS MUST be a connection error PROTOCOL_ERROR."""
    with connect(target) as conn:
        conn.send(conn.continuation(1, conn.block(target.request(new_token("lone"))), end_headers=True))
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


@listeners()
def test_continuation_after_end_headers_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.10: a CONTINUATION after a HEADERS frame that had END_HEADERS is not preceded by
    an open field block: connection error PROTOCOL_ERROR."""
    with connect(target) as conn:
        since = conn.mark()
        conn.send(
            conn.headers_frame(1, target.request(new_token("ended"), b"POST")),
            conn.continuation(1, conn.block([(b"x-more", b"1")]), end_headers=True),
        )
        assert_connection_error(stack, conn, PROTOCOL_ERROR, since=since)


@listeners()
@pytest.mark.parametrize("inside", ["data", "ping", "unknown-type", "headers-other-stream"])
def test_frame_interleaved_in_a_field_block_is_protocol_error(
    stack: Stack, target: Target, inside: str
) -> None:
    """RFC 9113 sections 4.3 and 6.2: a field block MUST be a contiguous sequence of frames; any other
    frame (even a PING or a frame of unknown type) between HEADERS and its last CONTINUATION MUST be a
    connection error PROTOCOL_ERROR."""
    with connect(target) as conn:
        block = conn.block(target.request(new_token("interleaved")))
        between = {
            "data": conn.data(1, b"x"),
            "ping": conn.ping_frame(),
            "unknown-type": raw_frame(0xFA, 0, 0, b"x"),
            "headers-other-stream": raw_frame(HEADERS, 0x5, 3, b"\x82"),
        }[inside]
        conn.send(
            conn.headers_frame(1, block=block[:5], end_headers=False, end_stream=True),
            between,
            conn.continuation(1, block[5:], end_headers=True),
        )
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


@listeners()
def test_continuation_on_another_stream_is_protocol_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 6.10: a CONTINUATION MUST be on the stream of the field block it continues;
    otherwise connection error PROTOCOL_ERROR."""
    with connect(target) as conn:
        block = conn.block(target.request(new_token("other-stream")))
        conn.send(
            conn.headers_frame(1, block=block[:5], end_headers=False, end_stream=True),
            conn.continuation(3, block[5:], end_headers=True),
        )
        assert_connection_error(stack, conn, PROTOCOL_ERROR)


# == 8.1-8.3 HTTP message framing and field validity ===============================================

Change = Callable[[Headers], Headers]


def _without(name: bytes) -> Change:
    return lambda head: [(n, v) for n, v in head if n != name]


def _pseudo(name: bytes, value: bytes) -> Change:
    """One more pseudo-header, placed with the others (before any regular field)."""
    return lambda head: [*head[:4], (name, value), *head[4:]]


def _field(name: bytes, value: bytes) -> Change:
    return lambda head: [*head, (name, value)]


MALFORMED: dict[str, Change] = {
    # 8.3: pseudo-header fields come before regular ones
    "pseudo-after-regular": lambda head: [*head[1:], (b"x-first", b"1"), head[0]],  # :method last
    # 8.3.1: :method, :scheme and :path are required
    "missing-method": _without(b":method"),
    "missing-scheme": _without(b":scheme"),
    "missing-path": _without(b":path"),
    # 8.3: each pseudo-header at most once, only defined ones, only request ones in a request
    "duplicate-method": _pseudo(b":method", b"GET"),
    "duplicate-path": _pseudo(b":path", b"/again"),
    "unknown-pseudo": _pseudo(b":foo", b"bar"),
    "response-pseudo-in-request": _pseudo(b":status", b"200"),
    # 8.3.1: :path is not empty for http and https
    "empty-path": lambda head: [(n, b"" if n == b":path" else v) for n, v in head],
    # 8.2.1: field names are lower case; values hold no NUL, CR or LF
    "upper-case-name": _field(b"X-Upper", b"1"),
    "cr-lf-in-value": _field(b"x-bad", b"a\r\nx-injected: 1"),
    "nul-in-value": _field(b"x-bad", b"a\x00b"),
    "whitespace-around-value": _field(b"x-bad", b" padded "),
    "space-in-name": _field(b"x bad", b"1"),
    "colon-in-name": _field(b"x:bad", b"1"),
    # 8.3.1: a host field that names another entity than :authority
    "host-differs-from-authority": _field(b"host", b"elsewhere.test"),
    # 8.2.2: connection-specific fields
    "connection": _field(b"connection", b"keep-alive"),
    "keep-alive": _field(b"keep-alive", b"timeout=5"),
    "proxy-connection": _field(b"proxy-connection", b"keep-alive"),
    "transfer-encoding": _field(b"transfer-encoding", b"chunked"),
    "upgrade": _field(b"upgrade", b"websocket"),
    "te-gzip": _field(b"te", b"gzip"),
}


@listeners()
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_a_stream_error_and_never_forwarded(
    stack: Stack, target: Target, case: str
) -> None:
    """RFC 9113 sections 8.1.1, 8.2 and 8.3: a malformed request (pseudo-header after a regular field,
    a missing :method/:scheme/:path, a duplicate or undefined pseudo-header, an empty :path, an upper-case
    field name, CR/LF in a value, a connection-specific field, TE other than "trailers") MUST be a stream
    error PROTOCOL_ERROR, and an intermediary MUST NOT forward it."""
    token = new_token(f"malformed-{case}")
    with connect(target) as conn:
        since = conn.mark()
        conn.send(conn.headers_frame(1, MALFORMED[case](target.request(token)), end_stream=True))
        assert_refused(stack, conn, 1, token, since)


@listeners()
def test_te_trailers_is_allowed(stack: Stack, target: Target) -> None:
    """RFC 9113 section 8.2.2: TE is allowed with the value "trailers" (and the request is served)."""
    token = new_token("te-trailers")
    with connect(target) as conn:
        conn.send(conn.headers_frame(1, target.request(token, extra=[(b"te", b"trailers")]), end_stream=True))
        assert conn.outcome(1).code == 200
    assert stack.app.saw(token)


@listeners()
@pytest.mark.parametrize(("declared", "sent"), [(10, 5), (5, 10), (3, 0)], ids=["short", "long", "none"])
def test_content_length_disagreeing_with_data_is_a_stream_error(
    stack: Stack, target: Target, declared: int, sent: int
) -> None:
    """RFC 9113 section 8.1.1: a request whose content-length differs from the sum of its DATA payloads
    is malformed: stream error PROTOCOL_ERROR, not forwarded (head and body arrive together here)."""
    token = new_token(f"content-length-{declared}-{sent}")
    with connect(target) as conn:
        head = target.request(token, b"POST", [(b"content-length", str(declared).encode())])
        since = conn.mark()
        if sent:
            conn.send(conn.headers_frame(1, head), conn.data(1, b"b" * sent, end_stream=True))
        else:
            conn.send(conn.headers_frame(1, head, end_stream=True))
        assert_refused(stack, conn, 1, token, since)


@listeners()
def test_pseudo_header_in_trailers_is_a_stream_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 8.1 and 8.3: trailers MUST NOT contain pseudo-header fields; such a request is
    malformed: stream error PROTOCOL_ERROR, not forwarded."""
    token = new_token("trailer-pseudo")
    with connect(target) as conn:
        since = conn.mark()
        conn.send(
            conn.headers_frame(1, target.request(token, b"POST")),
            conn.data(1, b"body"),
            conn.headers_frame(1, [(b":path", b"/smuggled")], end_stream=True),
        )
        assert_refused(stack, conn, 1, token, since)


@listeners()
def test_headers_after_trailers_without_end_stream_is_a_stream_error(stack: Stack, target: Target) -> None:
    """RFC 9113 section 8.1: a HEADERS frame after the first one (trailers) without END_STREAM makes the
    request malformed: stream error PROTOCOL_ERROR."""
    token = new_token("trailers-open")
    with connect(target) as conn:
        since = conn.mark()
        conn.send(
            conn.headers_frame(1, target.request(token, b"POST")),
            conn.headers_frame(1, [(b"x-trailer", b"1")]),
        )
        result = conn.outcome(1, 5.0, since)
        assert result.kind in ("rst", "goaway") and result.code == PROTOCOL_ERROR, str(result)
        if result.kind == "goaway":
            assert conn.wait_closed()
    assert_serving(stack, target)
    assert not stack.app.saw(token)
