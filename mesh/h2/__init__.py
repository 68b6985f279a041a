"""Sans-IO HTTP/2 core: ``H2Endpoint`` wraps h2 with request validation and abuse limits.

The transport's loop, per connection::

    ep = H2Endpoint(client_side=False, limits=Limits())
    ep.initiate()
    # socket readable:  for event in ep.receive(chunk): ...   (never raises for peer misbehaviour)
    # socket writable:  write ep.data_to_send()             (take it only when the socket can)
    # after ConnectionEnded(remote=False) or when ep.is_closed: flush data_to_send(), then close

Request heads arrive validated (``RequestReceived``); refused ones arrive as ``StreamRejected`` and
must not be forwarded. Bodies: ``send_data`` returns how much it took (flow control and the
output bound); retry the rest after ``WindowOpened``/``SettingsChanged`` or after draining
``data_to_send``. Give receive window back with ``ack`` once the consumer has taken the bytes.
Outbound headers are checked like inbound ones: strip hop-by-hop fields (Connection and what
it names, Keep-Alive, TE other than ``trailers``, Transfer-Encoding, Upgrade, Proxy-Connection)
before ``send_*``. Inbound cookie crumbs are not joined: an HTTP/1.1 forwarder joins several
``cookie`` fields with ``"; "``.
"""

from .endpoint import H2Endpoint
from .errors import (
    ConnectionClosedError,
    ErrorCode,
    H2Error,
    HeaderListTooLarge,
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
    "HeaderListTooLarge",
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
