"""The floor reference for bench/mesh.py and bench/gateway.py: a proxy pair built from the same parts as a
Meshgate sidecar pair (uvloop, asyncio Protocols, httptools, ssl, and h2 through the connection class our
core drives, ``mesh/h2/connection.py``, with Meshgate's windows) with none of its features, so that a
sidecar's per-request CPU can be split into what CPython + these libraries cost and what our code adds.
Run with ``-P``: bench/ holds a ``mesh.py`` that would shadow the ``mesh`` package.

- outbound: plaintext HTTP/1.1 keep-alive in (httptools); every request becomes an HTTP/2 stream on ONE
  long-lived TLS 1.3 connection to the peer (ALPN h2, client certificate, server verified against --ca);
- inbound: TLS 1.3 in (client certificate required, verified against --ca; ALPN h2); every stream goes to
  the app as HTTP/1.1 over a pool of keep-alive connections, one request at a time per connection.

No policy, metrics, logging, retries or timeouts; SIGTERM/SIGINT stop it. Simplified on purpose: request
and response bodies are buffered whole before they are forwarded (the benchmark's are 1 KiB), pipelined
requests are answered in order, trailers, Upgrade/CONNECT and absolute-form request targets are not
supported, a lost connection to the peer answers its in-flight requests with 502.

    .venv/bin/python -P bench/floor.py outbound --listen 127.0.0.1:PORT --peer 127.0.0.1:PORT \\
        --cert CHAIN.pem --key KEY.pem --ca ROOT.pem
    .venv/bin/python -P bench/floor.py inbound --listen 127.0.0.1:PORT --app 127.0.0.1:PORT \\
        --cert CHAIN.pem --key KEY.pem --ca ROOT.pem
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from collections import deque
from http import HTTPStatus
from typing import cast

import h2.config
import h2.events
import h2.exceptions
import h2.settings
import httptools
import uvloop
from h2.settings import SettingCodes

from mesh.h2.connection import HookedConnection

Headers = list[tuple[bytes, bytes]]
HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection", b"te", b"host"}
)
# Also never forwarded: expect (bodies are read whole before forwarding, so the outbound answers
# 100-continue itself) and, by the inbound, content-length (it sets its own from the body it has).
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


def h2_connection(client_side: bool) -> HookedConnection:
    """The h2 connection class Meshgate's core drives (``mesh/h2/connection.py``: its HPACK encoder, no
    per-frame repr, no hpack debug calls, 1,024 remembered closed streams), with the same flags."""
    return HookedConnection(
        h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
    )


def tls_context(server: bool, cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


class H2Peer(asyncio.Protocol):
    """What both HTTP/2 ends share: the h2 connection, its TLS transport, bodies waiting for window."""

    transport: asyncio.Transport

    def __init__(self, client_side: bool) -> None:
        self.h2 = h2_connection(client_side)
        self.blocked: dict[int, bytes] = {}  # stream -> the rest of its body, waiting for window

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tls = transport.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != "h2":
            transport.close()
            return
        conn = self.h2
        conn.local_settings = h2.settings.Settings(  # Meshgate's windows: 1 MiB per stream, 16 MiB in all
            client=conn.config.client_side, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}
        )
        conn.initiate_connection()
        conn.increment_flow_control_window((1 << 24) - 65535)
        self.flush()

    def flush(self) -> None:
        if data := self.h2.data_to_send():
            self.transport.write(data)

    def send_body(self, stream_id: int, body: bytes) -> None:
        """Send ``body`` and end the stream; what the flow control windows refuse waits for WindowUpdated."""
        conn = self.h2
        while body:
            n = min(len(body), conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if n <= 0:
                self.blocked[stream_id] = body
                return
            conn.send_data(stream_id, body[:n])
            body = body[n:]
        conn.end_stream(stream_id)

    def window_opened(self) -> None:
        for stream_id, body in list(self.blocked.items()):
            del self.blocked[stream_id]
            self.send_body(stream_id, body)

    def receive(self, data: bytes) -> list[h2.events.Event]:
        try:
            self.h2.receive_data(data)  # the hooked connection collects the events
        except h2.exceptions.ProtocolError:
            self.flush()  # a protocol error: what is queued, then close
            self.transport.close()
            return []
        finally:
            events, self.h2.collected = self.h2.collected, []
        return events


# -- outbound: HTTP/1.1 in, HTTP/2 out -------------------------------------------------------------------


class Exchange:
    """A client's request on its way to the peer, then its HTTP/1.1 answer (``out``)."""

    __slots__ = ("body", "chunks", "client", "head", "headers", "keep_alive", "out", "response")

    def __init__(
        self, client: Downstream, headers: Headers, body: bytes, head: bool, keep_alive: bool
    ) -> None:
        self.client, self.headers, self.body = client, headers, body
        self.head, self.keep_alive = head, keep_alive
        self.response: Headers = []
        self.chunks: list[bytes] = []
        self.out: bytes | None = None

    def complete(self) -> None:
        status, chunked, lines = 502, True, list[bytes]()
        for name, value in self.response:
            if name == b":status":
                status = int(value)
            elif name[:1] != b":" and name not in HOP:
                chunked = chunked and name != b"content-length"
                lines += (name, b": ", value, b"\r\n")
        body = b"".join(self.chunks)
        if self.head or status in (204, 304):
            body, chunked = b"", False
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        self.out = b"".join(
            [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"")), *lines, b"\r\n", body]
        )
        self.client.answered()

    def fail(self) -> None:
        close = b"" if self.keep_alive else b"connection: close\r\n"
        self.out = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n" + close + b"\r\n"
        self.client.answered()


class Downstream(asyncio.Protocol):
    """One HTTP/1.1 client connection to the outbound."""

    transport: asyncio.Transport

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()  # requests not answered yet, in order
        self.url, self.authority, self.expect = b"", b"", False
        self.headers: Headers = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except PARSER_ERRORS:
            if not self.queue:
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.authority, self.expect = b"", b"", False
        self.headers, self.body = [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"host":
            self.authority = value
        elif name == b"expect":
            self.expect = value.lower() == b"100-continue"
        elif name not in HOP:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.expect and not self.queue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        pseudo = [(b":method", method), (b":scheme", b"https")]
        if self.authority:
            pseudo.append((b":authority", self.authority))
        pseudo.append((b":path", self.url))
        body = b"".join(self.body)
        exchange = Exchange(
            self, pseudo + self.headers, body, method == b"HEAD", self.parser.should_keep_alive()
        )
        self.queue.append(exchange)
        self.upstream.submit(exchange)

    def answered(self) -> None:
        while self.queue and self.queue[0].out is not None:
            out = self.queue.popleft()
            if self.transport.is_closing():
                return
            self.transport.write(cast(bytes, out.out))
            if not out.keep_alive:
                self.transport.close()


class PeerConnection(H2Peer):
    """The outbound's HTTP/2 connection to the peer."""

    def __init__(self, upstream: Upstream) -> None:
        super().__init__(client_side=True)
        self.upstream = upstream
        self.streams: dict[int, Exchange] = {}
        self.closed = False

    def start(self, exchange: Exchange) -> None:
        stream_id = self.h2.get_next_available_stream_id()
        self.streams[stream_id] = exchange
        self.h2.send_headers(stream_id, exchange.headers, end_stream=not exchange.body)
        if exchange.body:
            self.send_body(stream_id, exchange.body)
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.receive(data):
            if isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if exchange := self.streams.get(event.stream_id):
                    exchange.chunks.append(event.data)
            elif isinstance(event, h2.events.ResponseReceived):
                if exchange := self.streams.get(event.stream_id):
                    exchange.response = event.headers
            elif isinstance(event, h2.events.StreamEnded):
                if self.blocked.pop(event.stream_id, None) is not None:  # answered before the whole body
                    self.h2.reset_stream(event.stream_id)
                if exchange := self.streams.pop(event.stream_id, None):
                    exchange.complete()
            elif isinstance(event, h2.events.StreamReset):
                self.blocked.pop(event.stream_id, None)
                if exchange := self.streams.pop(event.stream_id, None):
                    exchange.fail()
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self.window_opened()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.close()
                self.upstream.lost(self)
        self.flush()
        self.upstream.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.upstream.lost(self)
        streams, self.streams = self.streams, {}
        for exchange in streams.values():
            exchange.fail()
        self.upstream.pump()


class Upstream:
    """The one connection to the peer (opened on first use, again after it is lost) and its backlog."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host, self.port, self.context = host, port, context
        self.conn: PeerConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.waiting: deque[Exchange] = deque()

    def submit(self, exchange: Exchange) -> None:
        self.waiting.append(exchange)
        self.pump()

    def pump(self) -> None:
        """Start waiting requests as far as the peer's concurrent stream limit allows."""
        if not self.waiting:
            return
        conn = self.conn
        if conn is None:
            if self.connecting is None:
                self.connecting = asyncio.get_running_loop().create_task(self.connect())
            return
        limit = conn.h2.remote_settings.max_concurrent_streams
        while self.waiting and len(conn.streams) < limit:
            conn.start(self.waiting.popleft())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: PeerConnection(self), self.host, self.port, ssl=self.context
            )
        except OSError:
            while self.waiting:
                self.waiting.popleft().fail()
        else:
            if not conn.closed:
                self.conn = conn
        finally:
            self.connecting = None
        self.pump()

    def lost(self, conn: PeerConnection) -> None:
        if self.conn is conn:
            self.conn = None


# -- inbound: HTTP/2 in, HTTP/1.1 out --------------------------------------------------------------------


def h1_request(headers: Headers, body: bytes, host: bytes) -> bytes:
    method, path, lines, cookies, length = b"GET", b"/", list[bytes](), list[bytes](), False
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name in (b":authority", b"host"):
            host = value
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"content-length":
            length = True
        elif name[:1] != b":" and name not in HOP and name != b"expect":
            lines += (name, b": ", value, b"\r\n")
    if cookies:  # HTTP/2 may split them (RFC 9113 8.2.3)
        lines += (b"cookie: ", b"; ".join(cookies), b"\r\n")
    if body or length:
        lines.append(b"content-length: %d\r\n" % len(body))
    return b"".join([method, b" ", path, b" HTTP/1.1\r\nhost: ", host, b"\r\n", *lines, b"\r\n", body])


class AppConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to the app, one request at a time."""

    transport: asyncio.Transport

    def __init__(self, pool: AppPool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.job: tuple[Inbound, int, bool] | None = None  # (connection, stream, HEAD request)
        self.headers: Headers = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, job: tuple[Inbound, int, bool], request: bytes) -> None:
        self.job = job
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except PARSER_ERRORS:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in HOP:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.job is not None and self.job[2]:  # no body follows, but httptools cannot be told: close
            self.done()
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return  # an interim response: the final one follows
        self.done()
        if self.parser.should_keep_alive() and not self.transport.is_closing():
            self.pool.idle.append(self)
        else:
            self.transport.close()

    def done(self) -> None:
        if self.job is not None:
            (inbound, stream_id, _), self.job = self.job, None
            status = self.parser.get_status_code()
            headers = self.headers
            if status in (204, 304):  # h2 would hold a content-length against the empty body
                headers = [h for h in headers if h[0] != b"content-length"]
            inbound.respond(stream_id, status, headers, b"".join(self.body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.job is not None:
            inbound, stream_id, _ = self.job
            self.job = None
            inbound.respond(stream_id, 502, [], b"")


class AppPool:
    """Keep-alive connections to the app: an idle one if there is one, else a new one."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.authority = f"{host}:{port}".encode()
        self.idle: list[AppConnection] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, job: tuple[Inbound, int, bool], request: bytes) -> None:
        if self.idle:
            self.idle.pop().send(job, request)
        else:
            task = asyncio.get_running_loop().create_task(self.connect(job, request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def connect(self, job: tuple[Inbound, int, bool], request: bytes) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: AppConnection(self), self.host, self.port
            )
        except OSError:
            job[0].respond(job[1], 502, [], b"")
        else:
            conn.send(job, request)


class Inbound(H2Peer):
    """One HTTP/2 connection from a peer's outbound."""

    def __init__(self, pool: AppPool) -> None:
        super().__init__(client_side=False)
        self.pool = pool
        self.streams: dict[int, tuple[Headers, list[bytes]]] = {}  # until answered or reset

    def data_received(self, data: bytes) -> None:
        for event in self.receive(data):
            if isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if stream := self.streams.get(event.stream_id):
                    stream[1].append(event.data)
            elif isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = (event.headers, [])
            elif isinstance(event, h2.events.StreamEnded):
                if stream := self.streams.get(event.stream_id):
                    headers, body = stream
                    request = h1_request(headers, b"".join(body), self.pool.authority)
                    head = request.startswith(b"HEAD ")
                    self.pool.submit((self, event.stream_id, head), request)
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)
                self.blocked.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self.window_opened()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.close()
        self.flush()

    def respond(self, stream_id: int, status: int, headers: Headers, body: bytes) -> None:
        if self.streams.pop(stream_id, None) is None:
            return  # reset meanwhile, or the connection is gone
        self.h2.send_headers(stream_id, [(b":status", b"%d" % status), *headers], end_stream=not body)
        if body:
            self.send_body(stream_id, body)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.streams.clear()


# -- main ------------------------------------------------------------------------------------------------


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    host, port = address(args.listen)
    upstream: Upstream | None = None
    if args.role == "outbound":
        upstream = Upstream(*address(args.peer), tls_context(False, args.cert, args.key, args.ca))
        server = await loop.create_server(lambda: Downstream(upstream), host, port)
    else:
        pool = AppPool(*address(args.app))
        context = tls_context(True, args.cert, args.key, args.ca)
        server = await loop.create_server(lambda: Inbound(pool), host, port, ssl=context)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if upstream is not None and upstream.conn is not None:
        upstream.conn.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("role", choices=["outbound", "inbound"])
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--peer", help="outbound: the inbound's host:port")
    parser.add_argument("--app", help="inbound: the app's host:port")
    parser.add_argument("--cert", required=True, help="certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="private key (PEM)")
    parser.add_argument("--ca", required=True, help="root certificates to verify the other side against")
    args = parser.parse_args()
    if (args.peer if args.role == "outbound" else args.app) is None:
        parser.error("outbound needs --peer, inbound needs --app")
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
