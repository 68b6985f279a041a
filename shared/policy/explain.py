"""One question to the policy engine, as ``meshgate policy explain`` and the dashboard ask it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.config.policyset import PolicySet
from shared.policy.engine import PolicyEngine
from shared.policy.request import Caller, Decision, Request


@dataclass(frozen=True)
class Question:
    """Who (a SPIFFE ID or a declared service name) asks to do what to which service or route."""

    caller: str
    target: str
    route: bool = False
    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    principal: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    address: str | None = None


@dataclass(frozen=True)
class Answer:
    """The decision, the caller's full SPIFFE ID, and notes (e.g. an undeclared target)."""

    decision: Decision
    identity: str
    notes: tuple[str, ...] = ()


def caller_identity(policies: PolicySet, caller: str) -> str:
    """``caller`` as a SPIFFE ID: as given when it is one, else the declared service's ID."""
    if caller.startswith("spiffe://"):
        return caller
    mesh = policies.mesh
    declared = policies.services.get(caller)
    namespace = (declared.namespace if declared else None) or mesh.namespace
    return f"spiffe://{mesh.trust_domain}/ns/{namespace}/sa/{caller}"


def explain(policies: PolicySet, question: Question, engine: PolicyEngine | None = None) -> Answer:
    """Decide ``question``; ValueError for a malformed caller ID or address."""
    identity = caller_identity(policies, question.caller)
    caller = Caller.from_identity(
        identity, principal=question.principal, claims=question.claims, address=question.address
    )
    engine = engine or PolicyEngine(policies)
    request = Request(question.method.upper(), question.path, question.headers)
    notes: list[str] = []
    if question.route:
        if question.target not in policies.routes:
            notes.append(f"no Route named {question.target!r} is declared")
        decision = engine.decide_route(caller, question.target, request)
    else:
        if question.target not in policies.services:
            notes.append(f"no Service named {question.target!r} is declared")
        decision = engine.decide(caller, question.target, request)
    return Answer(decision, identity, tuple(notes))
