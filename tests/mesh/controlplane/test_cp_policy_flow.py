"""Policy folder -> watchers: an edit reaches a blocking watcher as a new index and policyVersion; a
broken edit changes nothing, and ``/v1/status``, ``/readyz`` and ``/metrics`` say so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cp_testlib import Endpoint, InProcessControlPlane, copy_policies, register_body, wait_until

NEW_SERVICE = "---\napiVersion: meshgate/v1\nkind: Service\nname: {name}\nport: 9090\n"
BROKEN_SERVICE = "---\napiVersion: meshgate/v1\nkind: Service\nname: broken\nport: lots\n"


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[InProcessControlPlane]:
    policies = copy_policies(tmp_path / "policies")
    with InProcessControlPlane(tmp_path / "data", policies, policy_interval=0.1) as cp:
        yield cp


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


async def _watch(ep: Endpoint, index: int, wait: str) -> dict[str, object]:
    async with ep.async_admin(timeout=30) as http:
        r = await http.get(f"/v1/snapshot?index={index}&wait={wait}")
        assert r.status_code == 200, r.text
        data: dict[str, object] = r.json()
        return data


def test_a_policy_edit_reaches_a_blocked_watcher(plane: InProcessControlPlane) -> None:
    ep = plane.endpoint
    with ep.admin() as http:
        before = http.get("/v1/snapshot").json()
    services = plane.policies / "services.yaml"

    async def scenario() -> tuple[dict[str, object], float]:
        watch = asyncio.create_task(_watch(ep, before["index"], "20s"))
        await asyncio.sleep(0.2)
        assert not watch.done()
        written = time.monotonic()
        _append(services, NEW_SERVICE.format(name="inventory"))
        snap = await asyncio.wait_for(watch, 10)
        return snap, time.monotonic() - written

    snap, elapsed = asyncio.run(scenario())
    assert snap["index"] > before["index"]  # type: ignore[operator]
    assert snap["policyVersion"] != before["policyVersion"]
    assert "inventory" in str(snap["policies"])
    assert elapsed < 2.0  # polling every 0.1 s here (1 s by default)
    status = ep.status()["policy"]
    assert status["ok"] and status["version"] == snap["policyVersion"] and status["generation"] == 2


def test_a_broken_edit_changes_nothing_and_status_says_why(plane: InProcessControlPlane) -> None:
    ep = plane.endpoint
    with ep.admin() as http:
        before = http.get("/v1/snapshot").json()
    services = plane.policies / "services.yaml"
    broken_line = len(services.read_text().splitlines()) + 5  # the `port: lots` line of the appended doc
    _append(services, BROKEN_SERVICE)

    status = wait_until(lambda: not ep.status()["policy"]["ok"], 5, "the broken reload")
    policy = ep.status()["policy"]
    assert status and policy["version"] == before["policyVersion"] and policy["reloadsFailed"] >= 1
    assert any(f"services.yaml:{broken_line}" in e and "port" in e for e in policy["errors"]), policy[
        "errors"
    ]

    # no new version reaches a watcher: the blocking query runs out its wait with the same index
    snap = asyncio.run(_watch(ep, before["index"], "1s"))
    assert snap["index"] == before["index"] and snap["policyVersion"] == before["policyVersion"]
    assert snap["policies"] == before["policies"]
    with ep.anon() as http:
        assert http.get("/readyz").status_code == 200  # still serving the last good set
        metrics = http.get("/metrics").text
        assert "meshgate_config_last_reload_successful 0" in metrics
        assert f'meshgate_config_info{{version="{before["policyVersion"]}"}} 1' in metrics
        assert "meshgate_config_reload_errors_total 0" not in metrics

    # fixing the file publishes a new version again
    text = services.read_text().replace("port: lots", "port: 9091")
    services.write_text(text)
    fixed = asyncio.run(_watch(ep, before["index"], "10s"))
    assert fixed["policyVersion"] != before["policyVersion"] and "broken" in str(fixed["policies"])
    assert ep.status()["policy"]["ok"] is True


def test_a_policy_set_for_another_trust_domain_is_not_served(plane: InProcessControlPlane) -> None:
    ep = plane.endpoint
    with ep.admin() as http:
        before = http.get("/v1/snapshot").json()
    mesh = plane.policies / "mesh.yaml"
    mesh.write_text(mesh.read_text().replace("demo.meshgate.local", "other.example"))
    # the set itself is valid, but the CA serves demo.meshgate.local: watchers must not get it
    wait_until(lambda: ep.status()["policy"]["version"] != before["policyVersion"], 5, "the reload")
    snap = asyncio.run(_watch(ep, before["index"], "500ms"))
    assert snap["index"] == before["index"]
    with ep.admin() as http:  # nor any later snapshot (built for another change)
        assert http.post("/v1/register", json=register_body("web", 5)).status_code == 201
        later = http.get("/v1/snapshot").json()
    assert later["index"] > before["index"] and later["trustDomain"] == "demo.meshgate.local"
    assert later["policyVersion"] == before["policyVersion"] and later["policies"] == before["policies"]
