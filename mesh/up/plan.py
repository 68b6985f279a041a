"""From a :class:`LocalStack` to the processes ``meshgate up`` starts: argv, environment, ports.

Pure apart from picking free ports: the runner does the starting and waiting.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from mesh.up.spec import _PLACEHOLDER, LocalStack, ServiceSpec

MESHGATE = (sys.executable, "-m", "shared.cli")


_GIVEN: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, and never one this process gave out before: the
    kernel may hand out a port again once its probing socket is closed, and two processes of one
    stack must not be planned on the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise OSError(f"no free port on {host} after 100 tries")


def resolve(listen: str, pick: Callable[[str], int] = free_port) -> tuple[str, int]:
    """``HOST:PORT`` with port 0 replaced by a free port."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    return host, int(port) or pick(host)


def url(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port`` (IPv6 hosts bracketed; 0.0.0.0 and :: shown as loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{scheme}://[{shown}]:{port}" if ":" in shown else f"{scheme}://{shown}:{port}"


@dataclass
class ProcessPlan:
    """One process to start: ``ready`` is the URL that answers 200 once it is ready (or None)."""

    name: str
    argv: list[str]
    role: str  # control-plane | gateway | sidecar | app
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ready: str | None = None
    admin: str | None = None
    service: str | None = None


@dataclass
class StackPlan:
    """Everything ``meshgate up`` needs after the control plane is ready."""

    stack: LocalStack
    file: Path
    folder: Path
    data_dir: Path
    policies: Path
    workdir: Path
    control_plane: ProcessPlan
    control_plane_url: str
    otlp_endpoint: str | None
    collector: tuple[str, int] | None
    gateway: ProcessPlan | None = None
    gateway_url: str | None = None
    services: list[tuple[ProcessPlan, ProcessPlan]] = field(default_factory=list)

    def processes(self) -> list[ProcessPlan]:
        """Every process in start order: control plane, apps with their sidecars, gateway."""
        out = [self.control_plane]
        for app, sidecar in self.services:
            out += [app, sidecar]
        if self.gateway is not None:
            out.append(self.gateway)
        return out


def _tracing_args(plan: StackPlan) -> list[str]:
    tracing = plan.stack.tracing
    args: list[str] = []
    if plan.otlp_endpoint:
        args += ["--otlp-endpoint", plan.otlp_endpoint]
        for key, value in tracing.headers.items():
            args += ["--otlp-header", f"{key}={value}"]
    args += ["--trace-sample", str(tracing.sample)]
    if plan.stack.access_log:
        args.append("--access-log")
    return args


def otel_env(service: str, endpoint: str | None, sample: float, headers: Mapping[str, str]) -> dict[str, str]:
    """The standard OpenTelemetry SDK variables for an app: its name, where spans go, sampling."""
    env = {
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(sample),
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    if endpoint:
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
        env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
        if headers:
            env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] = ",".join(
                f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in headers.items()
            )
    else:
        env["OTEL_TRACES_EXPORTER"] = "none"
    return env


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace every ``{placeholder}`` of ``text`` from ``values`` (validated earlier by the spec)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def plan_stack(stack: LocalStack, file: Path, pick: Callable[[str], int] = free_port) -> StackPlan:
    """Paths, ports and the control plane's process (the rest comes with :func:`plan_workloads`)."""
    folder = file.resolve().parent
    data_dir = ((folder / stack.data_dir) if stack.data_dir else folder / ".meshgate" / stack.name).resolve()
    policies = (folder / stack.policies).resolve()
    workdir = (folder / stack.workdir).resolve()
    host, port = resolve(stack.control_plane.listen, pick)
    cp_url = url("https", host, port)
    argv = [
        *MESHGATE,
        "control-plane",
        "--policies",
        str(policies),
        "--data-dir",
        str(data_dir / "control-plane"),
        "--listen",
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
    ]
    if stack.control_plane.store:
        argv += ["--store", stack.control_plane.store]
    argv += stack.control_plane.args
    collector = None
    endpoint = stack.tracing.otlp_endpoint
    if endpoint is None:
        collector = resolve(stack.tracing.collector, pick)
        endpoint = url("http", *collector) + "/v1/traces"
    control_plane = ProcessPlan("control-plane", argv, "control-plane", ready=f"{cp_url}/readyz")
    return StackPlan(
        stack=stack,
        file=file,
        folder=folder,
        data_dir=data_dir,
        policies=policies,
        workdir=workdir,
        control_plane=control_plane,
        control_plane_url=cp_url,
        otlp_endpoint=endpoint,
        collector=collector,
    )


def _serves_tls(args: list[str]) -> bool:
    return any(a == "--tls-cert" or a.startswith("--tls-cert=") for a in args)


def instance_names(service: ServiceSpec) -> list[str]:
    """The process names of a service's replicas (``web``, or ``orders-1``, ``orders-2``)."""
    return [_instance_name(service, r) for r in range(1, service.replicas + 1)]


def _instance_name(service: ServiceSpec, replica: int) -> str:
    return service.name if service.replicas == 1 else f"{service.name}-{replica}"


def plan_workloads(
    plan: StackPlan, tokens: Mapping[str, Path], pick: Callable[[str], int] = free_port
) -> StackPlan:
    """Add every app with its sidecar and the gateway, with ports picked now; ``tokens`` maps a
    service name (and ``gateway``) to its join token file."""
    stack = plan.stack
    tracing = _tracing_args(plan)
    for service in stack.services:
        for replica in range(1, service.replicas + 1):
            name = _instance_name(service, replica)
            app_port, inbound, outbound, admin = (pick("127.0.0.1") for _ in range(4))
            upstream_ports = {u: pick("127.0.0.1") for u in service.upstreams}
            values = {
                "python": sys.executable,
                "port": str(app_port),
                "host": "127.0.0.1",
                "outbound": f"http://127.0.0.1:{outbound}",
                "replica": str(replica),
                "service": service.name,
                "otlp": plan.otlp_endpoint or "",
                **{f"upstream:{u}": str(p) for u, p in upstream_ports.items()},
            }
            env = {
                **otel_env(service.name, plan.otlp_endpoint, stack.tracing.sample, stack.tracing.headers),
                "PORT": str(app_port),
                "HOST": "127.0.0.1",
                "MESHGATE_OUTBOUND": values["outbound"],
                "MESHGATE_SERVICE": service.name,
                "MESHGATE_REPLICA": str(replica),
                "PYTHONUNBUFFERED": "1",
                **{k: fill(v, values) for k, v in service.env.items()},
            }
            app = ProcessPlan(
                name,
                [fill(part, values) for part in service.command],
                "app",
                env=env,
                cwd=plan.workdir,
                service=service.name,
            )
            argv = [
                *MESHGATE,
                "sidecar",
                "--service",
                service.name,
                "--namespace",
                service.namespace,
                "--app",
                f"http://127.0.0.1:{app_port}",
                "--control-plane",
                plan.control_plane_url,
                "--token",
                str(tokens[service.name]),
                "--cache-dir",
                str(plan.data_dir / "cache" / name),
                "--inbound",
                f"127.0.0.1:{inbound}",
                "--outbound",
                f"127.0.0.1:{outbound}",
                "--admin",
                f"127.0.0.1:{admin}",
                "--check",
                service.check,
                "--check-path",
                service.check_path,
                "--heartbeat",
                "2s",
                *[a for u, p in upstream_ports.items() for a in ("--upstream", f"{p}={u}")],
                *tracing,
                *service.sidecar_args,
            ]
            admin_url = f"http://127.0.0.1:{admin}"
            sidecar = ProcessPlan(
                f"{name}-sidecar",
                argv,
                "sidecar",
                ready=f"{admin_url}/readyz",
                admin=admin_url,
                service=service.name,
            )
            plan.services.append((app, sidecar))
    if stack.gateway is not None:
        host, port = resolve(stack.gateway.listen, pick)
        admin_host, admin_port = resolve(stack.gateway.admin, pick)
        admin_url = url("http", admin_host, admin_port)
        argv = [
            *MESHGATE,
            "gateway",
            "--control-plane",
            plan.control_plane_url,
            "--token",
            str(tokens["gateway"]),
            "--cache-dir",
            str(plan.data_dir / "cache" / "gateway"),
            "--listen",
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "--admin",
            f"[{admin_host}]:{admin_port}" if ":" in admin_host else f"{admin_host}:{admin_port}",
            *(["--redis", stack.redis] if stack.redis else []),
            *tracing,
            *stack.gateway.args,
        ]
        plan.gateway = ProcessPlan("gateway", argv, "gateway", ready=f"{admin_url}/readyz", admin=admin_url)
        plan.gateway_url = url("https" if _serves_tls(stack.gateway.args) else "http", host, port)
    return plan
