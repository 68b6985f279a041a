"""The `meshgate` command line: one parser, each command group registered by its own package.

Exit codes: 0 success, 1 the command ran and found a problem (invalid policy, failed check),
2 usage error (argparse's own convention).

A command's module is imported only when that command runs (``COMMANDS``): a sidecar process does not
carry the control plane, the CA or the policy tools (~4 MB of resident memory and ~0.1 s of start-up).
Help, or a command nobody registered, builds the full parser.
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

#: The commands each module of ``COMMAND_MODULES`` registers (tests/shared/test_cli.py keeps this true).
COMMANDS: dict[str, str] = {
    "policy": "shared.config.cli",
    "ca": "shared.identity.cli",
    "control-plane": "mesh.controlplane.cli",
    "token": "mesh.controlplane.cli",
    "sidecar": "mesh.cli",
    "wait-ready": "mesh.cli",
    "up": "mesh.up.cli",
    "gateway": "gateway.cli",
    "demo": "shared.demo",
}

Handler = Callable[[argparse.Namespace], int]


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the parser with the command groups of ``modules`` (default: every registered one)."""
    parser = argparse.ArgumentParser(
        prog="meshgate",
        description="Meshgate: service mesh and edge API gateway.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES if modules is None else modules:
        import_module(name).register(sub)
    return parser


def _modules_for(argv: Sequence[str]) -> list[str] | None:
    """The one module that registers the command ``argv`` names, or None (help, unknown, none given)."""
    command = argv[0] if argv else None
    module = COMMANDS.get(command) if command is not None else None
    return [module] if module is not None and module in COMMAND_MODULES else None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_modules_for(argv))
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
