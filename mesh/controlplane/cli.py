"""``meshgate control-plane`` and ``meshgate token create``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mesh.cli import run_loop
from mesh.controlplane.core import ControlPlane, ControlPlaneError, ca_pin
from mesh.controlplane.records import new_token
from mesh.controlplane.stores import StoreError, open_store
from shared.cliargs import duration_seconds, host_port
from shared.config.model.types import Name
from shared.identity.ca import CAError, CertificateAuthority
from shared.telemetry.logs import setup_logging


def register(sub: Any) -> None:
    """Add the ``control-plane`` and ``token`` commands."""
    cp = sub.add_parser("control-plane", help="run the control plane (registry, CA, configuration)")
    cp.add_argument("--policies", required=True, action="append", metavar="DIR", help="policy folder")
    cp.add_argument("--data-dir", required=True, type=Path, metavar="DIR", help="CA, store and admin token")
    cp.add_argument("--listen", type=host_port, default=("127.0.0.1", 15010), metavar="HOST:PORT")
    cp.add_argument("--store", metavar="URL", help="redis://HOST:PORT/DB to share state between replicas")
    cp.add_argument("--admin-token-file", type=Path, metavar="FILE", help="default: DATA_DIR/admin-token")
    cp.add_argument(
        "--reap-after",
        type=duration_seconds,
        default=60.0,
        metavar="DURATION",
        help="drop instances critical for this long (default 60s)",
    )
    cp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    cp.set_defaults(handler=cmd_control_plane)

    token = sub.add_parser("token", help="join tokens for workloads")
    group = token.add_subparsers(dest="token_command", metavar="SUBCOMMAND")
    group.required = True
    create = group.add_parser("create", help="print a new join token on stdout")
    create.add_argument("--data-dir", required=True, type=Path, metavar="DIR")
    create.add_argument("--service", required=True)
    create.add_argument("--namespace")
    create.add_argument("--ttl", type=duration_seconds, default=3600.0, metavar="DURATION", help="default 1h")
    create.add_argument("--reusable", action="store_true", help="allow several uses until it expires")
    create.add_argument("--store", metavar="URL", help="the control plane's --store, if it has one")
    create.set_defaults(handler=cmd_token_create)


def cmd_control_plane(args: argparse.Namespace) -> int:
    """Run until SIGTERM; exit 1 with one clear line when it cannot start."""
    from mesh.controlplane.server import run

    setup_logging(args.log_level)
    admin = None
    if args.admin_token_file is not None:
        try:
            admin = args.admin_token_file.read_text().strip()
        except OSError as exc:
            print(
                f"meshgate control-plane: cannot read {args.admin_token_file}: {exc.strerror}",
                file=sys.stderr,
            )
            return 1
        if len(admin) < 16:
            print(
                f"meshgate control-plane: admin token in {args.admin_token_file} "
                "is shorter than 16 characters",
                file=sys.stderr,
            )
            return 1
    try:
        store = open_store(args.store, args.data_dir)
        plane = ControlPlane(
            policies=[Path(p) for p in args.policies],
            data_dir=args.data_dir,
            store=store,
            admin_token=admin,
            reap_after=args.reap_after,
        )
        host, port = args.listen
        run_loop(run(plane, host, port))
    except (ControlPlaneError, StoreError) as exc:
        print(f"meshgate control-plane: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"meshgate control-plane: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def issue_join_token(
    data_dir: Path,
    service: str,
    *,
    namespace: str = "default",
    ttl: float = 3600.0,
    reusable: bool = False,
    store: str | None = None,
) -> str:
    """Store a new join token for ``service`` in the control plane's store and return it.

    Raises :class:`TokenError` when there is no CA in ``data_dir``, the store cannot be used, or the
    service or namespace is not a name ``/v1/tokens`` and registration take (or ``ttl`` not positive)."""
    for what, value in (("service", service), ("namespace", namespace)):
        try:
            TypeAdapter(Name).validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"] if exc.errors() else "invalid"
            raise TokenError(f"{what} {value!r} is not a valid name: {reason}") from None
    if not ttl > 0:
        raise TokenError(f"ttl must be positive, not {ttl:g}s")
    if not (data_dir / "ca" / "ca.json").exists():
        raise TokenError(
            f"no CA in {data_dir}/ca; start the control plane once (it creates one) or run 'meshgate ca init'"
        )
    try:
        ca = CertificateAuthority.load(data_dir / "ca")
    except CAError as exc:
        raise TokenError(str(exc)) from exc

    async def create() -> str:
        opened = open_store(store, data_dir)
        await opened.open()
        try:
            token, record = new_token(service, namespace, ttl, time.time(), ca_pin(ca), reusable)
            await opened.put_token(record)
            return str(token)
        finally:
            await opened.close()

    try:
        return asyncio.run(create())
    except StoreError as exc:
        raise TokenError(str(exc)) from exc


class TokenError(Exception):
    """A join token cannot be made (no CA yet, store unreachable)."""


def cmd_token_create(args: argparse.Namespace) -> int:
    """Store a new join token and print it."""
    try:
        token = issue_join_token(
            args.data_dir,
            args.service,
            namespace=args.namespace or "default",
            ttl=args.ttl,
            reusable=args.reusable,
            store=args.store,
        )
    except TokenError as exc:
        print(f"meshgate token create: {exc}", file=sys.stderr)
        return 1
    print(token)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + args.ttl))
    kind = "reusable" if args.reusable else "single use"
    print(f"join token for service {args.service}, {kind}, expires {expires}", file=sys.stderr)
    return 0
