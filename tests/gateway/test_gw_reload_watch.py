"""A policy set the gateway cannot compile does not stop its configuration watch: the error is logged
(with the policy version) and counted, the configuration in force stays, endpoint updates still go in,
and a later set is applied."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest
from gateway_testlib import BASE, run
from meshrig_testlib import engine_from

import gateway.state as gateway_state
from gateway.routing import Router
from gateway.state import GatewayConfig, GatewayRuntime
from shared.config.model.edge import Route
from shared.config.policyset import PolicySet
from shared.registry.client import RegistryClient


class FakeMeshClient:
    """What the runtime needs of a MeshClient here: ``update`` (recorded), the metrics' counters and a
    pool to close."""

    class _Pool:
        opened = 0
        connects_failed = 0

        def close(self) -> None:
            pass

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.pool = self._Pool()

    def update(self, endpoints: dict[str, Any], policies: dict[str, Any]) -> None:
        self.updates.append(endpoints)

    def upstream_stats(self) -> dict[str, dict[str, int]]:
        return {}


def route_doc(name: str) -> str:
    return (
        f"apiVersion: meshgate/v1\nkind: Route\nname: {name}\n"
        f"match: {{path: {{prefix: /{name}}}}}\nbackends: [{{service: orders}}]\n"
    )


def policy_set(folder: Path, *routes: str) -> PolicySet:
    text = BASE + "".join("---\n" + route_doc(name) for name in routes)
    return engine_from(folder, text).policy_set


def endpoints(n: int) -> dict[str, list[dict[str, Any]]]:
    return {"orders": [{"address": f"127.0.0.1:{20000 + n}"}]}


def snapshot(index: int, policies: dict[str, Any], eps: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, "policies": policies, "endpoints": eps}


async def follow(runtime: GatewayRuntime, snapshots: Iterable[dict[str, Any]]) -> None:
    """Run the real ``RegistryClient.watch`` with the runtime's listener over ``snapshots``, then stop."""
    registry = RegistryClient("https://127.0.0.1:1", service="gateway")
    queue = list(snapshots)
    stop = asyncio.Event()

    async def fetch(index: int | None = None, wait: float | None = None, *, delta: bool = False) -> Any:
        if queue:
            return queue.pop(0)
        stop.set()
        return registry.snapshot  # the same index: nothing new

    registry.fetch = fetch  # type: ignore[method-assign]
    await asyncio.wait_for(registry.watch(runtime._on_snapshot, stop), 10)


def runtime_with(client: FakeMeshClient) -> GatewayRuntime:
    return GatewayRuntime(GatewayConfig(admin=None), client=cast(Any, client))


class _ExplodingRouter(Router):
    """The router, failing on a route named ``explodes`` (a set the model let through)."""

    def __init__(self, routes: Iterable[Route], **kw: Any) -> None:
        routes = list(routes)
        if any(route.name == "explodes" for route in routes):
            raise ValueError("cannot compile route explodes")
        super().__init__(routes, **kw)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "meshgate.gateway" and r.levelno >= logging.ERROR
    ]


def test_a_set_that_fails_to_compile_leaves_the_watch_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway_state, "Router", _ExplodingRouter)
    good = policy_set(tmp_path / "v1", "one")
    bad = policy_set(tmp_path / "bad", "one", "explodes")
    later = policy_set(tmp_path / "v2", "two")
    client = FakeMeshClient()
    runtime = runtime_with(client)

    async def go() -> None:
        with caplog.at_level(logging.INFO, logger="meshgate.gateway"):
            await follow(
                runtime,
                [
                    snapshot(1, good.to_json(), endpoints(1)),
                    snapshot(2, bad.to_json(), endpoints(2)),
                    snapshot(3, bad.to_json(), endpoints(3)),  # an endpoint change, the bad set still
                    snapshot(4, later.to_json(), endpoints(4)),
                ],
            )
        await runtime.limiter.close()
        runtime.tracing.shutdown()

    run(go())
    assert runtime.state is not None
    assert runtime.state.policy_set.version == later.version
    assert sorted(runtime.state.router.routes) == ["two"]
    assert client.updates == [endpoints(1), endpoints(2), endpoints(3), endpoints(4)]
    assert runtime.metrics.config.reload_errors == 1  # counted once, not with every endpoint update
    assert runtime.metrics.config.reloads == 2
    assert runtime.metrics.config.version == later.version
    (error,) = _errors(caplog)
    assert bad.version in error
    assert "ValueError: cannot compile route explodes" in error
    assert f"keeping version {good.version}" in error
    assert "meshgate_config_reload_errors_total 1" in runtime.render_metrics()


def test_the_previous_state_serves_while_a_bad_set_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_state, "Router", _ExplodingRouter)
    good = policy_set(tmp_path / "v1", "one")
    bad = policy_set(tmp_path / "bad", "one", "explodes")
    client = FakeMeshClient()
    runtime = runtime_with(client)

    async def go() -> None:
        await follow(
            runtime, [snapshot(1, good.to_json(), endpoints(1)), snapshot(2, bad.to_json(), endpoints(2))]
        )
        await runtime.limiter.close()
        runtime.tracing.shutdown()

    run(go())
    assert runtime.state is not None and runtime.state.policy_set.version == good.version
    assert runtime.state.router.match("any.test", "GET", "/one/x", "", {}) is not None
    assert client.updates == [endpoints(1), endpoints(2)]


def test_a_gateway_starting_with_a_bad_set_in_force_takes_the_next_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway_state, "Router", _ExplodingRouter)
    bad = policy_set(tmp_path / "bad", "one", "explodes")
    good = policy_set(tmp_path / "v1", "one")
    client = FakeMeshClient()
    runtime = runtime_with(client)

    async def go() -> None:
        with caplog.at_level(logging.INFO, logger="meshgate.gateway"):
            await follow(runtime, [snapshot(1, bad.to_json(), endpoints(1))])
            assert runtime.state is None and not runtime.ready
            assert client.updates == [endpoints(1)]  # the endpoints went in all the same
            (error,) = _errors(caplog)
            assert bad.version in error and "no configuration" in error
            await follow(runtime, [snapshot(2, good.to_json(), endpoints(2))])
        await runtime.limiter.close()
        runtime.tracing.shutdown()

    run(go())
    assert runtime.state is not None and runtime.state.policy_set.version == good.version
    assert runtime.ready


def test_a_snapshot_with_a_template_the_router_cannot_compile_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reviewer's case, as a control plane without the template check would send it: the set is
    refused when read (the model checks templates now), and the watch goes on."""
    good = policy_set(tmp_path / "v1", "one")
    bad = copy.deepcopy(policy_set(tmp_path / "bad", "one", "badtpl").to_json())
    for doc in bad["documents"]:
        if doc["kind"] == "Route" and doc["name"] == "badtpl":
            doc["match"]["path"] = {"template": "/files/{p=**}/x"}
    later = policy_set(tmp_path / "v2", "two")
    client = FakeMeshClient()
    runtime = runtime_with(client)

    async def go() -> None:
        with caplog.at_level(logging.INFO, logger="meshgate.gateway"):
            await follow(
                runtime,
                [
                    snapshot(1, good.to_json(), endpoints(1)),
                    snapshot(2, bad, endpoints(2)),
                    snapshot(3, bad, endpoints(3)),
                    snapshot(4, later.to_json(), endpoints(4)),
                ],
            )
        await runtime.limiter.close()
        runtime.tracing.shutdown()

    run(go())
    assert runtime.state is not None and runtime.state.policy_set.version == later.version
    assert client.updates == [endpoints(1), endpoints(2), endpoints(3), endpoints(4)]
    assert runtime.metrics.config.reload_errors == 1
    (error,) = _errors(caplog)
    assert "must be the last segment" in error
