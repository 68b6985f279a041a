"""The ``LocalStack`` document that ``meshgate up`` reads: which processes make up a local stack.

One YAML document, ``apiVersion: meshgate/v1``, ``kind: LocalStack``. Relative paths are relative to
the file's folder. Validation errors name the file, the line and the field, like policy errors do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from shared.config.errors import PolicyError
from shared.config.loader import validation_errors
from shared.config.model.types import Name, Spec
from shared.config.yamlsource import FieldPath, RawDocument, dotted, read_yaml_file

#: Placeholders a service's ``command`` and ``env`` may use (``{upstream:NAME}`` besides these).
PLACEHOLDERS = ("python", "port", "host", "outbound", "replica", "service", "otlp")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


def _listen(value: str) -> str:
    match = _LISTEN.match(value)
    if not match or int(match.group(2)) > 65535:
        raise ValueError(f"expected HOST:PORT (port 0 picks a free one), got {value!r}")
    return value


class ControlPlaneSpec(Spec):
    """The control plane: where it listens, its store (embedded unless a Redis URL is given)."""

    listen: str = "127.0.0.1:15010"
    store: str | None = Field(default=None, pattern=r"^rediss?://")
    args: list[str] = Field(default_factory=list)

    _check_listen = field_validator("listen")(_listen)


class GatewaySpec(Spec):
    """The edge gateway: its listener, admin port and any further ``meshgate gateway`` arguments."""

    listen: str = "127.0.0.1:8000"
    admin: str = "127.0.0.1:9901"
    args: list[str] = Field(default_factory=list)

    _check_listen = field_validator("listen", "admin")(_listen)


class TracingSpec(Spec):
    """Where spans go: ``otlpEndpoint`` (OTLP/HTTP), or else the embedded collector on ``collector``."""

    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    collector: str = "127.0.0.1:4318"

    _check_listen = field_validator("collector")(_listen)


class ServiceSpec(Spec):
    """One service: the command that starts its app, how many replicas, how the sidecar checks it."""

    name: Name
    namespace: Name = "default"
    command: list[str] = Field(min_length=1)
    replicas: int = Field(default=1, ge=1, le=16)
    check: Literal["http", "tcp", "ttl"] = "http"
    check_path: str = Field(default="/healthz", pattern=r"^/")
    upstreams: list[Name] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    sidecar_args: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _placeholders(self) -> ServiceSpec:
        for text in [*self.command, *self.env.values()]:
            for found in _PLACEHOLDER.findall(text):
                kind, _, arg = found.partition(":")
                if kind == "upstream":
                    if arg not in self.upstreams:
                        raise ValueError(f"{{{found}}} names no entry of upstreams {self.upstreams}")
                elif found not in PLACEHOLDERS:
                    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                    raise ValueError(f"unknown placeholder {{{found}}}; known: {known}, {{upstream:NAME}}")
        return self


class Example(Spec):
    """A command printed once the stack is ready: ``say`` as a comment, then ``run`` with
    ``{gateway}``, ``{gatewayAdmin}``, ``{controlPlane}``, ``{traces}``, ``{python}``, ``{meshgate}``,
    ``{dir}`` (this file's folder), ``{workdir}``, ``{policies}``, ``{dataDir}`` and ``{admin:SERVICE}``
    filled in (paths relative to the directory ``up`` runs in); ``expect`` is what its output contains
    (the demo test checks it)."""

    say: str
    run: str
    expect: str | None = None


class LocalStack(Spec):
    """A whole stack on one machine."""

    api_version: Literal["meshgate/v1"] = Field(alias="apiVersion")
    kind: Literal["LocalStack"]
    name: Name
    description: str | None = None
    policies: str = "policies"
    data_dir: str | None = None
    workdir: str = "."
    redis: str | None = Field(default=None, pattern=r"^rediss?://")
    access_log: bool = True
    control_plane: ControlPlaneSpec = Field(default_factory=ControlPlaneSpec)
    gateway: GatewaySpec | None = Field(default_factory=GatewaySpec)
    tracing: TracingSpec = Field(default_factory=TracingSpec)
    services: list[ServiceSpec] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_ports(self) -> LocalStack:
        """No two of the stack's own listeners on one fixed HOST:PORT (port 0 picks a free one): the
        second would fail at start with "address in use", after the others had started."""
        listeners = [("controlPlane.listen", self.control_plane.listen)]
        if self.gateway is not None:
            listeners += [("gateway.listen", self.gateway.listen), ("gateway.admin", self.gateway.admin)]
        if self.tracing.otlp_endpoint is None:
            listeners.append(("tracing.collector", self.tracing.collector))
        seen: dict[str, str] = {}
        for field, address in listeners:
            if address.rpartition(":")[2] == "0":
                continue
            if address in seen:
                raise ValueError(f"{seen[address]} and {field} both listen on {address}")
            seen[address] = field
        return self


class LocalStackError(Exception):
    """The file cannot be used; ``errors`` are ``FILE:LINE: field: message`` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_localstack(path: Path) -> LocalStack:
    """Read and validate ``path``; :class:`LocalStackError` with every problem otherwise."""
    raws, problems = read_yaml_file(path, str(path))
    if problems:
        raise LocalStackError([str(p) for p in problems])
    docs = [r for r in raws if r.data is not None]
    if len(docs) != 1:
        raise LocalStackError([f"{path}:1: expected one LocalStack document, found {len(docs)}"])
    raw = docs[0]
    errors = [
        PolicyError(raw.file, line, "LocalStack", ".".join(map(str, p)), m) for p, line, m in raw.problems
    ]
    if not isinstance(raw.data, dict):
        raise LocalStackError([f"{path}:{raw.line}: a LocalStack document must be a mapping"])
    if raw.data.get("kind") != "LocalStack":
        raise LocalStackError(
            [f"{path}:{raw.line_of(('kind',))}: kind must be LocalStack, got {raw.data.get('kind')!r}"]
        )
    try:
        stack = LocalStack.model_validate(raw.data)
    except ValidationError as exc:
        errors.extend(validation_errors(raw, f"LocalStack/{raw.data.get('name', '?')}", exc))
    if not errors:
        errors = _cross_checks(stack, raw)
    if errors:
        raise LocalStackError([str(e) for e in errors])
    return stack


def _cross_checks(stack: LocalStack, raw: RawDocument) -> list[PolicyError]:
    """What one field cannot see: a service declared twice, a service that is its own upstream."""
    errors = []
    ref = f"LocalStack/{stack.name}"
    seen: set[str] = set()
    processes: dict[str, str] = {}
    for i, service in enumerate(stack.services):
        if service.name == "gateway" and stack.gateway is not None:
            path0: FieldPath = ("services", i, "name")
            message = "'gateway' is the gateway's own service name (set gateway: null to run it yourself)"
            errors.append(PolicyError(raw.file, raw.line_of(path0), ref, dotted(path0), message))
        for replica in range(1, service.replicas + 1):
            process = service.name if service.replicas == 1 else f"{service.name}-{replica}"
            other = processes.setdefault(process, service.name)
            if other != service.name:
                path1: FieldPath = ("services", i, "name")
                message = f"replica names of {other!r} and {service.name!r} collide ({process!r}): rename one"
                errors.append(PolicyError(raw.file, raw.line_of(path1), ref, dotted(path1), message))
        if service.name in seen:
            path: FieldPath = ("services", i, "name")
            errors.append(
                PolicyError(
                    raw.file,
                    raw.line_of(path),
                    ref,
                    dotted(path),
                    f"service {service.name!r} is declared twice",
                )
            )
        seen.add(service.name)
        for j, upstream in enumerate(service.upstreams):
            if upstream == service.name:
                path = ("services", i, "upstreams", j)
                errors.append(
                    PolicyError(
                        raw.file,
                        raw.line_of(path),
                        ref,
                        dotted(path),
                        f"service {service.name!r} lists itself as an upstream",
                    )
                )
    return errors
