"""W3C Trace Context handling, per ../shared/STANDARDS.md."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.telemetry.tracecontext import clean_tracestate, extract, parse_traceparent

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_valid_traceparent_is_parsed() -> None:
    assert parse_traceparent(GOOD) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)


@pytest.mark.parametrize(
    "bad",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 with more fields
        "",
        "garbage",
    ],
)
def test_malformed_traceparent_starts_a_new_trace_and_drops_tracestate(bad: str) -> None:
    ctx, continued = extract(bad, "vendor=value")
    assert not continued
    assert ctx.tracestate == ""
    assert parse_traceparent(ctx.traceparent) is not None


def test_future_version_with_more_fields_is_accepted() -> None:
    assert parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more") is not None


def test_child_keeps_trace_and_flag_with_a_new_span() -> None:
    ctx, continued = extract(GOOD, "a=1,b=2")
    child = ctx.child()
    assert continued and child.trace_id == ctx.trace_id and child.sampled
    assert child.span_id != ctx.span_id
    assert dict(child.headers())["tracestate"] == "a=1,b=2"


def test_tracestate_keeps_32_members_and_512_characters() -> None:
    many = ",".join(f"k{i}=v" for i in range(40))
    assert len(clean_tracestate(many).split(",")) == 32
    long = ",".join(f"k{i}={'x' * 100}" for i in range(8))
    assert len(clean_tracestate(long)) <= 512
    assert clean_tracestate(long).startswith("k0=")


def test_tracestate_drops_invalid_and_duplicate_members() -> None:
    assert clean_tracestate("a=1,BAD=2,a=3,,c=,d=4") == "a=1,d=4"


@given(st.text(max_size=80))
def test_any_text_is_either_parsed_or_ignored_never_raises(text: str) -> None:
    result = parse_traceparent(text)
    assert result is None or len(result[0]) == 32
