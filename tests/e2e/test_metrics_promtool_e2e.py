"""``/metrics`` of every process (control plane, two sidecars, gateway) after real traffic (200s, a 401,
429s, a policy denial): ``promtool check metrics`` finds nothing to say about any of them, the families
docs/metrics.md promises are there, and a family served by several processes has the same type and
label names everywhere.

promtool comes with the Debian package ``prometheus`` (``.ci/run`` installs it). Without it the test is
skipped locally and fails in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from e2e_lib import MeshStack, copy_policies, running, start_echo_app, wait_until

pytestmark = pytest.mark.slow

SERVICES = ("orders", "web")

COMMON = (
    "meshgate_build_info",
    "meshgate_ready",
    "meshgate_config_info",
    "meshgate_config_reloads_total",
    "meshgate_config_reload_errors_total",
    "meshgate_config_last_reload_successful",
    "meshgate_certificate_expiry_seconds",
)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')


def promtool() -> str:
    """The promtool binary; skips (locally) or fails (CI) without it."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: install the Debian package prometheus (.ci/run does)")
        pytest.skip("promtool not installed (Debian package prometheus); CI runs this test")
    return found


@dataclass
class Scraped:
    """One process's ``/metrics``: the text and, per family, its type and the label names it uses."""

    text: str
    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[frozenset[str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scraped:
        out = cls(text)
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                out.types[name] = kind
                out.labels[name] = set()
            elif line and not line.startswith("#"):
                match = _SAMPLE.match(line)
                assert match, line
                name = match.group(1)
                if name not in out.types:
                    name = re.sub(r"_(bucket|sum|count)$", "", name)
                    assert out.types.get(name) == "histogram", line
                names = frozenset(_LABEL.findall(match.group(2) or "")) - {"le"}
                out.labels[name].add(names)
        return out


def scrape(url: str) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the control plane's certificate is checked elsewhere
    with urllib.request.urlopen(url, timeout=5, context=ctx) as response:
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return str(response.read().decode())


def status_of(url: str, headers: dict[str, str] | None = None, proxy: str | None = None) -> int:
    handlers = [urllib.request.ProxyHandler({"http": proxy} if proxy else {})]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scraped]]:
    promtool()
    tmp = tmp_path_factory.mktemp("metrics")
    with running(tmp) as procs:
        stack = MeshStack(procs, tmp)
        cp_url = stack.start_control_plane(copy_policies(tmp / "policies"))
        sidecars = {name: stack.start_sidecar(name, start_echo_app(procs, name)) for name in SERVICES}
        sidecars["web"].wait_knows("orders")
        gateway = stack.start_gateway(knows=["orders", "web"])

        assert status_of(f"{gateway.url}/shop/x") == 200
        assert status_of(f"{gateway.url}/api/orders/1") == 401  # no API key
        key = {"x-api-key": "demo-key-alice"}
        codes = [status_of(f"{gateway.url}/api/orders/{i}", key) for i in range(40)]  # 20 per second
        assert codes[0] == 200 and 429 in codes, codes
        web_proxy = sidecars["web"].proxy
        assert status_of("http://orders/orders/1", proxy=web_proxy) == 200
        assert status_of("http://orders/admin", proxy=web_proxy) == 403  # denied at orders' inbound

        urls = {
            "controlplane": f"{cp_url}/metrics",
            "sidecar-orders": f"{sidecars['orders'].admin_url}/metrics",
            "sidecar-web": f"{sidecars['web'].admin_url}/metrics",
            "gateway": f"{gateway.admin_url}/metrics",
        }
        # the orders sidecar records the denial as its response head goes out: wait for it, bounded
        wait_until(
            lambda: 'meshgate_policy_denials_total{mode="enforce"} 1' in scrape(urls["sidecar-orders"]),
            10,
            "the denial in the orders sidecar's metrics",
        )
        yield {name: Scraped.parse(scrape(url)) for name, url in urls.items()}


def test_promtool_finds_no_problem_on_any_process(scraped: dict[str, Scraped]) -> None:
    binary = promtool()
    for name, metrics in scraped.items():
        done = subprocess.run(
            [binary, "check", "metrics"], input=metrics.text, capture_output=True, text=True, timeout=30
        )
        report = f"{name}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        assert done.returncode == 0 and not done.stdout and not done.stderr, report


def test_every_process_serves_the_common_families(scraped: dict[str, Scraped]) -> None:
    versions = set()
    for name, metrics in scraped.items():
        missing = [family for family in COMMON if family not in metrics.types]
        assert not missing, f"{name} lacks {missing}"
        assert "meshgate_ready 1" in metrics.text, name
        assert "meshgate_config_last_reload_successful 1" in metrics.text, name
        assert 'meshgate_certificate_expiry_seconds{certificate="svid"}' in metrics.text, name
        found = re.search(r'^meshgate_config_info\{version="([^"]+)"\} 1$', metrics.text, re.M)
        assert found, name
        versions.add(found.group(1))
    assert len(versions) == 1, f"every process holds the same policy version: {versions}"
    assert 'meshgate_certificate_expiry_seconds{certificate="ca"}' in scraped["controlplane"].text


def test_request_counters_and_histograms(scraped: dict[str, Scraped]) -> None:
    cp, orders, gateway = scraped["controlplane"], scraped["sidecar-orders"], scraped["gateway"]
    assert cp.types["meshgate_controlplane_requests_total"] == "counter"
    assert 'meshgate_controlplane_requests_total{route="/v1/sign",code="200"}' in cp.text
    assert 'meshgate_controlplane_request_duration_seconds_bucket{route="/v1/sign",le="+Inf"}' in cp.text
    assert 'meshgate_sidecar_requests_total{direction="inbound",service="web",code="403"}' in orders.text
    assert 'meshgate_sidecar_requests_total{direction="inbound",service="gateway",code="200"}' in orders.text
    assert (
        'meshgate_sidecar_request_duration_seconds_bucket{direction="inbound",service="web",le="+Inf"}'
        in orders.text
    )
    assert 'meshgate_sidecar_requests_total{direction="outbound",service="orders",code="200"}' in (
        scraped["sidecar-web"].text
    )
    for code in ("200", "401", "429"):
        assert f'meshgate_gateway_requests_total{{route="orders-api",code="{code}"}}' in gateway.text
    assert 'meshgate_gateway_request_duration_seconds_bucket{route="shop",le="+Inf"} 1' in gateway.text
    assert 'meshgate_gateway_request_duration_seconds_count{route="shop"} 1' in gateway.text
    assert 'meshgate_gateway_request_duration_seconds_sum{route="shop"}' in gateway.text


def test_auth_rate_limit_and_policy_decisions(scraped: dict[str, Scraped]) -> None:
    gateway, orders = scraped["gateway"].text, scraped["sidecar-orders"].text
    assert 'meshgate_gateway_auth_failures_total{route="orders-api",reason="missing"} 1' in gateway
    for result in ("allowed", "denied"):
        decisions = (
            r'^meshgate_gateway_ratelimit_decisions_total\{route="orders-api",'
            rf'result="{result}",source="[a-z-]+"\}} [1-9]'
        )
        assert re.search(decisions, gateway, re.M), gateway
    assert "meshgate_gateway_ratelimit_redis_up 0" in gateway  # no --redis: the local fallback decides
    assert 'meshgate_policy_denials_total{mode="enforce"} 1' in orders
    assert 'meshgate_sidecar_local_errors_total{direction="inbound",reason="policy_denied"} 1' in orders
    assert "meshgate_controlplane_certificates_signed_total" in scraped["controlplane"].text


def test_a_family_on_several_processes_has_one_type_and_one_label_set(scraped: dict[str, Scraped]) -> None:
    types: dict[str, set[str]] = {}
    labels: dict[str, set[frozenset[str]]] = {}
    for metrics in scraped.values():
        for family, kind in metrics.types.items():
            types.setdefault(family, set()).add(kind)
            labels.setdefault(family, set()).update(metrics.labels[family])
    assert {f for f, kinds in types.items() if len(kinds) > 1} == set()
    assert {f: sets for f, sets in labels.items() if len(sets) > 1} == {}
    assert all(family.startswith("meshgate_") for family in types)
    shared = {f for f in types if sum(f in m.types for m in scraped.values()) > 1}
    assert {"meshgate_policy_denials_total", "meshgate_upstream_retries_total", *COMMON} <= shared
