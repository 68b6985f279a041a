"""The policy engine: pure functions over a compiled :class:`PolicySet`.

Deny wins over allow; a target with any enforce-mode policy denies what no rule allows; a target with
none follows ``Mesh.defaultAccess``. Audit-mode policies are evaluated the same way on their own and
reported in :attr:`Decision.audit`, never enforced.

The set is compiled once: an index per target, and within a target an index by caller service, so a
decision is two dictionary lookups and the predicates of the few rules that can apply to that caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.config.model import AccessPolicy
from shared.config.policyset import PolicySet
from shared.policy.matchers import (
    Predicate,
    condition_predicate,
    exact_services,
    method_set,
    operation_predicates,
    path_parts,
    source_predicates,
)
from shared.policy.paths import normalize_path
from shared.policy.request import AuditVerdict, Caller, Decision, Request


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule: methods and paths checked inline, then its other predicates (all must hold)."""

    order: int
    methods: frozenset[str] | None
    any_path: bool
    exact_paths: frozenset[str]
    path_prefixes: tuple[str, ...]
    path_suffixes: tuple[str, ...]
    predicates: tuple[Predicate, ...]
    decision: Decision


Rules = tuple[CompiledRule, ...]


def _first(
    rules: Rules, caller: Caller, method: str, path: str, headers: Mapping[str, str]
) -> Decision | None:
    """The decision of the first rule that matches (hot path: kept flat on purpose)."""
    for rule in rules:
        methods = rule.methods
        if methods is not None and method not in methods:
            continue
        if not rule.any_path and not (
            path in rule.exact_paths
            or path.startswith(rule.path_prefixes)
            or (rule.path_suffixes and path.endswith(rule.path_suffixes))
        ):
            continue
        for pred in rule.predicates:
            if not pred(caller, method, path, headers):
                break
        else:
            return rule.decision
    return None


@dataclass(frozen=True, slots=True)
class RuleBook:
    """The rules of one mode for one target, denies before allows, indexed by caller service.

    ``by_service[name]`` holds the rules that name that caller service plus every rule that does not
    key on exact service names (``general``), in source order.
    """

    trust_domain: str
    general: tuple[Rules, Rules]
    by_service: Mapping[str, tuple[Rules, Rules]]
    no_match: Decision

    def evaluate(self, caller: Caller, method: str, path: str, headers: Mapping[str, str]) -> Decision:
        """Deny wins; then allow; else the implicit deny of a target with policies."""
        denies, allows = self.general
        if caller.service is not None and caller.trust_domain == self.trust_domain:
            denies, allows = self.by_service.get(caller.service, self.general)
        return (
            _first(denies, caller, method, path, headers)
            or _first(allows, caller, method, path, headers)
            or self.no_match
        )


@dataclass(frozen=True, slots=True)
class TargetIndex:
    """Everything needed to decide for one target."""

    enforce: RuleBook | None
    audit: RuleBook | None


class PolicyEngine:
    """Decisions for services and gateway routes from one compiled policy set."""

    def __init__(self, policy_set: PolicySet) -> None:
        self.policy_set = policy_set
        allow = policy_set.mesh.default_access == "allow"
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
            target = policy.target
            key = ("service", target.service) if target.service else ("route", target.route or "")
            grouped.setdefault(key, {}).setdefault(policy.mode, []).append(policy)
        self._index: dict[tuple[str, str], TargetIndex] = {
            key: TargetIndex(
                enforce=self._book(modes["enforce"]) if "enforce" in modes else None,
                audit=self._book(modes["audit"]) if "audit" in modes else None,
            )
            for key, modes in grouped.items()
        }
        self._services = {name: idx for (kind, name), idx in self._index.items() if kind == "service"}
        self._routes = {name: idx for (kind, name), idx in self._index.items() if kind == "route"}

    def _book(self, policies: list[AccessPolicy]) -> RuleBook:
        td = self.policy_set.mesh.trust_domain
        general: list[tuple[bool, CompiledRule]] = []
        keyed: dict[str, list[tuple[bool, CompiledRule]]] = {}
        order = 0
        for policy in policies:
            origin = self.policy_set.origin(policy)
            for i, rule in enumerate(policy.rules):
                services = exact_services(rule.from_)
                preds = [
                    *operation_predicates(rule.to),
                    *source_predicates(rule.from_, td, indexed=services is not None),
                    *(condition_predicate(c) for c in rule.when),
                ]
                label = rule.name or f"rules[{i}]"
                decision = Decision(
                    rule.action == "allow",
                    origin.rule(i),
                    policy.name,
                    f"{rule.action} by AccessPolicy/{policy.name} {label}",
                )
                any_path, exact, prefixes, suffixes = path_parts(rule.to.paths)
                compiled = CompiledRule(
                    order, method_set(rule.to), any_path, exact, prefixes, suffixes, tuple(preds), decision
                )
                entry = (rule.action == "deny", compiled)
                order += 1
                if services is None:
                    general.append(entry)
                else:
                    for name in services:
                        keyed.setdefault(name, []).append(entry)

        def split(entries: list[tuple[bool, CompiledRule]]) -> tuple[Rules, Rules]:
            entries = sorted(entries, key=lambda e: e[1].order)
            return tuple(r for deny, r in entries if deny), tuple(r for deny, r in entries if not deny)

        names = ", ".join(sorted({p.name for p in policies}))
        first = self.policy_set.origin(policies[0])
        no_match = Decision(
            False,
            "default",
            policies[0].name,
            f"no rule allows it (policies: {names}; first at {first.at(first.line)})",
        )
        return RuleBook(
            trust_domain=td,
            general=split(general),
            by_service={name: split(entries + general) for name, entries in keyed.items()},
            no_match=no_match,
        )

    def decide(self, caller: Caller, service: str, request: Request) -> Decision:
        """Decide whether ``caller`` may make ``request`` to ``service``."""
        return self._decide(self._services.get(service), caller, request)

    def guards_route(self, route: str) -> bool:
        """True when some AccessPolicy targets gateway route ``route``."""
        return route in self._routes

    def decide_route(self, caller: Caller, route: str, request: Request) -> Decision:
        """Decide whether ``caller`` may use the gateway route ``route``."""
        return self._decide(self._routes.get(route), caller, request)

    def _decide(self, target: TargetIndex | None, caller: Caller, request: Request) -> Decision:
        path = normalize_path(request.path)
        if path is None:
            return self._bad_path
        if target is None:
            return self._default
        method = request.method.upper()
        headers = request.headers
        enforce = target.enforce
        decision = enforce.evaluate(caller, method, path, headers) if enforce is not None else self._default
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
