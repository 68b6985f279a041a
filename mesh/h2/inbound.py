"""Turning h2's events into the endpoint's: validation, content-length, refusals, rapid reset.

Rules: a malformed request or one over our stream cap is refused (RST_STREAM + ``StreamRejected``)
and never delivered; an error found after a request was delivered resets it (``StreamReset`` with
``remote=False``) unless the request arrived in the same ``receive`` call, in which case its events
are withdrawn and it is reported as rejected; a stream opened and reset by the peer within one
``receive`` call is never reported (the upstream sees nothing of a rapid reset).
"""

from __future__ import annotations

import contextlib

import h2.events as h2e
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from .connection import HookedConnection
from .errors import MalformedHeadersError
from .events import (
    ConnectionEnded,
    DataReceived,
    Event,
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
from .headers import check_request, check_response, check_trailers
from .limits import Limits
from .scanner import FrameScanner, Violation

__all__ = ["StreamState", "Translator", "Violation"]

_PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR


class StreamState:
    """What the endpoint tracks per open stream."""

    __slots__ = ("expected", "final_sent", "last", "local_done", "method", "received", "remote_done")

    def __init__(self, now: float, expected: int | None = None, *, remote_done: bool = False) -> None:
        self.expected = expected  # content-length to check at END_STREAM; None when unchecked
        self.received = 0
        self.remote_done = remote_done
        self.local_done = False
        self.final_sent = False  # server: final response head sent (later headers are trailers)
        self.method = b""  # client: the request method (HEAD and CONNECT change body rules)
        self.last = now  # last progress: bytes received or sent on the stream


class Translator:
    """Mixin of ``H2Endpoint``: the inbound half of the state."""

    _h2: HookedConnection
    _client: bool
    _limits: Limits
    _scanner: FrameScanner
    _streams: dict[int, StreamState]
    _batch_new: set[int]
    _violation: Violation | None
    _goaway_sent: bool
    _goaway_last: int
    _goaway_received: bool

    def _translate(self, events: list[h2e.Event], out: list[Event], now: float) -> None:
        streams = self._streams
        for ev in events:
            if isinstance(ev, h2e.DataReceived):
                self._on_data(ev, out, now)
            elif isinstance(ev, h2e.RequestReceived):
                self._on_request(ev, out, now)
            elif isinstance(ev, h2e.ResponseReceived):
                self._on_response(ev, out, now)
            elif isinstance(ev, h2e.WindowUpdated):
                if not ev.stream_id:
                    out.append(WindowOpened(stream_id=None))
                elif ev.stream_id in streams:
                    out.append(WindowOpened(stream_id=ev.stream_id))
            elif isinstance(ev, h2e.TrailersReceived):
                self._on_trailers(ev, out, now)
            elif isinstance(ev, h2e.StreamReset):
                self._on_reset(ev, out, now)
            elif isinstance(ev, h2e.InformationalResponseReceived):
                self._on_informational(ev, out, now)
            elif isinstance(ev, h2e.RemoteSettingsChanged):
                mcs = ev.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                iws = ev.changed_settings.get(SettingCodes.INITIAL_WINDOW_SIZE)
                out.append(
                    SettingsChanged(
                        max_concurrent_streams=None if mcs is None else mcs.new_value,
                        initial_window_size=None if iws is None else iws.new_value,
                    )
                )
            elif isinstance(ev, h2e.PingAckReceived):
                out.append(PingAcked(data=ev.ping_data or b""))
            elif isinstance(ev, h2e.ConnectionTerminated):
                self._on_goaway(ev, out)
            # Others need nothing: StreamEnded (folded into end_stream), SettingsAcknowledged,
            # PingReceived (h2 answers), PriorityUpdated, UnknownFrameReceived, ALTSVC.

    # -- per event ----------------------------------------------------------------------------

    def _on_request(self, ev: h2e.RequestReceived, out: list[Event], now: float) -> None:
        sid: int = ev.stream_id
        end = ev.stream_ended is not None
        headers = ev.headers
        if self._goaway_sent and sid > self._goaway_last:  # after our GOAWAY: not processed
            self._reset_quiet(sid, ErrorCodes.REFUSED_STREAM)
            self._count_refusal(now)
            return
        try:
            method, expected = check_request(headers, connect_protocol=self._limits.enable_connect_protocol)
        except MalformedHeadersError as exc:
            self._reject(sid, _PROTOCOL_ERROR, str(exc), out, now)
            return
        if len(self._streams) >= self._limits.max_concurrent_streams:
            reason = f"max_concurrent_streams ({self._limits.max_concurrent_streams}) reached"
            self._reject(sid, ErrorCodes.REFUSED_STREAM, reason, out, now)
            return
        if end and expected:
            self._reject(sid, _PROTOCOL_ERROR, "content-length disagrees with the body", out, now)
            return
        if method == b"CONNECT":
            expected = None  # tunnel bytes, not a body
        self._streams[sid] = StreamState(now, expected, remote_done=end)
        self._batch_new.add(sid)
        out.append(RequestReceived(stream_id=sid, headers=headers, end_stream=end))

    def _on_response(self, ev: h2e.ResponseReceived, out: list[Event], now: float) -> None:
        sid: int = ev.stream_id
        st = self._streams.get(sid)
        if st is None:
            return
        st.last = now
        end = ev.stream_ended is not None
        try:
            status, expected = check_response(ev.headers)
        except MalformedHeadersError as exc:
            self._stream_error(sid, str(exc), out, now)
            return
        if st.method == b"CONNECT" and 200 <= status < 300:
            expected = None  # a tunnel: content-length means nothing (RFC 9110 section 9.3.6)
        elif st.method == b"HEAD" or status in (204, 304):
            expected = 0  # no body, whatever content-length says (RFC 9110 section 8.6)
        st.expected = expected
        if end and expected:
            self._stream_error(sid, "content-length disagrees with the body", out, now)
            return
        out.append(ResponseReceived(stream_id=sid, headers=ev.headers, end_stream=end))
        if end:
            self._remote_done(sid, st)

    def _on_informational(self, ev: h2e.InformationalResponseReceived, out: list[Event], now: float) -> None:
        sid: int = ev.stream_id
        if sid not in self._streams:
            return
        try:
            check_response(ev.headers)
        except MalformedHeadersError as exc:
            self._stream_error(sid, str(exc), out, now)
            return
        out.append(InformationalReceived(stream_id=sid, headers=ev.headers))

    def _on_data(self, ev: h2e.DataReceived, out: list[Event], now: float) -> None:
        sid: int = ev.stream_id
        st = self._streams.get(sid)
        length: int = ev.flow_controlled_length
        data: bytes = ev.data
        end = ev.stream_ended is not None
        if length and not data and not end:  # padding only: as empty (the scanner saw no payload)
            self._note(self._scanner.note_empty_data(now))
        if st is None:  # a stream we refused or reset: credit the connection window
            self._ack_quiet(sid, length)
            return
        st.last = now
        if st.expected is not None:
            st.received += len(data)
            if st.received > st.expected or (end and st.received != st.expected):
                self._ack_quiet(sid, length)
                self._stream_error(sid, "content-length disagrees with the body", out, now)
                return
        out.append(DataReceived(stream_id=sid, data=data, flow_controlled_length=length, end_stream=end))
        if end:
            self._remote_done(sid, st)

    def _on_trailers(self, ev: h2e.TrailersReceived, out: list[Event], now: float) -> None:
        sid: int = ev.stream_id
        st = self._streams.get(sid)
        if st is None:
            return
        st.last = now
        try:
            check_trailers(ev.headers)
        except MalformedHeadersError as exc:
            self._stream_error(sid, str(exc), out, now)
            return
        if st.expected is not None and st.received != st.expected:
            self._stream_error(sid, "content-length disagrees with the body", out, now)
            return
        out.append(TrailersReceived(stream_id=sid, headers=ev.headers))
        self._remote_done(sid, st)

    def _on_reset(self, ev: h2e.StreamReset, out: list[Event], now: float) -> None:
        sid: int = ev.stream_id
        if self._streams.pop(sid, None) is None:
            return
        if not ev.remote_reset:  # h2 reset it for a stream error the peer provoked
            self._note(self._scanner.note_reset(now))
        if sid in self._batch_new:  # opened and reset in one read: nobody saw it
            self._withdraw(sid, out)
            return
        out.append(StreamReset(stream_id=sid, error_code=int(ev.error_code), remote=bool(ev.remote_reset)))

    def _on_goaway(self, ev: h2e.ConnectionTerminated, out: list[Event]) -> None:
        self._goaway_received = True
        last: int = ev.last_stream_id or 0
        reason = (ev.additional_data or b"").decode("utf-8", "replace")
        out.append(
            ConnectionEnded(
                error_code=int(ev.error_code or 0), reason=reason, last_stream_id=last, remote=True
            )
        )
        if self._client:  # streams above last_stream_id were not processed: safe to retry
            for sid in sorted(s for s in self._streams if s > last):
                del self._streams[sid]
                out.append(StreamReset(stream_id=sid, error_code=ErrorCodes.REFUSED_STREAM, remote=True))

    # -- helpers ------------------------------------------------------------------------------

    def _reject(self, sid: int, code: int, reason: str, out: list[Event], now: float) -> None:
        """Refuse a request nobody has seen: RST_STREAM, ``StreamRejected``, count it."""
        self._reset_quiet(sid, code)
        out.append(StreamRejected(stream_id=sid, error_code=code, reason=reason))
        self._count_refusal(now)

    def _count_refusal(self, now: float) -> None:
        self._note(self._scanner.note_refused(now))

    def _note(self, violation: Violation | None) -> None:
        if violation is not None and self._violation is None:
            self._violation = violation

    def _stream_error(self, sid: int, reason: str, out: list[Event], now: float) -> None:
        """RST_STREAM(PROTOCOL_ERROR) on a tracked stream; withdraw it if not yet reported."""
        del self._streams[sid]
        if sid in self._batch_new:
            self._withdraw(sid, out)
            self._reject(sid, _PROTOCOL_ERROR, reason, out, now)
            return
        self._reset_quiet(sid, _PROTOCOL_ERROR)
        out.append(StreamReset(stream_id=sid, error_code=_PROTOCOL_ERROR, remote=False))
        self._note(self._scanner.note_reset(now))

    def _withdraw(self, sid: int, out: list[Event]) -> None:
        """Drop a stream's events from this batch, crediting the window its data used."""
        self._batch_new.discard(sid)
        keep: list[Event] = []
        for event in out:
            if getattr(event, "stream_id", None) != sid:
                keep.append(event)
            elif isinstance(event, DataReceived):
                self._ack_quiet(sid, event.flow_controlled_length)
        out[:] = keep

    def _remote_done(self, sid: int, st: StreamState) -> None:
        st.remote_done = True
        if st.local_done:
            del self._streams[sid]

    def _reset_quiet(self, sid: int, code: int) -> None:
        with contextlib.suppress(ProtocolError):
            self._h2.reset_stream(sid, code)

    def _ack_quiet(self, sid: int, length: int) -> None:
        if length > 0:
            with contextlib.suppress(ProtocolError, ValueError):
                self._h2.acknowledge_received_data(length, sid)
