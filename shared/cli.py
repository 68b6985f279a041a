"""The `meshgate` command line: one parser, each command group registered by its own package.

Exit codes: 0 success, 1 the command ran and found a problem (invalid policy, failed check),
2 usage error (argparse's own convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

#: Modules that add a command group; each exposes ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "shared.config.cli",
    "shared.identity.cli",
    "mesh.controlplane.cli",
    "mesh.cli",
    "mesh.up.cli",
    "gateway.cli",
    "shared.demo",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """Build the full parser with every registered command group."""
    parser = argparse.ArgumentParser(
        prog="meshgate",
        description="Meshgate: service mesh and edge API gateway.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
