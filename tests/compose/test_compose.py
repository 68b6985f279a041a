"""compose/: the multi-container deployment, checked by its structure.

No container engine runs where the tests run, so nothing here starts a container. Instead the files are
read the way Docker Compose reads them (YAML merge keys, `${VAR:-default}` interpolation, `$$` for a
literal `$`) and checked against each other and against the code: every `meshgate ...` command parses
with the real CLI parser (a renamed flag fails here), sidecars and apps agree on ports, Prometheus
scrapes the admin ports that exist, the Dockerfile installs the package. When `docker compose` or
`docker-compose` is installed, `config` (which needs no engine) validates the file as well.
"""

from __future__ import annotations

import argparse
import fnmatch
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.cli import build_parser
from shared.config.loader import load_policy_set

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
DOCKERIGNORE = COMPOSE_DIR / "Dockerfile.dockerignore"
README = COMPOSE_DIR / "README.md"
#: Where compose/Dockerfile puts the repository inside the image.
IMAGE_REPO = PurePosixPath("/src")

#: Demo service -> the port its app listens on (and its `Service` declares in policies/).
DEMO_PORTS = {"web": 8080, "orders": 8081, "catalog": 8082}
#: Apps that call catalog's gRPC API at $CATALOG_GRPC, a per-upstream port of their sidecar.
GRPC_CLIENTS = ("web", "orders")
INFRASTRUCTURE = {"redis", "jaeger", "prometheus"}
MESHGATE = {"control-plane", "tokens", "gateway"}
EXPECTED_SERVICES = INFRASTRUCTURE | MESHGATE | set(DEMO_PORTS) | {f"{name}-sidecar" for name in DEMO_PORTS}
#: Host ports published on purpose: gateway, Jaeger UI, Prometheus, control plane.
PUBLISHED = {8000: "gateway", 16686: "jaeger", 9090: "prometheus", 15010: "control-plane"}
WORKLOADS = (*DEMO_PORTS, "gateway")  # every identity that needs a join token
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# ----- reading the compose file as Compose does ------------------------------------------------------------


class InterpolationError(ValueError):
    """A `$` that Compose would substitute with nothing (or reject): write `$$` for the shell."""


_DOLLAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|)")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-)(?P<default>.*))?$", re.DOTALL)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation, strict: an unset variable without a default is an error, not ''."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        named = match.group("named")
        if named is not None:
            if named not in env:
                raise InterpolationError(f"${named} is not set and has no default (write $${named})")
            return env[named]
        braced = match.group("braced")
        if braced is None:
            raise InterpolationError(f"a lone '$' in {text!r}")
        parts = _BRACED.match(braced)
        if parts is None:
            raise InterpolationError(f"unsupported interpolation ${{{braced}}}")
        name, op, default = parts.group("name", "op", "default")
        value = env.get(name)
        if op == ":-" and not value:
            return interpolate(default, env)
        if op == "-" and value is None:
            return interpolate(default, env)
        if value is None:
            raise InterpolationError(f"${{{name}}} is not set and has no default")
        return value

    return _DOLLAR.sub(substitute, text)


def resolve(value: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value (not the keys) of a loaded YAML tree."""
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [resolve(item, env) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, env) for key, item in value.items()}
    return value


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the `<<: *anchor` merge keys too
    assert isinstance(data, dict)
    resolved = resolve(data, env or {})
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict) and found, "no services"
    return found


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Target -> condition, from either the list or the mapping form."""
    value = service.get("depends_on") or {}
    if isinstance(value, list):
        return dict.fromkeys(value, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in value.items()}


def published_ports(service: Mapping[str, Any]) -> list[tuple[int, int, str]]:
    """(host port, container port, protocol) of each published port, short or long syntax."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if "published" in entry:
                out.append((int(entry["published"]), int(entry["target"]), entry.get("protocol", "tcp")))
            continue
        spec, _, protocol = str(entry).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) >= 2:
            out.append((int(parts[-2]), int(parts[-1]), protocol or "tcp"))
    return out


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each volume entry, short or long syntax."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))))
            continue
        parts = str(entry).split(":")
        if len(parts) == 1:
            out.append(("", parts[0], False))
        else:
            options = parts[2].split(",") if len(parts) > 2 else []
            out.append((parts[0], parts[1], "ro" in options))
    return out


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def service_networks(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    value = service.get("networks") or {}
    if isinstance(value, list):
        return {name: {} for name in value}
    return {name: spec or {} for name, spec in value.items()}


# ----- finding the `meshgate ...` commands ---------------------------------------------------------------

_SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "dash"}
_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&"}
_REDIRECTS = {">", ">>", "<", ">&", "<&", "&>", ">|", "<<", "<<<"}
_PREFIX_WORDS = {"then", "do", "else", "elif", "if", "while", "until", "!", "{", "}", "exec", "time"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_FD_NUMBER = re.compile(r"(?:(?<=\s)|^)\d+(?=[<>])")  # the 2 of 2>&1, which shlex splits off


def simple_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a POSIX shell script, without redirections and leading assignments."""
    script = script.replace("\\\n", " ")
    for line in script.splitlines():
        lexer = shlex.shlex(_FD_NUMBER.sub("", line), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        tokens = iter(list(lexer))
        for token in tokens:
            if token in _SEPARATORS:
                yield from _trimmed(words)
                words = []
            elif token in _REDIRECTS:
                next(tokens, None)  # the redirection's target
            else:
                words.append(token)
        yield from _trimmed(words)


def _trimmed(words: list[str]) -> Iterator[list[str]]:
    while words and (words[0] in _PREFIX_WORDS or _ASSIGNMENT.match(words[0])):
        words = words[1:]
    if words:
        yield words


def argv_lists(value: Any) -> Iterator[list[str]]:
    """Every command line in a `command`, `entrypoint` or healthcheck `test` value."""
    if value is None:
        return
    if isinstance(value, str):  # Compose splits a string command like a shell would (no shell runs)
        value = shlex.split(value)
    argv = [str(word) for word in value]
    if argv and argv[0] in ("CMD", "CMD-SHELL", "NONE"):
        if argv[0] == "CMD-SHELL":
            yield from simple_commands(" ".join(argv[1:]))
            return
        argv = argv[1:]
    if argv and argv[0] in _SHELLS:
        flags = [i for i, word in enumerate(argv) if word.startswith("-") and "c" in word[1:]]
        if flags and flags[0] + 1 < len(argv):
            yield from simple_commands(argv[flags[0] + 1])
            return
    if argv:
        yield argv


@dataclass(frozen=True)
class Invocation:
    service: str
    where: str  # command, entrypoint or healthcheck
    argv: tuple[str, ...]  # after `meshgate`

    def parse(self) -> argparse.Namespace:
        return build_parser().parse_args(list(self.argv))

    def __str__(self) -> str:
        return f"{self.service} ({self.where}): meshgate {shlex.join(self.argv)}"


def command_lines(services: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, str, list[str]]]:
    for name, service in services.items():
        for where in ("entrypoint", "command"):
            for argv in argv_lists(service.get(where)):
                yield name, where, argv
        for argv in argv_lists((service.get("healthcheck") or {}).get("test")):
            yield name, "healthcheck", argv


def invocations(services: Mapping[str, Mapping[str, Any]]) -> list[Invocation]:
    return [
        Invocation(name, where, tuple(argv[1:]))
        for name, where, argv in command_lines(services)
        if argv[0] == "meshgate"
    ]


def parsed(
    services: Mapping[str, Mapping[str, Any]], service: str, command: str, where: str = "command"
) -> argparse.Namespace:
    """The one `meshgate COMMAND ...` that ``service`` runs (as its command, by default)."""
    found = [
        call
        for call in invocations(services)
        if call.service == service and call.where == where and call.argv[:1] == (command,)
    ]
    assert len(found) == 1, f"{service}: expected one 'meshgate {command}' in its {where}, got {found}"
    return found[0].parse()


def admin_ports(services: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Service -> the port where its Meshgate process serves /metrics (the control plane: its API port)."""
    ports = {}
    for call in invocations(services):
        if call.where != "command":
            continue
        args = call.parse()
        if args.command == "control-plane":
            ports[call.service] = args.listen[1]
        elif args.command in ("sidecar", "gateway"):
            ports[call.service] = args.admin[1]
    return ports


def in_image(path: str) -> Path | None:
    """The repository file behind a path inside the image (/src/...), or None outside /src."""
    pure = PurePosixPath(path)
    if not pure.is_relative_to(IMAGE_REPO):
        return None
    return REPO.joinpath(*pure.relative_to(IMAGE_REPO).parts)


# ----- the services and how they depend on each other --------------------------------------------------


def test_every_expected_service_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"missing services: {sorted(missing)}"
    unexpected = set(services) - EXPECTED_SERVICES
    assert not unexpected, f"services this test does not know (add them here): {sorted(unexpected)}"


def test_depends_on_targets_exist_with_known_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target!r}"
            assert target != name, f"{name} depends on itself"
            assert condition in DEPENDS_CONDITIONS, f"{name} -> {target}: unknown condition {condition!r}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health: it has none"


def test_dependencies_have_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    graph = {name: set(depends_on(service)) for name, service in services.items()}
    for name, service in services.items():
        mode = str(service.get("network_mode", ""))
        if mode.startswith("service:"):
            graph[name].add(mode.removeprefix("service:"))
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {name for name, needs in graph.items() if name not in done and needs <= done}
        assert ready, f"dependency cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_images_and_builds_are_valid(services: dict[str, dict[str, Any]]) -> None:
    reference = re.compile(
        r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
        r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
    )
    builds: dict[str, list[Any]] = {}
    for name, service in services.items():
        image, build = service.get("image"), service.get("build")
        assert image or build, f"{name}: neither image nor build"
        if image is not None:
            assert reference.match(image), f"{name}: image {image!r} is not NAME:TAG"
            assert not image.endswith(":latest"), f"{name}: pin a version rather than {image!r}"
        if build is None:
            continue
        spec = {"context": build} if isinstance(build, str) else build
        context = (COMPOSE_DIR / spec["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / spec.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: no Dockerfile at {dockerfile}"
        assert dockerfile.resolve() == DOCKERFILE, f"{name}: builds {dockerfile}, not compose/Dockerfile"
        assert context == REPO, f"{name}: the build context must be the repository root, not {context}"
        builds.setdefault(str(image), []).append(spec)
    assert set(builds) == {"meshgate:local"}, f"one locally built image for Meshgate, got {sorted(builds)}"
    specs = builds["meshgate:local"]
    assert all(spec == specs[0] for spec in specs), "services tagging meshgate:local build it differently"
    for name in MESHGATE | set(DEMO_PORTS) | {f"{demo}-sidecar" for demo in DEMO_PORTS}:
        assert services[name].get("image") == "meshgate:local", f"{name} must run the Meshgate image"
        assert "build" in services[name], f"{name}: without build, `up --build` would try to pull the image"


def test_network_mode_names_an_existing_service(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        mode = service.get("network_mode")
        if mode is None:
            continue
        assert str(mode).startswith("service:"), f"{name}: network_mode {mode!r} (expected service:NAME)"
        target = str(mode).removeprefix("service:")
        assert target in services, f"{name}: network_mode names unknown service {target!r}"
        assert "network_mode" not in services[target], f"{name}: {target} borrows a namespace itself"
        assert target in depends_on(service), f"{name} should depend on {target}, whose namespace it joins"
        for key in ("ports", "networks", "hostname", "expose", "dns", "extra_hosts"):
            assert key not in service, f"{name}: {key!r} conflicts with network_mode (set it on {target})"


def test_each_app_joins_its_sidecars_namespace(services: dict[str, dict[str, Any]]) -> None:
    for app in DEMO_PORTS:
        assert services[app].get("network_mode") == f"service:{app}-sidecar", app
        assert depends_on(services[app])[f"{app}-sidecar"] == "service_healthy", app


def test_volumes_are_declared_and_bind_sources_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in compose["services"].items():
        for source, target, _ in mounts(service):
            assert target.startswith("/"), f"{name}: mount target {target!r} is not absolute"
            if not source:
                continue
            if is_bind(source):
                path = (COMPOSE_DIR / source).resolve()
                assert path.exists(), f"{name}: bind mount source {source} ({path}) does not exist"
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared under volumes:"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"


def test_networks_are_declared_and_fixed_addresses_fit(compose: dict[str, Any]) -> None:
    declared = compose.get("networks") or {}
    addresses: dict[str, str] = {}
    for name, service in compose["services"].items():
        for network, spec in service_networks(service).items():
            assert network in declared, f"{name}: network {network!r} is not declared"
            address = spec.get("ipv4_address")
            if address is None:
                continue
            config = (declared[network] or {}).get("ipam", {}).get("config") or []
            assert config, f"{name}: a fixed address needs ipam.config on network {network!r}"
            subnet = ipaddress.ip_network(config[0]["subnet"])
            assert ipaddress.ip_address(address) in subnet, f"{name}: {address} is outside {subnet}"
            if "ip_range" in config[0]:
                pool = ipaddress.ip_network(config[0]["ip_range"])
                assert ipaddress.ip_address(address) not in pool, (
                    f"{name}: {address} is inside ip_range {pool}, where Docker hands out addresses"
                )
            assert address not in addresses, f"{name} and {addresses.get(address)} share {address}"
            addresses[address] = name


def test_published_ports_are_unique_and_as_documented(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[tuple[int, str], str] = {}
    for name, service in services.items():
        for host, _, protocol in published_ports(service):
            assert (host, protocol) not in seen, f"host port {host}/{protocol}: {seen.get((host, protocol))}"
            seen[host, protocol] = name
    assert {port: name for (port, _), name in seen.items()} == PUBLISHED


def test_published_ports_reach_the_listeners(services: dict[str, dict[str, Any]]) -> None:
    listens = {
        "gateway": parsed(services, "gateway", "gateway").listen[1],
        "control-plane": parsed(services, "control-plane", "control-plane").listen[1],
        "jaeger": 16686,
        "prometheus": 9090,
    }
    for name, container_port in listens.items():
        targets = {target for _, target, _ in published_ports(services[name])}
        assert targets == {container_port}, f"{name} publishes {targets}, listens on {container_port}"


def test_shell_variables_are_escaped_for_compose() -> None:
    """A shell `$i` in the file would be replaced by Compose (with '' when unset): it must be `$$i`."""
    load_compose()  # raises InterpolationError on any `$NAME` without a default
    assert interpolate("$$i ${A:-x}.1 ${B-y}", {}) == "$i x.1 y"
    with pytest.raises(InterpolationError):
        interpolate("echo $i", {})


def test_network_prefix_can_be_overridden() -> None:
    """MESHGATE_NET moves the subnet, the sidecars' fixed addresses and what they advertise together."""
    moved = load_compose({"MESHGATE_NET": "10.99.5"})
    for app in DEMO_PORTS:
        sidecar = moved["services"][f"{app}-sidecar"]
        address = service_networks(sidecar)["mesh"]["ipv4_address"]
        assert address.startswith("10.99.5."), address
        assert parsed(moved["services"], f"{app}-sidecar", "sidecar").advertise == address
    assert moved["networks"]["mesh"]["ipam"]["config"][0]["subnet"] == "10.99.5.0/24"


# ----- the Meshgate commands ---------------------------------------------------------------------------


def test_every_meshgate_command_parses_with_the_real_cli(services: dict[str, dict[str, Any]]) -> None:
    calls = invocations(services)
    failures = []
    for call in calls:
        try:
            call.parse()
        except SystemExit:
            failures.append(str(call))
    assert not failures, "rejected by meshgate's parser (see the usage errors above):\n" + "\n".join(failures)
    kinds = sorted(
        (call.service, " ".join(call.argv[:2]) if call.argv[0] == "token" else call.argv[0]) for call in calls
    )
    assert kinds == sorted(
        [
            ("control-plane", "control-plane"),
            *[("tokens", "token create")] * len(WORKLOADS),
            ("gateway", "gateway"),
            ("gateway", "wait-ready"),
            *[(f"{app}-sidecar", "sidecar") for app in DEMO_PORTS],
            *[(f"{app}-sidecar", "wait-ready") for app in DEMO_PORTS],
        ]
    )


def test_the_parser_catches_a_renamed_flag() -> None:
    """The check above is only worth something if a wrong flag fails it."""
    call = Invocation("x", "command", ("sidecar", "--service", "web", "--app-url", "http://127.0.0.1:1"))
    with pytest.raises(SystemExit):
        call.parse()


def test_command_extraction_from_shell_scripts() -> None:
    script = 'set -e\nif true; then exec meshgate token create --service "$s" > /t/x.tmp 2>&1; fi\n'
    assert list(argv_lists(["sh", "-ec", script])) == [
        ["set", "-e"],
        ["true"],
        ["meshgate", "token", "create", "--service", "$s"],
        ["fi"],
    ]
    assert list(argv_lists("meshgate wait-ready --timeout 2s")) == [
        ["meshgate", "wait-ready", "--timeout", "2s"]
    ]
    assert list(argv_lists(["CMD-SHELL", "A=1 meshgate wait-ready || exit 1"])) == [
        ["meshgate", "wait-ready"],
        ["exit", "1"],
    ]


def test_inline_python_compiles(services: dict[str, dict[str, Any]]) -> None:
    for name, where, argv in command_lines(services):
        if argv[0] in ("python", "python3") and "-c" in argv:
            code = argv[argv.index("-c") + 1]
            compile(code, f"<{name} {where}>", "exec")


def test_control_plane_uses_the_mounted_policies_and_redis(services: dict[str, dict[str, Any]]) -> None:
    args = parsed(services, "control-plane", "control-plane")
    assert args.listen[0] == "0.0.0.0", "other containers must reach the control plane"
    assert urlsplit(args.store).hostname == "redis"
    volumes = {target: (source, ro) for source, target, ro in mounts(services["control-plane"])}
    for folder in args.policies:
        source, read_only = volumes[folder]
        assert (COMPOSE_DIR / source).resolve() == REPO / "policies" and read_only
    assert str(args.data_dir) in volumes and not is_bind(volumes[str(args.data_dir)][0])


def test_policies_declare_every_workload() -> None:
    result = load_policy_set([REPO / "policies"])
    assert result.ok and result.policy_set is not None, [str(error) for error in result.errors]
    declared = result.policy_set.services
    for name in WORKLOADS:
        assert name in declared, f"policies/ declares no Service {name!r}"
    for app, port in DEMO_PORTS.items():
        assert declared[app].port == port, f"Service {app} says port {declared[app].port}, the app {port}"
    assert declared["catalog"].protocol == "grpc", "catalog is a gRPC server: its Service needs protocol grpc"


def test_tokens_are_made_for_every_workload_that_uses_one(services: dict[str, dict[str, Any]]) -> None:
    cp = parsed(services, "control-plane", "control-plane")
    tokens_mounts = {target: (source, ro) for source, target, ro in mounts(services["tokens"])}
    written: dict[str, str] = {}  # token file -> service
    for call in invocations(services):
        if call.service != "tokens":
            continue
        args = call.parse()
        assert args.reusable, f"{call}: a one-shot token breaks the first restart after its use"
        assert args.ttl >= 3600, f"{call}: the token should outlive the start-up"
        assert args.store == cp.store, f"{call}: --store must be the control plane's ({cp.store})"
        assert args.data_dir == cp.data_dir, f"{call}: --data-dir must be the control plane's"
        written[f"/tokens/{args.service}.token"] = args.service
    assert set(written.values()) == set(WORKLOADS)
    cp_mounts = {target: source for source, target, _ in mounts(services["control-plane"])}
    assert tokens_mounts[str(cp.data_dir)][0] == cp_mounts[str(cp.data_dir)], "tokens must see the CA"
    assert "/tokens" in tokens_mounts and not tokens_mounts["/tokens"][1], "tokens writes /tokens"
    script = " ".join(services["tokens"]["command"])
    for path in written:
        assert f"> {path}.tmp" in script and f"mv {path}.tmp {path}" in script, f"{path} not written"
    assert services["tokens"].get("restart") == "no", "a one-shot service must not restart"
    assert depends_on(services["tokens"]).get("control-plane") == "service_healthy"

    for name, command in [*((f"{app}-sidecar", "sidecar") for app in DEMO_PORTS), ("gateway", "gateway")]:
        args = parsed(services, name, command)
        assert str(args.token) in written, f"{name}: no service writes {args.token}"
        assert written[str(args.token)] == args.service, f"{name} uses the token of another service"
        own = {target: source for source, target, _ in mounts(services[name])}
        assert own.get(str(PurePosixPath(args.token).parent)) == tokens_mounts["/tokens"][0], name
        assert depends_on(services[name]).get("tokens") == "service_completed_successfully", name
        assert depends_on(services[name]).get("control-plane") == "service_healthy", name
        endpoint = urlsplit(args.control_plane)
        assert endpoint.scheme == "https" and endpoint.hostname == "control-plane", name
        assert endpoint.port == cp.listen[1], f"{name}: the control plane listens on {cp.listen[1]}"


def test_sidecars_match_their_apps(services: dict[str, dict[str, Any]]) -> None:
    for app, port in DEMO_PORTS.items():
        name = f"{app}-sidecar"
        args = parsed(services, name, "sidecar")
        env = services[app].get("environment") or {}
        assert isinstance(env, dict), f"{app}: write environment as a mapping"
        assert args.service == app
        assert args.app == ("127.0.0.1", port), f"{name} forwards to {args.app}, the app listens on {port}"
        assert int(env["PORT"]) == port and env.get("HOST", "127.0.0.1") == "127.0.0.1", app
        assert args.inbound[0] == "0.0.0.0", f"{name}: peers must reach the inbound listener"
        address = service_networks(services[name])["mesh"].get("ipv4_address")
        assert args.advertise == address, f"{name} advertises {args.advertise}, its address is {address}"
        ipaddress.ip_address(args.advertise)  # the control plane accepts IP addresses only
        assert args.admin[0] == "0.0.0.0", f"{name}: Prometheus must reach the admin port"
        outbound = urlsplit(env.get("MESHGATE_OUTBOUND", "http://127.0.0.1:15001"))
        assert (outbound.hostname, outbound.port) == args.outbound, f"{app} and {name} disagree on outbound"
        assert args.check == ("tcp" if app == "catalog" else "http"), f"{name}: check {args.check}"
        assert args.cache_dir is not None and args.access_log, name
        health = parsed(services, name, "wait-ready", where="healthcheck")
        assert urlsplit(health.admin).port == args.admin[1], f"{name}: healthcheck asks another port"
    for app in GRPC_CLIENTS:
        sidecar = parsed(services, f"{app}-sidecar", "sidecar")
        grpc = services[app]["environment"]["CATALOG_GRPC"]
        host, _, grpc_port = grpc.rpartition(":")
        assert host == "127.0.0.1" and (int(grpc_port), "catalog") in sidecar.upstream, (
            f"{app} calls catalog at {grpc}: its sidecar needs --upstream {grpc_port}=catalog"
        )


def test_gateway_listens_publicly_and_uses_redis(services: dict[str, dict[str, Any]]) -> None:
    args = parsed(services, "gateway", "gateway")
    assert args.listen[0] == "0.0.0.0" and args.admin[0] == "0.0.0.0"
    assert urlsplit(args.redis).hostname == "redis"
    assert args.redis != parsed(services, "control-plane", "control-plane").store, (
        "rate limits and the registry should not share a Redis database"
    )
    assert args.cache_dir is not None and args.access_log
    health = parsed(services, "gateway", "wait-ready", where="healthcheck")
    assert urlsplit(health.admin).port == args.admin[1]


def test_traces_go_to_jaeger_over_otlp_http(services: dict[str, dict[str, Any]]) -> None:
    jaeger = services["jaeger"]
    assert str(jaeger.get("environment", {}).get("COLLECTOR_OTLP_ENABLED")).lower() == "true"
    for call in invocations(services):
        if call.argv[0] in ("sidecar", "gateway"):
            endpoint = call.parse().otlp_endpoint
            assert endpoint == "http://jaeger:4318/v1/traces", f"{call}: OTLP endpoint {endpoint}"
    for app in DEMO_PORTS:
        env = services[app]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", app
        assert env["OTEL_SERVICE_NAME"] == app


def test_demo_app_scripts_exist(services: dict[str, dict[str, Any]]) -> None:
    """Each app runs `python /src/examples/demo/APP.py`: that file must be in the repository."""
    for app in DEMO_PORTS:
        assert services[app]["command"] == ["python", f"/src/examples/demo/{app}.py"], app
    for name, where, argv in command_lines(services):
        if argv[0] not in ("python", "python3"):
            continue
        for word in argv[1:]:
            if word.endswith(".py"):
                path = in_image(word)
                assert path is not None, f"{name} ({where}): {word} is outside the repository in the image"
                assert path.is_file(), f"{name} ({where}) runs {word}, but {path} does not exist"


# ----- Prometheus --------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_admin_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert isinstance(config, dict) and config.get("scrape_configs"), "prometheus.yml has no scrape_configs"
    admin = admin_ports(services)
    scraped: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                assert host in services, f"{job['job_name']}: {target}: no service {host!r}"
                assert admin.get(host) == int(port), f"{job['job_name']}: {target}: not {host}'s admin port"
                scraped.add((host, int(port)))
                https = host == "control-plane"
                assert (job.get("scheme", "http") == "https") == https, f"{target}: scheme"
                if https:
                    assert job["tls_config"]["insecure_skip_verify"] is True
    assert scraped == set(admin.items()), f"admin ports not scraped: {set(admin.items()) - scraped}"
    mounted = {target: source for source, target, _ in mounts(services["prometheus"])}
    assert (COMPOSE_DIR / mounted["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_FILE
    command = " ".join(services["prometheus"].get("command") or [])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command


# ----- the image ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, rest = whole.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def test_dockerfile_builds_the_package_from_the_repository() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.12-slim")
    assert ("COPY", f". {IMAGE_REPO}") in instructions, "the repository must be copied to /src"
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    installs = [
        word
        for run in runs
        for command in simple_commands(run)
        if command[:2] == ["pip", "install"]
        for word in command[2:]
        if not word.startswith("-")
    ]
    assert installs, "no `pip install` of the package"
    extras_declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for target in installs:
        match = re.fullmatch(r"(?P<path>[^\[]+)(?:\[(?P<extras>[^\]]*)\])?", target)
        assert match is not None and match["path"] == str(IMAGE_REPO), f"installs {target}, not /src"
        extras = [extra.strip() for extra in (match["extras"] or "").split(",") if extra.strip()]
        assert extras == ["demo"], f"install the demo extra (grpcio for the apps), got {extras}"
        for extra in extras:
            assert extra in extras_declared, f"pyproject.toml has no [project.optional-dependencies] {extra}"
    copy_index = instructions.index(("COPY", f". {IMAGE_REPO}"))
    assert any(i > copy_index for i, (keyword, _) in enumerate(instructions) if keyword == "RUN")


def test_dockerignore_keeps_what_the_build_needs() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions make this check unreliable"
    for needed in ("pyproject.toml", "README.md", "shared", "mesh", "gateway", "policies", "examples"):
        assert (REPO / needed).exists(), needed
        hits = [p for p in patterns if fnmatch.fnmatchcase(needed, p.removeprefix("**/"))]
        assert not hits, f"{needed} is excluded from the build context by {hits}"
    for heavy in (".git", ".venv"):
        assert heavy in patterns, f"{heavy} should stay out of the build context"


def test_readme_says_how_to_run_it_and_that_it_was_not_run_here() -> None:
    text = README.read_text()
    assert "docker compose -f compose/docker-compose.yml up --build" in text
    for url in ("http://localhost:8000", "http://localhost:16686", "http://localhost:9090"):
        assert url in text, url
    assert "x-api-key: demo-key-alice" in text
    assert "not been run" in text or "not run" in text


# ----- Docker Compose itself, when it is installed -----------------------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose`, whichever answers `version` here."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for candidate in candidates:
        try:
            probe = subprocess.run(
                [*candidate, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return candidate
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        pytest.skip(
            "neither `docker compose` (v2 plugin) nor `docker-compose` is available here: "
            "the structure tests above stand in for `docker compose config`"
        )
    env = {key: value for key, value in os.environ.items() if key != "MESHGATE_NET"}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, f"{' '.join(command)} config: {result.stderr or result.stdout}"
