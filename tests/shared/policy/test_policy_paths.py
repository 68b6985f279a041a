"""Path normalization: a table of encoding tricks, and Hypothesis properties (CVE-2021-31920 class)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_testlib import load_set, policy, svc

from shared.policy.engine import PolicyEngine
from shared.policy.paths import normalize_path
from shared.policy.request import Request


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/orders/42", "/orders/42"),
        ("/admin%2F..", "/"),
        ("/admin%2f../x", "/x"),
        ("/orders/..%2Fadmin", "/admin"),
        ("/orders/%2e%2e/admin", "/admin"),
        ("//admin", "/admin"),
        ("///admin//users", "/admin/users"),
        ("/./admin", "/admin"),
        ("/x/../admin", "/admin"),
        ("/x/y/../../admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/%41dmin", "/Admin"),
        ("/\\admin", "/admin"),
        ("/x\\..\\admin", "/admin"),
        ("/x%5C..%5Cadmin", "/admin"),
        ("/admin/.", "/admin/"),
        ("/admin/", "/admin/"),
        ("/admin/x/..", "/admin/"),
        ("/admin?x=1", "/admin"),
        ("/admin?next=/../../etc", "/admin"),
        ("/admin#frag", "/admin"),
        ("/admin/%3Fx", None),
        ("/..", "/"),
        ("/../../admin", "/admin"),
        ("/%2e%2e/%2e%2e/admin", "/admin"),
        ("/caf%C3%A9", "/café"),
        ("/café", "/café"),
        ("/a%ffb", None),
        ("/a%c3", None),
        ("/a%00b", None),
        ("/a\x00b", None),
        ("/a%0ab", None),
        ("/a\tb", None),
        ("/a%7f", None),
        ("/%2561dmin", None),
        ("/%252e%252e/admin", None),
        ("admin", None),
        ("\\admin", None),
        ("http://host/admin", None),
        ("*", None),
        ("", None),
        ("/50%off", "/50%off"),
    ],
)
def test_normalize_path_table(raw: str, expected: str | None) -> None:
    assert normalize_path(raw) == expected


# --- Hypothesis -----------------------------------------------------------------------------------

_SEGMENT_CHARS = st.sampled_from(
    [*"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~", "é", "ü"]
)
segments = st.text(_SEGMENT_CHARS, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
safe_paths = st.builds(
    lambda segs, trailing: "/" + "/".join(segs) + ("/" if trailing and segs else ""),
    st.lists(segments, min_size=0, max_size=6),
    st.booleans(),
)


def _percent_encode(text: str, mask: list[bool]) -> str:
    out = []
    for i, ch in enumerate(text):
        if mask[i % len(mask)] if mask else False:
            out.append("".join(f"%{b:02X}" if i % 2 else f"%{b:02x}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


@st.composite
def tricked(draw: st.DrawFn, path: str) -> str:
    """``path`` rewritten with encoding tricks that a correct normalizer must see through."""
    segs = path.strip("/").split("/") if path.strip("/") else []
    trailing = path.endswith("/") and bool(segs)
    pieces: list[str] = []
    for seg in segs:
        # Before each segment: nothing, `./`, `junk/../`, or extra slashes.
        for _ in range(draw(st.integers(0, 2))):
            pieces.append(draw(st.sampled_from([".", "", "%2e", "%2E"])))
            if draw(st.booleans()):
                pieces.extend([draw(segments), draw(st.sampled_from(["..", "%2e%2e", ".%2E"]))])
        pieces.append(seg)
    # Percent-encode some characters of the segments (upper- or lower-case hex); separators are below.
    mask = draw(st.lists(st.booleans(), min_size=1, max_size=8))
    joined = ""
    for i, piece in enumerate(pieces):
        # The first separator keeps a literal leading `/` (anything else is not origin-form).
        first = ["/", "//", "/./", "/%2F", "/\\"]
        later = ["/", "/", "//", "\\", "%2F", "%2f", "%5C", "/./"]
        sep = draw(st.sampled_from(first if i == 0 else later))
        joined += sep + (piece if "%" in piece else _percent_encode(piece, mask[i:] + mask[:i]))
    if not joined:
        joined = draw(st.sampled_from(["/", "//", "/.", "/./", "/%2e"]))
    elif trailing:
        joined += draw(st.sampled_from(["/", "/.", "//", "/%2e", "%2F"]))
    query = draw(st.sampled_from(["", "?", "?a=/../admin", "#x", "?q=%2F#f"]))
    return joined + query


@st.composite
def path_and_trick(draw: st.DrawFn) -> tuple[str, str]:
    path = draw(safe_paths)
    return path, draw(tricked(path))


#: Raw request paths made of the pieces encoding tricks are built from: dots, slashes, backslashes,
#: percent-escapes of any byte, and double-encoded escapes (``%25XX``).
_TOKENS = st.one_of(
    st.sampled_from(["/", "/", ".", "..", "a", "é", "\\", "%", "?", "#", "2", "e", "F"]),
    st.integers(0, 255).map(lambda b: f"%{b:02x}"),
    st.integers(0, 255).map(lambda b: f"%25{b:02X}"),
)
raw_paths = st.lists(_TOKENS, max_size=12).map(lambda tokens: "/" + "".join(tokens))


@settings(max_examples=200, deadline=None)
@given(raw_paths)
def test_normalize_is_idempotent(raw: str) -> None:
    once = normalize_path(raw)
    if once is not None:
        assert normalize_path(once) == once


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30).map(lambda s: "/" + s))
def test_normalize_is_idempotent_on_arbitrary_text(raw: str) -> None:
    once = normalize_path(raw)
    if once is not None:
        assert normalize_path(once) == once


@settings(max_examples=200, deadline=None)
@given(safe_paths)
def test_safe_paths_are_their_own_normal_form(path: str) -> None:
    assert normalize_path(path) == path


@settings(max_examples=200, deadline=None)
@given(path_and_trick())
def test_tricks_do_not_change_the_normal_form(case: tuple[str, str]) -> None:
    path, trick = case
    assert normalize_path(trick) == normalize_path(path)


@pytest.fixture(scope="module")
def admin_engine(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    folder = tmp_path_factory.mktemp("admin-deny")
    return PolicyEngine(
        load_set(
            folder,
            policy(
                "orders",
                "orders",
                """
                - action: deny
                  to: {paths: ['/admin/*']}
                - action: allow
                """,
            ),
        )
    )


@st.composite
def admin_trick(draw: st.DrawFn) -> tuple[str, str]:
    below = draw(safe_paths)
    path = "/admin" + (below if below != "/" else "/" + draw(segments))
    return path, draw(tricked(path))


def _decisions(engine: PolicyEngine, path: str) -> Iterator[bool]:
    for method in ("GET", "POST"):
        yield engine.decide(svc("web"), "orders", Request(method, path)).allowed


@settings(max_examples=200, deadline=None)
@given(admin_trick())
def test_no_trick_slips_past_a_deny_rule(admin_engine: PolicyEngine, case: tuple[str, str]) -> None:
    path, trick = case
    assert not any(_decisions(admin_engine, path))
    assert not any(_decisions(admin_engine, trick)), trick


def test_the_allow_rule_still_allows_other_paths(admin_engine: PolicyEngine) -> None:
    assert all(_decisions(admin_engine, "/orders/1"))
    assert all(_decisions(admin_engine, "/administrator"))
    assert all(_decisions(admin_engine, "/admin"))  # `/admin/*` does not cover `/admin` itself


def test_demo_tricks_are_denied(admin_engine: PolicyEngine, tmp_path: Path) -> None:
    for trick in (
        "/orders/..%2fadmin/users",
        "//admin/x",
        "/./admin/x",
        "/%61dmin/x",
        "/x/../admin/x",
        "/\\admin/x",
    ):
        assert not any(_decisions(admin_engine, trick)), trick
