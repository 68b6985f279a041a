"""A small HTTP/1.1 client for the control plane and the app check: keep-alive connections to one
origin, JSON bodies, bounded responses, and a hook that checks the server's TLS identity after the
handshake and before the first byte of a request is written.

Why not httpx: a sidecar makes a heartbeat every few seconds and holds one long poll; httpx (with
httpcore, anyio, h11 and, when installed, click and pygments for its command line) added ~4 MB of
resident memory and two worker threads to every sidecar for that. Responses are parsed by
``shared.http1.ResponseParse``, the parser of the sidecar's app pool. Proxies from the environment
are not used: the control plane is dialled directly, whatever ``HTTP_PROXY`` says (apps in the mesh
set it to the sidecar itself).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from shared.http1 import MAX_HEAD_BYTES, READ_CHUNK, ResponseError, ResponseParse

__all__ = ["HttpClient", "HttpError", "HttpResponse"]

MAX_BODY_BYTES = 64 * 1024 * 1024  # a whole configuration snapshot of a large mesh fits many times
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: What a request target may hold as it is; anything else (space, CR, LF, non-ASCII) is percent-encoded.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"

PeerCheck = Callable[[ssl.SSLObject | None], None]


class HttpError(Exception):
    """The request failed: no connection, timeout, TLS failure or a malformed or oversized response."""


class _StaleConnection(Exception):
    """A reused connection ended before any byte of the response."""


@dataclass
class HttpResponse:
    """A complete response; ``ssl_object`` is the TLS session it came over (None for plain HTTP)."""

    status_code: int
    headers: list[tuple[str, str]]
    content: bytes
    ssl_object: ssl.SSLObject | None = None

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return jsonlib.loads(self.content)

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
        self.used = False

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() and not self.reader._buffer  # type: ignore[attr-defined]

    def abort(self) -> None:
        """Drop a broken connection at once."""
        self.writer.transport.abort()

    async def aclose(self) -> None:
        """Close (with TLS close_notify), waiting at most a second for it."""
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (OSError, TimeoutError):
            self.abort()


class HttpClient:
    """Requests to one origin (``http://`` or ``https://host:port``) over pooled keep-alive connections.

    ``check_peer`` runs after each TLS handshake with the session's ``SSLObject``; an exception from it
    aborts the connection before anything (a token, say) is sent, and propagates to the caller.
    Responses carry at most ``max_body`` bytes of body (HttpError beyond); with ``keep_body=False``
    bodies of any size are read and dropped (a health check decides by the status alone).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        check_peer: PeerCheck | None = None,
        max_body: int = MAX_BODY_BYTES,
        keep_body: bool = True,
        max_idle: int = 4,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.authority = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.ssl_context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl_context = ssl_context or ssl.create_default_context()
        self.timeout = timeout
        self.check_peer = check_peer
        self.max_body = max_body
        self.keep_body = keep_body
        self.max_idle = max_idle
        self._idle: list[_Conn] = []
        self._closed = False

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the idle connections; requests in flight close theirs when they end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()

    async def get(self, path: str, **kw: Any) -> HttpResponse:
        """``request("GET", path, ...)``."""
        return await self.request("GET", path, **kw)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> HttpResponse:
        """Send one request and read the whole response, whatever its status. Raises HttpError when no
        complete response arrived in ``timeout`` seconds (default: the client's), ValueError for a
        method that is not a token or a header with a line break. Characters a request target may
        not hold (space, controls, non-ASCII) are percent-encoded."""
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"not an HTTP method: {method!r}")
        target = quote(f"{self.prefix}{path}", safe=_TARGET_SAFE) or "/"
        body = b"" if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        head = [f"{method} {target} HTTP/1.1", f"host: {self.authority}", "accept: */*"]
        if json is not None:
            head.append("content-type: application/json")
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"content-length: {len(body)}")
        for name, value in (headers or {}).items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} contains a line break")
            head.append(f"{name}: {value}")
        wire = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        seconds = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(seconds):
                return await self._exchange(method, wire)
        except TimeoutError:
            raise HttpError(f"no response within {seconds:g}s") from None

    async def _exchange(self, method: str, wire: bytes) -> HttpResponse:
        while True:
            conn = self._take()
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                response = await self._send(conn, method, wire)
            except _StaleConnection:
                conn.abort()
                if reused and method in _IDEMPOTENT:
                    continue  # the server closed an idle connection as we wrote: once more, afresh
                raise HttpError(f"{self.base}: connection closed before a response") from None
            except BaseException:
                conn.abort()
                raise
            return response

    def _take(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.abort()
        return None

    async def _connect(self) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context is not None else None,
                limit=MAX_HEAD_BYTES,
            )
        except ssl.SSLError as exc:
            raise HttpError(f"TLS with {self.host}:{self.port} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        conn = _Conn(reader, writer)
        if self.ssl_context is not None and self.check_peer is not None:
            try:
                self.check_peer(conn.ssl_object)
            except BaseException:
                conn.abort()
                raise
        return conn

    async def _send(self, conn: _Conn, method: str, wire: bytes) -> HttpResponse:
        parse = ResponseParse(head_only=method == "HEAD")
        body: list[bytes] = []
        size = 0
        first = not conn.used
        conn.used = True
        got = 0
        try:
            conn.writer.write(wire)
            await conn.writer.drain()
            while not parse.complete:
                data = await conn.reader.read(READ_CHUNK)
                if not data:
                    if got == 0 and not first:
                        raise _StaleConnection
                    if not (parse.head_done and parse.close_delimited()):
                        raise HttpError("connection closed in the middle of a response")
                    parse.extra = True  # a body delimited by the end of the connection (RFC 9112 6.3)
                    break
                got += len(data)
                parse.feed(data)
                if parse.chunks:
                    size += sum(len(chunk) for chunk in parse.chunks)
                    if self.keep_body:
                        if size > self.max_body:
                            raise HttpError(f"response body over {self.max_body} bytes")
                        body += parse.chunks
                    parse.chunks.clear()
        except ResponseError as exc:
            raise HttpError(str(exc)) from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            if got == 0 and not first:
                raise _StaleConnection from exc
            raise HttpError(f"connection reset: {exc}") from exc
        except ssl.SSLError as exc:
            raise HttpError(f"TLS error: {exc.reason or exc}") from exc
        except OSError as exc:
            raise HttpError(f"connection failed: {exc.strerror or exc}") from exc
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in parse.headers]
        response = HttpResponse(parse.status, headers, b"".join(body), conn.ssl_object)
        if parse.reusable() and not self._closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            await conn.aclose()
        return response
