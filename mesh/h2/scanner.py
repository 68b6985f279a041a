"""Frame scanner in front of h2: reads every 9-byte frame header, skips payloads, counts abuse.

It is stateful across chunk boundaries (a header or payload may be split anywhere) and never
buffers payload bytes: memory is O(1) per connection. Counters use fixed windows of
``Limits.window_seconds``; the clock is read once per ``scan`` call.
"""

from __future__ import annotations

import struct

from h2.errors import ErrorCodes

from .limits import Limits

__all__ = ["PREFACE", "FrameScanner", "Violation"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADER = struct.Struct(">HBBBL")  # length (16 + 8 bits), type, flags, stream id

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _WINDOW_UPDATE, _CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x5,
    0x6,
    0x8,
    0x9,
)
_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4

Violation = tuple[int, str]
"""(HTTP/2 error code for the GOAWAY, reason naming the limit)."""


class FrameScanner:
    """Counts what h2 does not: see module docstring. ``scan`` returns (bytes h2 may see, violation)."""

    __slots__ = (
        "_awaiting_settings",
        "_block_bytes",
        "_block_frames",
        "_empty_data",
        "_idle_frames",
        "_in_block",
        "_last_opened",
        "_limits",
        "_opened",
        "_partial",
        "_pings",
        "_preface_left",
        "_refused",
        "_resets",
        "_server",
        "_settings",
        "_skip",
        "_window_start",
        "_window_updates",
    )

    def __init__(self, limits: Limits, *, server: bool) -> None:
        self._limits = limits
        self._server = server
        self._preface_left = len(PREFACE) if server else 0
        self._awaiting_settings = server  # RFC 9113 3.4: the client preface ends with SETTINGS
        self._partial = b""
        self._skip = 0
        self._in_block = False
        self._block_frames = 0
        self._block_bytes = 0
        self._last_opened = 0  # highest stream id a HEADERS frame opened (server side)
        self._window_start = float("-inf")
        self._pings = self._settings = self._empty_data = 0
        self._window_updates = self._resets = self._refused = self._opened = 0
        self._idle_frames = 0

    def _tick(self, now: float) -> None:
        if now - self._window_start >= self._limits.window_seconds:
            self._window_start = now
            self._pings = self._settings = self._empty_data = 0
            self._window_updates = self._resets = self._refused = self._opened = 0
            self._idle_frames = 0

    def _too_many_resets(self) -> bool:
        """Over ``max_resets`` in the window AND more than half of the streams opened in it were reset:
        rapid reset looks like that; a busy client that cancels some of its requests does not."""
        if not self._server:  # rapid reset is a client's attack; a server may reset what it likes
            return False
        return self._resets > self._limits.max_resets and self._resets * 2 > self._opened

    def note_refused(self, now: float) -> Violation | None:
        """Count a stream we refused; a violation once over ``max_refused``."""
        self._tick(now)
        self._refused += 1
        if self._refused > self._limits.max_refused:
            return ErrorCodes.ENHANCE_YOUR_CALM, f"max_refused exceeded ({self._refused} refused streams)"
        return None

    def note_empty_data(self, now: float) -> Violation | None:
        """Count a DATA frame whose payload was padding only (no data bytes, no END_STREAM): the
        scanner does not read payloads, so the endpoint reports these; same limit as empty DATA."""
        self._tick(now)
        return self._count_empty_data()

    def _count_empty_data(self) -> Violation | None:
        self._empty_data += 1
        if self._empty_data > self._limits.max_empty_data:
            return ErrorCodes.ENHANCE_YOUR_CALM, f"max_empty_data exceeded ({self._empty_data})"
        return None

    def note_reset(self, now: float) -> Violation | None:
        """Count a stream error the peer provoked (MadeYouReset, CVE-2025-8671) as a reset."""
        self._tick(now)
        self._resets += 1
        if self._too_many_resets():
            return ErrorCodes.ENHANCE_YOUR_CALM, f"max_resets exceeded ({self._resets} resets)"
        return None

    def scan(self, data: bytes, now: float) -> tuple[int, Violation | None]:
        """Scan a chunk; on a violation, the count excludes the offending frame."""
        self._tick(now)
        n = len(data)
        i = 0
        if self._preface_left:
            i = min(self._preface_left, n)
            self._preface_left -= i
        if self._skip:
            if self._skip >= n - i:
                self._skip -= n - i
                return n, None
            i += self._skip
            self._skip = 0
        if self._partial:
            need = 9 - len(self._partial)
            if n - i < need:
                self._partial += data[i:]
                return n, None
            hi, lo, ftype, flags, sid = _HEADER.unpack(self._partial + data[i : i + need])
            self._partial = b""
            length = hi << 8 | lo
            bad = self._frame(length, ftype, flags, sid)
            if bad is not None:
                return 0, bad
            i += need + length
        unpack = _HEADER.unpack_from
        frame = self._frame
        max_frame = self._limits.max_frame_size
        max_block = min(max_frame, self._limits.max_header_block_bytes)
        while i + 9 <= n:
            hi, lo, ftype, flags, sid = unpack(data, i)
            length = hi << 8 | lo
            # Hot path: DATA with payload, or HEADERS closing its own block, outside a block.
            slow = self._in_block or self._awaiting_settings
            if ftype == _DATA and length and length <= max_frame and not slow:
                pass
            elif ftype == _HEADERS and flags & _END_HEADERS and length <= max_block and not slow:
                if sid > self._last_opened:
                    self._opened += 1
                    self._last_opened = sid
            else:
                bad = frame(length, ftype, flags, sid)
                if bad is not None:
                    return i, bad
            i += 9 + length
        if i > n:
            self._skip = i - n
        elif i < n:
            self._partial = bytes(data[i:])
        return n, None

    def _frame(self, length: int, ftype: int, flags: int, sid: int) -> Violation | None:
        """Account for one frame header; return a violation or None."""
        limits = self._limits
        if self._awaiting_settings:
            self._awaiting_settings = False
            if ftype != _SETTINGS or flags & _ACK or sid:
                return ErrorCodes.PROTOCOL_ERROR, "connection preface not followed by SETTINGS"
        if length > limits.max_frame_size:
            return ErrorCodes.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds max_frame_size"
        if self._in_block:
            if ftype != _CONTINUATION:
                return ErrorCodes.PROTOCOL_ERROR, "frame interleaved in a header block"
            self._block_frames += 1
            self._block_bytes += length
            if flags & _END_HEADERS:
                self._in_block = False
            if self._block_frames > limits.max_continuation_frames:
                return (
                    ErrorCodes.ENHANCE_YOUR_CALM,
                    f"max_continuation_frames exceeded ({self._block_frames} in one header block)",
                )
            if self._block_bytes > limits.max_header_block_bytes:
                return (
                    ErrorCodes.ENHANCE_YOUR_CALM,
                    f"max_header_block_bytes exceeded ({self._block_bytes} bytes in one header block)",
                )
            return None
        if ftype == _DATA:
            if not length and not flags & _END_STREAM:
                return self._count_empty_data()
        elif ftype in (_HEADERS, _PUSH_PROMISE):
            if ftype == _HEADERS and sid > self._last_opened:
                # a stream id above every earlier one opens a stream (RFC 9113 5.1.1); trailers and
                # HEADERS on a stream already seen do not, so they cannot dilute the reset ratio
                self._opened += 1
                self._last_opened = sid
            if length > limits.max_header_block_bytes:
                return (
                    ErrorCodes.ENHANCE_YOUR_CALM,
                    f"max_header_block_bytes exceeded ({length} bytes in one header block)",
                )
            if not flags & _END_HEADERS:
                self._in_block = True
                self._block_frames = 0
                self._block_bytes = length
        elif ftype == _WINDOW_UPDATE:
            self._window_updates += 1
            if self._window_updates > limits.max_window_updates:
                return (
                    ErrorCodes.ENHANCE_YOUR_CALM,
                    f"max_window_updates exceeded ({self._window_updates})",
                )
        elif ftype == _RST_STREAM:
            self._resets += 1
            if self._too_many_resets():
                return ErrorCodes.ENHANCE_YOUR_CALM, f"max_resets exceeded ({self._resets} RST_STREAM)"
        elif ftype == _PING:
            self._pings += 1
            if self._pings > limits.max_pings:
                return ErrorCodes.ENHANCE_YOUR_CALM, f"max_pings exceeded ({self._pings})"
        elif ftype == _SETTINGS:
            if flags & _ACK and length:
                return ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"
            self._settings += 1  # ACKs too: we send a few SETTINGS, so a flood of ACKs is unsolicited
            if self._settings > limits.max_settings:
                return ErrorCodes.ENHANCE_YOUR_CALM, f"max_settings exceeded ({self._settings})"
        elif ftype == _CONTINUATION:
            return ErrorCodes.PROTOCOL_ERROR, "CONTINUATION without an open header block"
        else:
            # PRIORITY (deprecated, RFC 9113 5.3.2), GOAWAY and unknown types: work for nothing.
            # Budget: max_idle_frames, plus 100 per stream opened in the window (Envoy's per-stream
            # PRIORITY allowance), so browsers that still send PRIORITY per stream pass
            self._idle_frames += 1
            if self._idle_frames > limits.max_idle_frames + 100 * self._opened:
                return ErrorCodes.ENHANCE_YOUR_CALM, f"max_idle_frames exceeded ({self._idle_frames})"
        return None
