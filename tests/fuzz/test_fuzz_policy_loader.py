"""Hypothesis fuzzing of the policy loader and of the ``meshgate up`` LocalStack loader (issue 10, item 4).

Properties:
- ``load_policy_set`` never raises for any file content (random YAML text, random documents of every
  kind with random field values and types, deep nesting, huge strings, anchors/aliases and alias bombs,
  duplicate keys, binary junk, non-UTF-8 bytes): it returns errors, and every error names a file of the
  set, a line between 1 and the file's line count, and a message;
- a valid set loads to the same version (and the same JSON) twice;
- ``load_localstack`` raises nothing but ``LocalStackError``, whose lines are ``FILE:LINE: ...`` with a
  line in the file.

The defects found (a crash instead of an error) are pinned by the ``xfail(strict=True)`` tests at the
end; the random tests skip exactly those inputs (``_known_defect``) so that they stay green and keep
looking for new ones. Remove the skips when the product is fixed.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mesh.up.spec import LocalStack, LocalStackError, load_localstack
from shared.config.errors import PolicyError
from shared.config.loader import LoadResult, load_policy_set
from shared.config.model import KINDS
from shared.config.yamlsource import MAX_FILE_BYTES

#: MESHGATE_FUZZ_SCALE=20 multiplies every example budget (a deeper local run; CI keeps 1).
SCALE = max(1, int(os.environ.get("MESHGATE_FUZZ_SCALE", "1")))


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


FUZZ = budget(60)
FEW = budget(8)

# ----- checking a result ----------------------------------------------------------------------------------

_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # what YAML (libyaml and PyYAML) counts as a line break


def line_count(data: bytes) -> int:
    """Lines an editor shows for ``data`` (the last one may be empty: an error at end of input)."""
    return 1 + len(_BREAK.findall(data.decode("utf-8", "replace")))


def assert_well_formed(result: LoadResult, files: dict[str, bytes]) -> None:
    """Errors name a file of the set, a line inside it and a message; a set exists exactly without them."""
    assert isinstance(result, LoadResult)
    assert result.ok == (not result.errors)
    assert (result.policy_set is None) == bool(result.errors)
    for error in result.errors:
        assert isinstance(error, PolicyError)
        assert error.file in files, error
        data = files[error.file]
        last = line_count(data)
        if _d5(error.line, error.message, data):
            last += 1  # known defect D5 (see its xfail test): one line past the end
        assert isinstance(error.line, int) and 1 <= error.line <= last, (error, last)
        assert isinstance(error.message, str) and error.message.strip(), error
        assert str(error).startswith(f"{error.file}:{error.line}: ")


def load_bytes(contents: list[bytes]) -> tuple[LoadResult, dict[str, bytes]]:
    """Write ``contents`` as policy files of one folder and load it."""
    with tempfile.TemporaryDirectory(prefix="fuzz-policy-") as folder:
        files = {}
        for i, data in enumerate(contents):
            path = Path(folder) / f"p{i}.yaml"
            path.write_bytes(data)
            files[str(path)] = data
        return load_policy_set([folder]), files


# ----- known defects (see the xfail tests at the end) -----------------------------------------------------


def _scalar_construct_crashes(data: bytes) -> bool:
    """D1: a scalar that PyYAML's SafeConstructor cannot build raises ValueError/KeyError/AttributeError
    (``2001-13-45``, ``0x_``, ``!!int abc``, ``!!bool maybe``, ``!!timestamp x``), which yamlsource.py
    does not catch."""
    try:
        text = data.decode("utf-8")
        nodes = list(yaml.compose_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False
    constructor = yaml.constructor.SafeConstructor()
    stack: list[Any] = [n for n in nodes if n is not None]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                constructor.construct_object(node)
            except yaml.YAMLError:
                pass
            except Exception:
                return True
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
    return False


def _d5(line: int, message: str, data: bytes) -> bool:
    """D5 (fixed): libyaml puts the end of a file without a final newline on the line after the last one;
    yamlsource.py now reports the last line."""
    return False
    return line == line_count(data) + 1 and message.startswith("invalid YAML") and not data.endswith(b"\n")


_HUGE_DURATION = re.compile(r"\d{9,}(\.\d+)?(ms|s|m|h|d)")  # D2
_HUGE_REPEAT = re.compile(r"\{\d{10,}")  # D3 (OverflowError in re.compile)


def _known_defect(data: bytes) -> bool:
    """No known defect is skipped any more (D1-D5 are fixed); kept so a new one can be pinned."""
    return False
    text = data.decode("utf-8", "replace")
    return (
        _scalar_construct_crashes(data)
        or bool(_HUGE_DURATION.search(text))
        or bool(_HUGE_REPEAT.search(text))
        or "(" * 200 in text  # D3 (RecursionError in re.compile)
        or ("descriptorSet" in text and ("\\0" in text or "\x00" in text))  # D4
    )


# ----- strategies -----------------------------------------------------------------------------------------

_KIND_NAMES = [*KINDS, "LocalStack", "mesh", "Routes", ""]
_FIELDS_TEXT = """
    apiVersion kind name trustDomain defaultAccess namespace certificateTTL edgeGateways mtls mode
    protocol port trafficPolicy timeout retries attempts perTryTimeout retryOn budget percent
    loadBalancer policy hashHeader target service route rules action from to when services
    principals requestPrincipals ipBlocks claims methods paths headers regex prefix exact template
    hosts match path backends weight rewrite auth rateLimit translate grpcJson descriptorSet cors
    allowOrigins maxAge maxBodySize type jwt jwks jwksUri issuer apiKey keys sha256 key limits
    requests per burst algorithm failureMode labels description
"""
_FIELDS = sorted(set(_FIELDS_TEXT.split()))
_WORDS_TEXT = """
    meshgate/v1 allow deny strict http grpc tcp ring-hash round-robin GET POST * / /api/* *.json web
    orders example.org spiffe://example.org/ns/default/sa/web 10.0.0.0/8 250ms 2s 1h30m 20% 1MiB yes
    on 0 -1
"""
_WORDS = _WORDS_TEXT.split()
_safe_text = st.text(max_size=24)
_durations = st.builds(
    lambda n, u: f"{n}{u}", st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h", "d"])
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_WORDS),
    _durations,
    _safe_text,
    st.sampled_from([2000, 70_000]).map(lambda n: "x" * n),  # huge strings
)
keys = st.one_of(st.sampled_from(_FIELDS), st.sampled_from(_FIELDS).map(str.upper), _safe_text, st.integers())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=12,
)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A document of a real kind (mostly) with random fields, or any other YAML value."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values)
    doc: dict[Any, Any] = {}
    if draw(st.booleans()) or draw(st.booleans()):
        doc["apiVersion"] = draw(st.sampled_from(["meshgate/v1", "meshgate/v2", 1]))
    doc["kind"] = draw(st.one_of(st.sampled_from(_KIND_NAMES), scalars))
    if draw(st.booleans()) or draw(st.booleans()):
        doc["name"] = draw(
            st.one_of(st.sampled_from(["web", "orders", "mesh", "a" * 70, "Web", "-x"]), scalars)
        )
    doc.update(draw(st.dictionaries(keys, values, max_size=6)))
    return doc


def dump(docs: list[Any], flow: bool | None, unicode: bool) -> bytes:
    return yaml.safe_dump_all(docs, default_flow_style=flow, allow_unicode=unicode, sort_keys=False).encode()


_JUNK = st.one_of(
    st.binary(max_size=16),
    st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\t", b"\r", b"\xef\xbb\xbf"]),
    st.sampled_from(
        ["&a ", "*a", "*nope", "<<: *a", "? ", "!!set ", "!custom ", "%YAML 1.1\n---\n", "---\n"]
    ).map(str.encode),
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few edits: junk inserted, a line repeated (duplicate keys), a line cut."""
    for _ in range(draw(st.integers(0, 3))):
        lines = data.split(b"\n")
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        op = draw(st.integers(0, 2))
        if op == 0:
            cut = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + draw(_JUNK) + lines[i][cut:]
        elif op == 1:
            lines.insert(i, lines[i])
        else:
            del lines[i]
        data = b"\n".join(lines)
    return data


_TOKENS = [
    "apiVersion: meshgate/v1",
    "kind: ",
    *KINDS,
    "name: ",
    "trustDomain: ",
    "rules:",
    "backends:",
    "service: web",
    "\n",
    "\n",
    "\n  ",
    "  ",
    "- ",
    ": ",
    ", ",
    "{",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "---\n",
    "...\n",
    "# c\n",
    "'",
    '"',
    "? ",
    "|\n",
    ">-\n",
    "\t",
    "<<: ",
    "!!str ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!map ",
    "!x ",
    "%YAML 1.1\n",
    "%TAG ! tag:x:\n",
    "null",
    "~",
    "true",
    "yes",
    "0x1F",
    "1e3",
    ".inf",
    "\\",
    "\x00",
    "\ufeff",
    "é",
    "\u2028",
    "\x85",
    "\r",
]
yaml_soup = st.lists(st.one_of(st.sampled_from(_TOKENS), st.text(max_size=8)), max_size=60).map(
    lambda parts: "".join(parts).encode("utf-8", "surrogatepass")
)


# ----- random input never raises --------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.one_of(yaml_soup, st.binary(max_size=200)), min_size=1, max_size=3))
def test_random_text_gives_errors_not_exceptions(contents: list[bytes]) -> None:
    assume(not any(_known_defect(c) for c in contents))
    result, files = load_bytes(contents)
    assert_well_formed(result, files)


@budget(40)
@given(
    st.lists(st.lists(documents(), min_size=1, max_size=4), min_size=1, max_size=2),
    st.sampled_from([None, True, False]),
    st.booleans(),
    st.data(),
)
def test_random_documents_give_errors_not_exceptions(
    sets: list[list[Any]], flow: bool | None, unicode: bool, data: st.DataObject
) -> None:
    contents = [data.draw(mutated(dump(docs, flow, unicode))) for docs in sets]
    assume(not any(_known_defect(c) for c in contents))
    result, files = load_bytes(contents)
    assert_well_formed(result, files)


def _bomb(depth: int, fanout: int) -> bytes:
    lines = ["apiVersion: meshgate/v1", "kind: Mesh", "trustDomain: example.org", "a0: &a0 [x, y]"]
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    return ("\n".join(lines) + "\n").encode()


@FEW
@given(
    st.one_of(
        st.builds(_bomb, st.integers(1, 12), st.integers(2, 9)),
        st.integers(1, 4000).map(lambda n: ("x: " + "[" * n + "]" * n + "\n").encode()),
        st.integers(1, 3000).map(lambda n: ("x:\n" + "".join(" " * i + "- \n" for i in range(n))).encode()),
        st.integers(1, 3000).map(lambda n: ("".join(" " * i + f"k{i}:\n" for i in range(n)) + "\n").encode()),
        st.sampled_from([b"a: &a [*a]\n", b"&a {x: *a}\n", b"a: &a\n  b: *a\n"]),
        st.integers(MAX_FILE_BYTES - 64, MAX_FILE_BYTES + 64).map(lambda n: b"x: " + b"y" * n + b"\n"),
    )
)
def test_alias_bombs_deep_nesting_and_huge_files_give_errors(content: bytes) -> None:
    result, files = load_bytes([content])
    assert_well_formed(result, files)


# ----- valid sets -----------------------------------------------------------------------------------------

names = st.builds(
    lambda head, mid, tail: head + mid + tail,
    st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", max_size=8),
    st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"),
)
_segments = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8)


@st.composite
def valid_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A consistent set: one Mesh, services, routes and policies that name only declared services."""
    mesh: dict[str, Any] = {
        "apiVersion": "meshgate/v1",
        "kind": "Mesh",
        "trustDomain": draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=30)),
        "defaultAccess": draw(st.sampled_from(["allow", "deny"])),
        "certificateTTL": draw(
            st.builds(lambda n, u: f"{n}{u}", st.integers(1, 1000), st.sampled_from("smhd"))
        ),
        "edgeGateways": draw(st.lists(names, max_size=2)),
    }
    services = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    docs: list[dict[str, Any]] = [mesh]
    for name in services:
        service: dict[str, Any] = {"apiVersion": "meshgate/v1", "kind": "Service", "name": name}
        if draw(st.booleans()):
            service["port"] = draw(st.integers(1, 65535))
            service["protocol"] = draw(st.sampled_from(["http", "grpc", "tcp"]))
        if draw(st.booleans()):
            service["trafficPolicy"] = {
                "timeout": draw(_durations.filter(lambda d: not d.startswith("0"))),
                "retries": {"attempts": draw(st.integers(0, 10))},
                "loadBalancer": draw(
                    st.sampled_from(
                        [{"policy": "round-robin"}, {"policy": "ring-hash", "hashHeader": "x-user"}]
                    )
                ),
            }
        docs.append(service)
    for name in draw(st.lists(names, max_size=3, unique=True)):
        backends = draw(st.lists(st.sampled_from(services), min_size=1, max_size=3))
        docs.append(
            {
                "apiVersion": "meshgate/v1",
                "kind": "Route",
                "name": name,
                "match": {"path": {"prefix": "/" + draw(_segments)}},
                "backends": [{"service": s, "weight": 1 + i} for i, s in enumerate(backends)],
            }
        )
    for i, target in enumerate(draw(st.lists(st.sampled_from(services), max_size=3))):
        rules = [
            {
                "action": draw(st.sampled_from(["allow", "deny"])),
                "from": {"services": draw(st.lists(st.sampled_from([*services, "*"]), max_size=3))},
                "to": {
                    "methods": draw(st.lists(st.sampled_from(["GET", "POST", "*"]), max_size=2)),
                    "paths": draw(st.lists(_segments.map(lambda s: f"/{s}/*"), max_size=2)),
                },
            }
            for _ in range(draw(st.integers(1, 3)))
        ]
        docs.append(
            {
                "apiVersion": "meshgate/v1",
                "kind": "AccessPolicy",
                "name": f"policy-{i}",
                "target": {"service": target},
                "rules": rules,
            }
        )
    return docs


@FUZZ
@given(valid_sets(), st.integers(1, 3), st.sampled_from([None, True, False]))
def test_a_valid_set_loads_the_same_twice(docs: list[dict[str, Any]], parts: int, flow: bool | None) -> None:
    chunks = [docs[i::parts] for i in range(parts)]
    contents = [dump(chunk, flow, True) for chunk in chunks if chunk]
    with tempfile.TemporaryDirectory(prefix="fuzz-valid-") as folder:
        files = {}
        for i, data in enumerate(contents):
            path = Path(folder) / f"p{i}.yaml"
            path.write_bytes(data)
            files[str(path)] = data
        first = load_policy_set([folder])
        second = load_policy_set([folder])
    assert_well_formed(first, files)
    assert first.ok, [str(e) for e in first.errors]
    assert second.ok
    assert first.policy_set is not None and second.policy_set is not None
    assert first.policy_set.version == second.policy_set.version
    assert first.policy_set.to_json() == second.policy_set.to_json()


@FUZZ
@given(valid_sets(), st.data())
def test_a_broken_reference_is_an_error_at_a_line_of_its_file(
    docs: list[dict[str, Any]], data: st.DataObject
) -> None:
    routes = [d for d in docs if d["kind"] == "Route"]
    assume(routes)
    route = data.draw(st.sampled_from(routes))
    route["backends"].append({"service": "no-such-service-x"})
    result, files = load_bytes([dump(docs, None, True)])
    assert_well_formed(result, files)
    assert any("no Service named 'no-such-service-x'" in e.message for e in result.errors)


# ----- meshgate up: the LocalStack file -------------------------------------------------------------------

_STACK_FIELDS_TEXT = """
    apiVersion kind name policies dataDir workdir redis accessLog controlPlane gateway tracing
    services examples listen admin store args command replicas check checkPath upstreams env
    sidecarArgs say run expect collector sample otlpEndpoint
"""
_STACK_FIELDS = _STACK_FIELDS_TEXT.split()
_stack_scalars = st.one_of(
    scalars,
    st.sampled_from(["127.0.0.1:0", "[::1]:8000", "host:99999", "{python}", "{upstream:x}", "{nope}", "web"]),
)
_stack_values = st.recursive(
    _stack_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_STACK_FIELDS), _safe_text), inner, max_size=5),
    ),
    max_leaves=20,
)


@st.composite
def stack_files(draw: st.DrawFn) -> bytes:
    how = draw(st.integers(0, 3))
    if how == 0:
        return draw(st.one_of(yaml_soup, st.binary(max_size=200)))
    doc: dict[Any, Any] = {"apiVersion": "meshgate/v1", "kind": "LocalStack", "name": draw(names)}
    if how == 1:
        doc["kind"] = draw(st.one_of(st.sampled_from(["LocalStack", "Mesh"]), scalars))
    services = [
        {
            "name": draw(st.one_of(names, st.sampled_from(["web", "gateway"]))),
            "command": draw(
                st.lists(st.sampled_from(["{python}", "app.py", "{port}", "{upstream:web}"]), max_size=3)
            ),
            "replicas": draw(st.one_of(st.integers(-2, 20), scalars)),
            "upstreams": draw(st.lists(st.sampled_from(["web", "orders"]), max_size=2)),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    doc["services"] = services
    doc.update(draw(st.dictionaries(st.sampled_from(_STACK_FIELDS), _stack_values, max_size=4)))
    docs = [doc, *draw(st.lists(_stack_values, max_size=1))]
    return draw(mutated(dump(docs, draw(st.sampled_from([None, True, False])), True)))


_STACK_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): \S")


@FUZZ
@given(stack_files())
def test_localstack_raises_only_its_error_with_file_and_line(content: bytes) -> None:
    assume(not _known_defect(content))
    with tempfile.TemporaryDirectory(prefix="fuzz-up-") as folder:
        path = Path(folder) / "stack.yaml"
        path.write_bytes(content)
        try:
            stack = load_localstack(path)
        except LocalStackError as exc:
            assert exc.errors
            for line in exc.errors:
                match = _STACK_LINE.match(line)
                assert match is not None, line
                assert match["file"] == str(path), line
                last = line_count(content) + _d5(int(match["line"]), line.split(": ", 1)[1], content)
                assert 1 <= int(match["line"]) <= last, (line, last)
        else:
            assert isinstance(stack, LocalStack)


# ----- defects found (strict xfail: they fail now, and must be turned on when fixed) ---------------------

_MESH = "apiVersion: meshgate/v1\nkind: Mesh\ntrustDomain: example.org\n"
_SERVICE_AND = _MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: s\n---\napiVersion: meshgate/v1\n"
_ROUTE = _SERVICE_AND + "kind: Route\nname: r\nbackends: [{service: s}]\n"


@pytest.mark.parametrize(
    "text",
    [
        _MESH + "description: 2001-13-45\n",  # an implicit timestamp with month 13: ValueError
        _MESH + "labels: {release: 2024-02-30}\n",  # day 30 of February: ValueError
        _MESH + "description: 0x_\n",  # an implicit hex int with no digit: ValueError
        _MESH + "2001-13-45: x\n",  # as a key
        _MESH + "description: !!int abc\n",  # ValueError
        _MESH + "description: !!float abc\n",  # ValueError
        _MESH + "description: !!bool maybe\n",  # KeyError
        _MESH + "description: !!timestamp nope\n",  # AttributeError
    ],
    ids=["month-13", "feb-30", "hex-0x_", "date-key", "tag-int", "tag-float", "tag-bool", "tag-timestamp"],
)
def test_d1_unbuildable_scalars_are_errors(text: str) -> None:
    result, files = load_bytes([text.encode()])
    assert_well_formed(result, files)
    assert not result.ok


def test_d1_localstack_with_an_unbuildable_scalar_raises_its_error() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stack.yaml"
        path.write_text("apiVersion: meshgate/v1\nkind: LocalStack\nname: x\ndescription: 2001-13-45\n")
        with pytest.raises(LocalStackError):
            load_localstack(path)


@pytest.mark.parametrize(
    "text",
    [
        _MESH + "certificateTTL: 1000000000d\n",
        _MESH + "certificateTTL: 99999999999999999999999d\n",
        _MESH + "certificateTTL: " + "9" * 400 + "s\n",  # float('9'*400 ...) is inf
        _SERVICE_AND + "kind: Service\nname: t\ntrafficPolicy: {timeout: 99999999999999h}\n",
    ],
    ids=["1e9-days", "1e23-days", "inf-seconds", "service-timeout"],
)
def test_d2_huge_durations_are_errors(text: str) -> None:
    result, files = load_bytes([text.encode()])
    assert_well_formed(result, files)
    assert any("certificateTTL" in e.field or "timeout" in e.field for e in result.errors)


@pytest.mark.parametrize(
    "regex",
    ["a{99999999999}", "x{1,4294967296}", "(" * 2000 + ")" * 2000],
    ids=["repeat-overflow", "range-overflow", "nested-2000"],
)
def test_d3_unusable_regexes_are_errors(regex: str) -> None:
    text = _ROUTE + f"match: {{headers: [{{name: x-a, regex: '{regex}'}}]}}\n"
    result, files = load_bytes([text.encode()])
    assert_well_formed(result, files)
    assert any(e.field.endswith("regex") for e in result.errors)


def test_d4_descriptor_set_name_with_nul_is_an_error() -> None:
    text = _ROUTE + 'translate: grpc-json\ngrpcJson: {descriptorSet: "a\\0b.pb"}\n'
    result, files = load_bytes([text.encode()])
    assert_well_formed(result, files)
    assert any(e.field == "grpcJson.descriptorSet" for e in result.errors)


@pytest.mark.parametrize(
    "text", [b"kind: Mesh\nx: [", b"a: [", b"kind: Mesh\nx: {a: 1"], ids=["seq", "one-line", "map"]
)
def test_d5_an_error_at_the_end_of_a_file_without_newline_is_on_its_last_line(text: bytes) -> None:
    result, _ = load_bytes([text])
    assert result.errors
    for error in result.errors:
        assert 1 <= error.line <= line_count(text), (error, line_count(text))
