"""Hypothesis: bare service names match only callers of the mesh's own trust domain."""

from __future__ import annotations

import functools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.config.model import AccessPolicy, Mesh, Service
from shared.config.policyset import PolicySet
from shared.policy.engine import PolicyEngine
from shared.policy.request import Caller, Request

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
#: DNS labels: alphanumerics, with inner dashes.
labels = st.builds(
    lambda head, tail: head + (f"-{tail}" if tail else ""),
    st.text(_ALNUM, min_size=1, max_size=8),
    st.text(_ALNUM, max_size=4),
)
trust_domains = st.builds(lambda parts: ".".join(parts), st.lists(labels, min_size=1, max_size=3))


def engine_allowing(trust_domain: str, rule_from: dict[str, list[str]]) -> PolicyEngine:
    """An engine for ``trust_domain`` whose ``target`` service allows only callers matching ``rule_from``."""
    ((key, values),) = rule_from.items()
    return _engine(trust_domain, key, tuple(values))


@functools.lru_cache(maxsize=4096)
def _engine(trust_domain: str, key: str, values: tuple[str, ...]) -> PolicyEngine:
    rule_from = {key: list(values)}
    mesh = Mesh.model_validate(
        {"apiVersion": "meshgate/v1", "kind": "Mesh", "trustDomain": trust_domain, "defaultAccess": "deny"}
    )
    policy = AccessPolicy.model_validate(
        {
            "apiVersion": "meshgate/v1",
            "kind": "AccessPolicy",
            "name": "p",
            "target": {"service": "target"},
            "rules": [{"action": "allow", "from": rule_from}],
        }
    )
    service = Service.model_validate({"apiVersion": "meshgate/v1", "kind": "Service", "name": "target"})
    return PolicyEngine(
        PolicySet(
            mesh=mesh,
            services={"target": service},
            access_policies=(policy,),
            routes={},
            auth_providers={},
            rate_limits={},
        )
    )


def allows(engine: PolicyEngine, caller: Caller) -> bool:
    return engine.decide(caller, "target", Request("GET", "/")).allowed


@settings(max_examples=200, deadline=None)
@given(name=labels, mesh_td=trust_domains, caller_td=trust_domains, namespace=labels)
def test_foreign_trust_domain_never_matches_a_bare_service_name(
    name: str, mesh_td: str, caller_td: str, namespace: str
) -> None:
    assume(caller_td != mesh_td)
    engine = engine_allowing(mesh_td, {"services": [name]})
    assert not allows(engine, Caller.for_service(name, caller_td, namespace))


@settings(max_examples=200, deadline=None)
@given(rule_name=labels, other=labels, same=st.booleans(), td=trust_domains, namespace=labels)
def test_same_trust_domain_matches_iff_the_name_matches(
    rule_name: str, other: str, same: bool, td: str, namespace: str
) -> None:
    caller_name = rule_name if same else other
    engine = engine_allowing(td, {"services": [rule_name]})
    assert allows(engine, Caller.for_service(caller_name, td, namespace)) is (caller_name == rule_name)


@settings(max_examples=200, deadline=None)
@given(name=labels, mesh_td=trust_domains, caller_td=trust_domains)
def test_wildcards_and_namespaces_never_cross_trust_domains(name: str, mesh_td: str, caller_td: str) -> None:
    assume(caller_td != mesh_td)
    for rule_from in ({"services": ["*"]}, {"services": [name[:1] + "*"]}, {"namespaces": ["*"]}):
        engine = engine_allowing(mesh_td, rule_from)
        assert not allows(engine, Caller.for_service(name, caller_td)), rule_from


@settings(max_examples=200, deadline=None)
@given(name=labels, mesh_td=trust_domains, caller_td=trust_domains, namespace=labels)
def test_full_spiffe_id_in_principals_matches_exactly_that_caller(
    name: str, mesh_td: str, caller_td: str, namespace: str
) -> None:
    identity = f"spiffe://{caller_td}/ns/{namespace}/sa/{name}"
    engine = engine_allowing(mesh_td, {"principals": [identity]})
    assert allows(engine, Caller.from_identity(identity))
    assert not allows(engine, Caller.from_identity(identity + "x"))
    assert not allows(engine, Caller.from_identity(f"spiffe://{caller_td}x/ns/{namespace}/sa/{name}"))


@pytest.mark.parametrize("td", ["example.org", "a.b.c"])
def test_the_strategy_builds_valid_trust_domains(td: str) -> None:
    engine = engine_allowing(td, {"services": ["web"]})
    assert allows(engine, Caller.for_service("web", td))
