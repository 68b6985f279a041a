"""``meshgate policy check | explain | schema``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.config.loader import LoadResult, load_policy_set
from shared.config.schema import policy_schema
from shared.policy.explain import Question, explain


def register(sub: Any) -> None:
    """Add the ``policy`` command group."""
    policy = sub.add_parser("policy", help="check, explain and describe policy documents")
    group = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    group.required = True

    check = group.add_parser("check", help="validate policy folders; errors as FILE:LINE: message")
    check.add_argument("dirs", nargs="+", metavar="DIR", help="policy folder or file")
    check.add_argument("--quiet", "-q", action="store_true", help="print nothing when valid")
    check.set_defaults(handler=cmd_check)

    explain = group.add_parser("explain", help="decide one request and show the deciding rule")
    explain.add_argument("dir", metavar="DIR")
    explain.add_argument("--from", dest="caller", required=True, metavar="SPIFFE_ID_OR_SERVICE")
    explain.add_argument("--to", dest="target", required=True, metavar="SERVICE")
    explain.add_argument("--route", action="store_true", help="--to names a gateway Route, not a Service")
    explain.add_argument("--method", default="GET")
    explain.add_argument("--path", default="/")
    explain.add_argument("--header", action="append", default=[], metavar="K=V")
    explain.add_argument("--principal", help="end-user principal authenticated at the edge")
    explain.add_argument(
        "--claim", action="append", default=[], metavar="K=V", help="JWT claim (V may be JSON)"
    )
    explain.add_argument("--address", help="caller's source address")
    explain.set_defaults(handler=cmd_explain)

    schema = group.add_parser("schema", help="print the JSON Schema of every kind")
    schema.set_defaults(handler=cmd_schema)


def _report(result: LoadResult) -> None:
    for error in result.errors:
        print(error, file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when every folder is valid as one set, 1 (errors on stderr) otherwise."""
    result = load_policy_set(args.dirs)
    if not result.ok:
        _report(result)
        print(f"{len(result.errors)} error(s) in {len(result.files)} file(s)", file=sys.stderr)
        return 1
    assert result.policy_set is not None
    if not args.quiet:
        docs = result.policy_set.documents()
        version = result.policy_set.version
        print(f"ok: {len(docs)} document(s) in {len(result.files)} file(s), version {version}")
    return 0


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--{what} wants KEY=VALUE, got {item!r}")
        out[key.strip().lower() if what == "header" else key.strip()] = value
    return out


def cmd_explain(args: argparse.Namespace) -> int:
    """Print ALLOW or DENY, then the deciding rule as FILE:LINE or ``default``, then details."""
    result = load_policy_set([args.dir])
    if not result.ok or result.policy_set is None:
        _report(result)
        print("policy set is invalid; fix the errors above first", file=sys.stderr)
        return 1
    policies = result.policy_set
    try:
        headers = _pairs(args.header, "header")
        claims: dict[str, Any] = {}
        for key, value in _pairs(args.claim, "claim").items():
            try:
                claims[key] = json.loads(value)
            except ValueError:
                claims[key] = value
        answer = explain(
            policies,
            Question(
                args.caller,
                args.target,
                route=args.route,
                method=args.method,
                path=args.path,
                headers=headers,
                principal=args.principal,
                claims=claims,
                address=args.address,
            ),
        )
    except ValueError as exc:
        print(f"meshgate policy explain: {exc}", file=sys.stderr)
        return 2
    for note in answer.notes:
        print(f"note: {note}", file=sys.stderr)
    decision, identity = answer.decision, answer.identity
    print("ALLOW" if decision.allowed else "DENY")
    print(decision.rule)
    print(f"reason: {decision.reason}")
    print(f"caller: {identity}")
    if decision.audit is not None:
        verdict = "ALLOW" if decision.audit.allowed else "DENY"
        print(f"audit: {verdict} {decision.audit.rule} (AccessPolicy/{decision.audit.policy}, not enforced)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of all kinds."""
    print(json.dumps(policy_schema(), indent=2, sort_keys=True))
    return 0
