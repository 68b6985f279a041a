"""Sans-IO HTTP/2 core: ``H2Endpoint`` wraps h2 with request validation and abuse limits."""

from .endpoint import H2Endpoint
from .errors import (
    ConnectionClosedError,
    ErrorCode,
    H2Error,
    MalformedHeadersError,
    StreamClosedError,
    StreamLimitReached,
)
from .events import (
    ConnectionEnded,
    DataReceived,
    Event,
    Headers,
    InformationalReceived,
    PingAcked,
    RequestReceived,
    ResponseReceived,
    SettingsChanged,
    StreamRejected,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)
from .limits import Limits

__all__ = [
    "ConnectionClosedError",
    "ConnectionEnded",
    "DataReceived",
    "ErrorCode",
    "Event",
    "H2Endpoint",
    "H2Error",
    "Headers",
    "InformationalReceived",
    "Limits",
    "MalformedHeadersError",
    "PingAcked",
    "RequestReceived",
    "ResponseReceived",
    "SettingsChanged",
    "StreamClosedError",
    "StreamLimitReached",
    "StreamRejected",
    "StreamReset",
    "TrailersReceived",
    "WindowOpened",
]
