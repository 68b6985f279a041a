"""HTTP/1.1 attacks (STANDARDS "HTTP/1.1 at the edge") over raw sockets against the gateway
(``--server meshgate``) and, where the rule applies to it too, the sidecar's plaintext outbound
listener. The upstream app counts and echoes what it receives, so "the upstream never sees a smuggled
request" and "hop-by-hop headers are removed" are checked where they matter: at the app."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from security_lib import (
    API_KEY,
    SMALL_BODY,
    TD,
    H1Answer,
    Stack,
    h1_exchange,
    recv_some,
    security_stack,
)

#: mesh/transport/h1.py H1Server.header_timeout: the rest of a request head must come within it
HEADER_TIMEOUT = 10.0
GATEWAY_ID = f"spiffe://{TD}/ns/default/sa/gateway"
WEB_ID = f"spiffe://{TD}/ns/default/sa/web"
BOTH = ["gateway", "outbound"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with security_stack(tmp_path_factory.mktemp("h1-attacks")) as running_stack:
        yield running_stack


def port_of(stack: Stack, name: str) -> int:
    return stack.listeners[name].port


def get(stack: Stack, name: str, head: bytes, body: bytes = b"", wait: float = 3.0) -> H1Answer:
    """One request (``head`` without the blank line); the answer once complete."""
    return h1_exchange(port_of(stack, name), head + b"\r\n\r\n" + body, wait=wait, until_close=False)


def assert_serving(stack: Stack, name: str) -> None:
    """A well-behaved client on another connection gets its 200."""
    assert get(stack, name, b"GET /ok HTTP/1.1\r\nHost: web").status == 200


# -- request framing: 400 and close, nothing reaches the app ---------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n"
CHUNKED_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED


def _post(*headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /first HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


FRAMING = {
    # CL.TE: a front end going by Content-Length forwards it all, a back end going by
    # Transfer-Encoding reads "0" and takes the rest for a second request
    "cl-te": _post(
        b"Host: web",
        b"Content-Length: %d" % len(CHUNKED_THEN_SMUGGLED),
        b"Transfer-Encoding: chunked",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    # TE.CL: the other way round
    "te-cl": _post(
        b"Host: web",
        b"Transfer-Encoding: chunked",
        b"Content-Length: 4",
        body=b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
    ),
    "te-xchunked": _post(b"Host: web", b"Transfer-Encoding: xchunked", body=CHUNKED_THEN_SMUGGLED),
    "conflicting-content-length": _post(
        b"Host: web", b"Content-Length: 5", b"Content-Length: 41", body=b"hello" + SMUGGLED[:36]
    ),
    "conflicting-content-length-list": _post(b"Host: web", b"Content-Length: 5, 41", body=b"hello"),
    "whitespace-before-colon": _post(
        b"Host: web",
        b"Transfer-Encoding : chunked",
        b"Content-Length: %d" % len(CHUNKED_THEN_SMUGGLED),
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "missing-host": b"GET /first HTTP/1.1\r\n\r\n" + SMUGGLED,
    "repeated-host": b"GET /first HTTP/1.1\r\nHost: web\r\nHost: evil\r\n\r\n" + SMUGGLED,
}

FRAMING_CASES = [
    pytest.param(
        listener,
        case,
        id=f"{listener}-{case}",
    )
    for listener in BOTH
    for case in FRAMING
]


@pytest.mark.parametrize(("name", "case"), FRAMING_CASES)
def test_ambiguous_framing_is_400_and_close(stack: Stack, name: str, case: str) -> None:
    mark = stack.app.count()
    answer = h1_exchange(port_of(stack, name), FRAMING[case], wait=3.0)
    stack.app.settle(0.1, 2.0)
    assert answer.status == 400, answer.data[:200]
    assert answer.responses == 1, answer.data  # the rest was never read as another request
    assert answer.closed
    assert stack.app.since(mark) == []  # neither the request nor what was smuggled in it
    assert_serving(stack, name)


@pytest.mark.parametrize("name", BOTH)
def test_unknown_transfer_coding_never_reaches_the_app(stack: Stack, name: str) -> None:
    mark = stack.app.count()
    answer = h1_exchange(port_of(stack, name), FRAMING["te-xchunked"], wait=3.0)
    stack.app.settle(0.1, 2.0)
    assert answer.status in (400, 501) and answer.responses == 1 and answer.closed, answer.data[:200]
    assert stack.app.since(mark) == []
    assert_serving(stack, name)


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize(
    "fields", [(b"Content-Length: 5", b"Content-Length: 5"), (b"Content-Length: 5, 5",)], ids=["two", "list"]
)
def test_duplicate_content_length_is_400_and_close(
    stack: Stack, name: str, fields: tuple[bytes, ...]
) -> None:
    """Identical values too (STANDARDS.md; RFC 9112 section 6.3 allows refusing or merging them):
    refused before any byte of the body is taken as framing, and the pipelined request after it is
    never read."""
    mark = stack.app.count()
    follow = b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n"
    wire = _post(b"Host: web", *fields, body=b"hello" + follow)
    answer = h1_exchange(port_of(stack, name), wire, wait=3.0)
    stack.app.settle(0.1, 2.0)
    assert answer.status == 400, answer.data[:200]
    assert answer.responses == 1 and answer.closed, answer.data[:300]
    assert stack.app.since(mark) == []
    assert_serving(stack, name)


# -- hop-by-hop headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BOTH)
def test_hop_by_hop_headers_never_reach_the_app(stack: Stack, name: str) -> None:
    """Including an h2c upgrade attempt (h2c smuggling through a proxy): no 101, no Upgrade upstream."""
    answer = get(
        stack,
        name,
        b"GET /hop HTTP/1.1\r\nHost: web\r\n"
        b"Connection: Upgrade, HTTP2-Settings, x-drop-me\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
        b"X-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
        b"Trailer: x-t\r\nX-Keep: 1",
    )
    assert answer.status == 200, answer.data[:200]
    headers = answer.json()["headers"]
    assert headers["x-keep"] == "1"
    for hop in (
        "connection",
        "upgrade",
        "http2-settings",
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-connection",
        "trailer",
    ):
        assert hop not in headers, hop


def test_connection_cannot_strip_the_gateways_identity_headers(stack: Stack) -> None:
    answer = get(
        stack,
        "gateway",
        b"GET /keyed/x HTTP/1.1\r\nHost: web\r\nx-api-key: " + API_KEY.encode() + b"\r\n"
        b"Connection: x-meshgate-principal, x-forwarded-for, x-forwarded-proto, x-meshgate-peer\r\n"
        b"X-Forwarded-For: 6.6.6.6",
    )
    assert answer.status == 200, answer.data[:200]
    headers = answer.json()["headers"]
    assert headers["x-meshgate-principal"] == "alice"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-meshgate-peer"] == GATEWAY_ID


def test_connection_cannot_strip_authorization_at_the_gateway(stack: Stack) -> None:
    answer = get(
        stack,
        "gateway",
        b"GET /auth HTTP/1.1\r\nHost: web\r\nConnection: authorization\r\nAuthorization: Bearer abc",
    )
    assert answer.status == 200, answer.data[:200]
    assert answer.json()["headers"].get("authorization") == "Bearer abc"


def test_connection_cannot_strip_content_length_at_the_gateway(stack: Stack) -> None:
    answer = get(
        stack,
        "gateway",
        b"POST /body HTTP/1.1\r\nHost: web\r\nConnection: content-length\r\nContent-Length: 5",
        b"hello",
    )
    assert answer.status == 200, answer.data[:200]
    assert answer.json()["bodyBytes"] == 5


# -- forwarded and identity headers ----------------------------------------------------------------


def test_x_forwarded_for_from_the_client_is_not_trusted(stack: Stack) -> None:
    """No --trusted-hops: the client's chain is dropped, the peer address is what goes upstream."""
    answer = get(
        stack,
        "gateway",
        b"GET /xff HTTP/1.1\r\nHost: web\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.1, 7.7.7.7\r\n"
        b"Forwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https",
    )
    assert answer.status == 200, answer.data[:200]
    headers = answer.json()["headers"]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert "forwarded" not in headers
    assert headers["x-forwarded-host"] == "web"
    assert headers["x-forwarded-proto"] == "http"


def test_identity_headers_from_outside_are_stripped_at_the_gateway(stack: Stack) -> None:
    answer = get(
        stack,
        "gateway",
        b"GET /id HTTP/1.1\r\nHost: web\r\n"
        b"x-meshgate-peer: spiffe://" + TD.encode() + b"/ns/default/sa/admin\r\n"
        b"x-meshgate-principal: admin\r\nx-meshgate-anything: 1\r\n"
        b"x-forwarded-client-cert: By=spiffe://evil;URI=spiffe://evil\r\nx-request-id: fixed",
    )
    assert answer.status == 200, answer.data[:200]
    headers = answer.json()["headers"]
    assert headers["x-meshgate-peer"] == GATEWAY_ID  # set by the sidecar from the mTLS identity
    assert "x-meshgate-principal" not in headers  # a public route: nobody authenticated
    assert "x-meshgate-anything" not in headers
    assert "x-forwarded-client-cert" not in headers
    assert headers["x-request-id"] != "fixed"


def test_mesh_identity_headers_from_the_local_app_are_replaced(stack: Stack) -> None:
    """Through the outbound port: the callee's sidecar names the caller from its certificate, and a
    principal only counts from an edge gateway."""
    answer = get(
        stack,
        "outbound",
        b"GET /id HTTP/1.1\r\nHost: web\r\nx-meshgate-peer: " + GATEWAY_ID.encode() + b"\r\n"
        b"x-meshgate-principal: admin",
    )
    assert answer.status == 200, answer.data[:200]
    headers = answer.json()["headers"]
    assert headers["x-meshgate-peer"] == WEB_ID
    assert "x-meshgate-principal" not in headers


# -- size caps -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * 70_000,
        b"X-Big: " + b"a" * 200_000,
        b"\r\n".join(b"X-F%d: 1" % i for i in range(250)),
    ],
    ids=["70KB-field", "200KB-field", "250-fields"],
)
def test_oversized_header_block_is_431_at_the_gateway(stack: Stack, extra: bytes) -> None:
    mark = stack.app.count()
    wire = b"GET /big-head HTTP/1.1\r\nHost: web\r\n" + extra + b"\r\n\r\n"
    answer = h1_exchange(port_of(stack, "gateway"), wire, wait=5.0, until_close=False)
    assert answer.status == 431, answer.data[:200]
    assert stack.app.since(mark) == []
    assert_serving(stack, "gateway")


def test_oversized_header_block_is_431_at_the_outbound_listener(stack: Stack) -> None:
    mark = stack.app.count()
    answer = h1_exchange(
        port_of(stack, "outbound"),
        b"GET /big-head HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        wait=5.0,
    )
    assert answer.status == 431 and answer.closed, answer.data[:200]
    assert stack.app.since(mark) == []
    assert_serving(stack, "outbound")


def test_declared_body_over_the_route_cap_is_413_before_the_upstream(stack: Stack) -> None:
    mark = stack.app.count()
    size = SMALL_BODY + 1
    answer = get(
        stack, "gateway", b"POST /small HTTP/1.1\r\nHost: web\r\nContent-Length: %d" % size, b"a" * size
    )
    assert answer.status == 413, answer.data[:200]
    assert answer.header("x-meshgate-error") == "body_too_large"
    assert stack.app.since(mark) == []
    assert_serving(stack, "gateway")


def _chunked(total: int, piece: int = 512) -> bytes:
    out = b""
    left = total
    while left:
        n = min(piece, left)
        out += b"%x\r\n" % n + b"a" * n + b"\r\n"
        left -= n
    return out + b"0\r\n\r\n"


def test_chunked_request_body_reaches_the_app(stack: Stack) -> None:
    answer = get(
        stack, "gateway", b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked", _chunked(3000)
    )
    assert answer.status == 200, answer.data[:200]
    assert answer.json()["bodyBytes"] == 3000


def test_chunked_body_over_the_route_cap_is_413(stack: Stack) -> None:
    answer = get(
        stack,
        "gateway",
        b"POST /small HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked",
        _chunked(4 * SMALL_BODY),
    )
    assert answer.status == 413, answer.data[:200]
    assert answer.header("x-meshgate-error") == "body_too_large"


# -- slowloris -------------------------------------------------------------------------------------


class Dribbler(threading.Thread):
    """Sends a never-ending request head one byte per 100 ms; records when the server closed."""

    def __init__(self, port: int, limit: float = HEADER_TIMEOUT + 5.0) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.limit = limit
        self.closed_after: float | None = None
        self.answer = b""

    def run(self) -> None:
        head = b"GET /slowloris HTTP/1.1\r\nHost: web\r\nX-Pad: " + b"a" * 1000
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            started = time.monotonic()
            for byte in head:
                if time.monotonic() - started > self.limit:
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    self.closed_after = time.monotonic() - started
                    return
                got = recv_some(sock, 0.1)
                if got is None:
                    self.closed_after = time.monotonic() - started
                    return
                self.answer += got


def test_slowloris_is_cut_off_at_the_header_timeout_and_others_are_served(stack: Stack) -> None:
    dribblers = {name: Dribbler(port_of(stack, name)) for name in BOTH}
    for dribbler in dribblers.values():
        dribbler.start()
    latencies: list[float] = []
    deadline = time.monotonic() + HEADER_TIMEOUT + 6.0
    while any(d.is_alive() for d in dribblers.values()) and time.monotonic() < deadline:
        for name in BOTH:
            started = time.monotonic()
            assert get(stack, name, b"GET /ok HTTP/1.1\r\nHost: web").status == 200
            latencies.append(time.monotonic() - started)
        time.sleep(0.5)
    for dribbler in dribblers.values():
        dribbler.join(2.0)
    for name, dribbler in dribblers.items():
        assert dribbler.closed_after is not None, f"{name} never closed the slow connection"
        assert HEADER_TIMEOUT - 0.5 <= dribbler.closed_after <= HEADER_TIMEOUT + 2.0, (
            name,
            dribbler.closed_after,
        )
        assert b"200" not in dribbler.answer[:12]
    assert len(latencies) >= 10 and max(latencies) < 1.0, latencies


# -- a header list the mesh hop refuses ------------------------------------------------------------


@pytest.mark.parametrize("name", BOTH)
def test_a_header_list_too_big_for_the_mesh_fails_alone(stack: Stack, name: str) -> None:
    """195 fields of 300 bytes: 60 KB by the gateway's measure (under its 64 KiB / 200 fields), 66 KB
    by HPACK's. It may get 431 or pass; another client's request in flight (a POST: never retried)
    must not suffer."""
    many = b"\r\n".join(b"x-h%03d: %s" % (i, b"v" * 300) for i in range(195))
    slow: dict[str, H1Answer] = {}
    other = threading.Thread(
        target=lambda: slow.update(
            ok=get(stack, name, b"POST /slow/1500 HTTP/1.1\r\nHost: web\r\nContent-Length: 0", wait=6.0)
        )
    )
    other.start()
    time.sleep(0.5)  # the other request is on the pooled mesh connection, waiting for the app
    big = get(stack, name, b"GET /many-headers HTTP/1.1\r\nHost: web\r\n" + many, wait=6.0)
    other.join(8.0)
    assert slow["ok"].status == 200, slow["ok"].data[:200]
    assert big.status in (200, 431), big.data[:200]
