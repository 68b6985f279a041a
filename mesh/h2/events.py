"""Events ``H2Endpoint.receive`` returns: keyword-only frozen dataclasses, headers as bytes pairs."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectionEnded",
    "DataReceived",
    "Event",
    "Headers",
    "InformationalReceived",
    "PingAcked",
    "RequestReceived",
    "ResponseReceived",
    "SettingsChanged",
    "StreamRejected",
    "StreamReset",
    "TrailersReceived",
    "WindowOpened",
]

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived(Event):
    """Server side: a request that passed validation; forward it."""

    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseReceived(Event):
    """Client side: the final (non-1xx) response head."""

    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class InformationalReceived(Event):
    """Client side: a 1xx response head (101 is never delivered: it is malformed in HTTP/2)."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived(Event):
    """Body bytes; call ``ack(stream_id, flow_controlled_length)`` once they are consumed."""

    stream_id: int
    data: bytes
    flow_controlled_length: int
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TrailersReceived(Event):
    """Trailers; they end the stream."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset(Event):
    """The stream is gone: reset by the peer (``remote``) or by us for a stream error.

    NO_ERROR from a server after a complete response only means "stop sending the request body".
    """

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRejected(Event):
    """We refused a request (malformed, over the cap); RST_STREAM is queued; never forward it."""

    stream_id: int
    error_code: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowOpened(Event):
    """The peer opened a send window: ``stream_id`` None means the connection window."""

    stream_id: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsChanged(Event):
    """The peer's SETTINGS arrived; a field is None when that setting did not change.

    A new ``initial_window_size`` moves every stream's send window: retry sends that stalled.
    """

    max_concurrent_streams: int | None
    initial_window_size: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAcked(Event):
    """The peer acknowledged one of our PINGs."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionEnded(Event):
    """GOAWAY received (``remote``) or sent by us for an error; no new streams after it."""

    error_code: int
    reason: str
    last_stream_id: int | None
    remote: bool
