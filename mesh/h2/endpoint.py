"""``H2Endpoint``: one HTTP/2 connection, sans-IO (bytes in, events out, bytes to send).

Call ``data_to_send()`` only when the socket can take more: ``pending_output`` then measures how
far the peer is behind, which bounds ``send_data`` (back-pressure) and the control frames a
non-reading peer can make us queue.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from h2.config import H2Configuration
from h2.exceptions import ProtocolError, TooManyStreamsError
from h2.settings import SettingCodes, Settings
from hpack import NeverIndexedHeaderTuple

from .connection import HookedConnection
from .errors import (
    ConnectionClosedError,
    ErrorCode,
    H2Error,
    HeaderListTooLarge,
    MalformedHeadersError,
    StreamClosedError,
    StreamLimitReached,
)
from .events import ConnectionEnded, Event, Headers
from .headers import check_request, check_response, check_trailers
from .inbound import StreamState, Translator, Violation
from .limits import Limits
from .scanner import FrameScanner

__all__ = ["H2Endpoint"]

_MAX_STREAM_ID = (1 << 31) - 1
_SECRET = frozenset((b"authorization", b"proxy-authorization"))
_SENSITIVE = _SECRET | {b"cookie"}


def _never_index(headers: Headers) -> Headers:
    """Keep credentials out of the HPACK dynamic table (RFC 7541 section 7.1.3), as h2 does."""
    if _SENSITIVE.isdisjoint(dict(headers)):
        return headers
    return [
        NeverIndexedHeaderTuple(n, v) if n in _SECRET or (n == b"cookie" and len(v) < 20) else (n, v)
        for n, v in headers
    ]


class H2Endpoint(Translator):
    """One HTTP/2 connection; ``receive`` never raises for peer misbehaviour."""

    def __init__(
        self,
        *,
        client_side: bool,
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared safely
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,  # checked here before h2 touches the HPACK state
            normalize_outbound_headers=False,
        )
        self._h2 = HookedConnection(config)
        self._client = client_side
        self._limits = limits
        self._clock = clock
        self._scanner = FrameScanner(limits, server=not client_side)
        self._streams: dict[int, StreamState] = {}
        self._batch_new: set[int] = set()
        self._violation: Violation | None = None
        self._stopped = False
        self._goaway_sent = False
        self._goaway_last = _MAX_STREAM_ID
        self._goaway_received = False
        self._last_delivered = 0  # server: highest stream whose request was delivered
        self._ping_count = 0
        self._advertised: dict[SettingCodes | int, int] = {
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            SettingCodes.ENABLE_PUSH: 0,
        }
        if not client_side and limits.enable_connect_protocol:
            self._advertised[SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        # h2 would answer a stream over the cap with a connection error before decoding its
        # headers; it gets a huge cap and the endpoint refuses such streams with REFUSED_STREAM.
        self._h2.local_settings = self._settings(_MAX_STREAM_ID)
        self._h2.max_inbound_frame_size = limits.max_frame_size
        self._h2.decoder.max_header_list_size = limits.max_header_list_size

    def _settings(self, max_streams: int) -> Settings:
        values = dict(self._advertised)
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = max_streams
        return Settings(client=self._client, initial_values=values)  # type: ignore[arg-type]

    # -- connection ---------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface, our SETTINGS and the connection WINDOW_UPDATE."""
        h2 = self._h2
        h2.local_settings = self._settings(self._limits.max_concurrent_streams)
        h2.initiate_connection()
        h2.local_settings = self._settings(_MAX_STREAM_ID)
        increment = self._limits.connection_window_size - 65535
        if increment > 0:
            h2.increment_flow_control_window(increment)

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the socket; return events. Misbehaviour ends in ``ConnectionEnded``."""
        if self._stopped or not data:
            return []
        now = self._clock()
        ok, violation = self._scanner.scan(data, now)
        h2 = self._h2
        error: Violation | None = None
        if ok:
            try:
                h2.receive_data(data if ok == len(data) else data[:ok])
            except ProtocolError as exc:
                error = int(exc.error_code), f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # an h2 failure on hostile input must not escape
                error = ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
        out: list[Event] = []
        if h2.collected:
            collected = h2.collected
            h2.collected = []
            try:
                self._translate(collected, out, now)
            except Exception as exc:  # a bug here must cost one connection, not the process
                error = error or (ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        if error is None:
            error = violation or self._violation
        if error is None and h2.pending > self._limits.max_pending_output + self._limits.max_control_backlog:
            error = ErrorCode.ENHANCE_YOUR_CALM, "max_pending_output exceeded: the peer does not read"
        if error is not None:
            self._end(error, out)
        if self._batch_new:
            self._last_delivered = max(self._batch_new)
            self._batch_new.clear()
        return out

    def _end(self, error: Violation, out: list[Event]) -> None:
        """Withdraw requests opened in this read, send GOAWAY, stop reading, report it."""
        code, reason = error
        new = self._batch_new
        if new:
            out[:] = [e for e in out if getattr(e, "stream_id", None) not in new]
            for sid in new:
                self._streams.pop(sid, None)
            new.clear()
        last = self._last_delivered
        with contextlib.suppress(ProtocolError):  # allowed in every state; belt and braces
            self._h2.close_connection(code, additional_data=reason.encode()[:256], last_stream_id=last)
        self._stopped = True
        out.append(ConnectionEnded(error_code=int(code), reason=reason, last_stream_id=last, remote=False))

    def data_to_send(self) -> bytes:
        """Take everything queued for the socket."""
        return self._h2.data_to_send()

    def ping(self, data: bytes | None = None) -> None:
        """Send a PING (8 bytes; default: a counter); ``PingAcked`` reports the answer."""
        self._check_open()
        if data is None:
            self._ping_count += 1
            data = self._ping_count.to_bytes(8, "big")
        self._h2.ping(data)

    def goaway(self, error_code: int = 0, reason: str = "") -> None:
        """Graceful with NO_ERROR (streams up to the last processed one finish); abortive otherwise."""
        if self._stopped:
            return
        h2 = self._h2
        last = min(self._last_delivered, self._goaway_last)
        if error_code:
            h2.close_connection(error_code, additional_data=reason.encode()[:256], last_stream_id=last)
            self._stopped = True
            return
        h2.send_goaway_frame(0, last, reason.encode()[:256])
        self._goaway_sent = True
        self._goaway_last = last

    @property
    def is_closed(self) -> bool:
        """True once nothing more can happen: close the socket after flushing ``data_to_send``."""
        return self._stopped or ((self._goaway_sent or self._goaway_received) and not self._streams)

    @property
    def open_streams(self) -> int:
        """Streams open or half-closed (they count toward MAX_CONCURRENT_STREAMS)."""
        return len(self._streams)

    @property
    def available_streams(self) -> int:
        """Client: how many more streams ``send_request`` may open now."""
        if self._stopped or self._goaway_sent or self._goaway_received or not self._client:
            return 0
        h2 = self._h2
        ids_left = (_MAX_STREAM_ID - h2.highest_outbound_stream_id) // 2
        return max(0, min(h2.remote_settings.max_concurrent_streams - len(self._streams), ids_left))

    @property
    def pending_output(self) -> int:
        """Bytes queued and not yet taken by ``data_to_send``."""
        return self._h2.pending

    def idle_streams(self, max_idle: float, *, waiting_only: bool = False) -> list[int]:
        """Streams with nothing received and nothing sent for ``max_idle`` seconds (the caller resets
        them); with ``waiting_only``, only those that wait on the peer: it has not finished sending (a
        request body that stalls), or our response is begun and its window is shut (a peer that does
        not read), as opposed to a request waiting for a slow answer."""
        now = self._clock()
        return [
            sid
            for sid, st in self._streams.items()
            if now - st.last >= max_idle
            and not (waiting_only and st.remote_done and not (st.final_sent and self.window(sid) <= 0))
        ]

    # -- streams ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._stopped:
            raise ConnectionClosedError("connection closed")

    def _stream(self, stream_id: int) -> StreamState:
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None or st.local_done:
            raise StreamClosedError(f"stream {stream_id} is closed")
        return st

    def send_request(self, headers: Headers, *, end_stream: bool = False) -> int:
        """Client: open a stream with a validated request head; return its id."""
        if not self._client:
            raise H2Error("send_request is for the client side")
        self._check_open()
        if self._goaway_received or self._goaway_sent:
            raise ConnectionClosedError("GOAWAY: no new streams on this connection")
        if self.available_streams <= 0:
            raise StreamLimitReached("peer MAX_CONCURRENT_STREAMS reached")
        connect = bool(self._h2.remote_settings.enable_connect_protocol)
        method, _ = check_request(headers, connect_protocol=connect)
        h2 = self._h2
        limit = h2.remote_settings.max_header_list_size
        if limit is not None:
            size = sum(len(name) + len(value) + 32 for name, value in headers)
            if size > limit:
                raise HeaderListTooLarge(f"request header list of {size} bytes; the peer accepts {limit}")
        try:
            stream_id: int = h2.get_next_available_stream_id()
            h2.send_headers(stream_id, _never_index(headers), end_stream=end_stream)
        except TooManyStreamsError as exc:  # pragma: no cover - available_streams checked above
            raise StreamLimitReached(str(exc)) from exc
        except ProtocolError as exc:  # pragma: no cover - state checked above
            raise H2Error(str(exc), int(exc.error_code)) from exc
        st = StreamState(self._clock())
        st.method = method
        self._streams[stream_id] = st
        if end_stream:
            st.local_done = True
        return stream_id

    def send_headers(self, stream_id: int, headers: Headers, *, end_stream: bool = False) -> None:
        """Send a response head (1xx allowed first), or trailers (``end_stream`` required)."""
        st = self._stream(stream_id)
        if self._client or st.final_sent:
            if not end_stream:
                raise MalformedHeadersError("trailers must end the stream")
            check_trailers(headers)
        else:
            status, _ = check_response(headers)
            if status < 200:
                if end_stream:
                    raise MalformedHeadersError("a 1xx response cannot end the stream")
            else:
                st.final_sent = True
        try:
            self._h2.send_headers(stream_id, _never_index(headers), end_stream=end_stream)
        except ProtocolError as exc:  # pragma: no cover - state checked above
            raise StreamClosedError(str(exc)) from exc
        st.last = self._clock()
        if end_stream:
            self._local_done(stream_id, st)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> int:
        """Queue what the flow-control window and the output bound allow; return bytes accepted."""
        st = self._stream(stream_id)
        h2 = self._h2
        size = len(data)
        n = 0
        if size:
            room = self._limits.max_pending_output - h2.pending
            room = min(room, h2.local_flow_control_window(stream_id))
            if room <= 0:
                return 0
            n = size if size <= room else room
        elif not end_stream:
            return 0  # an empty DATA frame without END_STREAM is what floods are made of
        frame = h2.max_outbound_frame_size
        done = end_stream and n == size
        try:
            if n <= frame:
                h2.send_data(stream_id, data if n == size else data[:n], end_stream=done)
            else:
                view = memoryview(data)
                for off in range(0, n, frame):
                    stop = min(off + frame, n)
                    h2.send_data(stream_id, view[off:stop], end_stream=done and stop == n)
        except ProtocolError as exc:  # pragma: no cover - state checked above
            raise StreamClosedError(str(exc)) from exc
        if n:
            st.last = self._clock()  # progress outbound (idle_streams)
        if done:
            self._local_done(stream_id, st)
        return n

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream with an empty DATA frame."""
        st = self._stream(stream_id)
        try:
            self._h2.end_stream(stream_id)
        except ProtocolError as exc:  # pragma: no cover - state checked above
            raise StreamClosedError(str(exc)) from exc
        self._local_done(stream_id, st)

    def window(self, stream_id: int) -> int:
        """How many bytes ``send_data`` would accept now."""
        st = self._streams.get(stream_id)
        if st is None or st.local_done or self._stopped:
            return 0
        room = self._limits.max_pending_output - self._h2.pending
        return max(0, min(room, self._h2.local_flow_control_window(stream_id)))

    def reset(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        """Reset a stream (no event); a stream already gone is ignored."""
        if self._streams.pop(stream_id, None) is not None and not self._stopped:
            self._reset_quiet(stream_id, error_code)

    def ack(self, stream_id: int, flow_controlled_length: int) -> None:
        """Give receive window back once the consumer took the bytes; closed streams credit the
        connection window only."""
        if flow_controlled_length > 0 and not self._stopped:
            with contextlib.suppress(ProtocolError, ValueError):
                self._h2.acknowledge_received_data(flow_controlled_length, stream_id)

    def _local_done(self, stream_id: int, st: StreamState) -> None:
        st.local_done = True
        if st.remote_done:
            del self._streams[stream_id]
