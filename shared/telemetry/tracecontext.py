"""W3C Trace Context: parse, validate and propagate ``traceparent`` / ``tracestate``.

A malformed ``traceparent`` (wrong length, upper case, all-zero ids, version ``ff``) is ignored together
with its ``tracestate`` and a new trace starts, as the recommendation says. A proxy that makes a span
forwards the same trace id, its own span id as the parent, and the same sampled flag.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_CHARS = 512
_MEMBER_KEY = re.compile(
    r"^([a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})$"
)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One position in a trace: trace id, parent span id, sampled flag and vendor state."""

    trace_id: str
    span_id: str
    sampled: bool = False
    tracestate: str = ""

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value for this context."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def child(self) -> TraceContext:
        """The context a proxy forwards after making its own span: same trace, new span id, same flag."""
        return TraceContext(self.trace_id, new_span_id(), self.sampled, self.tracestate)

    def headers(self) -> list[tuple[str, str]]:
        """``traceparent`` (and ``tracestate`` when not empty) as header pairs."""
        out = [("traceparent", self.traceparent)]
        if self.tracestate:
            out.append(("tracestate", self.tracestate))
        return out


def new_trace_id() -> str:
    """A random, non-zero 128-bit trace id in lower-case hex."""
    while True:
        value = secrets.token_hex(16)
        if value != "0" * 32:
            return value


def new_span_id() -> str:
    """A random, non-zero 64-bit span id in lower-case hex."""
    while True:
        value = secrets.token_hex(8)
        if value != "0" * 16:
            return value


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace id, parent id, sampled) from a ``traceparent`` value, or None when it must be ignored."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    if version == "00" and rest:
        return None  # version 00 has exactly four fields
    return trace_id, span_id, bool(int(flags, 16) & 1)


def clean_tracestate(value: str | None) -> str:
    """``tracestate`` with invalid and duplicate members dropped, at most 32 members and 512 characters
    (members are dropped from the end, as the specification allows)."""
    if not value:
        return ""
    members: list[str] = []
    seen: set[str] = set()
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not _MEMBER_KEY.match(key) or not val or len(val) > 256 or key in seen:
            continue
        if any(ord(c) < 0x20 or ord(c) > 0x7E or c in ",=" for c in val):
            continue
        seen.add(key)
        members.append(item)
    while members and (
        len(members) > MAX_TRACESTATE_MEMBERS or len(",".join(members)) > MAX_TRACESTATE_CHARS
    ):
        members.pop()
    return ",".join(members)


def from_headers(headers: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) from header pairs (lower-case names). More than one ``traceparent``
    makes the context invalid: None, so that a new trace starts and the tracestate is dropped.
    Several ``tracestate`` headers are one list, combined in order (Trace Context 3.3.1)."""
    parents = [v for k, v in headers if k == "traceparent"]
    if len(parents) != 1:
        return None, None
    states = [v for k, v in headers if k == "tracestate"]
    return parents[0], ",".join(states) if states else None


def extract(
    traceparent: str | None, tracestate: str | None, *, sample: bool = True
) -> tuple[TraceContext, bool]:
    """The incoming context, or a new root one. Returns (context, continued) where ``continued`` says
    whether the caller's trace was valid and is continued. ``sample`` decides for new roots only."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return TraceContext(new_trace_id(), new_span_id(), sample, ""), False
    trace_id, span_id, sampled = parsed
    return TraceContext(trace_id, span_id, sampled, clean_tracestate(tracestate)), True
