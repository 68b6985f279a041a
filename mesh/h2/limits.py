"""Per-connection limits of the HTTP/2 core (advertised settings and abuse counters)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one HTTP/2 connection may cost us; counters apply per ``window_seconds`` fixed window."""

    max_concurrent_streams: int = 128
    initial_window_size: int = 1 << 20
    connection_window_size: int = 1 << 24
    max_frame_size: int = 16384
    max_header_list_size: int = 65536
    max_header_block_bytes: int = 65536 + 16384
    max_continuation_frames: int = 32
    window_seconds: float = 10.0
    max_pings: int = 100
    max_settings: int = 100
    max_empty_data: int = 100
    max_idle_frames: int = 1000  # PRIORITY, GOAWAY, unknown types (plus 100 per stream opened)
    max_window_updates: int = 10_000
    max_resets: int = 200
    max_refused: int = 200
    max_pending_output: int = 4 << 20
    enable_connect_protocol: bool = True
    # Control frames the peer makes us queue (PING/SETTINGS ACKs, RST_STREAM) while not reading:
    # beyond max_pending_output + this, the connection ends with ENHANCE_YOUR_CALM.
    max_control_backlog: int = 64 << 10

    def __post_init__(self) -> None:
        if not 16384 <= self.max_frame_size <= (1 << 24) - 1:
            raise ValueError("max_frame_size must be within [16384, 2**24-1]")
        if not 0 < self.initial_window_size <= (1 << 31) - 1:
            raise ValueError("initial_window_size must be within [1, 2**31-1]")
        if not 65535 <= self.connection_window_size <= (1 << 31) - 1:
            raise ValueError("connection_window_size must be within [65535, 2**31-1]")
        if self.max_concurrent_streams < 0 or self.window_seconds <= 0:
            raise ValueError("max_concurrent_streams must be >= 0 and window_seconds > 0")
