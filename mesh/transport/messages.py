"""The request and response the data path passes between layers, whatever the wire protocol.

Header names are lower-case ``str``; pseudo-headers and hop-by-hop headers are not in ``headers``
(each protocol adapter strips and adds its own). Bodies are async iterators of bytes, pulled by the
consumer, so a slow reader slows the writer (back-pressure) instead of growing a buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

Headers = list[tuple[str, str]]

#: RFC 9110 section 7.6.1 plus the usual suspects: never forwarded hop to hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "http2-settings",
    }
)


# Bodies on the request path are small classes, not async generators: each async generator costs a
# registration with the event loop (a WeakSet entry, added and removed), one more frame per chunk and
# its layer, and a finalizer; a proxied request made seven of them per sidecar.


class _Once:
    """A body of one chunk (or none)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data or None

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data = self._data
        if data is None:
            raise StopAsyncIteration
        self._data = None
        return data

    async def aclose(self) -> None:
        self._data = None

    def ready_now(self) -> tuple[bytes, bool]:
        """All of the body, which is known at once (see :func:`ready_now`)."""
        return self._data or b"", True


def ready_now(body: AsyncIterator[bytes]) -> tuple[bytes, bool] | None:
    """What ``body`` holds without waiting, not consumed: the bytes its next ``__anext__`` returns at
    once (``b""`` when none) and whether the body ends after them; None when a body cannot tell
    without waiting (a body opts in with a ``ready_now`` method, others are unknown)."""
    peek = getattr(body, "ready_now", None)
    if peek is None:
        return None
    ready: tuple[bytes, bool] | None = peek()
    return ready


def empty_body() -> AsyncIterator[bytes]:
    """A body with no bytes."""
    return _Once(b"")


def body_of(data: bytes) -> AsyncIterator[bytes]:
    """A body made of ``data`` in one chunk."""
    return _Once(data)


@dataclass
class Request:
    """An HTTP request in flight."""

    method: str
    path: str
    authority: str
    scheme: str = "http"
    headers: Headers = field(default_factory=list)
    body: AsyncIterator[bytes] = field(default_factory=empty_body)
    trailers: asyncio.Future[Headers] | None = None

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Response:
    """An HTTP response in flight; ``trailers`` resolves after the body, if the peer sent any."""

    status: int
    headers: Headers = field(default_factory=list)
    body: AsyncIterator[bytes] = field(default_factory=empty_body)
    trailers: asyncio.Future[Headers] | None = None
    on_close: Callable[[], None] | None = None
    #: No body and no trailers: HTTP/2 sends the headers with END_STREAM (gRPC Trailers-Only).
    headers_only: bool = False
    #: Tries the mesh client made for this answer (1: no retry); for access logs.
    attempts: int = 1
    #: Made here (error_response, grpc_error), not relayed from an app or a peer: only these count
    #: as the sidecar's own errors in metrics (a callee's 403 is not the caller's policy denial).
    local: bool = False

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Remove hop-by-hop headers and every header named in ``Connection``."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key == "connection"
        for token in value.split(",")
        if token.strip()
    }
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]


#: gRPC status for each locally generated error (grpc/grpc doc/statuscodes.md).
GRPC_STATUS = {
    "no_healthy_upstream": 14,
    "connect_failure": 14,
    "upstream_reset": 14,
    "circuit_open": 14,
    "tls_identity_mismatch": 14,
    "no_configuration": 14,
    "upstream_timeout": 4,
    "policy_denied": 7,
    "not_implemented": 12,
    "method_not_allowed": 12,
    "unknown_service": 12,
    # the gateway's own answers
    "route_not_found": 12,
    "unauthenticated": 16,
    "rate_limited": 8,
    "body_too_large": 8,
    "headers_too_large": 8,
    "bad_request": 3,
    "client_disconnected": 1,
    "trailers_unsupported": 13,
    "origin_not_allowed": 7,
    "cors_method_not_allowed": 7,
}

#: Every ``x-meshgate-error`` code Meshgate itself sends; metrics count any other value (an app may
#: send the header too) as ``_other``, so that a label set cannot grow with what an app writes.
LOCAL_ERROR_CODES = frozenset(GRPC_STATUS) | {"internal_error", "ext_authz_failed"}


def is_grpc(headers: Headers) -> bool:
    """True for a gRPC request (``content-type: application/grpc...``)."""
    return any(k == "content-type" and v.startswith("application/grpc") for k, v in headers)


def grpc_error(code: str, message: str) -> Response:
    """A locally generated error for a gRPC caller: HTTP 200, Trailers-Only with ``grpc-status``."""
    status = GRPC_STATUS.get(code, 2)
    text = message.replace("%", "%25").replace("\r", " ").replace("\n", " ")
    return Response(
        200,
        [
            ("content-type", "application/grpc"),
            ("grpc-status", str(status)),
            ("grpc-message", text),
            ("x-meshgate-error", code),
        ],
        headers_only=True,
        local=True,
    )


#: gRPC status for an HTTP status other than 200 (grpc/grpc doc/http-grpc-status-mapping.md); any
#: other status is UNKNOWN (2).
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def grpc_from_http(status: int) -> Response:
    """A gRPC caller's answer when the upstream answered HTTP ``status`` (not 200, so not gRPC):
    Trailers-Only with the mapped ``grpc-status``; the status itself in ``x-meshgate-upstream-status``."""
    return Response(
        200,
        [
            ("content-type", "application/grpc"),
            ("grpc-status", str(HTTP_TO_GRPC.get(status, 2))),
            ("grpc-message", f"upstream answered HTTP {status}, not gRPC"),
            ("x-meshgate-upstream-status", str(status)),
        ],
        headers_only=True,
    )


def for_caller(request: Request, response: Response) -> Response:
    """A response in the form the caller understands: gRPC callers get Trailers-Only with a
    ``grpc-status`` instead of an HTTP error status, mapped from the ``x-meshgate-error`` code of a
    locally generated error, else from the upstream's HTTP status (a server that is not gRPC)."""
    if response.status == 200 or not is_grpc(request.headers):
        return response
    if response.on_close is not None:
        response.on_close()  # the replaced response is never sent: release what it holds
    code = response.header("x-meshgate-error")
    if code is None:
        return grpc_from_http(response.status)
    mapped = grpc_error(code, f"meshgate: {code} (HTTP {response.status})")
    mapped.local = response.local
    return mapped


def target_path(target: str) -> str:
    """The path of a request target, origin form or absolute form (``http://orders/a?q`` -> ``/a``:
    proxy mode; RFC 9112 section 3.2.2 asks servers to accept it), without the query."""
    path = target.split("?", 1)[0]
    if path.startswith(("http://", "https://")):
        slash = path.find("/", path.index("//") + 2)
        path = path[slash:] if slash >= 0 else "/"
    return path


def error_response(status: int, code: str, message: str) -> Response:
    """A locally generated error: ``x-meshgate-error: code`` and a short text body."""
    body = f"{message}\n".encode()
    return Response(
        status,
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(body))),
            ("x-meshgate-error", code),
        ],
        body_of(body),
        local=True,
    )


def on_finish(response: Response, callback: Callable[[], None]) -> None:
    """Run ``callback`` once, when the body has been read to its end, failed or been abandoned
    (closed, or dropped unread), or the response is closed unread (Trailers-Only answers, errors
    replaced for gRPC callers): counts and spans must never leak. Callbacks run in the order given."""
    body = response.body
    if not (isinstance(body, _Finishing) and response.on_close == body.on_close):
        body = _Finishing(body, response.on_close)
        response.body = body
        response.on_close = body.on_close
    body.callbacks.append(callback)


class _Finishing:
    """A body that runs its ``callbacks`` once, when it ends in any way (see :func:`on_finish`)."""

    __slots__ = ("_body", "_previous", "callbacks", "done")

    def __init__(self, body: AsyncIterator[bytes], previous: Callable[[], None] | None) -> None:
        self._body = body
        self._previous = previous  # the response's own on_close, run after the callbacks
        self.callbacks: list[Callable[[], None]] = []
        self.done = False

    def __aiter__(self) -> _Finishing:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        try:
            return await self._body.__anext__()
        except StopAsyncIteration:
            self.finish()
            raise
        except BaseException:
            await self._close_body()
            self.finish()
            raise

    async def aclose(self) -> None:
        """Abandoned early: close the wrapped body too, so that its own clean-up (stream reset,
        breaker slot) runs now and not whenever the garbage collector gets to it."""
        if not self.done:
            await self._close_body()
            self.finish()

    async def _close_body(self) -> None:
        close = getattr(self._body, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    def finish(self) -> None:
        """Run the callbacks (once); a failing one does not stop the others."""
        if self.done:
            return
        self.done = True
        failure: BaseException | None = None
        for callback in self.callbacks:
            try:
                callback()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def on_close(self) -> None:
        """The response is closed (sent, or dropped unread)."""
        try:
            self.finish()
        finally:
            if self._previous is not None:
                self._previous()

    def __del__(self) -> None:
        if not self.done:  # dropped unread and never closed: counts and spans still end
            with contextlib.suppress(Exception):
                self.finish()
