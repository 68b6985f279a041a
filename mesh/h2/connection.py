"""The ``h2.connection.H2Connection`` subclass the endpoint drives, with a few narrow hooks.

h2 (pinned >= 4.4.1) keeps these internals stable; ``tests/mesh/h2`` pins each hook's behaviour:
- ``_receive_frame``: h2's own logic minus its eager ``repr(frame)`` for a trace log (that repr
  hex-encodes whole DATA payloads: ~50 us per 16 KiB frame); collects events frame by frame, so
  events decoded before a connection error are not lost; maps HPACK decoding failures to
  COMPRESSION_ERROR (RFC 9113 section 4.3).
- ``_receive_goaway_frame``: a GOAWAY does not close the h2 state machine (h2 issue #1181), so
  streams at or below its last stream id can finish; no new streams are opened by the endpoint.
- ``_begin_new_stream``: streams skip h2's content-length tracking, which raises a connection
  error; the endpoint checks content-length itself and answers with a stream error.
- ``send_goaway_frame``: a graceful GOAWAY that leaves the state machine open.
- ``_terminate_connection``: h2 queues no GOAWAY of its own on a protocol error; the endpoint
  sends it, with the last stream it actually delivered.
- hpack's module logger: it logs every header it codes at DEBUG (22 calls per proxied request and
  side, ~3% of a sidecar's CPU even with DEBUG off: each is a call and a level check); replaced by
  one that drops DEBUG, whatever the logging configuration. Header values (tokens) never reach a log.
- ``encoder``: ``MeshEncoder`` (``encoder.py``): no Huffman coding, and no indexing of values that
  rarely repeat (request and trace ids, ``:path``...).
- ``MAX_CLOSED_STREAMS``: h2 remembers how each of the last 65,536 closed streams ended (~130
  bytes each: ~8.5 MiB per connection and side, which a long-lived sidecar connection fills in
  minutes and which looked like a leak in the soak test); here the last 1,024.
  A frame on a closed stream is a stream error (RST_STREAM STREAM_CLOSED, see the endpoint)
  whether or not the stream is still remembered.
"""

from __future__ import annotations

from typing import Any

import hpack.hpack
import hpack.table
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, Event
from h2.exceptions import DenialOfServiceError, ProtocolError, StreamClosedError, StreamIDTooLowError
from h2.stream import H2Stream
from hpack.exceptions import HPACKError
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame

from .encoder import MeshEncoder
from .errors import ErrorCode

__all__ = ["HookedConnection"]


class _NoDebugLog:
    """Stands in for hpack's module loggers (see the module docstring)."""

    @staticmethod
    def debug(*args: object, **kwargs: object) -> None:
        return None


hpack.hpack.log = _NoDebugLog()  # type: ignore[assignment]
hpack.table.log = _NoDebugLog()  # type: ignore[assignment]


class _UncountedStream(H2Stream):
    """An h2 stream whose content-length the endpoint checks instead (as a stream error)."""

    def _initialize_content_length(self, headers: Any) -> None:
        return None

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        return None


class HookedConnection(H2Connection):
    """``H2Connection`` plus the hooks listed in the module docstring."""

    MAX_CLOSED_STREAMS = 1024  # closed streams a connection remembers (h2's default: 65,536)

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        self.encoder = MeshEncoder()
        self.collected: list[Event] = []

    @property
    def pending(self) -> int:
        """Bytes queued for the socket."""
        return len(self._data_to_send)

    def _receive_frame(self, frame: Frame) -> list[Event]:
        events: list[Event]
        try:
            try:
                frames, events = self._frame_dispatch_table[frame.__class__](frame)
            except StreamClosedError as exc:
                if not self._stream_is_closed_by_reset(exc.stream_id):
                    raise
                self._prepare_for_sending([RstStreamFrame(exc.stream_id, error_code=exc.error_code)])
                events = exc._events
            except StreamIDTooLowError as exc:
                if self._stream_is_closed_by_reset(exc.stream_id):
                    rst = RstStreamFrame(exc.stream_id, error_code=ErrorCode.STREAM_CLOSED)
                    self._prepare_for_sending([rst])
                    events = []
                elif self._stream_is_closed_by_end(exc.stream_id):
                    raise StreamClosedError(exc.stream_id) from exc
                else:
                    raise
            else:
                self._prepare_for_sending(frames)
        except ProtocolError as exc:
            if isinstance(exc.__cause__, HPACKError) and not isinstance(exc, DenialOfServiceError):
                exc.error_code = ErrorCode.COMPRESSION_ERROR
            raise
        if events:
            self.collected += events
        return []

    def _receive_rst_stream_frame(self, frame: RstStreamFrame) -> tuple[list[Frame], list[Event]]:
        """RST_STREAM on an idle stream is a connection error (RFC 9113 5.1); h2 ignores it once the
        stream id is not in its table, so a stream beyond the highest one opened is refused here."""
        sid = frame.stream_id
        ours = (sid % 2 == 0) != self.config.client_side  # even ids are the server's
        highest = self.highest_outbound_stream_id if ours else self.highest_inbound_stream_id
        if sid > (highest or 0):
            raise ProtocolError(f"RST_STREAM on idle stream {sid}")
        return super()._receive_rst_stream_frame(frame)

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        event = ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _UncountedStream
        return stream

    def _terminate_connection(self, error_code: Any) -> None:
        return None

    def send_goaway_frame(self, error_code: int, last_stream_id: int, debug: bytes = b"") -> None:
        """Queue a GOAWAY without closing the state machine (graceful shutdown)."""
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code, additional_data=debug)
        self._data_to_send += frame.serialize()
