"""Decision semantics: deny wins, implicit deny, Mesh default, audit mode, FILE:LINE citations."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_testlib import TD, allowed, decide, engine_for, line_of, load_set, policy, svc

from shared.policy.engine import PolicyEngine
from shared.policy.request import Caller, Request


def test_deny_wins_over_an_allow_listed_first(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy(
            "p",
            "orders",
            """
            - action: allow
              from: {services: [web]}
            - action: deny
              to: {paths: [/admin/*]}
            """,
        ),
    )
    assert allowed(engine, svc("web"), path="/orders/1")
    decision = decide(engine, svc("web"), path="/admin/users")
    assert not decision.allowed
    assert (
        decision.rule == f"{tmp_path / 'policies.yaml'}:{line_of(tmp_path / 'policies.yaml', 'action: deny')}"
    )


def test_deny_in_one_policy_wins_over_allow_in_another(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy("allow-all", "orders", "- action: allow\n")
        + policy("no-billing", "orders", "- action: deny\n  from: {services: [billing]}\n"),
    )
    assert allowed(engine, svc("web"))
    decision = decide(engine, svc("billing"))
    assert not decision.allowed
    assert decision.policy == "no-billing"
    assert "deny by AccessPolicy/no-billing" in decision.reason


def test_target_with_a_policy_denies_what_no_rule_allows(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy("p", "orders", "- action: allow\n  from: {services: [web]}\n"),
        default_access="allow",
    )
    decision = decide(engine, svc("catalog"))
    assert not decision.allowed
    assert decision.rule == "default"
    assert decision.policy == "p"
    assert "no rule allows it" in decision.reason


@pytest.mark.parametrize("default_access", ["allow", "deny"])
def test_target_without_policy_follows_mesh_default_access(tmp_path: Path, default_access: str) -> None:
    engine = engine_for(tmp_path, policy("p", "orders", "- action: deny\n"), default_access=default_access)
    decision = decide(engine, svc("web"), target="catalog")
    assert decision.allowed is (default_access == "allow")
    assert decision.rule == "default"
    assert decision.policy is None
    assert decision.audit is None
    assert f"Mesh default is {default_access}" in decision.reason


def test_undeclared_target_follows_mesh_default(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "", default_access="allow")
    assert decide(engine, svc("web"), target="not-declared").allowed


def test_audit_policy_alone_is_reported_but_never_blocks(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy("shadow", "orders", "- action: deny\n  from: {services: [web]}\n", mode="audit"),
        "allow",
    )
    decision = decide(engine, svc("web"))
    assert decision.allowed
    assert decision.rule == "default"
    assert decision.audit is not None and decision.audit_mode
    assert decision.audit.allowed is False
    assert decision.audit.policy == "shadow"
    f = tmp_path / "policies.yaml"
    assert decision.audit.rule == f"{f}:{line_of(f, 'action: deny')}"


def test_audit_only_target_still_follows_mesh_default_deny(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, policy("shadow", "orders", "- action: allow\n", mode="audit"), "deny")
    decision = decide(engine, svc("web"))
    assert not decision.allowed and decision.rule == "default"
    assert decision.audit is not None and decision.audit.allowed


def test_audit_deny_alongside_enforce_allow_does_not_block(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy("enforced", "orders", "- action: allow\n  from: {services: [web]}\n")
        + policy("shadow", "orders", "- action: deny\n  to: {methods: [POST]}\n", mode="audit"),
    )
    decision = decide(engine, svc("web"), method="POST")
    assert decision.allowed
    assert decision.policy == "enforced"
    assert (
        decision.audit is not None and decision.audit.allowed is False and decision.audit.policy == "shadow"
    )
    get = decide(engine, svc("web"), method="GET")
    assert get.allowed and get.audit is not None
    assert get.audit.allowed is False and get.audit.rule == "default"  # nothing in the audit set allows it


def test_audit_allow_alongside_enforce_deny_does_not_unblock(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy("enforced", "orders", "- action: allow\n  from: {services: [web]}\n")
        + policy("shadow", "orders", "- action: allow\n", mode="audit"),
    )
    decision = decide(engine, svc("catalog"))
    assert not decision.allowed
    assert decision.audit is not None and decision.audit.allowed


def test_enforce_only_decisions_carry_no_audit(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, policy("p", "orders", "- action: allow\n"))
    decision = decide(engine, svc("web"))
    assert decision.audit is None and not decision.audit_mode


def test_decisions_cite_the_rule_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "access").mkdir()
    second = tmp_path / "access" / "orders.yaml"
    second.write_text(
        "# orders\n"
        + policy(
            "orders-in",
            "orders",
            """
            - name: no-admin
              action: deny
              to: {paths: [/admin, /admin/*]}
            - name: from-web
              action: allow
              from: {services: [web]}
            - action: allow
              from: {services: [catalog]}
              to: {methods: [GET]}
            """,
        ).removeprefix("---\n")
    )
    engine = PolicyEngine(load_set(tmp_path, ""))
    admin = decide(engine, svc("web"), path="/admin")
    assert admin.rule == f"{second}:{line_of(second, '- name: no-admin')}"
    web = decide(engine, svc("web"), path="/orders")
    assert web.rule == f"{second}:{line_of(second, '- name: from-web')}"
    assert "from-web" in web.reason
    catalog = decide(engine, svc("catalog"))
    assert catalog.rule == f"{second}:{line_of(second, '- action: allow')}"
    assert "rules[2]" in catalog.reason


def test_flow_style_rules_are_cited_by_their_own_line(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: p\ntarget: {service: orders}\nrules:\n"
        "  - {action: deny, from: {services: [billing]}}\n  - {action: allow}\n",
    )
    f = tmp_path / "policies.yaml"
    assert decide(engine, svc("billing")).rule == f"{f}:{line_of(f, 'action: deny')}"
    assert decide(engine, svc("web")).rule == f"{f}:{line_of(f, '{action: allow}')}"


def test_first_matching_allow_in_source_order_is_cited(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy(
            "p",
            "orders",
            """
            - name: anyone-get
              action: allow
              to: {methods: [GET]}
            - name: web-anything
              action: allow
              from: {services: [web]}
            """,
        ),
    )
    assert "anyone-get" in decide(engine, svc("web"), method="GET").reason
    assert "web-anything" in decide(engine, svc("web"), method="POST").reason
    assert "anyone-get" in decide(engine, svc("catalog"), method="GET").reason


def test_rules_for_other_services_and_general_rules_combine(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy(
            "p",
            "orders",
            """
            - action: deny
              to: {paths: [/internal/*]}
            - action: allow
              from: {services: [web]}
              to: {methods: [GET]}
            - action: allow
              from: {services: [cat*]}
            - action: deny
              from: {services: [catalog]}
              to: {methods: [DELETE]}
            """,
        ),
    )
    assert allowed(engine, svc("web"), method="GET")
    assert not allowed(engine, svc("web"), method="POST")
    assert not allowed(engine, svc("web"), path="/internal/x")
    assert allowed(engine, svc("catalog"), method="POST")
    assert not allowed(engine, svc("catalog"), method="DELETE")
    assert not allowed(engine, svc("catalog"), path="/internal/x")
    assert allowed(engine, svc("catalogue"), method="DELETE")
    assert not allowed(engine, svc("billing"))


def test_route_policies_are_decided_per_route(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        "---\napiVersion: meshgate/v1\nkind: Route\nname: api\nbackends: [{service: orders}]\n"
        "---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: api-users\ntarget: {route: api}\n"
        "rules:\n  - action: allow\n    from: {requestPrincipals: ['*']}\n",
    )
    anonymous = Caller.from_identity(None)
    alice = Caller.from_identity(None, principal="alice")
    assert engine.decide_route(alice, "api", Request("GET", "/")).allowed
    denied = engine.decide_route(anonymous, "api", Request("GET", "/"))
    assert not denied.allowed and denied.rule == "default"
    assert not engine.decide(alice, "orders", Request("GET", "/")).allowed  # Mesh default deny


def test_unnormalizable_path_is_denied_even_by_allow_all(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, policy("p", "orders", "- action: allow\n"), default_access="allow")
    for path in ("/a%ffb", "/a%00b", "admin", "*", "/%2561dmin"):
        decision = decide(engine, svc("web"), path=path)
        assert not decision.allowed, path
        assert decision.rule == "default"
    assert not decide(engine, svc("web"), target="catalog", path="/a%ff").allowed


def test_method_is_compared_case_insensitively(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, policy("p", "orders", "- action: allow\n  to: {methods: [get]}\n"))
    assert allowed(engine, svc("web"), method="get")
    assert allowed(engine, svc("web"), method="GET")
    assert not allowed(engine, svc("web"), method="POST")


def test_unauthenticated_caller_matches_no_identity_rule(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy(
            "p",
            "orders",
            """
            - action: allow
              from: {services: ['*']}
            - action: allow
              from: {principals: ['*']}
            - action: allow
              from: {namespaces: ['*']}
            - action: allow
              from: {services: [web], requestPrincipals: ['*']}
            """,
        ),
    )
    assert not allowed(engine, Caller.from_identity(None))
    assert not allowed(engine, Caller.from_identity(None, principal="alice"))
    assert allowed(engine, svc("web"))


def test_rule_without_from_matches_unauthenticated_callers(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, policy("p", "orders", "- action: allow\n  to: {paths: [/public/*]}\n"))
    assert allowed(engine, Caller.from_identity(None), path="/public/x")
    assert not allowed(engine, Caller.from_identity(None), path="/private")


def test_foreign_trust_domain_never_matches_bare_service_names(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        policy(
            "p",
            "orders",
            """
            - action: allow
              from: {services: [web, 'cat*', '*']}
            - action: allow
              from: {namespaces: [default]}
            """,
        ),
    )
    assert allowed(engine, svc("web"))
    for name in ("web", "catalog", "anything"):
        assert not allowed(engine, svc(name, trust_domain="evil.example"))
    assert not allowed(engine, svc("web", trust_domain=f"{TD}.evil.example"))
    assert not allowed(engine, svc("web", trust_domain="Example.org"))


def test_foreign_trust_domain_matches_a_rule_with_its_full_spiffe_id(tmp_path: Path) -> None:
    foreign = "spiffe://partner.example/ns/default/sa/web"
    engine = engine_for(
        tmp_path, policy("p", "orders", f"- action: allow\n  from: {{principals: ['{foreign}']}}\n")
    )
    assert allowed(engine, Caller.from_identity(foreign))
    assert not allowed(engine, svc("web"))


def test_spiffe_id_outside_the_ns_sa_shape_has_no_service(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, policy("p", "orders", "- action: allow\n  from: {services: [web]}\n"))
    for identity in (
        f"spiffe://{TD}/web",
        f"spiffe://{TD}/ns/default/sa/web/extra",
        f"spiffe://{TD}/ns//sa/web",
        f"spiffe://{TD}/sa/web/ns/default",
    ):
        assert not allowed(engine, Caller.from_identity(identity)), identity
