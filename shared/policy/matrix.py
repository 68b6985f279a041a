"""Who may call whom: a service-by-service matrix computed by asking the policy engine itself.

A cell is not a guess from reading rules: for caller S and target T the engine decides a set of probe
requests, one per method and path the target's rules name (plus ``GET /``), as S would send them. The
cell is ``allow`` when every probe is allowed, ``deny`` when none is, ``partial`` otherwise; it names the
deciding rule (``FILE:LINE``, or ``default``) of its representative probe and keeps every probe, so the
dashboard shows the same answer ``meshgate policy explain`` gives for each. Cells decided by no rule
(``Mesh.defaultAccess`` or the implicit deny of a target with policies) are marked ``default``; cells
where an audit-mode policy would decide differently are marked ``audit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.config.model import AccessPolicy
from shared.config.policyset import PolicySet
from shared.policy.engine import PolicyEngine
from shared.policy.explain import caller_identity
from shared.policy.request import Caller, Decision, Request

MAX_PROBES = 24
Verdict = Literal["allow", "deny", "partial"]


@dataclass(frozen=True)
class Probe:
    """One request the engine decided for a cell."""

    method: str
    path: str
    decision: Decision


@dataclass(frozen=True)
class Cell:
    """The answer for ``source`` calling ``target``."""

    source: str
    target: str
    verdict: Verdict
    default: bool
    audit: bool
    rule: str
    reason: str
    probes: tuple[Probe, ...]

    @property
    def example(self) -> Probe:
        """The probe whose rule the cell names."""
        for probe in self.probes:
            if probe.decision.rule == self.rule:
                return probe
        return self.probes[0]


@dataclass(frozen=True)
class Matrix:
    """Sources and targets (service names, sorted) and a cell for each pair."""

    services: tuple[str, ...]
    cells: dict[tuple[str, str], Cell]

    def cell(self, source: str, target: str) -> Cell:
        return self.cells[(source, target)]


def _probe_path(pattern: str) -> str:
    """A concrete path that ``pattern`` (exact, ``/prefix/*``, ``*suffix``, ``*``) matches."""
    if pattern == "*":
        return "/"
    if pattern.startswith("*"):
        return "/x" + pattern[1:]
    if pattern.endswith("*"):
        return pattern[:-1] + ("x" if pattern.endswith("/*") else "")
    return pattern


def probes_for(policies: list[AccessPolicy]) -> list[tuple[str, str]]:
    """The (method, path) pairs the rules of ``policies`` name, ``GET /`` first; at most MAX_PROBES."""
    out = [("GET", "/")]
    for policy in policies:
        for rule in policy.rules:
            methods = [m.upper() for m in rule.to.methods] or ["GET"]
            paths = [_probe_path(p) for p in [*rule.to.paths, *rule.to.not_paths]] or ["/"]
            for method in methods:
                if method == "*":
                    method = "GET"
                for path in paths:
                    if (method, path) not in out:
                        out.append((method, path))
    return out[:MAX_PROBES]


def access_matrix(policies: PolicySet, engine: PolicyEngine | None = None) -> Matrix:
    """Every declared service calling every declared service."""
    engine = engine or PolicyEngine(policies)
    services = tuple(sorted(policies.services))
    by_target: dict[str, list[AccessPolicy]] = {}
    for policy in policies.access_policies:
        if policy.target.service:
            by_target.setdefault(policy.target.service, []).append(policy)
    cells: dict[tuple[str, str], Cell] = {}
    for target in services:
        requests = probes_for(by_target.get(target, []))
        for source in services:
            caller = Caller.from_identity(caller_identity(policies, source))
            probes = tuple(
                Probe(method, path, engine.decide(caller, target, Request(method, path)))
                for method, path in requests
            )
            allowed = [p for p in probes if p.decision.allowed]
            verdict: Verdict = (
                "allow" if len(allowed) == len(probes) else "deny" if not allowed else "partial"
            )
            chosen = allowed[0] if verdict == "partial" else probes[0]
            audit = any(
                p.decision.audit is not None and p.decision.audit.allowed != p.decision.allowed
                for p in probes
            )
            cells[(source, target)] = Cell(
                source,
                target,
                verdict,
                default=all(p.decision.rule == "default" for p in probes),
                audit=audit,
                rule=chosen.decision.rule,
                reason=chosen.decision.reason,
                probes=probes,
            )
    return Matrix(services, cells)
