"""``meshgate demo``: what `make demo` runs. Until the whole stack exists it validates the policy
folder, shows a few decisions the engine makes from it, and says what the full demo will do."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared.config.loader import load_policy_set
from shared.policy.engine import PolicyEngine
from shared.policy.request import Caller, Request

_PLAN = """\
What the full demo will be (`meshgate up`): a control plane with its CA, an edge gateway, and the
services web, orders and catalog each behind a sidecar, all on loopback. Requests enter the gateway,
are authenticated (API key), rate-limited in Redis, and cross the mesh over mutual TLS (HTTP/2,
SPIFFE identities), with every hop authorized by the policies above and traced with OpenTelemetry.
Today this command validates the policies and asks the policy engine a few questions; the control
plane, the sidecars and the gateway already run by hand (docs/controlplane.md, docs/sidecar.md,
docs/gateway.md); `meshgate up`, which starts them all, is still to come."""

_SAMPLES = (
    ("web", "orders", "GET", "/orders/42"),
    ("web", "orders", "GET", "/orders/..%2fadmin/users"),
    ("catalog", "orders", "POST", "/orders"),
    ("orders", "catalog", "GET", "/items"),
    ("web", "catalog", "DELETE", "/items/1"),
)


def register(sub: Any) -> None:
    """Add the ``demo`` command."""
    demo = sub.add_parser("demo", help="validate the example policies and show what the demo will be")
    demo.add_argument("--policies", default="policies", metavar="DIR")
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Validate ``--policies``, print sample decisions and the plan; 1 if the folder is invalid."""
    result = load_policy_set([args.policies])
    if result.policy_set is None:
        for error in result.errors:
            print(error, file=sys.stderr)
        return 1
    policies = result.policy_set
    print(f"Policies in {args.policies}/: {len(policies.documents())} documents, all valid.")
    print(f"Mesh trust domain {policies.mesh.trust_domain}, default access {policies.mesh.default_access}.\n")
    engine = PolicyEngine(policies)
    for source, target, method, path in _SAMPLES:
        caller = Caller.for_service(source, policies.mesh.trust_domain)
        decision = engine.decide(caller, target, Request(method, path))
        verdict = "ALLOW" if decision.allowed else "DENY "
        print(f"  {verdict} {source:>8} -> {target:<8} {method:<6} {path:<28} {decision.rule}")
    print()
    print(_PLAN)
    return 0
