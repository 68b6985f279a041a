"""``plan_stack`` / ``plan_workloads``: argv, environment and ports of every process ``meshgate up`` starts.

Ports come from a deterministic ``pick`` (a counter), and every Meshgate argv is parsed by the real
command-line parser, so a renamed or removed flag breaks these tests rather than the demo.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.util.re import parse_env_headers

from mesh.up.plan import (
    MESHGATE,
    ProcessPlan,
    StackPlan,
    fill,
    otel_env,
    plan_stack,
    plan_workloads,
    resolve,
    url,
)
from mesh.up.spec import LocalStackError, load_localstack
from shared.cli import build_parser

REPO = Path(__file__).resolve().parents[3]
FIRST_PORT = 30000

HEAD = """\
apiVersion: meshgate/v1
kind: LocalStack
name: shop
"""

SERVICES = """\
services:
  - name: web
    command: ["{python}", "web.py", "--port", "{port}", "--via", "{outbound}", "--replica", "{replica}"]
    upstreams: [catalog]
    env: {CATALOG: "127.0.0.1:{upstream:catalog}", SELF: "{service}@{host}", TRACES: "{otlp}"}
  - name: orders
    namespace: shop
    command: ["{python}", "orders.py"]
    replicas: 3
    check: ttl
    sidecarArgs: ["--drain-timeout", "3s"]
  - name: catalog
    command: ["{python}", "catalog.py"]
    check: tcp
"""


class Picker:
    """A deterministic ``pick``: ports FIRST_PORT, FIRST_PORT+1, ...; remembers the hosts asked for."""

    def __init__(self, start: int = FIRST_PORT) -> None:
        self._ports: Iterator[int] = itertools.count(start)
        self.hosts: list[str] = []

    def __call__(self, host: str) -> int:
        self.hosts.append(host)
        return next(self._ports)


def write(folder: Path, text: str, name: str = "stack.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def tokens_for(folder: Path, *names: str) -> dict[str, Path]:
    return {n: folder / "tokens" / f"{n}.token" for n in (*names, "gateway")}


def planned(path: Path, pick: Picker | None = None) -> StackPlan:
    """The full plan of ``path`` with fake token paths and a counter for ports."""
    pick = pick or Picker()
    stack = load_localstack(path)
    plan = plan_stack(stack, path, pick=pick)
    return plan_workloads(plan, tokens_for(path.parent, *(s.name for s in stack.services)), pick=pick)


def parse(process: ProcessPlan) -> argparse.Namespace:
    """``process.argv`` through the real ``meshgate`` parser (a bad flag exits the test with 2)."""
    assert process.argv[:3] == list(MESHGATE) == [sys.executable, "-m", "shared.cli"]
    return build_parser().parse_args(process.argv[3:])


def by_name(plan: StackPlan) -> dict[str, ProcessPlan]:
    return {p.name: p for p in plan.processes()}


# -- helpers of the module -------------------------------------------------------------------------------


def test_resolve_keeps_a_given_port_and_picks_for_port_0() -> None:
    pick = Picker()
    assert resolve("127.0.0.1:8000", pick) == ("127.0.0.1", 8000)
    assert pick.hosts == []
    assert resolve("127.0.0.1:0", pick) == ("127.0.0.1", FIRST_PORT)
    assert resolve("[::1]:0", pick) == ("::1", FIRST_PORT + 1)
    assert pick.hosts == ["127.0.0.1", "::1"]


def test_url_brackets_ipv6_and_shows_wildcards_as_loopback() -> None:
    assert url("http", "127.0.0.1", 80) == "http://127.0.0.1:80"
    assert url("https", "0.0.0.0", 1) == "https://127.0.0.1:1"
    assert url("http", "::", 2) == "http://[::1]:2"
    assert url("http", "::1", 3) == "http://[::1]:3"
    assert url("http", "localhost", 4) == "http://localhost:4"


def test_fill_replaces_known_placeholders_and_leaves_the_rest() -> None:
    values = {"port": "1", "upstream:db": "2"}
    assert fill("{port}-{upstream:db}", values) == "1-2"
    assert fill("curl -w '%{http_code}' {port}", values) == "curl -w '%{http_code}' 1"
    assert fill("{{port}}", values) == "{1}"


def test_otel_env_with_an_endpoint() -> None:
    env = otel_env("web", "http://127.0.0.1:4318/v1/traces", 0.25, {"authorization": "Bearer t", "x-k": "v"})
    assert env == {
        "OTEL_SERVICE_NAME": "web",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer%20t,x-k=v",
    }
    # What the SDK's OTLP/HTTP exporter makes of the headers variable.
    parsed = parse_env_headers(env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"], liberal=True)
    assert parsed == {"authorization": "Bearer t", "x-k": "v"}


def test_otel_env_without_headers_sets_no_headers_variable() -> None:
    env = otel_env("web", "http://127.0.0.1:4318/v1/traces", 1.0, {})
    assert "OTEL_EXPORTER_OTLP_TRACES_HEADERS" not in env
    assert "OTEL_TRACES_EXPORTER" not in env


def test_otel_env_without_an_endpoint_turns_the_exporter_off() -> None:
    env = otel_env("orders", None, 1.0, {"authorization": "x"})
    assert env["OTEL_TRACES_EXPORTER"] == "none"
    assert env["OTEL_SERVICE_NAME"] == "orders"
    assert not any(k.startswith("OTEL_EXPORTER_OTLP") for k in env)


def test_otel_env_header_values_survive_the_sdk_parser() -> None:
    headers = {"x-scope": "team-a,team-b", "x-pct": "50%25"}
    env = otel_env("web", "http://127.0.0.1:4318/v1/traces", 1.0, headers)
    assert parse_env_headers(env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"], liberal=True) == headers


# -- plan_stack ----------------------------------------------------------------------------------------


def test_port_0_is_replaced_everywhere(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "controlPlane: {listen: '127.0.0.1:0'}\n"
        + "gateway: {listen: '0.0.0.0:0', admin: '127.0.0.1:0'}\n"
        + "tracing: {collector: '127.0.0.1:0'}\n",
    )
    pick = Picker()
    plan = planned(path, pick)
    assert plan.control_plane_url == f"https://127.0.0.1:{FIRST_PORT}"
    assert plan.control_plane.ready == f"https://127.0.0.1:{FIRST_PORT}/readyz"
    assert parse(plan.control_plane).listen == ("127.0.0.1", FIRST_PORT)
    assert plan.collector == ("127.0.0.1", FIRST_PORT + 1)
    assert plan.otlp_endpoint == f"http://127.0.0.1:{FIRST_PORT + 1}/v1/traces"
    assert plan.gateway is not None
    gateway = parse(plan.gateway)
    assert gateway.listen == ("0.0.0.0", FIRST_PORT + 2)
    assert gateway.admin == ("127.0.0.1", FIRST_PORT + 3)
    assert plan.gateway_url == f"http://127.0.0.1:{FIRST_PORT + 2}"
    assert plan.gateway.admin == f"http://127.0.0.1:{FIRST_PORT + 3}"
    assert plan.gateway.ready == f"http://127.0.0.1:{FIRST_PORT + 3}/readyz"
    assert pick.hosts == ["127.0.0.1", "127.0.0.1", "0.0.0.0", "127.0.0.1"]
    assert all(":0" not in part for p in plan.processes() for part in p.argv)


def test_given_ports_are_kept_and_nothing_is_picked(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD)
    pick = Picker()
    plan = planned(path, pick)
    assert pick.hosts == []
    assert plan.control_plane_url == "https://127.0.0.1:15010"
    assert plan.collector == ("127.0.0.1", 4318)
    assert plan.gateway_url == "http://127.0.0.1:8000"


def test_relative_paths_resolve_against_the_file_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path / "conf" / "stacks",
        HEAD + "policies: ../policies\ndataDir: ../../state\nworkdir: apps\n" + SERVICES,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path("..") / "conf" / "stacks" / "stack.yaml"  # the file given relative to the cwd
    stack = load_localstack(relative)
    plan = plan_stack(stack, relative, pick=Picker())
    assert plan.folder == (tmp_path / "conf" / "stacks").resolve()
    assert plan.policies == (tmp_path / "conf" / "policies").resolve()
    assert plan.data_dir == (tmp_path / "state").resolve()
    assert plan.workdir == (tmp_path / "conf" / "stacks" / "apps").resolve()
    plan_workloads(plan, tokens_for(tmp_path, "web", "orders", "catalog"), pick=Picker(40000))
    cp = parse(plan.control_plane)
    assert cp.policies == [str(plan.policies)]
    assert cp.data_dir == plan.data_dir / "control-plane"
    apps = [app for app, _ in plan.services]
    assert {app.cwd for app in apps} == {plan.workdir}
    for _, sidecar in plan.services:
        assert parse(sidecar).cache_dir.parent == plan.data_dir / "cache"


def test_default_data_dir_is_beside_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x", HEAD)
    plan = plan_stack(load_localstack(path), path, pick=Picker())
    assert plan.data_dir == (tmp_path / "x" / ".meshgate" / "shop").resolve()
    assert plan.policies == (tmp_path / "x" / "policies").resolve()
    assert plan.workdir == (tmp_path / "x").resolve()


def test_control_plane_store_and_extra_args(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD + "controlPlane:\n  store: redis://127.0.0.1:6390/2\n  args: [--reap-after, 30s]\n",
    )
    cp = parse(planned(path).control_plane)
    assert cp.command == "control-plane"
    assert cp.store == "redis://127.0.0.1:6390/2"
    assert cp.reap_after == 30.0


def test_ipv6_listen_addresses_are_bracketed_and_parse(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD + "controlPlane: {listen: '[::1]:0'}\ngateway: {listen: '[::1]:0', admin: '[::]:0'}\n",
    )
    plan = planned(path)
    assert plan.control_plane_url == f"https://[::1]:{FIRST_PORT}"
    assert "[::1]:30000" in plan.control_plane.argv
    assert parse(plan.control_plane).listen == ("::1", FIRST_PORT)
    assert plan.gateway is not None
    gateway = parse(plan.gateway)
    assert gateway.listen == ("::1", FIRST_PORT + 1)  # the collector keeps its 4318
    assert gateway.admin == ("::", FIRST_PORT + 2)
    assert gateway.control_plane == f"https://[::1]:{FIRST_PORT}"
    assert plan.gateway_url == f"http://[::1]:{FIRST_PORT + 1}"
    assert plan.gateway.admin == f"http://[::1]:{FIRST_PORT + 2}", "[::] is shown as loopback"


# -- plan_workloads: apps and sidecars ---------------------------------------------------------------------


def test_processes_come_in_start_order(tmp_path: Path) -> None:
    plan = planned(write(tmp_path, HEAD + SERVICES))
    assert [p.name for p in plan.processes()] == [
        "control-plane",
        "web",
        "web-sidecar",
        "orders-1",
        "orders-1-sidecar",
        "orders-2",
        "orders-2-sidecar",
        "orders-3",
        "orders-3-sidecar",
        "catalog",
        "catalog-sidecar",
        "gateway",
    ]
    roles = {p.name: p.role for p in plan.processes()}
    assert roles["control-plane"] == "control-plane" and roles["gateway"] == "gateway"
    assert roles["orders-2"] == "app" and roles["orders-2-sidecar"] == "sidecar"


def test_placeholders_of_command_and_env_are_filled(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + SERVICES)
    plan = planned(path)
    web, web_sidecar = plan.services[0]
    args = parse(web_sidecar)
    app_port = args.app[1]
    outbound_port = args.outbound[1]
    assert web.argv == [
        sys.executable,
        "web.py",
        "--port",
        str(app_port),
        "--via",
        f"http://127.0.0.1:{outbound_port}",
        "--replica",
        "1",
    ]
    [(catalog_port, upstream)] = args.upstream
    assert upstream == "catalog"
    assert web.env["CATALOG"] == f"127.0.0.1:{catalog_port}"
    assert web.env["SELF"] == "web@127.0.0.1"
    assert web.env["TRACES"] == plan.otlp_endpoint == "http://127.0.0.1:4318/v1/traces"
    assert web.env["PORT"] == str(app_port) and web.env["HOST"] == "127.0.0.1"
    assert web.env["MESHGATE_OUTBOUND"] == f"http://127.0.0.1:{outbound_port}"
    assert web.env["MESHGATE_SERVICE"] == "web" and web.env["MESHGATE_REPLICA"] == "1"
    assert web.env["PYTHONUNBUFFERED"] == "1"
    assert web.service == "web" and web.ready is None
    for app, _ in plan.services:
        for text in [*app.argv, *app.env.values()]:
            assert "{" not in text, f"{app.name}: unfilled placeholder in {text!r}"


def test_service_env_overrides_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "services:\n  - name: web\n    command: [x]\n    env: {PORT: '9', OTEL_SERVICE_NAME: shop-web}\n",
    )
    (web, _), *_ = planned(path).services
    assert web.env["PORT"] == "9" and web.env["OTEL_SERVICE_NAME"] == "shop-web"


def test_each_replica_gets_distinct_ports_and_its_own_cache_dir(tmp_path: Path) -> None:
    plan = planned(write(tmp_path, HEAD + SERVICES))
    orders = [(app, sidecar) for app, sidecar in plan.services if app.service == "orders"]
    assert [app.name for app, _ in orders] == ["orders-1", "orders-2", "orders-3"]
    assert [sidecar.name for _, sidecar in orders] == [f"orders-{i}-sidecar" for i in (1, 2, 3)]
    assert [app.env["MESHGATE_REPLICA"] for app, _ in orders] == ["1", "2", "3"]
    ports: list[int] = []
    cache_dirs: list[Path] = []
    for _, sidecar in plan.services:
        args = parse(sidecar)
        ports += [args.app[1], args.inbound[1], args.outbound[1], args.admin[1]]
        ports += [port for port, _ in args.upstream]
        cache_dirs.append(args.cache_dir)
    assert len(ports) == len(set(ports)), "two listeners planned on one port"
    assert len(cache_dirs) == len(set(cache_dirs)), "two sidecars share a certificate cache"
    assert [d.name for d in cache_dirs] == ["web", "orders-1", "orders-2", "orders-3", "catalog"]
    assert {d.parent for d in cache_dirs} == {plan.data_dir / "cache"}
    # Replicas share the service's join token (it is reusable) but nothing else.
    assert {parse(s).token for _, s in orders} == {tmp_path / "tokens" / "orders.token"}
    assert len({s.admin for _, s in orders}) == 3


def test_sidecar_argv_parses_with_the_real_cli(tmp_path: Path) -> None:
    plan = planned(write(tmp_path, HEAD + SERVICES))
    for app, sidecar in plan.services:
        args = parse(sidecar)
        assert args.command == "sidecar"
        assert args.handler.__name__ == "cmd_sidecar"
        assert args.service == app.service == sidecar.service
        assert args.app == ("127.0.0.1", int(app.env["PORT"]))
        assert args.control_plane == plan.control_plane_url
        assert args.token == tmp_path / "tokens" / f"{app.service}.token"
        assert args.cache_dir == plan.data_dir / "cache" / app.name
        assert args.heartbeat == 2.0
        assert args.otlp_endpoint == plan.otlp_endpoint
        assert args.trace_sample == 1.0 and args.access_log
        assert sidecar.admin == f"http://127.0.0.1:{args.admin[1]}"
        assert sidecar.ready == f"{sidecar.admin}/readyz"
    web, orders, catalog = (parse(plan.services[i][1]) for i in (0, 1, 4))
    assert (web.namespace, orders.namespace, catalog.namespace) == ("default", "shop", "default")
    assert (web.check, orders.check, catalog.check) == ("http", "ttl", "tcp")
    assert web.check_path == "/healthz"
    assert orders.drain_timeout == 3.0, "sidecarArgs are passed on"
    assert orders.upstream == [] and catalog.upstream == []


def test_control_plane_argv_parses_with_the_real_cli(tmp_path: Path) -> None:
    plan = planned(write(tmp_path, HEAD + SERVICES))
    args = parse(plan.control_plane)
    assert args.command == "control-plane"
    assert args.handler.__name__ == "cmd_control_plane"
    assert args.policies == [str(plan.policies)]
    assert args.data_dir == plan.data_dir / "control-plane"
    assert args.listen == ("127.0.0.1", 15010)
    assert args.store is None
    assert plan.control_plane.role == "control-plane" and plan.control_plane.env == {}


def test_tracing_with_an_otlp_endpoint_and_headers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + "accessLog: false\n"
        + "tracing:\n"
        + "  otlpEndpoint: https://otel.example:4318/v1/traces\n"
        + "  headers: {authorization: Bearer abc, x-team: shop}\n"
        + "  sample: 0.5\n"
        + SERVICES,
    )
    pick = Picker()
    plan = planned(path, pick)
    assert plan.collector is None, "no embedded collector when spans go elsewhere"
    assert plan.otlp_endpoint == "https://otel.example:4318/v1/traces"
    assert pick.hosts.count("127.0.0.1") == len(pick.hosts), "only local ports are picked"
    for process in plan.processes():
        if process.role == "control-plane":
            continue
        if process.role == "app":
            assert process.env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == plan.otlp_endpoint
            assert process.env["OTEL_TRACES_SAMPLER_ARG"] == "0.5"
            headers = parse_env_headers(process.env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"], liberal=True)
            assert headers == {"authorization": "Bearer abc", "x-team": "shop"}
            continue
        args = parse(process)
        assert args.otlp_endpoint == plan.otlp_endpoint
        assert sorted(args.otlp_header) == [("authorization", "Bearer abc"), ("x-team", "shop")]
        assert args.trace_sample == 0.5
        assert not args.access_log


def test_embedded_collector_is_the_default_endpoint(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "tracing: {collector: '127.0.0.1:0'}\n" + SERVICES)
    plan = planned(path)
    assert plan.collector is not None
    endpoint = f"http://127.0.0.1:{plan.collector[1]}/v1/traces"
    assert plan.otlp_endpoint == endpoint
    for app, sidecar in plan.services:
        assert app.env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == endpoint
        assert app.env["OTEL_SERVICE_NAME"] == app.service
        assert parse(sidecar).otlp_endpoint == endpoint
    assert plan.gateway is not None and parse(plan.gateway).otlp_endpoint == endpoint


# -- plan_workloads: the gateway -----------------------------------------------------------------------


def test_gateway_argv_parses_with_the_real_cli(tmp_path: Path) -> None:
    plan = planned(write(tmp_path, HEAD + SERVICES))
    assert plan.gateway is not None
    args = parse(plan.gateway)
    assert args.command == "gateway"
    assert args.handler.__name__ == "cmd_gateway"
    assert args.control_plane == plan.control_plane_url
    assert args.token == tmp_path / "tokens" / "gateway.token"
    assert args.cache_dir == plan.data_dir / "cache" / "gateway"
    assert args.listen == ("127.0.0.1", 8000) and args.admin == ("127.0.0.1", 9901)
    assert args.redis is None
    assert args.otlp_endpoint == plan.otlp_endpoint and args.access_log
    assert plan.gateway.role == "gateway" and plan.gateway.service is None


def test_redis_is_passed_to_the_gateway_only(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "redis: rediss://cache.example:6380/1\n" + SERVICES)
    plan = planned(path)
    assert plan.gateway is not None
    assert parse(plan.gateway).redis == "rediss://cache.example:6380/1"
    assert parse(plan.control_plane).store is None
    for _, sidecar in plan.services:
        assert "--redis" not in sidecar.argv


def test_gateway_extra_args_are_passed_on(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + "gateway:\n  args: [--workers, '2', --trusted-hops, '1']\n")
    plan = planned(path)
    assert plan.gateway is not None
    args = parse(plan.gateway)
    assert (args.workers, args.trusted_hops) == (2, 1)
    assert plan.gateway_url == "http://127.0.0.1:8000"


def test_tls_cert_in_gateway_args_makes_the_url_https(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD + "gateway:\n  listen: 127.0.0.1:8443\n  args: [--tls-cert, gw.pem, --tls-key, gw.key]\n",
    )
    plan = planned(path)
    assert plan.gateway is not None
    args = parse(plan.gateway)
    assert args.tls_cert == Path("gw.pem") and args.tls_key == Path("gw.key")
    assert plan.gateway_url == "https://127.0.0.1:8443"
    assert plan.gateway.admin == "http://127.0.0.1:9901", "the admin port stays plain HTTP"


def test_tls_cert_given_with_equals_also_makes_the_url_https(tmp_path: Path) -> None:
    path = write(
        tmp_path, HEAD + "gateway:\n  listen: 127.0.0.1:8443\n  args: [--tls-cert=gw.pem, --tls-key=gw.key]\n"
    )
    plan = planned(path)
    assert plan.gateway is not None
    assert parse(plan.gateway).tls_cert == Path("gw.pem")
    assert plan.gateway_url == "https://127.0.0.1:8443"


def test_no_gateway(tmp_path: Path) -> None:
    pick = Picker()
    path = write(tmp_path, HEAD + "gateway: null\n" + SERVICES)
    stack = load_localstack(path)
    plan = plan_stack(stack, path, pick=pick)
    plan_workloads(plan, {"web": tmp_path / "w", "orders": tmp_path / "o", "catalog": tmp_path / "c"}, pick)
    assert plan.gateway is None and plan.gateway_url is None
    assert [p.role for p in plan.processes()][-1] == "sidecar"


def test_the_repository_demo_plans_and_parses() -> None:
    path = REPO / "examples" / "demo.yaml"
    plan = planned(path)
    names = by_name(plan)
    assert plan.policies == REPO / "policies"
    assert plan.workdir == REPO / "examples" / "demo"
    for name in ("web.py", "orders.py", "catalog.py"):
        assert (plan.workdir / name).is_file(), f"the demo runs {name} from its workdir"
    for process in plan.processes():
        if process.role != "app":
            parse(process)
    assert names["web"].env["CATALOG_GRPC"] == f"127.0.0.1:{parse(names['web-sidecar']).upstream[0][0]}"
    assert names["orders-1"].env["CATALOG_GRPC"] != names["orders-2"].env["CATALOG_GRPC"]
    assert parse(names["catalog-sidecar"]).check == "tcp"


@pytest.mark.parametrize(
    "services",
    [
        "  - name: gateway\n    command: [x]\n",
        "  - name: orders\n    command: [x]\n    replicas: 2\n  - name: orders-1\n    command: [y]\n",
    ],
    ids=["service-named-gateway", "replica-name-clash"],
)
def test_no_two_processes_share_a_name_or_a_cache_dir(tmp_path: Path, services: str) -> None:
    path = write(tmp_path, HEAD + "services:\n" + services)
    try:
        plan = planned(path)
    except LocalStackError:
        return  # refusing the file is a fine answer too
    names = [p.name for p in plan.processes()]
    assert len(names) == len(set(names)), names
    cache_dirs = [str(parse(p).cache_dir) for p in plan.processes() if p.role in ("sidecar", "gateway")]
    assert len(cache_dirs) == len(set(cache_dirs)), cache_dirs
