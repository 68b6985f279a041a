"""`meshgate policy check | explain | schema` and `meshgate demo`, through shared.cli.main."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.cli import main
from shared.config.schema import policy_schema

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
KINDS = ("Mesh", "Service", "AccessPolicy", "Route", "AuthProvider", "RateLimit")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


def line_of(path: Path, marker: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


MESH = "apiVersion: meshgate/v1\nkind: Mesh\ntrustDomain: example.org\ndefaultAccess: deny\n"


# --- policy check ---------------------------------------------------------------------------------


def test_check_passes_on_the_example_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "policy", "check", str(POLICIES))
    assert code == 0
    assert err == []
    assert out[0].startswith("ok: ") and "4 file(s)" in out[0]


def test_check_quiet_prints_nothing_when_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "policy", "check", "-q", str(POLICIES)) == (0, [], [])


def test_check_fails_with_file_line_errors_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = write(tmp_path, "mesh.yaml", MESH + "defaultAcess: allow\n")
    svc = write(tmp_path, "svc.yaml", "apiVersion: meshgate/v1\nkind: Service\nname: web\nport: [80]\n")
    code, out, err = run(capsys, "policy", "check", str(tmp_path))
    assert code == 1
    assert out == []
    assert err[0].startswith(f"{mesh}:5: Mesh/mesh: defaultAcess: unknown field 'defaultAcess'")
    assert err[1].startswith(f"{svc}:4: Service/web: port: ")
    assert err[-1] == "2 error(s) in 2 file(s)"
    assert all(re.match(r"^/.+\.yaml:\d+: ", line) for line in err[:-1])


def test_check_treats_several_folders_as_one_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "a", "mesh.yaml", MESH)
    write(tmp_path / "b", "svc.yaml", "apiVersion: meshgate/v1\nkind: Service\nname: web\n")
    assert run(capsys, "policy", "check", str(tmp_path / "a"), str(tmp_path / "b"))[0] == 0
    code, _, err = run(capsys, "policy", "check", str(tmp_path / "b"))
    assert code == 1 and "no Mesh document" in err[0]


def test_check_missing_folder_is_invalid_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "policy", "check", str(tmp_path / "nope"))
    assert code == 1
    assert err[0] == f"{tmp_path / 'nope'}:1: no such file or directory"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["policy"],
        ["policy", "check"],
        ["policy", "frobnicate"],
        ["policy", "check", "--bogus", "x"],
        ["policy", "explain", str(POLICIES), "--to", "orders"],
        ["policy", "explain", str(POLICIES), "--from", "web"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "usage:" in usage_error(capsys, *argv)


def test_malformed_header_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "policy", "explain", str(POLICIES), "--from", "web", "--to", "orders", "--header", "x"
    )
    assert code == 2
    assert out == []
    assert "KEY=VALUE" in err[0]


# --- policy explain -------------------------------------------------------------------------------


def test_explain_allow_cites_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "policy", "explain", str(POLICIES), "--from", "web", "--to", "orders", "--path", "/orders/42"
    )
    access = POLICIES / "access.yaml"
    assert code == 0
    assert out[0] == "ALLOW"
    assert out[1] == f"{access}:{line_of(access, '- name: web-and-gateway')}"


def test_explain_deny_by_rule_sees_through_encoding(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "policy",
        "explain",
        str(POLICIES),
        "--from",
        "web",
        "--to",
        "orders",
        "--path",
        "/orders/..%2Fadmin/x",
    )
    access = POLICIES / "access.yaml"
    assert code == 0
    assert out[:2] == ["DENY", f"{access}:{line_of(access, '- name: no-admin-from-mesh')}"]


def test_explain_deny_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "policy", "explain", str(POLICIES), "--from", "catalog", "--to", "orders", "--method", "post"
    )
    assert code == 0
    assert out[:2] == ["DENY", "default"]


def test_explain_foreign_spiffe_id_is_denied(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "policy",
        "explain",
        str(POLICIES),
        "--from",
        "spiffe://evil.example/ns/default/sa/web",
        "--to",
        "orders",
        "--path",
        "/orders",
    )
    assert (code, out[:2]) == (0, ["DENY", "default"])


def test_explain_reports_the_audit_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    access = POLICIES / "access.yaml"
    lines = access.read_text().splitlines()
    audit_at = lines.index("mode: audit")
    audit_deny = lines.index("  - action: deny", audit_at) + 1
    audit_allow = lines.index("  - action: allow", audit_at) + 1
    argv = ["policy", "explain", str(POLICIES), "--from", "web", "--to", "orders", "--method", "POST"]
    _, anonymous, _ = run(capsys, *argv, "--path", "/orders")
    _, signed_in, _ = run(capsys, *argv, "--path", "/orders", "--header", "X-Meshgate-Principal=alice")
    assert anonymous[0] == signed_in[0] == "ALLOW"  # audit never blocks
    note = "(AccessPolicy/orders-audit-signed-in, not enforced)"
    assert f"audit: DENY {access}:{audit_deny} {note}" in anonymous
    assert f"audit: ALLOW {access}:{audit_allow} {note}" in signed_in


def test_explain_with_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: api\n---\n"
        "apiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget: {service: api}\nrules:\n"
        "  - action: allow\n    to: {headers: [{name: x-env, exact: prod}]}\n",
    )
    argv = ["policy", "explain", str(tmp_path), "--from", "web", "--to", "api"]
    assert run(capsys, *argv, "--header", "X-Env=prod")[1][:2] == [
        "ALLOW",
        f"{f}:{line_of(f, '- action: allow')}",
    ]
    assert run(capsys, *argv, "--header", "x-env=dev")[1][:2] == ["DENY", "default"]


def test_explain_with_claims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: api\n---\n"
        "apiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget: {service: api}\nrules:\n"
        "  - action: allow\n    from:\n      claims:\n        - {claim: groups, contains: admins}\n"
        "        - {claim: email_verified, equals: true}\n",
    )
    argv = ["policy", "explain", str(tmp_path), "--from", "gateway", "--to", "api"]
    ok = run(capsys, *argv, "--claim", 'groups=["users","admins"]', "--claim", "email_verified=true")[1]
    assert ok[:2] == ["ALLOW", f"{f}:{line_of(f, '- action: allow')}"]
    as_string = run(capsys, *argv, "--claim", 'groups=["admins"]', "--claim", 'email_verified="true"')[1]
    assert as_string[:2] == ["DENY", "default"]


def test_explain_with_principal_on_a_route(capsys: pytest.CaptureFixture[str]) -> None:
    edge = POLICIES / "edge.yaml"
    argv = ["policy", "explain", str(POLICIES), "--from", "gateway", "--to", "orders-api", "--route"]
    code, out, _ = run(capsys, *argv, "--principal", "alice")
    assert code == 0
    assert out[:2] == ["ALLOW", f"{edge}:{line_of(edge, 'requestPrincipals') - 1}"]
    assert run(capsys, *argv)[1][:2] == ["DENY", "default"]


def test_explain_with_source_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: api\n---\n"
        "apiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget: {service: api}\nrules:\n"
        "  - action: allow\n    from: {ipBlocks: [10.0.0.0/8]}\n",
    )
    argv = ["policy", "explain", str(tmp_path), "--from", "web", "--to", "api"]
    assert run(capsys, *argv, "--address", "10.1.2.3")[1][0] == "ALLOW"
    assert run(capsys, *argv, "--address", "192.0.2.1")[1][0] == "DENY"


def test_explain_on_an_invalid_folder_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "mesh.yaml", "apiVersion: meshgate/v1\nkind: Mesh\n")
    code, out, err = run(capsys, "policy", "explain", str(tmp_path), "--from", "a", "--to", "b")
    assert code == 1
    assert out == []
    assert err[0].startswith(f"{f}:1: Mesh/mesh: trustDomain: ")


# --- policy schema --------------------------------------------------------------------------------


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/$defs/"), ref
    return root["$defs"][ref.removeprefix("#/$defs/")]  # type: ignore[no-any-return]


_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def schema_errors(root: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
    """A small validator for the JSON Schema keywords the policy schema uses (no jsonschema needed)."""
    if "$ref" in schema:
        return schema_errors(root, _resolve(root, schema["$ref"]), value, where)
    errors: list[str] = []
    if "anyOf" in schema or "oneOf" in schema:
        branches = schema.get("anyOf") or schema["oneOf"]
        passing = [b for b in branches if not schema_errors(root, b, value, where)]
        if not passing or ("oneOf" in schema and len(passing) != 1):
            errors.append(f"{where}: {len(passing)} branches match")
    kind = schema.get("type")
    if kind is not None:
        expected = _TYPES[kind]
        if not isinstance(value, expected) or (kind in ("integer", "number") and isinstance(value, bool)):
            return [*errors, f"{where}: expected {kind}, got {value!r}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: too short")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: above maximum")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: too few items")
        for i, item in enumerate(value):
            errors.extend(schema_errors(root, schema.get("items", {}), item, f"{where}[{i}]"))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors.extend(f"{where}.{key}: required" for key in schema.get("required", []) if key not in value)
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors.extend(schema_errors(root, props[key], item, f"{where}.{key}"))
            elif extra is False:
                errors.append(f"{where}.{key}: not allowed")
            elif isinstance(extra, dict):
                errors.extend(schema_errors(root, extra, item, f"{where}.{key}"))
    return errors


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return policy_schema()


def test_schema_prints_json_with_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for kind in KINDS:
        definition = printed["$defs"][kind]
        assert definition["type"] == "object"
        assert definition["additionalProperties"] is False
        assert definition["properties"]["kind"]["const"] == kind
        assert definition["properties"]["apiVersion"]["const"] == "meshgate/v1"
        assert {"apiVersion", "kind"} <= set(definition["required"])
    assert {ref["$ref"] for ref in printed["oneOf"]} == {f"#/$defs/{k}" for k in KINDS}


def test_schema_uses_the_yaml_field_names(schema: dict[str, Any]) -> None:
    defs = schema["$defs"]
    assert {"trustDomain", "defaultAccess", "certificateTTL"} <= set(defs["Mesh"]["properties"])
    assert {"from", "to", "when", "action"} <= set(defs["Rule"]["properties"])
    assert "consecutive5xx" in defs["OutlierDetection"]["properties"]
    for name, definition in defs.items():
        for prop in definition.get("properties", {}):
            assert "_" not in prop, f"{name}.{prop}"


def test_schema_refs_all_resolve(schema: dict[str, Any]) -> None:
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema)
    assert refs
    for ref in refs:
        assert _resolve(schema, ref)


def test_schema_accepts_every_example_document(schema: dict[str, Any]) -> None:
    documents = [
        doc
        for f in sorted(POLICIES.glob("*.yaml"))
        for doc in yaml.safe_load_all(f.read_text())
        if doc is not None
    ]
    assert {d["kind"] for d in documents} == set(KINDS)
    for doc in documents:
        assert schema_errors(schema, schema, doc) == [], doc["kind"]
    try:  # the real validator too, when it happens to be installed
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for doc in documents:
        validator.validate(doc)


def test_schema_rejects_unknown_fields_and_bad_values(schema: dict[str, Any]) -> None:
    mesh = {"apiVersion": "meshgate/v1", "kind": "Mesh", "trustDomain": "example.org"}
    assert schema_errors(schema, schema, mesh) == []
    assert schema_errors(schema, schema, {**mesh, "trustDomian": "x"})
    assert schema_errors(schema, schema, {**mesh, "defaultAccess": "maybe"})
    assert schema_errors(schema, schema, {**mesh, "kind": "Mess"})
    assert schema_errors(schema, schema, {**mesh, "certificateTTL": "P1D"})


def test_schema_defaults_are_valid_values_of_their_fields(schema: dict[str, Any]) -> None:
    checked = 0
    for name, definition in schema["$defs"].items():
        for prop, sub in definition.get("properties", {}).items():
            if "default" in sub and sub["default"] is not None:
                assert schema_errors(schema, sub, sub["default"]) == [], f"{name}.{prop}: {sub['default']!r}"
                checked += 1
    assert checked > 20


# --- demo and the console script ------------------------------------------------------------------


def test_demo_exits_0_and_shows_decisions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", "--policies", str(POLICIES))
    assert code == 0
    assert err == []
    assert "all valid" in out[0]
    decisions = [line.split()[0] for line in out if line.startswith("  ")]
    assert "ALLOW" in decisions and "DENY" in decisions


def test_demo_on_a_broken_folder_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "mesh.yaml", "kind: [")
    code, _, err = run(capsys, "demo", "--policies", str(tmp_path))
    assert code == 1
    assert "invalid YAML" in err[0]


def test_console_script_checks_the_example_policies(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "meshgate"
    assert script.exists(), script
    ok = subprocess.run(
        [str(script), "policy", "check", "policies"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: ")
    write(tmp_path, "mesh.yaml", "apiVersion: meshgate/v1\nkind: Mesh\ntrustDomain: Bad Domain\n")
    bad = subprocess.run(
        [str(script), "policy", "check", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"{tmp_path / 'mesh.yaml'}:3: Mesh/mesh: trustDomain: ")


# --- command dispatch ------------------------------------------------------------------------------


def test_the_command_table_names_what_each_module_registers() -> None:
    import argparse
    from importlib import import_module

    import shared.cli

    registered: dict[str, str] = {}
    for name in shared.cli.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        import_module(name).register(sub)
        registered |= dict.fromkeys(sub.choices, name)
    assert registered == shared.cli.COMMANDS


def test_a_command_imports_only_its_own_module() -> None:
    code = (
        "import sys, shared.cli\n"
        "shared.cli.build_parser(shared.cli._modules_for(['sidecar', '--help']))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mesh.controlplane', 'shared.identity.cli',"
        " 'shared.config.cli', 'gateway'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_help_and_unknown_commands_still_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "no-such-command")
    for command in ("policy", "ca", "control-plane", "sidecar", "gateway", "demo"):
        assert command in err
