"""``meshgate sidecar`` and ``meshgate wait-ready``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.cliargs import add_otlp_arguments, duration_seconds, host_port
from shared.telemetry.logs import setup_logging


def _app(text: str) -> tuple[str, int]:
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT, got {text!r}")
    return parts.hostname, parts.port


def _upstream(text: str) -> tuple[int, str]:
    port, sep, service = text.partition("=")
    if not sep or not port.isdigit() or not service:
        raise argparse.ArgumentTypeError(f"expected LOCALPORT=SERVICE, got {text!r}")
    return int(port), service


def register(sub: Any) -> None:
    """Add ``sidecar`` and ``wait-ready``."""
    p = sub.add_parser("sidecar", help="run the sidecar of one service instance")
    p.add_argument("--service", required=True)
    p.add_argument("--namespace", default="default")
    p.add_argument("--app", required=True, type=_app, metavar="http://127.0.0.1:PORT")
    p.add_argument("--control-plane", required=True, metavar="URL")
    p.add_argument("--token", type=Path, metavar="FILE", help="join token file (first start)")
    p.add_argument(
        "--cache-dir", type=Path, metavar="DIR", help="SVID and last snapshot (default .meshgate/SERVICE)"
    )
    p.add_argument("--inbound", type=host_port, default=("127.0.0.1", 15006), metavar="HOST:PORT")
    p.add_argument(
        "--advertise", default=None, metavar="ADDRESS", help="address peers reach (default: inbound host)"
    )
    p.add_argument("--outbound", type=host_port, default=("127.0.0.1", 15001), metavar="HOST:PORT")
    p.add_argument("--admin", type=host_port, default=("127.0.0.1", 15000), metavar="HOST:PORT")
    p.add_argument("--upstream", type=_upstream, action="append", default=[], metavar="LOCALPORT=SERVICE")
    p.add_argument("--check", choices=["http", "tcp", "ttl"], default="ttl", help="how to check the app")
    p.add_argument("--check-path", default="/healthz")
    p.add_argument("--drain-timeout", type=duration_seconds, default=10.0, metavar="DURATION")
    p.add_argument(
        "--heartbeat",
        type=duration_seconds,
        default=5.0,
        metavar="DURATION",
        help="check and heartbeat period",
    )
    p.add_argument("--trace-file", type=Path, metavar="FILE", help="write spans as JSON lines")
    add_otlp_arguments(p)
    p.add_argument(
        "--access-log", action="store_true", help="one JSON line per request (logger meshgate.access)"
    )
    p.add_argument(
        "--trace-sample", type=float, default=1.0, metavar="RATIO", help="share of new traces sampled"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=cmd_sidecar)

    w = sub.add_parser("wait-ready", help="wait until a sidecar's /readyz answers 200 (for app start-up)")
    w.add_argument("--admin", default="http://127.0.0.1:15000", metavar="URL")
    w.add_argument("--timeout", type=duration_seconds, default=60.0, metavar="DURATION")
    w.set_defaults(handler=cmd_wait_ready)


def cmd_sidecar(args: argparse.Namespace) -> int:
    """Run until SIGTERM (or POST /quitquitquit), then drain."""
    from mesh.sidecar import Sidecar, SidecarConfig
    from shared.registry.client import ControlPlaneUnavailable
    from shared.registry.health import AppCheck

    setup_logging(args.log_level)
    token = None
    if args.token is not None:
        try:
            token = args.token.read_text().strip()
        except OSError as exc:
            print(f"meshgate sidecar: cannot read token file {args.token}: {exc.strerror}", file=sys.stderr)
            return 1
    check = AppCheck(args.check, args.app[0], args.app[1], args.check_path)
    config = SidecarConfig(
        service=args.service,
        namespace=args.namespace,
        app=args.app,
        control_plane=args.control_plane,
        token=token,
        cache_dir=args.cache_dir or Path(".meshgate") / args.service,
        inbound=args.inbound,
        advertise=args.advertise or args.inbound[0],
        outbound=args.outbound,
        admin=args.admin,
        upstreams=dict(args.upstream),
        check=check,
        drain_timeout=args.drain_timeout,
        heartbeat_interval=args.heartbeat,
        ttl=max(15.0, 3 * args.heartbeat),
        trace_file=args.trace_file,
        otlp_endpoint=args.otlp_endpoint,
        otlp_headers=dict(args.otlp_header),
        access_log=args.access_log,
        trace_sample=args.trace_sample,
    )

    async def main() -> int:
        sidecar = Sidecar(config)
        try:
            await sidecar.start()
        except ControlPlaneUnavailable as exc:
            print(f"meshgate sidecar: {exc}", file=sys.stderr)
            await sidecar.registry.close()
            return 1
        except OSError as exc:
            print(f"meshgate sidecar: cannot listen: {exc}", file=sys.stderr)
            await sidecar.stop()
            return 1
        await sidecar.wait()
        await sidecar.stop()
        return 0

    return int(run_loop(main()))


def run_loop(coro: Any) -> Any:
    """Run ``coro`` on uvloop when it is installed (several times cheaper TLS and socket I/O), else on
    asyncio's default loop. ``MESHGATE_LOOP=asyncio`` forces the default loop."""
    import os

    if os.environ.get("MESHGATE_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def cmd_wait_ready(args: argparse.Namespace) -> int:
    """Exit 0 once ``ADMIN/readyz`` answers 200; 1 after the timeout."""
    import urllib.error  # here, not at the top: a sidecar process never needs urllib.request (~2 MB)
    import urllib.request

    if not args.admin.startswith(("http://", "https://")):
        print(
            f"meshgate wait-ready: --admin must be a URL such as http://127.0.0.1:15000, not {args.admin!r}",
            file=sys.stderr,
        )
        return 2
    deadline = time.monotonic() + args.timeout
    url = args.admin.rstrip("/") + "/readyz"
    seen = "no answer"  # what the last try saw, for the error
    while True:  # at least one try, even with --timeout 0s
        left = deadline - time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=min(2.0, max(left, 0.1))) as response:
                if response.status == 200:
                    return 0
                seen = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:  # the sidecar answered: its body says why not ready
            body = exc.read(200).decode("utf-8", "replace").strip()
            seen = f"HTTP {exc.code}" + (f" {body!r}" if body else "")
        except urllib.error.URLError as exc:
            seen = str(exc.reason)  # e.g. [Errno 111] Connection refused: no sidecar listening
        except (OSError, ValueError) as exc:
            seen = str(exc) or type(exc).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(0.2, left))
    print(f"meshgate wait-ready: {url} not ready after {args.timeout:g}s (last: {seen})", file=sys.stderr)
    return 1
