"""``meshgate up [-f FILE]``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from shared.cliargs import duration_seconds

DEFAULT_FILE = "meshgate.yaml"


def register(sub: Any) -> None:
    """Add ``up``."""
    p = sub.add_parser(
        "up",
        help="run a whole local stack (control plane, gateway, apps with sidecars) from a LocalStack file",
    )
    p.add_argument(
        "-f", "--file", type=Path, default=Path(DEFAULT_FILE), metavar="FILE",
        help=f"the LocalStack document (default {DEFAULT_FILE})",
    )  # fmt: skip
    p.add_argument(
        "--ready-timeout", type=duration_seconds, default=90.0, metavar="DURATION",
        help="give up when the stack is not ready by then (default 90s)",
    )  # fmt: skip
    p.add_argument("--check", action="store_true", help="validate the file and print the plan; start nothing")
    p.set_defaults(handler=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    """Exit 0 after a clean stop, 1 when the file is invalid or the stack could not start or lost a
    process, 2 on usage errors."""
    from mesh.up.plan import plan_stack
    from mesh.up.runner import Stack
    from mesh.up.spec import LocalStackError, load_localstack

    if not args.file.exists():
        print(
            f"meshgate up: {args.file} not found; give a LocalStack file with -f (see examples/demo.yaml)",
            file=sys.stderr,
        )
        return 1
    try:
        stack = load_localstack(args.file)
    except LocalStackError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    plan = plan_stack(stack, args.file)
    if not plan.policies.is_dir():
        print(f"meshgate up: {args.file}: policies folder {plan.policies} does not exist", file=sys.stderr)
        return 1
    if args.check:
        print(f"{args.file}: valid; {len(stack.services)} service(s), control plane {plan.control_plane_url}")
        return 0
    return asyncio.run(Stack(plan, ready_timeout=args.ready_timeout).run())
