"""Validation of policy documents: every error is ``FILE:LINE: Kind/name: field.path: message``."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_testlib import MESH, SERVICES, assert_error, errors_of, line_of, load, only_error, write


def test_unknown_field_names_the_field_and_suggests_the_right_one(tmp_path: Path) -> None:
    f = write(
        tmp_path, "p.yaml", MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\nprotocl: http\n"
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "protocl:"), "Service/web", "protocl", "unknown field 'protocl'")
    assert "did you mean 'protocol'?" in err.message


def test_unknown_nested_field_gives_the_dotted_path(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\ntrafficPolicy:\n  timout: 2s\n",
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "timout:"), "Service/web", "trafficPolicy.timout", "unknown field")
    assert "did you mean 'timeout'?" in err.message


def test_unknown_kind_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", MESH + "---\napiVersion: meshgate/v1\nkind: Servce\nname: web\n")
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "kind: Servce"), "", "kind", "unknown kind 'Servce'", "'Service'")


def test_missing_kind_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", MESH + "---\napiVersion: meshgate/v1\nname: web\n")
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "apiVersion", nth=2), "", "kind", "required field is missing")


def test_wrong_type_names_the_field_and_shows_the_value(tmp_path: Path) -> None:
    f = write(
        tmp_path, "p.yaml", MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\nport: http\n"
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "port:"), "Service/web", "port", "integer", "'http'")


def test_list_where_a_mapping_is_expected_is_a_type_error(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\n" + SERVICES.replace("name: orders", "name: orders\ntrafficPolicy: [timeout]"),
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "trafficPolicy:"), "Service/orders", "trafficPolicy")


def test_missing_required_field_points_at_the_document(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH
        + "---\n"
        + SERVICES
        + "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget: {service: web}\n",
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "kind: AccessPolicy") - 1, "AccessPolicy/p", "rules", "required field")


def test_missing_trust_domain_in_mesh(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", "apiVersion: meshgate/v1\nkind: Mesh\nname: demo\n")
    err = only_error(tmp_path)  # and not also "no Mesh document": there is one, it is invalid
    assert_error(err, f, 1, "Mesh/demo", "trustDomain", "required field is missing")


def test_bad_enum_value_lists_the_choices_and_the_value(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH
        + "---\n"
        + SERVICES
        + "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget: {service: web}\n"
        + "mode: enforcing\nrules:\n  - action: allow\n",
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "mode:"), "AccessPolicy/p", "mode", "'enforce'", "'audit'", "'enforcing'")


def test_bad_rule_action_names_the_rule_item(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH
        + "---\n"
        + SERVICES
        + "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget: {service: web}\n"
        + "rules:\n  - action: allow\n  - action: permit\n",
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "action: permit"), "AccessPolicy/p", "rules[1].action", "'permit'")


def test_duplicate_yaml_key_is_an_error_not_last_wins(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\nport: 80\nport: 81\n",
    )
    err = only_error(tmp_path)
    assert_error(
        err,
        f,
        line_of(f, "port: 81"),
        "Service/web",
        "port",
        f"duplicate key 'port' (first at line {line_of(f, 'port: 80')})",
    )


def test_duplicate_yaml_key_in_a_nested_mapping(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\n"
        "trafficPolicy:\n  timeout: 1s\n  timeout: 2s\n",
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "timeout: 2s"), "Service/web", "trafficPolicy.timeout", "duplicate key")


def test_duplicate_document_names_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", MESH + "---\n" + SERVICES)
    second = write(tmp_path, "sub/b.yaml", "# again\napiVersion: meshgate/v1\nkind: Service\nname: orders\n")
    err = only_error(tmp_path)
    where = f"{first}:{line_of(first, 'name: orders') - 2}"
    assert_error(
        err, second, 2, "Service/orders", "name", "duplicate Service/orders", f"first defined at {where}"
    )


def test_same_name_in_different_kinds_is_fine(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        MESH
        + "---\n"
        + SERVICES
        + "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: web\ntarget: {service: web}\n"
        + "rules: [{action: allow}]\n",
    )
    result = load(tmp_path)
    assert result.ok, "\n".join(str(e) for e in result.errors)


def test_access_policy_naming_an_undeclared_service(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH
        + "---\n"
        + SERVICES
        + "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget:\n  service: ordrs\n"
        + "rules: [{action: allow}]\n",
    )
    err = only_error(tmp_path)
    assert_error(
        err, f, line_of(f, "service: ordrs"), "AccessPolicy/p", "target.service", "no Service named 'ordrs'"
    )
    assert "did you mean 'orders'?" in err.message


def test_access_policy_naming_an_unknown_route(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH
        + "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget: {route: nope}\n"
        + "rules: [{action: allow}]\n",
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "target:"), "AccessPolicy/p", "target.route", "no Route named 'nope'")


ROUTE = """\
---
apiVersion: meshgate/v1
kind: Route
name: api
backends:
  - service: web
  - service: billing
auth: [jwt-users]
rateLimit: per-user
"""


def test_route_naming_an_undeclared_service(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\n" + SERVICES + ROUTE.replace("auth: [jwt-users]\nrateLimit: per-user\n", ""),
    )
    err = only_error(tmp_path)
    assert_error(
        err,
        f,
        line_of(f, "service: billing"),
        "Route/api",
        "backends[1].service",
        "no Service named 'billing'",
    )


def test_route_naming_an_unknown_auth_provider_and_rate_limit(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", MESH + "---\n" + SERVICES + ROUTE.replace("  - service: billing\n", ""))
    auth, limit = errors_of(tmp_path)
    assert_error(auth, f, line_of(f, "auth:"), "Route/api", "auth[0]", "no AuthProvider named 'jwt-users'")
    assert_error(
        limit, f, line_of(f, "rateLimit:"), "Route/api", "rateLimit", "no RateLimit named 'per-user'"
    )


def test_two_mesh_documents(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", MESH)
    second = write(
        tmp_path, "b.yaml", "apiVersion: meshgate/v1\nkind: Mesh\nname: other\ntrustDomain: other.org\n"
    )
    err = only_error(tmp_path)
    assert_error(err, second, 1, "Mesh/other", "", "only one Mesh per set", f"first at {first}:1")


def test_no_mesh_document(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", SERVICES)
    err = only_error(tmp_path)
    assert_error(err, f, 1, "", "", "no Mesh document")


def test_no_mesh_is_not_claimed_while_a_file_cannot_be_parsed(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", SERVICES)
    f = write(tmp_path, "mesh.yaml", "apiVersion: meshgate/v1\nkind: Mesh\ntrustDomain: [example.org\n")
    err = only_error(tmp_path)
    assert err.file == str(f) and "invalid YAML" in err.message


def test_bad_duration_without_unit(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\ntrafficPolicy:\n  timeout: 2\n",
    )
    err = only_error(tmp_path)
    assert_error(
        err, f, line_of(f, "timeout: 2"), "Service/web", "trafficPolicy.timeout", "needs a unit", "2s"
    )


def test_bad_duration_word(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\n"
        "trafficPolicy:\n  retries:\n    perTryTimeout: fast\n",
    )
    err = only_error(tmp_path)
    assert_error(
        err,
        f,
        line_of(f, "perTryTimeout"),
        "Service/web",
        "trafficPolicy.retries.perTryTimeout",
        "invalid duration 'fast'",
    )


def test_bad_percentage(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH
        + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\ntrafficPolicy:\n"
        + "  outlierDetection:\n    maxEjectionPercent: 120%\n",
    )
    err = only_error(tmp_path)
    assert_error(
        err,
        f,
        line_of(f, "maxEjectionPercent"),
        "Service/web",
        "trafficPolicy.outlierDetection.maxEjectionPercent",
        "'120%' is outside 0%..100%",
    )


POLICY_HEAD = (
    MESH
    + "---\n"
    + SERVICES
    + """\
---
apiVersion: meshgate/v1
kind: AccessPolicy
name: p
target: {service: orders}
rules:
  - action: allow
"""
)


def test_bad_cidr(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", POLICY_HEAD + "    from:\n      ipBlocks: [10.0.0.0/8, 10.0.0.0/33]\n")
    err = only_error(tmp_path)
    assert_error(
        err,
        f,
        line_of(f, "ipBlocks"),
        "AccessPolicy/p",
        "rules[0].from.ipBlocks[1]",
        "invalid IP address or CIDR block '10.0.0.0/33'",
    )


def test_bad_cidr_in_a_source_ip_condition(tmp_path: Path) -> None:
    f = write(
        tmp_path, "p.yaml", POLICY_HEAD + "    when:\n      - key: source.ip\n        values: [300.1.1.1]\n"
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "- key: source.ip"), "AccessPolicy/p", "rules[0].when[0]", "'300.1.1.1'")


def test_bad_regex(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        POLICY_HEAD + "    to:\n      headers:\n        - name: x-user\n          regex: '(['\n",
    )
    err = only_error(tmp_path)
    assert_error(
        err,
        f,
        line_of(f, "regex:"),
        "AccessPolicy/p",
        "rules[0].to.headers[0].regex",
        "invalid regular expression '(['",
    )


def test_bad_spiffe_principal(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        POLICY_HEAD
        + "    from:\n      principals:\n        - spiffe://example.org/ns/default/sa/web\n        - web\n",
    )
    err = only_error(tmp_path)
    assert_error(
        err,
        f,
        line_of(f, "- web"),
        "AccessPolicy/p",
        "rules[0].from.principals[1]",
        "'web' is not a SPIFFE ID",
    )


def test_spiffe_id_under_services_is_an_error(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        POLICY_HEAD + "    from:\n      services: [spiffe://example.org/ns/default/sa/web]\n",
    )
    err = only_error(tmp_path)
    assert_error(
        err, f, line_of(f, "services: [spiffe"), "AccessPolicy/p", "rules[0].from.services[0]", "principals"
    )


def test_both_bad_identity_entries_are_reported(tmp_path: Path) -> None:
    write(
        tmp_path, "p.yaml", POLICY_HEAD + "    from:\n      principals: [web]\n      services: [spiffe://x]\n"
    )
    fields = [e.field for e in errors_of(tmp_path)]
    assert fields == ["rules[0].from.principals[0]", "rules[0].from.services[0]"]


def test_yaml_boolean_where_a_string_is_expected_gives_the_quoting_hint(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "p.yaml",
        MESH + "---\napiVersion: meshgate/v1\nkind: Service\nname: web\ndescription: yes\n",
    )
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "description:"), "Service/web", "description", "quote the value")


def test_yaml_boolean_in_a_header_value(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", POLICY_HEAD + "    to:\n      headers: [{name: x-debug, exact: on}]\n")
    err = only_error(tmp_path)
    assert_error(
        err, f, line_of(f, "x-debug"), "AccessPolicy/p", "rules[0].to.headers[0].exact", "quote the value"
    )


def test_unsupported_api_version(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", MESH + "---\napiVersion: meshgate/v2\nkind: Service\nname: web\n")
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "meshgate/v2"), "Service/web", "apiVersion", "meshgate/v1")


def test_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", MESH + "---\n- just\n- a list\n")
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "- just"), "", "", "must be a mapping")


def test_all_errors_of_a_run_are_reported_together_and_sorted(tmp_path: Path) -> None:
    b = write(
        tmp_path, "b.yaml", "apiVersion: meshgate/v1\nkind: Service\nname: web\nport: http\nprotocl: x\n"
    )
    a = write(tmp_path, "a.yaml", MESH + "---\napiVersion: meshgate/v1\nkind: Servce\nname: x\n")
    c = write(tmp_path, "nested/c.yaml", "apiVersion: meshgate/v1\nkind: Service\nname: Bad_Name\n")
    errors = errors_of(tmp_path)
    assert [(e.file, e.line) for e in errors] == [
        (str(a), 6),
        (str(b), 4),
        (str(b), 5),
        (str(c), 3),
    ]
    assert errors == sorted(errors)
    assert_error(errors[0], a, 6, "", "kind", "unknown kind")
    assert_error(errors[1], b, 4, "Service/web", "port")
    assert_error(errors[2], b, 5, "Service/web", "protocl", "unknown field")
    assert_error(errors[3], c, 3, "Service/Bad_Name", "name", "invalid name")


PLAIN_ROUTE = (
    "---\napiVersion: meshgate/v1\nkind: Route\nname: r\n"
    "match: {path: {prefix: /}}\nbackends: [{service: web}]\n"
)


@pytest.mark.parametrize("value", ["1.5", "[1]", "null", "{a: 1}"])
def test_a_size_of_the_wrong_type_is_an_error_not_a_crash(tmp_path: Path, value: str) -> None:
    """It raised AttributeError/TypeError out of the loader (a traceback in policy check, a dead
    watcher task in the control plane)."""
    f = write(tmp_path, "p.yaml", MESH + "---\n" + SERVICES + PLAIN_ROUTE + f"maxBodySize: {value}\n")
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "maxBodySize:"), "Route/r", "maxBodySize", "expected a size")


@pytest.mark.parametrize("value", ["[1]", "{a: 1}", "null"])
def test_a_percentage_of_the_wrong_type_is_an_error_not_a_crash(tmp_path: Path, value: str) -> None:
    text = "---\napiVersion: meshgate/v1\nkind: Service\nname: x\ntrafficPolicy:\n  outlierDetection:\n"
    write(tmp_path, "p.yaml", MESH + text + f"    maxEjectionPercent: {value}\n")
    err = only_error(tmp_path)
    assert err.field == "trafficPolicy.outlierDetection.maxEjectionPercent"
    assert "expected a percentage" in err.message, err


def test_certificate_ttl_must_be_positive(tmp_path: Path) -> None:
    """The CA refuses a zero TTL: every certificate request was a 500 with a set that passed check."""
    f = write(tmp_path, "p.yaml", MESH + "certificateTTL: 0s\n")
    err = only_error(tmp_path)
    assert err.ref == "Mesh/mesh" and "certificateTTL must be positive" in err.message, err
    assert err.file == str(f)


def test_rate_limit_requests_are_bounded(tmp_path: Path) -> None:
    """Lua's numbers are exact to 2^53: 10^19 requests broke the RateLimit header."""
    text = "---\napiVersion: meshgate/v1\nkind: RateLimit\nname: big\nkey: [{type: clientAddress}]\n"
    write(tmp_path, "p.yaml", MESH + text + "limits: [{requests: 10000000000000000000, per: 1s}]\n")
    err = only_error(tmp_path)
    assert err.ref == "RateLimit/big" and "less than or equal to 1000000000000" in err.message, err


@pytest.mark.parametrize("regex", ["(a+)+$", "(a*)*", "(x|y+)*z", "(\\\\w+)*$"])
def test_a_regex_with_catastrophic_backtracking_is_refused(tmp_path: Path, regex: str) -> None:
    """(a+)+$ against a 25-character header took 0.74 s per request, 8 times more every 3 characters:
    a client could stall the event loop. Such nesting is refused at load."""
    f = write(
        tmp_path,
        "p.yaml",
        POLICY_HEAD + f'    to:\n      headers:\n        - name: x-user\n          regex: "{regex}"\n',
    )
    err = only_error(tmp_path)
    assert_error(
        err, f, line_of(f, "regex:"), "AccessPolicy/p", "rules[0].to.headers[0].regex", "repeats a repetition"
    )


@pytest.mark.parametrize("regex", ["[a-z]+(-[a-z]+)*", "^/api/v[0-9]+/.*$", "(ab)+", "(a|b)*c+", "v[12]"])
def test_ordinary_regexes_pass(tmp_path: Path, regex: str) -> None:
    write(
        tmp_path,
        "p.yaml",
        POLICY_HEAD + f'    to:\n      headers:\n        - name: x-user\n          regex: "{regex}"\n',
    )
    assert load(tmp_path / "p.yaml").ok


@pytest.mark.parametrize(
    ("pattern", "hint"), [("/a%2Fb", "/a/b"), ("//dbl/*", "/dbl/*"), ("/x/../secret", "/secret")]
)
def test_a_path_pattern_requests_can_never_match_is_refused(tmp_path: Path, pattern: str, hint: str) -> None:
    """Requests are matched after normalization, so a deny rule on /a%2Fb matched nothing (ALLOW)."""
    write(tmp_path, "p.yaml", POLICY_HEAD + f'    to:\n      paths: ["{pattern}"]\n')
    err = only_error(tmp_path)
    assert "is not in the" in err.message and f"write '{hint}'" in err.message, err


@pytest.mark.parametrize("pattern", ["/.*", "/static/.*", "/api/*", "/api/"])
def test_prefix_patterns_with_a_partial_last_segment_pass(tmp_path: Path, pattern: str) -> None:
    """/.* (dotfiles) is a prefix of normalized paths such as /.env: not refused as "/." would be."""
    write(tmp_path, "p.yaml", POLICY_HEAD + f'    to:\n      paths: ["{pattern}"]\n')
    assert load(tmp_path / "p.yaml").ok


def test_yaml_booleans_are_not_numbers(tmp_path: Path) -> None:
    """``requests: true`` was read as 1 and ``weight: false`` as 0, silently."""
    text = "---\napiVersion: meshgate/v1\nkind: RateLimit\nname: rl\nkey: [{type: clientAddress}]\n"
    write(tmp_path, "p.yaml", MESH + text + "limits: [{requests: true, per: 1s}]\n")
    err = only_error(tmp_path)
    assert err.ref == "RateLimit/rl" and err.field == "limits[0].requests", err
    assert "expected a number, not true" in err.message


@pytest.mark.parametrize("value", ["orders\n", "x-a\n"])
def test_a_trailing_newline_is_no_part_of_a_name(value: str) -> None:
    """``re.match`` with ``$`` lets one trailing newline through: names, trust domains and header
    names are matched whole."""
    from pydantic import TypeAdapter, ValidationError

    from shared.config.model.types import HeaderName, Name, TrustDomain

    for kind in (Name, HeaderName, TrustDomain):
        with pytest.raises(ValidationError):
            TypeAdapter(kind).validate_python(value)
