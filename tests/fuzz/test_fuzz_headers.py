"""Hypothesis fuzzing of header handling (issue 10, item 4): the gateway's edge hygiene, path
normalization, X-Forwarded-For with trusted hops, hop-by-hop stripping, the HTTP/1.1 server (llhttp) fed
raw request heads, in memory and over a real socket, and HTTP/2 header-block validation.

Properties: nothing raises but the documented error; the HTTP/1.1 server answers every input with a
parsed request or a clean 4xx (501 for an unknown transfer coding, as RFC 9112 section 6.1 says);
``normalize_path`` is idempotent and never yields ``.``/``..`` segments or a path outside ``/``;
identity headers (``x-meshgate-*``, ``x-forwarded-client-cert``, ``forwarded``, a client's
``x-request-id``) never survive hygiene. Defects found are pinned by ``xfail(strict=True)`` tests at the
end; the random tests skip exactly those inputs (see ``_d6``/``_d7``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.exchange import Exchange
from gateway.middleware.hygiene import HygieneSettings, _client_address, check
from gateway.proxy import grpc_timeout
from mesh.h2 import MalformedHeadersError
from mesh.h2.headers import check_request, check_response, check_trailers
from mesh.transport.h1 import ClientInfo, H1Server
from mesh.transport.messages import HOP_BY_HOP, Request, Response, body_of, strip_hop_by_hop
from shared.policy.paths import normalize_path

#: MESHGATE_FUZZ_SCALE=20 multiplies every example budget (a deeper local run; CI keeps 1).
SCALE = max(1, int(os.environ.get("MESHGATE_FUZZ_SCALE", "1")))


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


class Big(bytes):
    """Huge bytes that print short in Hypothesis reports (its repr of 70 KB would itself be a warning)."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Big({bytes(self[:12])!r}... {len(self)} bytes)")

    def __repr__(self) -> str:
        return f"Big({bytes(self[:12])!r}... {len(self)} bytes)"


class Raw(bytes):
    """Request bytes that print short when they hold a huge header."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        text = bytes(self)
        if len(text) <= 400:
            return repr(text)
        return f"Raw({text[:200]!r} ... {text[-100:]!r}, {len(text)} bytes)"


# ----- normalize_path -------------------------------------------------------------------------------------

_PATH_TOKENS = st.one_of(
    st.sampled_from(["/", "/", "//", ".", "..", "...", "\\", "%", "%2", "?", "#", ";", "a", "é", "\u2028"]),
    st.sampled_from(["%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%00", "%25", "%c0%ae", "%e2%80%a8", "%ff"]),
    st.integers(0, 255).map(lambda b: f"%{b:02x}"),
    st.integers(0, 255).map(lambda b: f"%25{b:02X}"),
    st.characters(codec="utf-8"),
)
fuzzy_paths = st.one_of(
    st.lists(_PATH_TOKENS, max_size=20).map(lambda t: "/" + "".join(t)),
    st.lists(_PATH_TOKENS, max_size=20).map("".join),
    st.text(max_size=40),
)


@budget(300)
@given(fuzzy_paths)
def test_normalize_path_stays_inside_the_root_and_is_a_fixed_point(raw: str) -> None:
    path = normalize_path(raw)
    if path is None:
        return
    assert path.startswith("/")
    assert normalize_path(path) == path
    segments = path.split("/")[1:]
    inner = segments[:-1] if path.endswith("/") else segments
    assert all(seg not in ("", ".", "..") for seg in inner), path
    assert "\\" not in path and "?" not in path and "#" not in path
    assert not re.search(r"[\x00-\x1f\x7f]", path)
    # the root is the ceiling: the path cannot climb out whatever it is joined to
    assert os.path.normpath("/srv/root" + path).startswith("/srv/root")


# ----- edge hygiene on random ASGI scopes -----------------------------------------------------------------

_NAMES = [
    *(
        b"host Host HOST content-length Content-Length transfer-encoding connection Connection keep-alive te "
        b"upgrade x-forwarded-for X-Forwarded-For x-forwarded-proto x-forwarded-host forwarded x-request-id "
        b"X-Request-Id x-meshgate-peer X-MeshGate-Principal x-meshgate-principal x-meshgate-anything "
        b"x-forwarded-client-cert proxy-authorization proxy-connection authorization trailer http2-settings "
        b"x-custom cookie"
    ).split(),
]
_VALUES = [
    *(
        b"a example.com example.com:8080 Example.COM. [::1]:80 [::1 0 12 007 chunked gzip,chunked "
        b"chunked,gzip close keep-alive upgrade trailers x-custom,keep-alive x-meshgate-peer "
        b"x-meshgate-principal,x-custom host content-length authorization 1.2.3.4 10.0.0.1,5.6.7.8 "
        b"fe80::1 ::ffff:1.2.3.4 spiffe://x/ns/a/sa/b"
    ).split(),
    b"",
    b" ",
    b"a b",
    b"a/b",
    b"a@b",
    b"a,b",
    b"1.2.3.4, junk, 5.6.7.8",
    b"a\r\nx-meshgate-peer: spoof",
    b"a\x00b",
    b"\xe9\xff",
]
header_names = st.one_of(
    *[st.sampled_from([n for n in _NAMES if n.lower() != b"host"])] * 8, st.binary(min_size=1, max_size=12)
)
header_values = st.one_of(*[st.sampled_from(_VALUES)] * 8, st.binary(max_size=30))
headers_lists = st.tuples(
    st.sampled_from(
        [[(b"host", b"a.example")], [(b"Host", b"A.Example:8443")], [(b"host", b"[::1]:80")], []]
    ),
    st.lists(st.tuples(header_names, header_values), max_size=12),
    st.sampled_from(
        [[]] * 12
        + [[(b"host", b"b")], [(b"content-length", b"1")], [(b"transfer-encoding", b"chunked")]]
        + [[(b"x-big", Big(b"a" * 70_000))], [(b"content-length", Big(b"1" * 5000))]]
    ),
).map(lambda parts: [*parts[0], *parts[1], *parts[2]])
ip_texts = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["", "unix", "1.2.3", "::1%eth0", "999.1.1.1"]),
)


@st.composite
def scopes(draw: st.DrawFn) -> dict[str, Any]:
    raw_path = draw(
        st.one_of(fuzzy_paths.map(lambda p: p.encode("utf-8", "surrogatepass")), st.binary(max_size=30))
    )
    scope: dict[str, Any] = {
        "type": "http",
        "method": draw(st.sampled_from(["GET", "POST", "HEAD", "CONNECT", "x"])),
        "path": draw(st.text(max_size=10)),
        "raw_path": draw(st.sampled_from([raw_path, b"", None])),
        "query_string": draw(st.binary(max_size=10)),
        "scheme": draw(st.sampled_from(["http", "https", "ws", ""])),
        "http_version": draw(st.sampled_from(["1.0", "1.1", "2", ""])),
        "client": draw(st.one_of(st.none(), st.tuples(ip_texts, st.integers(0, 65535)))),
        "headers": draw(headers_lists),
    }
    if draw(st.booleans()):
        chain = draw(
            st.lists(st.sampled_from(["", "junk", "-----BEGIN CERTIFICATE-----\nAA==\n"]), max_size=2)
        )
        scope["extensions"] = {"tls": {"client_cert_chain": chain}, "http.response.trailers": {}}
    return scope


def _d6(headers: list[tuple[bytes, bytes]]) -> bool:
    """D6 (fixed): a Content-Length made of Unicode digits (latin-1 superscripts) passed ``str.isdigit``."""
    return False


_IDENTITY = re.compile(r"^x-meshgate-|^x-forwarded-client-cert$|^forwarded$")


@budget(300)
@given(scopes(), st.integers(0, 3), st.sampled_from([(65536, 200)] * 5 + [(200, 5)]))
def test_hygiene_answers_400_or_431_or_a_clean_exchange(
    scope: dict[str, Any], hops: int, caps: tuple[int, int]
) -> None:
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    assume(not _d6(raw))
    settings_ = HygieneSettings(max_header_bytes=caps[0], max_headers=caps[1], trusted_hops=hops)
    result = check(scope, settings_)
    if isinstance(result, Response):
        # 501: a transfer coding other than chunked (RFC 9112 6.1), since the eighth session
        assert result.status in (400, 431, 501), result.status
        assert result.header("x-meshgate-error") in ("bad_request", "headers_too_large", "not_implemented")
        return
    assert isinstance(result, Exchange)
    lowered = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
    hosts = [v for k, v in lowered if k == "host"]
    assert len(hosts) == 1 and hosts[0].strip(), hosts
    assert not any(c in hosts[0].strip() for c in " /\\@\t,")
    assert result.host == result.host.lower()
    names = {k for k, _ in lowered}
    assert not ({"content-length", "transfer-encoding"} <= names)
    for _, value in ((k, v) for k, v in lowered if k == "content-length"):
        assert re.fullmatch(r"[0-9]+", value.strip()), value
    # the path is the one canonical form
    assert result.path == normalize_path(result.path)
    # identity and hop-by-hop headers are gone; the forwarding headers are the gateway's own
    named = {
        t.strip().lower() for k, v in lowered if k == "connection" for t in v.split(",") if t.strip()
    } - {"host", "content-length", "authorization"}
    out = [k for k, _ in result.headers]
    for name in out:
        assert not _IDENTITY.search(name), name
        assert name not in HOP_BY_HOP and name not in named and name != "host", name
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"):
        assert out.count(name) == 1, (name, out)
    assert re.fullmatch(r"[0-9a-f]{32}", result.header("x-request-id") or "")
    client = scope["client"][0] if scope["client"] else ""
    if hops == 0:
        assert result.client_address == (client or "")
        assert result.header("x-forwarded-for") == (client or "")


@budget(200)
@given(
    real=st.ip_addresses().map(str),
    proxies=st.lists(st.ip_addresses().map(str), min_size=1, max_size=3),
    spoofed=st.lists(
        st.one_of(st.ip_addresses().map(str), st.sampled_from(["junk", "", " ", "unknown", "1.2.3.4:80"])),
        max_size=4,
    ),
    one_header=st.booleans(),
)
def test_x_forwarded_for_through_trusted_hops_gives_the_real_client(
    real: str, proxies: list[str], spoofed: list[str], one_header: bool
) -> None:
    """Each trusted proxy appends the address it saw; whatever the client wrote before, the address
    ``trusted_hops`` from the end is the real client's."""
    seen_by = [real, *proxies[:-1]]  # what each proxy appends: the address of who connected to it
    items = [*spoofed, *seen_by]
    values = [", ".join(items)] if one_header else [*(spoofed and [", ".join(spoofed)]), *seen_by]
    client, chain = _client_address(values, proxies[-1], len(proxies))
    assert client == real
    assert chain[-1] == proxies[-1]
    for item in chain:
        ipaddress.ip_address(item)  # junk never reaches the chain (or a rate-limit key)


@budget(300)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from(sorted(HOP_BY_HOP | {"x-a", "x-b", "host", "cookie"})), st.text(max_size=8)
            ),
            st.one_of(
                st.sampled_from(["x-a", "x-a, X-B", " ,keep-alive,", "close", ""]), st.text(max_size=12)
            ),
        ),
        max_size=15,
    ).map(lambda hs: [(k.lower(), v) for k, v in hs])
)
def test_strip_hop_by_hop_removes_exactly_the_hop_headers(headers: list[tuple[str, str]]) -> None:
    named = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",") if t.strip()}
    expected = [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]
    assert strip_hop_by_hop(headers) == expected
    assert strip_hop_by_hop(expected) == expected


_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _d11(value: str) -> bool:
    """D11 (fixed): Unicode digits (latin-1 superscripts) passed ``str.isdigit`` and then broke ``int``."""
    return False


@budget(300)
@given(
    st.one_of(
        st.builds(
            lambda d, u: d + u, st.text("0123456789", max_size=10), st.sampled_from([*_GRPC_UNITS, "s", "x"])
        ),
        st.text(max_size=12),
        st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
    )
)
def test_grpc_timeout_header_parses_or_is_ignored(value: str) -> None:
    """``grpc-timeout`` is a client header the gateway reads: at most 8 ASCII digits and a unit, else
    ignored (None); never an exception."""
    assume(not _d11(value))
    seconds = grpc_timeout(value)
    if re.fullmatch(r"[0-9]{1,8}[HMSmun]", value):
        assert seconds == int(value[:-1]) * _GRPC_UNITS[value[-1]]
    else:
        assert seconds is None, value


# ----- HTTP/1.1 server: raw request heads -----------------------------------------------------------------


class _Writer:
    """Just enough of asyncio.StreamWriter for H1Server, collecting what it writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    async def wait_closed(self) -> None:
        return None


class _Recorder:
    """The app: answers 200 ``ok`` (405 to CONNECT, no body to HEAD) and keeps what it was given."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def __call__(self, request: Request, info: ClientInfo) -> Response:
        self.requests.append(request)
        if request.method == "CONNECT":
            return Response(405, [("content-length", "2")], body_of(b"no"))
        if request.method == "HEAD":
            return Response(200, [("content-length", "2")])
        return Response(200, [("content-length", "2")], body_of(b"ok"))


_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def parse_responses(data: bytes, methods: list[str]) -> list[int]:
    """The statuses of a stream of HTTP/1.1 responses (all framed by Content-Length); fails on anything
    else."""
    statuses = []
    pos = 0
    while pos < len(data):
        match = _STATUS_LINE.match(data, pos)
        assert match is not None, data[pos : pos + 80]
        end = data.index(b"\r\n\r\n", match.end() - 2)
        head = data[match.end() : end]
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n") if line)
        length = int(fields.get(b"content-length", b"0"))
        status = int(match.group(1))
        method = methods[len(statuses)] if len(statuses) < len(methods) else "?"
        if method == "HEAD":  # no body, whatever the status
            length = 0
        elif method == "HEAD?" and (end + 4 == len(data) or data.startswith(b"HTTP/1.1 ", end + 4)):
            length = 0  # a HEAD the server parsed gets no body; one it could not parse does
            length = 0
        pos = end + 4 + length
        statuses.append(status)
    assert pos == len(data)
    return statuses


_HANDLED = {200, 405}
#: The HTTP/1.1 server's refusals: 400, 431 (head over the cap), 501 (kept from h11's days); 408: timeouts.
_REFUSED = {400, 408, 431, 501, 505}  # 505: an HTTP/2.0 request line on the HTTP/1.1 parser

_METHODS = [
    b"GET",
    b"POST",
    b"HEAD",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"CONNECT",
    b"PATCH",
    b"get",
    b"G T",
    b"",
]
_TARGETS = [b"/", b"/x?y=1", b"*", b"http://a/b", b"a.example:443", b"/a b", b"/\x00", b"/\xff", b""]
_VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1", b""]
_RAW_NAMES = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"TE", b"X-A"]
_RAW_VALUES = [
    b"a",
    b"0",
    b"5",
    b"-1",
    b"1" * 30,
    b"chunked",
    b"gzip",
    b"chunked, gzip",
    b"close",
    b"websocket",
]


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """Mostly well-formed request heads with a few broken parts, sometimes pure junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))

    def mostly(good: st.SearchStrategy[bytes], junk: st.SearchStrategy[bytes]) -> bytes:
        return draw(junk) if draw(st.integers(0, 9)) == 0 else draw(good)

    out = b""
    for _ in range(draw(st.integers(1, 3))):  # pipelined requests
        eol = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n"]))
        method = mostly(
            st.sampled_from(_METHODS[:8]), st.one_of(st.sampled_from(_METHODS), st.binary(max_size=6))
        )
        target = mostly(
            st.sampled_from(_TARGETS[:5]), st.one_of(st.sampled_from(_TARGETS), st.binary(max_size=12))
        )
        version = mostly(st.sampled_from(_VERSIONS[:2]), st.sampled_from(_VERSIONS))
        lines = [b" ".join((method, target, version))]
        if draw(st.integers(0, 5)):
            lines.append(
                b"Host: " + mostly(st.sampled_from([b"a.example", b"a:80"]), st.sampled_from([b"", b"a b"]))
            )
        for _ in range(draw(st.integers(0, 8))):
            name = mostly(st.sampled_from(_RAW_NAMES), st.binary(min_size=1, max_size=8))
            value = mostly(st.sampled_from(_RAW_VALUES), st.binary(max_size=16))
            sep = mostly(st.just(b": "), st.sampled_from([b":", b" : ", b":\t", b""]))
            lines.append(name + sep + value)
        if draw(st.integers(0, 20)) == 0:
            lines.append(b"X-Big: " + b"a" * 70_000)
        body = mostly(st.just(b""), st.binary(max_size=20))
        out += eol.join(lines) + eol + eol + body
    return Raw(out)


async def _serve_in_memory(data: bytes) -> tuple[bytes, _Recorder, list[dict[str, Any]]]:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    writer = _Writer()
    app = _Recorder()
    server = H1Server(app, header_timeout=1.0, idle_timeout=1.0)
    await asyncio.wait_for(server(reader, writer), 10)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # a head sent by call_soon lands here
    return bytes(writer.data), app, problems


def _request_methods(data: bytes) -> list[str]:
    return [m.decode("latin-1") for m in re.findall(rb"(?:^|\n)([A-Za-z]+) ", data)]


def _check_exchange(data: bytes, out: bytes, app: _Recorder, problems: list[dict[str, Any]]) -> None:
    assert not problems, problems
    methods = [r.method for r in app.requests]
    # a refused request never reaches the app; a refused HEAD still gets a bodiless answer
    refused = "HEAD?" if data.startswith(b"HEAD ") and not app.requests else "?"
    statuses = parse_responses(out, methods + [refused] * 4)
    assert all(s in _HANDLED | _REFUSED for s in statuses), statuses
    assert sum(s in _HANDLED for s in statuses) == len(app.requests)
    if data.strip(b"\r\n\t "):
        assert statuses, "no answer to a non-empty request"
    for request in app.requests:
        assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", request.method), request.method
        assert request.path and not re.search(r"[\x00-\x20\x7f]", request.path), request.path
        names = [k for k, _ in request.headers]
        assert "host" not in names
        assert not set(names) & HOP_BY_HOP, names
        for name, value in request.headers:
            assert name == name.lower() and re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+", name), name
            assert not re.search(r"[\x00\r\n]", value), value
        assert not ({"content-length", "transfer-encoding"} <= set(names))


@budget(250)
@given(request_heads())
def test_h1_server_answers_raw_heads_with_a_request_or_a_clean_refusal(data: bytes) -> None:
    out, app, problems = asyncio.run(_serve_in_memory(data))
    _check_exchange(data, out, app, problems)


async def _serve_on_socket(data: bytes) -> tuple[bytes | None, _Recorder, list[dict[str, Any]]]:
    """Send ``data``, half-close, read to the end; None when the server reset the connection."""
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    app = _Recorder()
    h1 = H1Server(app, header_timeout=2.0, idle_timeout=2.0)
    server = await asyncio.start_server(h1, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out: bytes | None = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            await writer.drain()
            writer.write_eof()
            out = await asyncio.wait_for(reader.read(), 10)
        except (ConnectionResetError, BrokenPipeError):
            out = None
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        for task in list(h1.connections):
            await asyncio.wait_for(task, 10)
    finally:
        server.close()
        await server.wait_closed()
    return out, app, problems


#: What the server reads at once (mesh/transport/h1.py READ_CHUNK): more than this may stay unread when
#: it refuses, and closing with unread input makes the kernel send a reset (defect D8).
_READ_CHUNK = 65536


@budget(40)
@given(request_heads())
def test_h1_server_on_a_real_socket_never_breaks(data: bytes) -> None:
    out, app, problems = asyncio.run(_serve_on_socket(data))
    if out is None:
        assert len(data) > _READ_CHUNK, "reset although the server could read the whole input"
        assert not problems, problems
        return  # D8, pinned by its xfail test
    _check_exchange(data, out, app, problems)


# ----- HTTP/2 header blocks -------------------------------------------------------------------------------

_H2_NAMES = [
    *(
        b":method :scheme :authority :path :protocol :status :bogus host content-length te connection "
        b"keep-alive upgrade transfer-encoding x-a Upper cookie"
    ).split(),
    b"",
]
_H2_VALUES = [
    *(b"GET CONNECT OPTIONS https http / * svc svc:443 SVC trailers gzip 12 012 200 101 099 ws".split()),
    b"",
    b" a",
    b"a\tb",
    b"/a b",
    b"u@svc",
    Big(b"1" * 5000),
]
h2_fields = st.tuples(
    st.one_of(st.sampled_from(_H2_NAMES), st.binary(max_size=8)),
    st.one_of(st.sampled_from(_H2_VALUES[:-1]), st.binary(max_size=12)),
)


@st.composite
def h2_blocks(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """Mostly a full request or response head plus plausible fields, a few of them broken."""

    def mostly(good: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> Any:
        return draw(junk) if draw(st.integers(0, 5)) == 0 else draw(good)

    request = [
        (
            b":method",
            mostly(st.sampled_from([b"GET", b"POST"]), st.sampled_from([b"CONNECT", b"OPTIONS", b"G T"])),
        ),
        (b":scheme", mostly(st.just(b"https"), st.sampled_from([b"", b"h s", b"HTTP"]))),
        (
            b":authority",
            mostly(st.sampled_from([b"svc", b"svc:443"]), st.sampled_from([b"", b"u@svc", b"a b"])),
        ),
        (b":path", mostly(st.sampled_from([b"/", b"/a?b"]), st.sampled_from([b"*", b"", b"a", b"/a b"]))),
    ]
    response = [(b":status", mostly(st.sampled_from([b"200", b"404"]), st.sampled_from(_H2_VALUES)))]
    head = draw(st.sampled_from([request, request, response, request[:3], []]))
    plausible = st.tuples(
        st.sampled_from([b"x-a", b"cookie", b"te", b"content-length", b"host", b"accept", b"grpc-timeout"]),
        st.sampled_from([b"trailers", b"12", b"svc", b"SVC", b"a=1", b"gzip", b"", b"1S"]),
    )
    block = head + draw(st.lists(st.one_of(*[plausible] * 4, h2_fields), max_size=8))
    if draw(st.integers(0, 9)) == 0 and block:
        block = draw(st.permutations(block))
    return list(block)


_H2_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")


def _assert_fields_valid(block: list[tuple[bytes, bytes]]) -> None:
    regular = False
    for name, value in block:
        assert not re.search(rb"[\x00\r\n]", value)
        assert value == value.strip(b" \t")
        if name.startswith(b":"):
            assert not regular, "pseudo-header after a regular one"
            continue
        regular = True
        assert _H2_TOKEN.fullmatch(name), name
        assert name not in (
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"transfer-encoding",
            b"upgrade",
        )
        if name == b"te":
            assert value.lower() == b"trailers"


def _d7(block: list[tuple[bytes, bytes]]) -> bool:
    """D7: a content-length of more than 4300 digits raises ValueError (int() digit limit)."""
    return False  # fixed
    return any(n == b"content-length" and len(v) > 4300 for n, v in block)


@budget(300)
@given(h2_blocks(), st.booleans())
def test_h2_header_validation_raises_only_malformed_headers(
    block: list[tuple[bytes, bytes]], connect_protocol: bool
) -> None:
    assume(not _d7(block))
    for check_one in (
        lambda: check_request(block, connect_protocol=connect_protocol),
        lambda: check_response(block),
        lambda: check_trailers(block),
    ):
        try:
            result = check_one()
        except MalformedHeadersError as exc:
            assert exc.error_code == 1 and str(exc)
            continue
        _assert_fields_valid(block)
        if result is not None:
            length = [int(v) for n, v in block if n == b"content-length"]
            assert result[1] == (length[0] if length else None)


@budget(150)
@given(
    st.sampled_from([b"GET", b"POST", b"DELETE"]),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~/%", max_size=20).map(lambda p: ("/" + p).encode()),
    st.lists(
        st.tuples(
            st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=10).map(str.encode),
            st.binary(max_size=12).map(
                lambda v: v.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
            ),
        ).filter(
            lambda f: (
                f[0] not in (b"connection", b"keep-alive", b"upgrade", b"te", b"host", b"content-length")
            )
        ),
        max_size=8,
    ),
)
def test_h2_well_formed_requests_are_never_refused(
    method: bytes, path: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    fields = [
        (n, v.strip(b" \t")) for n, v in fields if n != b"transfer-encoding" and n != b"proxy-connection"
    ]
    block = [(b":method", method), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", path), *fields]
    assert check_request(block, connect_protocol=False) == (method, None)


# ----- defects found (strict xfail: they fail now, and must be turned on when fixed) ---------------------


@pytest.mark.parametrize("value", [b"\xb2", b"1\xb3", b"\xb9"], ids=["sup2", "1-sup3", "sup1"])
def test_d6_content_length_with_unicode_digits_is_refused(value: bytes) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "headers": [(b"host", b"a"), (b"content-length", value)],
        "client": ("198.51.100.9", 40000),
    }
    result = check(scope, HygieneSettings())
    assert isinstance(result, Response) and result.status == 400


def test_d7_a_content_length_of_5000_digits_is_malformed() -> None:
    block = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/")]
    with pytest.raises(MalformedHeadersError):
        check_request([*block, (b"content-length", b"1" * 5000)], connect_protocol=False)


def test_d8_an_oversized_head_gets_its_431_over_a_real_socket() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 140_000 + b"\r\n\r\n"
    out, app, problems = asyncio.run(_serve_on_socket(data))
    assert out is not None, "connection reset before the answer could be read"
    assert parse_responses(out, []) == [431]
    assert not app.requests and not problems


@pytest.mark.parametrize("value", ["\xb2S", "1\xb3m", "\xb9\xb9n"], ids=["sup2-S", "1-sup3-m", "sup1-sup1-n"])
def test_d11_grpc_timeout_with_unicode_digits_is_ignored(value: str) -> None:
    assert grpc_timeout(value) is None
