"""The ``LocalStack`` document of ``meshgate up``: what loads, and errors that name the file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mesh.up.spec import PLACEHOLDERS, LocalStack, LocalStackError, load_localstack

REPO = Path(__file__).resolve().parents[3]

HEAD = """\
apiVersion: meshgate/v1
kind: LocalStack
name: s
"""


def write(folder: Path, text: str, name: str = "stack.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(path: Path, marker: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line of ``path`` containing ``marker``."""
    found = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if marker in line:
            found += 1
            if found == nth:
                return number
    raise AssertionError(f"{marker!r} not in {path}")


def errors_of(path: Path) -> list[str]:
    with pytest.raises(LocalStackError) as caught:
        load_localstack(path)
    assert caught.value.errors, "a LocalStackError without errors"
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def only_error(path: Path) -> str:
    errors = errors_of(path)
    assert len(errors) == 1, errors
    return errors[0]


def assert_error(error: str, path: Path, line: int, field: str, *words: str) -> None:
    """``FILE:LINE: LocalStack/s: FIELD: message`` with ``words`` in the message."""
    head = f"{path}:{line}: LocalStack/s: {field}: "
    assert error.startswith(head), f"{error!r} does not start with {head!r}"
    for word in words:
        assert word in error.removeprefix(head), f"{word!r} not in {error!r}"


# -- what loads ----------------------------------------------------------------------------------------


def test_the_repository_demo_stack_loads() -> None:
    stack = load_localstack(REPO / "examples" / "demo.yaml")
    assert stack.name == "demo"
    assert [s.name for s in stack.services] == ["web", "orders", "catalog"]
    assert [s.replicas for s in stack.services] == [1, 2, 1]
    assert stack.services[2].check == "tcp"
    assert stack.services[0].upstreams == ["catalog"]
    assert stack.gateway is not None and stack.gateway.listen == "127.0.0.1:8000"
    assert stack.tracing.otlp_endpoint is None and stack.tracing.collector == "127.0.0.1:4319"
    assert stack.policies == "../policies" and stack.workdir == "demo"
    assert stack.examples, "the demo prints example commands"
    assert all(e.expect for e in stack.examples), "the demo test checks every example's output"


def test_a_minimal_stack_takes_the_defaults(tmp_path: Path) -> None:
    stack = load_localstack(write(tmp_path, HEAD))
    assert stack == LocalStack.model_validate(
        {"apiVersion": "meshgate/v1", "kind": "LocalStack", "name": "s"}
    )
    assert stack.services == [] and stack.policies == "policies" and stack.access_log
    assert stack.control_plane.listen == "127.0.0.1:15010" and stack.control_plane.store is None
    assert stack.gateway is not None and stack.gateway.admin == "127.0.0.1:9901"
    assert stack.tracing.sample == 1.0


def test_gateway_null_means_no_gateway(tmp_path: Path) -> None:
    stack = load_localstack(write(tmp_path, HEAD + "gateway: null\n"))
    assert stack.gateway is None


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:8000", "localhost:65535", "[::1]:0", "[::]:9"])
def test_listen_addresses_that_are_accepted(tmp_path: Path, listen: str) -> None:
    path = write(tmp_path, HEAD + f"controlPlane:\n  listen: '{listen}'\n")
    assert load_localstack(path).control_plane.listen == listen


def test_every_placeholder_and_upstreams_are_accepted(tmp_path: Path) -> None:
    command = ", ".join(f"'{{{p}}}'" for p in PLACEHOLDERS)
    path = write(
        tmp_path,
        HEAD
        + "services:\n"
        + "  - name: web\n"
        + f"    command: [{command}, '--to={{upstream:catalog}}']\n"
        + "    upstreams: [catalog]\n"
        + "    env: {A: '{host}:{upstream:catalog}', B: '{replica}'}\n"
        + "  - name: catalog\n"
        + "    command: [x]\n",
    )
    stack = load_localstack(path)
    assert stack.services[0].command[-1] == "--to={upstream:catalog}"
    assert stack.services[0].env == {"A": "{host}:{upstream:catalog}", "B": "{replica}"}


# -- errors ---------------------------------------------------------------------------------------------


def test_unknown_top_level_field_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "description: x\nservces: []\n")
    assert_error(only_error(path), path, line_of(path, "servces:"), "servces", "unknown field 'servces'")


def test_unknown_nested_field_names_its_line_and_dotted_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "services:\n"
        + "  - name: web\n"
        + "    command: [x]\n"
        + "  - name: orders\n"
        + "    command: [y]\n"
        + "    replicass: 2\n",
    )
    err = only_error(path)
    assert_error(err, path, line_of(path, "replicass"), "services[1].replicass", "unknown field 'replicass'")


def test_every_error_of_a_file_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path, HEAD + "controlPlane:\n  listen: nowhere\n  bogus: 1\ngateway:\n  admin: 127.0.0.1:99999\n"
    )
    errors = errors_of(path)
    assert len(errors) == 3, errors
    joined = "\n".join(errors)
    assert f"{path}:{line_of(path, 'listen:')}: LocalStack/s: controlPlane.listen: " in joined
    assert f"{path}:{line_of(path, 'bogus:')}: LocalStack/s: controlPlane.bogus: unknown field" in joined
    assert f"{path}:{line_of(path, 'admin:')}: LocalStack/s: gateway.admin: " in joined


@pytest.mark.parametrize(
    ("block", "field", "value"),
    [
        ("controlPlane:\n  listen: localhost\n", "controlPlane.listen", "localhost"),
        ("controlPlane:\n  listen: 127.0.0.1:http\n", "controlPlane.listen", "127.0.0.1:http"),
        ("gateway:\n  listen: ':8000'\n", "gateway.listen", ":8000"),
        ("gateway:\n  admin: 127.0.0.1:65536\n", "gateway.admin", "127.0.0.1:65536"),
        ("gateway:\n  listen: '::1:8000'\n", "gateway.listen", "::1:8000"),
        ("tracing:\n  collector: http://127.0.0.1:4318\n", "tracing.collector", "http://127.0.0.1:4318"),
    ],
)
def test_bad_listen_address_names_its_line(tmp_path: Path, block: str, field: str, value: str) -> None:
    path = write(tmp_path, HEAD + "description: x\n" + block)
    key = field.rpartition(".")[2]
    assert_error(only_error(path), path, line_of(path, f"{key}:"), field, "expected HOST:PORT", repr(value))


def test_bad_urls_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "redis: localhost:6379\n"
        + "controlPlane:\n  store: mysql://x\n"
        + "tracing:\n  otlpEndpoint: grpc://127.0.0.1:4317\n  sample: 2\n",
    )
    errors = errors_of(path)
    fields = sorted(e.split(": ")[2] for e in errors)
    assert fields == ["controlPlane.store", "redis", "tracing.otlpEndpoint", "tracing.sample"], errors
    for error in errors:
        marker = error.split(": ")[2].rpartition(".")[2]
        assert error.startswith(f"{path}:{line_of(path, marker + ':')}: "), error


def test_duplicate_service_names_the_second_declaration(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "services:\n"
        + "  - name: web\n"
        + "    command: [x]\n"
        + "  - name: orders\n"
        + "    command: [y]\n"
        + "  - name: web\n"
        + "    command: [z]\n",
    )
    line = line_of(path, "name: web", nth=2)
    assert_error(only_error(path), path, line, "services[2].name", "service 'web' is declared twice")


def test_unknown_placeholder_in_command_names_the_service(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "services:\n"
        + "  - name: web\n"
        + "    command: [x]\n"
        + "  - name: orders\n"
        + "    command: ['{python}', '--port={prot}']\n",
    )
    err = only_error(path)
    assert_error(err, path, line_of(path, "name: orders"), "services[1]", "unknown placeholder {prot}")
    for placeholder in PLACEHOLDERS:  # the message lists what is known
        assert f"{{{placeholder}}}" in err
    assert "{upstream:NAME}" in err


def test_unknown_placeholder_in_env_names_the_service(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "services:\n"
        + "  - name: web\n"
        + "    command: [x]\n"
        + "    env: {A: ok, B: 'http://{hots}:1'}\n",
    )
    assert_error(
        only_error(path), path, line_of(path, "name: web"), "services[0]", "unknown placeholder {hots}"
    )


def test_upstream_placeholder_must_name_an_upstream(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "services:\n"
        + "  - name: web\n"
        + "    command: [x, '{upstream:catalog}']\n"
        + "    upstreams: [orders]\n"
        + "  - name: orders\n"
        + "    command: [y]\n",
    )
    err = only_error(path)
    assert_error(err, path, line_of(path, "name: web"), "services[0]", "{upstream:catalog}", "['orders']")


def test_service_listing_itself_as_upstream_names_that_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "services:\n"
        + "  - name: web\n"
        + "    command: [x]\n"
        + "    upstreams:\n"
        + "      - catalog\n"
        + "      - web\n"
        + "  - name: catalog\n"
        + "    command: [y]\n",
    )
    line = line_of(path, "- web")
    assert_error(
        only_error(path), path, line, "services[0].upstreams[1]", "service 'web' lists itself as an upstream"
    )


def test_cross_checks_report_every_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "services:\n"
        + "  - name: web\n"
        + "    command: [x]\n"
        + "    upstreams: [web]\n"
        + "  - name: web\n"
        + "    command: [y]\n",
    )
    errors = errors_of(path)
    assert len(errors) == 2, errors
    assert_error(errors[0], path, line_of(path, "upstreams:"), "services[0].upstreams[0]", "itself")
    assert_error(errors[1], path, line_of(path, "name: web", nth=2), "services[1].name", "declared twice")


def test_wrong_kind_names_the_kind_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "# a policy file given by mistake\napiVersion: meshgate/v1\nkind: Service\nname: s\n"
    )
    assert only_error(path) == f"{path}:{line_of(path, 'kind:')}: kind must be LocalStack, got 'Service'"


def test_missing_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "apiVersion: meshgate/v1\nname: s\n")
    assert only_error(path) == f"{path}:1: kind must be LocalStack, got None"


def test_wrong_api_version(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD.replace("meshgate/v1", "meshgate/v2"))
    assert_error(only_error(path), path, 1, "apiVersion", "'meshgate/v1'", "'meshgate/v2'")


def test_two_documents_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "---\n" + HEAD.replace("name: s", "name: t"))
    assert only_error(path) == f"{path}:1: expected one LocalStack document, found 2"


def test_empty_documents_between_markers_do_not_count(tmp_path: Path) -> None:
    path = write(tmp_path, "---\n# commented out\n---\n" + HEAD)
    assert load_localstack(path).name == "s"


@pytest.mark.parametrize("text", ["", "   \n\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    err = only_error(path)
    assert err.startswith(f"{path}:1: ") and "empty" in err


def test_file_of_comments_only(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here yet\n")
    err = only_error(path)
    assert err.startswith(f"{path}:1: ") and "only comments" in err


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "services:\n  - name: web\n    command: [x, y\n")
    err = only_error(path)
    assert err.startswith(f"{path}:{line_of(path, 'command:') + 1}: invalid YAML at column "), err


def test_yaml_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "redis: redis://a\nredis: redis://b\n")
    err = only_error(path)
    first, second = line_of(path, "redis:"), line_of(path, "redis:", nth=2)
    assert err == f"{path}:{second}: LocalStack: redis: duplicate key 'redis' (first at line {first})"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_document(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert only_error(path) == f"{path}:1: a LocalStack document must be a mapping"


def test_non_mapping_document_after_a_comment_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "# header\n\n- a\n")
    assert only_error(path) == f"{path}:3: a LocalStack document must be a mapping"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    err = only_error(path)
    assert err.startswith(f"{path}:1: cannot read file")


@pytest.mark.parametrize(
    ("replicas", "bound"), [(0, "greater than or equal to 1"), (17, "less than or equal to 16")]
)
def test_replicas_out_of_range(tmp_path: Path, replicas: int, bound: str) -> None:
    path = write(
        tmp_path,
        HEAD + "services:\n  - name: web\n    command: [x]\n" + f"    replicas: {replicas}\n",
    )
    assert_error(only_error(path), path, line_of(path, "replicas:"), "services[0].replicas", bound)


@pytest.mark.parametrize("replicas", [1, 16])
def test_replicas_at_the_bounds(tmp_path: Path, replicas: int) -> None:
    path = write(tmp_path, HEAD + f"services:\n  - name: web\n    command: [x]\n    replicas: {replicas}\n")
    assert load_localstack(path).services[0].replicas == replicas


def test_service_without_command(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "services:\n  - name: web\n    command: []\n")
    assert_error(only_error(path), path, line_of(path, "command:"), "services[0].command", "at least 1")


def test_service_with_a_bad_check(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD + "services:\n  - name: web\n    command: [x]\n    check: grpc\n    checkPath: healthz\n",
    )
    errors = errors_of(path)
    assert len(errors) == 2, errors
    assert_error(errors[0], path, line_of(path, "check:"), "services[0].check", "'grpc'")
    assert_error(errors[1], path, line_of(path, "checkPath:"), "services[0].checkPath", "pattern")


def test_two_listeners_on_one_fixed_port_are_refused(tmp_path: Path) -> None:
    """The second would fail with "address in use" only at start, after the others had started."""
    path = write(tmp_path, HEAD + "gateway:\n  listen: 127.0.0.1:9000\n  admin: 127.0.0.1:9000\n")
    assert "gateway.listen and gateway.admin both listen on 127.0.0.1:9000" in only_error(path)
    path = write(tmp_path, HEAD + "controlPlane:\n  listen: 127.0.0.1:4318\n")  # the collector's default
    assert "both listen on 127.0.0.1:4318" in only_error(path)
    # port 0 picks a free port each time; an OTLP endpoint replaces the collector
    write(tmp_path, HEAD + "gateway:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n")
    assert isinstance(load_localstack(tmp_path / "stack.yaml"), LocalStack)
    path = write(
        tmp_path,
        HEAD + "controlPlane:\n  listen: 127.0.0.1:4318\ntracing:\n  otlpEndpoint: http://127.0.0.1:4318\n",
    )
    assert isinstance(load_localstack(path), LocalStack)
