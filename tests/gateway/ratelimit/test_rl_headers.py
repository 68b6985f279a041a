"""RateLimit-Policy / RateLimit / Retry-After formatting, checked against the STANDARDS text."""

from __future__ import annotations

import re

import pytest
from ratelimit_testlib import REPO, make_doc

from gateway.ratelimit.limiter import LimitState, RateDecision, _plan

# The examples of STANDARDS.md, section "Rate-limit responses" (checked below to still be there).
POLICY_EXAMPLE = '"name";q=100;w=60'
STATE_EXAMPLE = '"name";r=42;t=17'


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no section {title!r}"
    return match.group(0)


def test_examples_are_those_of_standards() -> None:
    standards = REPO.parent / "shared" / "STANDARDS.md"
    if not standards.exists():
        pytest.skip(f"{standards} not present")
    section = _section(standards.read_text(), "Rate-limit responses")
    assert f"`RateLimit-Policy: {POLICY_EXAMPLE}`" in section
    assert f"`RateLimit: {STATE_EXAMPLE}`" in section
    assert "Retry-After: <seconds>" in section


def test_single_limit_matches_the_standards_example() -> None:
    decision = RateDecision(True, (LimitState("name", 100, 60, 42, 17),), 0, "redis")
    assert decision.headers() == [("ratelimit-policy", POLICY_EXAMPLE), ("ratelimit", STATE_EXAMPLE)]


def test_denied_adds_retry_after_in_seconds() -> None:
    decision = RateDecision(False, (LimitState("name", 100, 60, 0, 17),), 17, "redis")
    headers = dict(decision.headers())
    assert headers["retry-after"] == "17"
    assert headers["ratelimit"] == '"name";r=0;t=17'
    assert set(headers) == {"ratelimit-policy", "ratelimit", "retry-after"}


def test_allowed_has_no_retry_after() -> None:
    decision = RateDecision(True, (LimitState("name", 100, 60, 99, 1),), 0, "redis")
    assert "retry-after" not in dict(decision.headers())


def test_several_limits_are_one_comma_list_in_document_order() -> None:
    states = (LimitState("api-1s", 10, 1, 3, 1), LimitState("api-1d", 1000, 86400, 900, 8640))
    headers = dict(RateDecision(True, states, 0, "redis").headers())
    assert headers["ratelimit-policy"] == '"api-1s";q=10;w=1, "api-1d";q=1000;w=86400'
    assert headers["ratelimit"] == '"api-1s";r=3;t=1, "api-1d";r=900;t=8640'


def test_header_values_are_valid_structured_field_lists() -> None:
    """Each member: sf-string then ;key=integer parameters (RFC 9651), no stray characters."""
    states = (LimitState("a-1s", 10, 1, 3, 1), LimitState('we"ird\\nä\n', 5, 2, 0, 2))
    member = r'"(?:[ !#-\[\]-~]|\\["\\])*"(?:;[a-z]+=\d+)+'
    for name, value in RateDecision(False, states, 2, "redis").headers():
        if name == "retry-after":
            assert value == "2"
            continue
        assert re.fullmatch(rf"{member}(?:, {member})*", value), value
    policy = dict(RateDecision(True, states, 0, "redis").headers())["ratelimit-policy"]
    assert '"we\\"ird\\\\n??";q=5;w=2' in policy


def test_fallback_allow_states_no_remaining_it_does_not_know() -> None:
    decision = RateDecision(True, (LimitState("name", 100, 60, 100, 0),), 0, "fallback-allow")
    assert decision.headers() == [("ratelimit-policy", POLICY_EXAMPLE)]


def test_fallback_deny_says_retry_after_1() -> None:
    decision = RateDecision(False, (LimitState("name", 100, 60, 0, 1),), 1, "fallback-deny")
    assert dict(decision.headers())["retry-after"] == "1"


def test_limit_names_windows_and_quotas_from_the_document() -> None:
    plan = _plan(make_doc([(10, "1s"), (1000, "1d"), (5, "1500ms", 8)], name="per-key"))
    assert plan.names == ("per-key-1s", "per-key-1d", "per-key-1500ms")
    assert plan.quotas == (10, 1000, 5)
    assert plan.windows == (1, 86400, 2)  # ceil of per
    assert plan.bursts == (10, 1000, 8)
    same_per = _plan(make_doc([(10, "1s"), (20, "1s", 40)], name="dup"))
    assert same_per.names == ("dup-0", "dup-1")  # readable names would collide
