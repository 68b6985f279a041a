"""``meshgate gateway``: bootstrap the gateway's identity once, then serve with N workers (granian)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from shared.cliargs import add_otlp_arguments, duration_seconds, host_port
from shared.telemetry.logs import setup_logging

log = logging.getLogger("meshgate.gateway")


def register(sub: Any) -> None:
    """Add ``gateway``."""
    p = sub.add_parser("gateway", help="run the edge API gateway")
    p.add_argument("--control-plane", required=True, metavar="URL")
    p.add_argument("--listen", type=host_port, default=("127.0.0.1", 8080), metavar="HOST:PORT")
    p.add_argument("--redis", metavar="redis://...", help="rate limits in Redis (else in-process)")
    p.add_argument("--token", type=Path, metavar="FILE", help="join token file (first start)")
    p.add_argument(
        "--cache-dir", type=Path, metavar="DIR", help="SVID and last snapshot (default .meshgate/gateway)"
    )
    p.add_argument("--service", default="gateway", help="the gateway's service name in the mesh")
    p.add_argument("--namespace", default="default")
    p.add_argument("--admin", type=host_port, default=("127.0.0.1", 15100), metavar="HOST:PORT")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port (one per core)")
    p.add_argument(
        "--server",
        choices=["meshgate", "granian", "uvicorn"],
        default="meshgate",
        help="ASGI server: meshgate (default: the mesh's own transport, HTTP/2 with trailers, client "
        "certificate identity), granian, or uvicorn (HTTP/1.1 only); see docs/gateway.md",
    )
    p.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="serve HTTPS (HTTP/2 by ALPN) with this chain"
    )
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PKCS#8 PEM)")
    p.add_argument(
        "--client-ca", type=Path, metavar="FILE", help="require client certificates signed by this CA"
    )
    p.add_argument(
        "--client-cert",
        choices=["required", "optional"],
        default="required",
        help="with --client-ca: refuse clients without a certificate, or verify only those that send one",
    )
    p.add_argument(
        "--trusted-hops", type=int, default=0, help="proxies in front whose X-Forwarded-For counts"
    )
    p.add_argument("--max-header-bytes", type=int, default=65536, help="larger header blocks get 431")
    p.add_argument("--trace-file", type=Path, metavar="FILE", help="write spans as JSON lines")
    add_otlp_arguments(p)
    p.add_argument(
        "--access-log", action="store_true", help="one JSON line per request (logger meshgate.access)"
    )
    p.add_argument("--trace-sample", type=float, default=1.0, metavar="RATIO")
    p.add_argument(
        "--drain-timeout", type=duration_seconds, default=10.0, metavar="DURATION",
        help="on SIGTERM, how long requests in flight may take to finish (default 10s; --server meshgate)",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=cmd_gateway)


def _fail(message: str) -> int:
    print(f"meshgate gateway: {message}", file=sys.stderr)
    return 1


def cmd_gateway(args: argparse.Namespace) -> int:
    """Bootstrap the SVID into the cache (so that workers never need the token), then serve."""
    from gateway.middleware.hygiene import HygieneSettings
    from gateway.state import GatewayConfig
    from shared.registry.client import ControlPlaneUnavailable, RegistryClient

    setup_logging(args.log_level)
    if args.workers < 1:
        return _fail("--workers must be at least 1")
    if (args.tls_cert is None) != (args.tls_key is None):
        return _fail("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        return _fail("--client-ca needs --tls-cert and --tls-key")
    for path in (args.tls_cert, args.tls_key, args.client_ca):
        if path is not None and not path.is_file():
            return _fail(f"cannot read {path}")
    token = None
    if args.token is not None:
        try:
            token = args.token.read_text().strip()
        except OSError as exc:
            return _fail(f"cannot read token file {args.token}: {exc.strerror}")
    cache_dir = args.cache_dir or Path(".meshgate") / args.service

    async def bootstrap() -> None:
        client = RegistryClient(
            args.control_plane,
            service=args.service,
            namespace=args.namespace,
            token=token,
            cache_dir=cache_dir,
        )
        try:
            await client.bootstrap()
            # the snapshot carries the trust bundle: with it in the cache, workers start without a token
            await client._accept(await client.fetch(), None)
        finally:
            await client.close()

    try:
        asyncio.run(bootstrap())
    except ControlPlaneUnavailable as exc:
        return _fail(str(exc))
    config = GatewayConfig(
        control_plane=args.control_plane,
        cache_dir=cache_dir,
        service=args.service,
        namespace=args.namespace,
        redis=args.redis,
        admin=args.admin,
        hygiene=HygieneSettings(max_header_bytes=args.max_header_bytes, trusted_hops=args.trusted_hops),
        trace_file=args.trace_file,
        trace_sample=args.trace_sample,
        otlp_endpoint=args.otlp_endpoint,
        otlp_headers=dict(args.otlp_header),
        access_log=args.access_log,
    )
    os.environ["MESHGATE_GATEWAY_CONFIG"] = config.to_json()
    os.environ["MESHGATE_LOG_LEVEL"] = args.log_level
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    """Run the chosen ASGI server until SIGTERM/SIGINT (it drains its workers)."""
    if args.server == "uvicorn":
        return serve_uvicorn(args)
    if args.server == "meshgate":
        return serve_meshgate(args)
    return serve_granian(args)


def serve_meshgate(args: argparse.Namespace) -> int:
    """Our own transport; ``--workers`` forked processes share the port (SO_REUSEPORT)."""
    children: list[int] = []
    if args.workers > 1:
        for _ in range(args.workers):
            pid = os.fork()
            if pid == 0:
                code = _meshgate_worker(args)
                os._exit(code)
            children.append(pid)

        def forward(signum: int, _frame: object) -> None:
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        status = 0
        for child in children:
            _, code = os.waitpid(child, 0)
            status = status or os.waitstatus_to_exitcode(code)
        return status
    return _meshgate_worker(args)


def _meshgate_worker(args: argparse.Namespace) -> int:
    from gateway.asgi import app as make_app
    from gateway.server import Lifespan, serve, tls_context
    from mesh.cli import run_loop
    from mesh.transport.h2c import Drain

    async def main() -> int:
        application = make_app()
        lifespan = Lifespan(application)
        try:
            await lifespan.startup()
        except RuntimeError as exc:
            print(f"meshgate gateway: {exc}", file=sys.stderr)
            return 1
        ctx = None
        if args.tls_cert is not None:
            ctx = tls_context(
                str(args.tls_cert),
                str(args.tls_key),
                str(args.client_ca) if args.client_ca else None,
                require_client_cert=args.client_cert == "required",
            )
        host, port = args.listen
        in_flight = [0]
        drain = Drain()

        async def counted(scope: Any, receive: Any, send: Any) -> None:  # what the drain waits for
            if scope["type"] not in ("http", "websocket"):
                await application(scope, receive, send)
                return
            in_flight[0] += 1
            try:
                await application(scope, receive, send)
            finally:
                in_flight[0] -= 1

        try:
            server = await serve(
                counted,
                host,
                port,
                ssl_context=ctx,
                reuse_port=args.workers > 1,
                max_header_bytes=args.max_header_bytes + 8192,  # hygiene answers 431 below this
                drain=drain,
            )
        except OSError as exc:
            print(f"meshgate gateway: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
            await lifespan.shutdown()
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()  # no new connections; requests in flight get up to --drain-timeout to finish
        drain.announce()  # and connected clients are told to go: Connection: close, GOAWAY
        deadline = loop.time() + args.drain_timeout
        while in_flight[0] > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if in_flight[0]:
            log.warning("drain timeout: %d request(s) still in flight", in_flight[0])
        await lifespan.shutdown()
        return 0

    return int(run_loop(main()))


def serve_uvicorn(args: argparse.Namespace) -> int:
    """uvicorn with httptools: HTTP/1.1 only (no HTTP/2, no h2c)."""
    import ssl

    import uvicorn

    host, port = args.listen
    uvicorn.run(
        "gateway.asgi:app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=args.log_level,
        access_log=False,
        backlog=2048,
        ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
        ssl_keyfile=str(args.tls_key) if args.tls_key else None,
        ssl_ca_certs=str(args.client_ca) if args.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if args.client_ca else ssl.CERT_NONE,
        timeout_keep_alive=60,
    )
    return 0


def serve_granian(args: argparse.Namespace) -> int:
    """granian: HTTP/1.1, HTTP/2 by ALPN over TLS and h2c in plaintext, on one port."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings, HTTP2Settings
    from granian.log import LogLevels

    host, port = args.listen
    server = Granian(
        "gateway.asgi:app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=args.workers,
        loop=Loops.uvloop,
        http=HTTPModes.auto,
        websockets=True,
        backlog=2048,
        http1_settings=HTTP1Settings(
            header_read_timeout=10_000, max_buffer_size=args.max_header_bytes + 8192
        ),
        http2_settings=HTTP2Settings(max_headers_size=args.max_header_bytes, max_concurrent_streams=128),
        log_level=LogLevels(args.log_level if args.log_level != "debug" else "debug"),
        ssl_cert=args.tls_cert,
        ssl_key=args.tls_key,
        ssl_ca=args.client_ca,
        ssl_client_verify=args.client_ca is not None,
    )
    server.serve()
    return 0
