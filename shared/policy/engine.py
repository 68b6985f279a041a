"""The policy engine: pure functions over a compiled :class:`PolicySet`.

Deny wins over allow; a target with any enforce-mode policy denies what no rule allows; a target with
none follows ``Mesh.defaultAccess``. Audit-mode policies are evaluated the same way on their own and
reported in :attr:`Decision.audit`, never enforced. The set is compiled once into an index per target,
so a decision is a dictionary lookup and a few predicate calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.config.model import AccessPolicy
from shared.config.policyset import PolicySet
from shared.policy.matchers import Predicate, condition_predicate, operation_predicates, source_predicates
from shared.policy.paths import normalize_path
from shared.policy.request import AuditVerdict, Caller, Decision, Request


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule: its predicates (all must hold) and the decision it yields."""

    predicates: tuple[Predicate, ...]
    decision: Decision

    def matches(self, caller: Caller, method: str, path: str, headers: Mapping[str, str]) -> bool:
        """True when every predicate holds."""
        return all(pred(caller, method, path, headers) for pred in self.predicates)


@dataclass(frozen=True, slots=True)
class RuleBook:
    """The rules of one mode for one target, denies first."""

    denies: tuple[CompiledRule, ...]
    allows: tuple[CompiledRule, ...]
    no_match: Decision

    def evaluate(self, caller: Caller, method: str, path: str, headers: Mapping[str, str]) -> Decision:
        """Deny wins; then allow; else the implicit deny of a target with policies."""
        for rule in self.denies:
            if rule.matches(caller, method, path, headers):
                return rule.decision
        for rule in self.allows:
            if rule.matches(caller, method, path, headers):
                return rule.decision
        return self.no_match


@dataclass(frozen=True, slots=True)
class TargetIndex:
    """Everything needed to decide for one target."""

    enforce: RuleBook | None
    audit: RuleBook | None


class PolicyEngine:
    """Decisions for services and gateway routes from one compiled policy set."""

    def __init__(self, policy_set: PolicySet) -> None:
        self.policy_set = policy_set
        mesh = policy_set.mesh
        allow = mesh.default_access == "allow"
        self._default = Decision(
            allow,
            "default",
            None,
            f"no access policy targets it; Mesh default is {'allow' if allow else 'deny'}",
        )
        self._bad_path = Decision(
            False, "default", None, "request path cannot be normalized (bad encoding or control characters)"
        )
        grouped: dict[tuple[str, str], dict[str, list[AccessPolicy]]] = {}
        for policy in policy_set.access_policies:
            key = (
                ("service", policy.target.service)
                if policy.target.service
                else ("route", policy.target.route or "")
            )
            grouped.setdefault(key, {}).setdefault(policy.mode, []).append(policy)
        self._index: dict[tuple[str, str], TargetIndex] = {
            key: TargetIndex(
                enforce=self._book(modes["enforce"]) if "enforce" in modes else None,
                audit=self._book(modes["audit"]) if "audit" in modes else None,
            )
            for key, modes in grouped.items()
        }

    def _book(self, policies: list[AccessPolicy]) -> RuleBook:
        td = self.policy_set.mesh.trust_domain
        denies: list[CompiledRule] = []
        allows: list[CompiledRule] = []
        for policy in policies:
            origin = self.policy_set.origin(policy)
            for i, rule in enumerate(policy.rules):
                preds = [
                    *source_predicates(rule.from_, td),
                    *operation_predicates(rule.to),
                    *(condition_predicate(c) for c in rule.when),
                ]
                label = rule.name or f"rules[{i}]"
                decision = Decision(
                    rule.action == "allow",
                    origin.rule(i),
                    policy.name,
                    f"{rule.action} by AccessPolicy/{policy.name} {label}",
                )
                (allows if rule.action == "allow" else denies).append(CompiledRule(tuple(preds), decision))
        names = ", ".join(sorted({p.name for p in policies}))
        first = self.policy_set.origin(policies[0])
        no_match = Decision(
            False,
            "default",
            policies[0].name,
            f"no rule allows it (policies: {names}; first at {first.at(first.line)})",
        )
        return RuleBook(tuple(denies), tuple(allows), no_match)

    def decide(self, caller: Caller, service: str, request: Request) -> Decision:
        """Decide whether ``caller`` may make ``request`` to ``service``."""
        return self._decide(("service", service), caller, request)

    def decide_route(self, caller: Caller, route: str, request: Request) -> Decision:
        """Decide whether ``caller`` may use the gateway route ``route``."""
        return self._decide(("route", route), caller, request)

    def _decide(self, key: tuple[str, str], caller: Caller, request: Request) -> Decision:
        path = normalize_path(request.path)
        if path is None:
            return self._bad_path
        target = self._index.get(key)
        if target is None:
            return self._default
        method = request.method.upper()
        headers = request.headers
        decision = (
            target.enforce.evaluate(caller, method, path, headers)
            if target.enforce is not None
            else self._default
        )
        if target.audit is None:
            return decision
        shadow = target.audit.evaluate(caller, method, path, headers)
        return Decision(
            decision.allowed,
            decision.rule,
            decision.policy,
            decision.reason,
            AuditVerdict(shadow.allowed, shadow.rule, shadow.policy),
        )
