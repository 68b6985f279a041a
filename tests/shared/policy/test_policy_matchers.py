"""Each matcher of a rule, driven through the engine: one allow rule, Mesh default deny."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from policy_testlib import TD, allowed, engine_for, policy, svc

from shared.policy.engine import PolicyEngine
from shared.policy.request import Caller


def only_rule(tmp_path: Path, rule: str) -> PolicyEngine:
    """An engine whose ``orders`` allows exactly what ``rule`` (YAML under ``- action: allow``) says."""
    return engine_for(tmp_path, policy("p", "orders", "- action: allow\n" + rule))


@pytest.mark.parametrize(
    ("patterns", "caller", "expected"),
    [
        ("[web]", "web", True),
        ("[web]", "webx", False),
        ("[web]", "we", False),
        ("['web*']", "web-v2", True),
        ("['web*']", "web", True),
        ("['web*']", "api-web", False),
        ("['*']", "anything", True),
        ("[catalog, web]", "catalog", True),
    ],
)
def test_services_exact_prefix_and_wildcard(
    tmp_path: Path, patterns: str, caller: str, expected: bool
) -> None:
    engine = only_rule(tmp_path, f"  from: {{services: {patterns}}}\n")
    assert allowed(engine, svc(caller)) is expected


def test_namespaces(tmp_path: Path) -> None:
    engine = only_rule(tmp_path, "  from: {namespaces: [prod, 'team-*']}\n")
    assert allowed(engine, svc("web", namespace="prod"))
    assert allowed(engine, svc("web", namespace="team-a"))
    assert not allowed(engine, svc("web", namespace="default"))


@pytest.mark.parametrize(
    ("pattern", "identity", "expected"),
    [
        (f"spiffe://{TD}/ns/prod/sa/web", f"spiffe://{TD}/ns/prod/sa/web", True),
        (f"spiffe://{TD}/ns/prod/sa/web", f"spiffe://{TD}/ns/dev/sa/web", False),
        (f"spiffe://{TD}/ns/prod/*", f"spiffe://{TD}/ns/prod/sa/api", True),
        (f"spiffe://{TD}/ns/prod/*", f"spiffe://{TD}/ns/production/sa/api", False),
        ("spiffe://partner.example/*", "spiffe://partner.example/ns/x/sa/y", True),
        ("spiffe://partner.example/*", f"spiffe://{TD}/ns/x/sa/y", False),
        ("*", "spiffe://anyone.example/whatever", True),
    ],
)
def test_principals_spiffe_id_globs(tmp_path: Path, pattern: str, identity: str, expected: bool) -> None:
    engine = only_rule(tmp_path, f"  from: {{principals: ['{pattern}']}}\n")
    assert allowed(engine, Caller.from_identity(identity)) is expected


@pytest.mark.parametrize(
    ("principal", "expected"),
    [("alice", True), ("https://issuer.example/bob", True), ("mallory", False), (None, False)],
)
def test_request_principals(tmp_path: Path, principal: str | None, expected: bool) -> None:
    engine = only_rule(tmp_path, "  from: {requestPrincipals: [alice, 'https://issuer.example/*']}\n")
    assert allowed(engine, svc("gateway", principal=principal)) is expected


def test_request_principals_wildcard_needs_some_principal(tmp_path: Path) -> None:
    engine = only_rule(tmp_path, "  from: {requestPrincipals: ['*']}\n")
    assert allowed(engine, svc("gateway", principal="anyone"))
    assert not allowed(engine, svc("gateway"))


def test_methods(tmp_path: Path) -> None:
    engine = only_rule(tmp_path, "  to: {methods: [GET, HEAD]}\n")
    assert allowed(engine, svc("web"), method="GET")
    assert allowed(engine, svc("web"), method="HEAD")
    assert not allowed(engine, svc("web"), method="POST")


def test_method_wildcard(tmp_path: Path) -> None:
    engine = only_rule(tmp_path, "  to: {methods: ['*']}\n")
    assert allowed(engine, svc("web"), method="PATCH")


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/orders", "/orders", True),
        ("/orders", "/orders/", False),
        ("/orders", "/orders/1", False),
        ("/orders", "/order", False),
        ("/orders/*", "/orders/1", True),
        ("/orders/*", "/orders/1/items", True),
        ("/orders/*", "/orders/", True),
        ("/orders/*", "/orders", False),
        ("/orders/*", "/ordersx/1", False),
        ("*.json", "/a/b.json", True),
        ("*.json", "/a/b.jsonx", False),
        ("*", "/anything/at/all", True),
        ("*", "/", True),
        ("/orders", "/orders?debug=1", True),
        ("/orders", "/orders#frag", True),
    ],
)
def test_paths(tmp_path: Path, pattern: str, path: str, expected: bool) -> None:
    engine = only_rule(tmp_path, f"  to: {{paths: ['{pattern}']}}\n")
    assert allowed(engine, svc("web"), path=path) is expected


def test_not_paths(tmp_path: Path) -> None:
    engine = only_rule(tmp_path, "  to: {paths: ['/api/*'], notPaths: ['/api/admin/*', '*.bak']}\n")
    assert allowed(engine, svc("web"), path="/api/orders")
    assert not allowed(engine, svc("web"), path="/api/admin/users")
    assert not allowed(engine, svc("web"), path="/api/%61dmin/users")
    assert not allowed(engine, svc("web"), path="/api/db.bak")
    assert not allowed(engine, svc("web"), path="/other")


@pytest.mark.parametrize(
    ("matcher", "headers", "expected"),
    [
        ("{name: x-env, exact: prod}", {"x-env": "prod"}, True),
        ("{name: x-env, exact: prod}", {"x-env": "production"}, False),
        ("{name: x-env, exact: prod}", {}, False),
        ("{name: X-Env, exact: prod}", {"x-env": "prod"}, True),
        ("{name: authorization, prefix: 'Bearer '}", {"authorization": "Bearer abc"}, True),
        ("{name: authorization, prefix: 'Bearer '}", {"authorization": "Basic abc"}, False),
        ("{name: x-debug, present: true}", {"x-debug": ""}, True),
        ("{name: x-debug, present: true}", {}, False),
        ("{name: x-debug, present: false}", {}, True),
        ("{name: x-debug, present: false}", {"x-debug": "1"}, False),
        ("{name: x-user, regex: 'u-[0-9]+'}", {"x-user": "u-42"}, True),
        ("{name: x-user, regex: 'u-[0-9]+'}", {"x-user": "xu-42"}, False),
        ("{name: x-user, regex: 'u-[0-9]+'}", {"x-user": "u-42x"}, False),
        ("{name: x-user, regex: 'u-[0-9]+'}", {}, False),
    ],
)
def test_headers(tmp_path: Path, matcher: str, headers: dict[str, str], expected: bool) -> None:
    engine = only_rule(tmp_path, f"  to: {{headers: [{matcher}]}}\n")
    assert allowed(engine, svc("web"), headers=headers) is expected


def test_several_header_matchers_are_anded(tmp_path: Path) -> None:
    engine = only_rule(tmp_path, "  to: {headers: [{name: a, exact: '1'}, {name: b, present: true}]}\n")
    assert allowed(engine, svc("web"), headers={"a": "1", "b": "x"})
    assert not allowed(engine, svc("web"), headers={"a": "1"})


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.1.7", True),
        ("192.168.1.8", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        (None, False),
    ],
)
def test_ip_blocks_v4_and_v6(tmp_path: Path, address: str | None, expected: bool) -> None:
    engine = only_rule(tmp_path, "  from: {ipBlocks: [10.0.0.0/8, 192.168.1.7, '2001:db8::/32']}\n")
    assert allowed(engine, svc("web", address=address)) is expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.1.2.3", False), ("172.16.0.1", True), ("fd00::1", False), ("2001:db8::1", True), (None, False)],
)
def test_not_ip_blocks_v4_and_v6(tmp_path: Path, address: str | None, expected: bool) -> None:
    engine = only_rule(tmp_path, "  from: {notIpBlocks: [10.0.0.0/8, 'fd00::/8']}\n")
    assert allowed(engine, svc("web", address=address)) is expected


@pytest.mark.parametrize(
    ("claim", "claims", "expected"),
    [
        ("{claim: iss, equals: https://issuer.example}", {"iss": "https://issuer.example"}, True),
        ("{claim: iss, equals: https://issuer.example}", {"iss": "https://evil.example"}, False),
        ("{claim: iss, equals: https://issuer.example}", {}, False),
        ("{claim: email_verified, equals: true}", {"email_verified": True}, True),
        ("{claim: email_verified, equals: true}", {"email_verified": "true"}, False),
        ("{claim: email_verified, equals: true}", {"email_verified": 1}, False),
        ("{claim: tier, equals: 2}", {"tier": 2}, True),
        ("{claim: tier, equals: 2}", {"tier": "2"}, False),
        ("{claim: tier, equals: 1}", {"tier": True}, False),
        ("{claim: groups, contains: admins}", {"groups": ["users", "admins"]}, True),
        ("{claim: groups, contains: admins}", {"groups": ["users"]}, False),
        ("{claim: groups, contains: admins}", {"groups": "admins-old"}, False),
        ("{claim: scope, contains: orders.write}", {"scope": "orders.read orders.write"}, True),
        ("{claim: scope, contains: orders.write}", {"scope": "orders.writer"}, False),
        ("{claim: scope, contains: orders.write}", {"scope": "orders.read"}, False),
        ("{claim: realm.roles, contains: ops}", {"realm": {"roles": ["ops"]}}, True),
        ("{claim: realm.roles, contains: ops}", {"realm": {"roles": ["dev"]}}, False),
        ("{claim: realm.name, equals: main}", {"realm": {"name": "main"}}, True),
        ("{claim: realm.name, equals: main}", {"realm": "main"}, False),
        ("{claim: ids, contains: 7}", {"ids": [1, 7]}, True),
    ],
)
def test_jwt_claims(tmp_path: Path, claim: str, claims: dict[str, Any], expected: bool) -> None:
    engine = only_rule(tmp_path, f"  from: {{claims: [{claim}]}}\n")
    assert allowed(engine, svc("gateway", claims=claims)) is expected


def when(tmp_path: Path, condition: str) -> PolicyEngine:
    return only_rule(tmp_path, "  when:\n    - " + condition + "\n")


def test_when_request_header_values(tmp_path: Path) -> None:
    engine = when(tmp_path, "{key: 'request.headers[X-Tenant]', values: [acme, 'beta-*']}")
    assert allowed(engine, svc("web"), headers={"x-tenant": "acme"})
    assert allowed(engine, svc("web"), headers={"x-tenant": "beta-1"})
    assert not allowed(engine, svc("web"), headers={"x-tenant": "other"})
    assert not allowed(engine, svc("web"))


def test_when_request_header_not_values(tmp_path: Path) -> None:
    engine = when(tmp_path, "{key: 'request.headers[x-tenant]', notValues: [blocked]}")
    assert allowed(engine, svc("web"), headers={"x-tenant": "acme"})
    assert not allowed(engine, svc("web"), headers={"x-tenant": "blocked"})
    assert allowed(engine, svc("web"))


def test_when_not_values_wildcard_means_header_absent(tmp_path: Path) -> None:
    engine = when(tmp_path, "{key: 'request.headers[x-meshgate-principal]', notValues: ['*']}")
    assert allowed(engine, svc("web"))
    assert not allowed(engine, svc("web"), headers={"x-meshgate-principal": "alice"})


def test_when_claims_with_nested_keys(tmp_path: Path) -> None:
    engine = when(tmp_path, "{key: 'request.auth.claims[realm][roles]', values: [ops]}")
    assert allowed(engine, svc("gateway", claims={"realm": {"roles": ["dev", "ops"]}}))
    assert not allowed(engine, svc("gateway", claims={"realm": {"roles": ["dev"]}}))
    assert not allowed(engine, svc("gateway", claims={"realm": "ops"}))
    assert not allowed(engine, svc("gateway"))


def test_when_claim_value(tmp_path: Path) -> None:
    engine = when(tmp_path, "{key: 'request.auth.claims[tier]', values: [gold]}")
    assert allowed(engine, svc("gateway", claims={"tier": "gold"}))
    assert not allowed(engine, svc("gateway", claims={"tier": "silver"}))


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.0.0.5", True), ("10.0.9.1", False), ("2001:db8::5", True), ("192.0.2.1", False), (None, False)],
)
def test_when_source_ip(tmp_path: Path, address: str | None, expected: bool) -> None:
    engine = when(
        tmp_path, "{key: source.ip, values: [10.0.0.0/16, '2001:db8::/64'], notValues: [10.0.9.0/24]}"
    )
    assert allowed(engine, svc("web", address=address)) is expected


def test_when_source_namespace(tmp_path: Path) -> None:
    engine = when(tmp_path, "{key: source.namespace, values: [prod]}")
    assert allowed(engine, svc("web", namespace="prod"))
    assert not allowed(engine, svc("web", namespace="dev"))
    assert not allowed(engine, Caller.from_identity(None))


def test_when_request_auth_principal(tmp_path: Path) -> None:
    engine = when(tmp_path, "{key: request.auth.principal, values: ['user-*']}")
    assert allowed(engine, svc("gateway", principal="user-1"))
    assert not allowed(engine, svc("gateway", principal="admin"))
    assert not allowed(engine, svc("gateway"))


def test_when_source_principal(tmp_path: Path) -> None:
    engine = when(tmp_path, f"{{key: source.principal, values: ['spiffe://{TD}/ns/prod/*']}}")
    assert allowed(engine, svc("web", namespace="prod"))
    assert not allowed(engine, svc("web"))


def test_from_to_and_when_are_anded(tmp_path: Path) -> None:
    engine = only_rule(
        tmp_path,
        "  from: {services: [web]}\n  to: {methods: [POST], paths: [/orders]}\n"
        "  when: [{key: 'request.headers[x-ok]', values: ['1']}]\n",
    )
    ok = {"x-ok": "1"}
    assert allowed(engine, svc("web"), method="POST", path="/orders", headers=ok)
    assert not allowed(engine, svc("catalog"), method="POST", path="/orders", headers=ok)
    assert not allowed(engine, svc("web"), method="GET", path="/orders", headers=ok)
    assert not allowed(engine, svc("web"), method="POST", path="/orders/1", headers=ok)
    assert not allowed(engine, svc("web"), method="POST", path="/orders")
