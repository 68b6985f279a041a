"""Helpers for the engine tests: a policy set from YAML text, callers, one-line decisions."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from shared.config.loader import load_policy_set
from shared.config.policyset import PolicySet
from shared.policy.engine import PolicyEngine
from shared.policy.request import Caller, Decision, Request

TD = "example.org"


def mesh(default_access: str = "deny") -> str:
    return f"apiVersion: meshgate/v1\nkind: Mesh\ntrustDomain: {TD}\ndefaultAccess: {default_access}\n"


def services(*names: str) -> str:
    return "".join(f"---\napiVersion: meshgate/v1\nkind: Service\nname: {n}\n" for n in names)


DEFAULT_SERVICES = ("web", "orders", "catalog", "gateway", "billing")


def policy(name: str, target: str, rules: str, mode: str = "enforce") -> str:
    """An AccessPolicy document; ``rules`` is the YAML list under ``rules:`` (dedented)."""
    body = textwrap.indent(textwrap.dedent(rules).strip("\n"), "  ")
    return (
        f"---\napiVersion: meshgate/v1\nkind: AccessPolicy\nname: {name}\ntarget: {{service: {target}}}\n"
        f"mode: {mode}\nrules:\n{body}\n"
    )


def load_set(folder: Path, text: str, default_access: str = "deny", file: str = "policies.yaml") -> PolicySet:
    """Write ``mesh + services + text`` to ``folder/file`` and load it; fails on any error."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file).write_text(mesh(default_access) + services(*DEFAULT_SERVICES) + text, encoding="utf-8")
    result = load_policy_set([folder])
    assert result.policy_set is not None, "\n".join(str(e) for e in result.errors)
    return result.policy_set


def engine_for(folder: Path, text: str, default_access: str = "deny") -> PolicyEngine:
    return PolicyEngine(load_set(folder, text, default_access))


def svc(name: str, trust_domain: str = TD, namespace: str = "default", **kw: Any) -> Caller:
    return Caller.for_service(name, trust_domain, namespace, **kw)


def decide(
    engine: PolicyEngine,
    caller: Caller,
    target: str = "orders",
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
) -> Decision:
    return engine.decide(caller, target, Request(method, path, headers or {}))


def allowed(
    engine: PolicyEngine,
    caller: Caller,
    target: str = "orders",
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
) -> bool:
    return decide(engine, caller, target, method, path, headers).allowed


def line_of(path: Path, marker: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line of ``path`` containing ``marker``."""
    found = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if marker in line:
            found += 1
            if found == nth:
                return number
    raise AssertionError(f"{marker!r} not in {path}")
