"""Errors raised to the local caller; each carries the HTTP/2 error code it maps to."""

from __future__ import annotations

from h2.errors import ErrorCodes

__all__ = [
    "ConnectionClosedError",
    "ErrorCode",
    "H2Error",
    "MalformedHeadersError",
    "StreamClosedError",
    "StreamLimitReached",
]

ErrorCode = ErrorCodes


class H2Error(Exception):
    """Base of the tree; ``error_code`` is the RFC 9113 code that matches the failure."""

    error_code: int = ErrorCodes.INTERNAL_ERROR

    def __init__(self, message: str = "", error_code: int | None = None) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code


class HeaderListTooLarge(H2Error):
    """A request head over the peer's SETTINGS_MAX_HEADER_LIST_SIZE (name + value + 32 per field,
    RFC 9113 section 6.5.2): not sent, since the peer would end the whole connection for it."""


class ConnectionClosedError(H2Error):
    """The connection ended (GOAWAY sent or received): no new streams, or no I/O at all."""

    error_code = ErrorCodes.NO_ERROR


class StreamLimitReached(H2Error):
    """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (or the stream id space) is used up."""

    error_code = ErrorCodes.REFUSED_STREAM


class StreamClosedError(H2Error):
    """The stream is unknown, reset, or already ended in this direction."""

    error_code = ErrorCodes.STREAM_CLOSED


class MalformedHeadersError(H2Error):
    """A header block breaks RFC 9113 section 8 (inbound: stream error; outbound: refused)."""

    error_code = ErrorCodes.PROTOCOL_ERROR
