"""Loading a folder as one set: defaults, many documents and files, hidden files, the content version."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from config_testlib import MESH, SERVICES, line_of, load, write

from shared.config.policyset import PolicySet


def loaded(*paths: Path) -> PolicySet:
    result = load(*paths)
    assert result.ok, "\n".join(str(e) for e in result.errors)
    assert result.policy_set is not None
    return result.policy_set


def test_mesh_with_only_trust_domain_is_valid_with_defaults(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    mesh = loaded(tmp_path).mesh
    assert mesh.trust_domain == "example.org"
    assert mesh.name == "mesh"
    assert mesh.default_access == "allow"
    assert mesh.namespace == "default"
    assert mesh.mtls.mode == "strict"
    assert mesh.certificate_ttl == timedelta(hours=24)


def test_service_with_only_a_name_is_valid_with_defaults(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\n")
    web = loaded(tmp_path).services["web"]
    assert web.protocol == "http"
    assert web.port is None
    assert web.traffic_policy.timeout == timedelta(seconds=15)
    assert web.traffic_policy.retries.attempts == 2
    assert web.traffic_policy.retries.budget.percent == 0.2
    assert web.traffic_policy.load_balancer.policy == "least-request"


def test_access_policy_with_only_target_and_rules_is_valid(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        MESH + "---\n" + SERVICES + "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\n"
        "target: {service: web}\nrules:\n  - action: allow\n",
    )
    (policy,) = loaded(tmp_path).access_policies
    assert policy.mode == "enforce"
    assert policy.target.service == "web"
    rule = policy.rules[0]
    assert rule.action == "allow"
    assert rule.from_.services == [] and rule.to.paths == [] and rule.when == []


def test_operator_formats_are_parsed(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\ntrafficPolicy:\n"
        "  timeout: 1h30m\n  retries: {perTryTimeout: 250ms, budget: {percent: 12.5%}}\n",
    )
    policy = loaded(tmp_path).services["web"].traffic_policy
    assert policy.timeout == timedelta(minutes=90)
    assert policy.retries.per_try_timeout == timedelta(milliseconds=250)
    assert policy.retries.budget.percent == 0.125


def test_many_documents_in_many_nested_files_load_as_one_set(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    write(tmp_path, "services/core.yaml", SERVICES)
    write(tmp_path, "services/more/catalog.yml", "apiVersion: meshgate/v1\nkind: Service\nname: catalog\n")
    write(
        tmp_path,
        "access/orders.yaml",
        "apiVersion: meshgate/v1\nkind: AccessPolicy\nname: orders-in\ntarget: {service: orders}\n"
        "rules: [{action: allow, from: {services: [web]}}]\n---\n"
        "apiVersion: meshgate/v1\nkind: AccessPolicy\nname: catalog-in\ntarget: {service: catalog}\n"
        "rules: [{action: allow}]\n",
    )
    result = load(tmp_path)
    assert result.ok
    assert len(result.files) == 4
    policies = loaded(tmp_path)
    assert sorted(policies.services) == ["catalog", "orders", "web"]
    assert sorted(p.name for p in policies.access_policies) == ["catalog-in", "orders-in"]
    assert len(policies.documents()) == 6


def test_several_folders_load_as_one_set(tmp_path: Path) -> None:
    write(tmp_path / "a", "mesh.yaml", MESH)
    write(tmp_path / "b", "svc.yaml", SERVICES)
    assert sorted(loaded(tmp_path / "a", tmp_path / "b").services) == ["orders", "web"]


def test_a_single_file_can_be_loaded(tmp_path: Path) -> None:
    f = write(tmp_path, "all.yaml", MESH + "---\n" + SERVICES)
    assert sorted(loaded(f).services) == ["orders", "web"]


def test_hidden_files_and_folders_and_editor_droppings_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    write(tmp_path, ".draft.yaml", "not: [valid")
    write(tmp_path, ".git/config.yaml", "not: [valid")
    write(tmp_path, "..2024_01_01/old.yaml", "not: [valid")
    write(tmp_path, "mesh.yaml~", "not: [valid")
    write(tmp_path, "#mesh.yaml#", "not: [valid")
    write(tmp_path, "README.md", "# docs")
    result = load(tmp_path)
    assert result.ok, result.errors
    assert result.files == (str(tmp_path / "mesh.yaml"),)


def test_empty_documents_between_separators_are_skipped(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        MESH + "---\n# apiVersion: meshgate/v1\n# kind: Service\n---\n" + SERVICES + "---\n",
    )
    assert sorted(loaded(tmp_path).services) == ["orders", "web"]


def test_rule_origins_are_recorded(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\n" + SERVICES + "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\n"
        "target: {service: web}\nrules:\n  - action: deny\n    to: {paths: [/x]}\n  - action: allow\n",
    )
    policies = loaded(tmp_path)
    origin = policies.origin(policies.access_policies[0])
    assert origin.file == str(f)
    assert origin.rule(0) == f"{f}:{line_of(f, 'action: deny')}"
    assert origin.rule(1) == f"{f}:{line_of(f, 'action: allow')}"


def test_version_is_stable_when_nothing_changes(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    write(tmp_path, "svc.yaml", SERVICES)
    assert loaded(tmp_path).version == loaded(tmp_path).version


def test_version_ignores_comments_and_formatting(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    before = loaded(tmp_path).version
    write(
        tmp_path,
        "mesh.yaml",
        "# the mesh\n" + MESH.replace("trustDomain: example.org", "trustDomain: 'example.org'"),
    )
    assert loaded(tmp_path).version == before


def test_version_changes_when_content_changes(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    before = loaded(tmp_path).version
    write(tmp_path, "mesh.yaml", MESH + "defaultAccess: deny\n")
    after = loaded(tmp_path).version
    assert after != before
    write(tmp_path, "mesh.yaml", MESH)
    assert loaded(tmp_path).version == before


def test_version_changes_when_a_file_is_added(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    before = loaded(tmp_path).version
    write(tmp_path, "svc.yaml", SERVICES)
    assert loaded(tmp_path).version != before


def test_policy_set_serializes_with_yaml_field_names(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH + "defaultAccess: deny\n")
    data = loaded(tmp_path).to_json()
    (mesh,) = data["documents"]  # type: ignore[misc]
    assert mesh["trustDomain"] == "example.org"
    assert mesh["defaultAccess"] == "deny"
    assert mesh["certificateTTL"] == "1d"
