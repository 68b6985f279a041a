"""Two ``meshgate control-plane`` processes on one Redis: one CA, one registry, one token store, and a
change made through one replica reaches a blocking watcher on the other within a second."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cp_testlib import (
    ControlPlaneProcess,
    Endpoint,
    RedisServer,
    error_of,
    join,
    register_body,
    sign_with_token,
)
from cryptography.hazmat.primitives.asymmetric import ec

from shared.identity.ca import make_csr


@dataclass
class Replicas:
    a: Endpoint
    b: Endpoint


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    redis = RedisServer(root)
    url = redis.start()
    admin = root / "admin-token"
    admin.write_text(secrets.token_urlsafe(32) + "\n")
    procs = [ControlPlaneProcess(root / name, store=url, admin_token_file=admin) for name in ("a", "b")]
    try:
        for proc in procs:  # both start at once: they race to publish the CA
            proc.spawn()
        a, b = (proc.wait_ready() for proc in procs)
        yield Replicas(a, b)
    finally:
        for proc in procs:
            proc.kill()
        redis.stop()


async def _watch(ep: Endpoint, index: int) -> tuple[float, dict[str, Any]]:
    async with ep.async_admin(timeout=20) as http:
        r = await http.get(f"/v1/snapshot?index={index}&wait=10s")
        assert r.status_code == 200, r.text
        return time.monotonic(), r.json()


def _propagation(watched: Endpoint, change: Any) -> tuple[float, dict[str, Any]]:
    """Park a blocking query on ``watched``, run ``change`` (async, another replica), time the wake-up."""

    async def scenario() -> tuple[float, dict[str, Any]]:
        index = await asyncio.to_thread(watched.index)
        watch = asyncio.create_task(_watch(watched, index))
        await asyncio.sleep(0.3)
        assert not watch.done()
        started = time.monotonic()
        await change()
        woke, snap = await asyncio.wait_for(watch, 10)
        assert snap["index"] > index
        return woke - started, snap

    return asyncio.run(scenario())


def test_both_replicas_serve_one_ca(replicas: Replicas) -> None:
    with replicas.a.anon() as a, replicas.b.anon() as b:
        assert a.get("/v1/bundle").json() == b.get("/v1/bundle").json()
    assert replicas.a.bundle_pem == replicas.b.bundle_pem
    # an SVID signed by A authenticates on B (and B's certificate verifies against A's bundle)
    workload = join(replicas.a, "orders")
    workload.endpoint = replicas.b
    with workload.client() as http:
        r = http.post("/v1/register", json=register_body("orders", 1, id="orders-from-a-svid"))
    assert r.status_code == 201, r.text


def test_a_registration_through_a_wakes_a_watcher_on_b_within_a_second(replicas: Replicas) -> None:
    async def register() -> None:
        async with replicas.a.async_admin() as http:
            r = await http.post("/v1/register", json=register_body("web", 2, id="web-via-a"))
            assert r.status_code == 201

    elapsed, snap = _propagation(replicas.b, register)
    assert elapsed < 1.0
    assert "web-via-a" in {e["id"] for e in snap["endpoints"]["web"]}


def test_a_deregistration_through_b_wakes_a_watcher_on_a(replicas: Replicas) -> None:
    with replicas.a.admin() as http:  # registered through A, removed through B
        assert http.post("/v1/register", json=register_body("web", 3, id="web-via-b")).status_code == 201

    async def deregister() -> None:
        async with replicas.b.async_admin() as http:
            assert (await http.delete("/v1/register/web-via-b")).status_code == 200

    elapsed, snap = _propagation(replicas.a, deregister)
    assert elapsed < 1.0
    assert "web-via-b" not in {e["id"] for e in snap["endpoints"].get("web", [])}


def test_a_heartbeat_status_through_one_replica_shows_on_the_other(replicas: Replicas) -> None:
    with replicas.a.admin() as http:
        assert http.post("/v1/register", json=register_body("orders", 4, id="orders-hb")).status_code == 201

    async def warn() -> None:
        async with replicas.b.async_admin() as http:
            r = await http.put("/v1/heartbeat/orders-hb", json={"status": "warning", "output": "slow"})
            assert r.status_code == 200

    elapsed, snap = _propagation(replicas.a, warn)
    assert elapsed < 1.0
    assert {e["id"]: e["health"] for e in snap["endpoints"]["orders"]}["orders-hb"] == "warning"


def test_a_single_use_token_is_single_use_across_replicas(replicas: Replicas) -> None:
    token = replicas.a.token("orders")
    first, _ = sign_with_token(replicas.b, token)
    assert first.status_code == 200, first.text
    second, _ = sign_with_token(replicas.a, token)
    assert second.status_code == 401 and "already used" in error_of(second)[1]


def test_both_replicas_report_the_shared_store(replicas: Replicas) -> None:
    a, b = replicas.a.status(), replicas.b.status()
    assert a["store"]["kind"] == b["store"]["kind"] == "redis"
    assert a["store"]["reachable"] and b["store"]["reachable"]
    assert a["ca"] == b["ca"]


def test_racing_uses_of_one_token_on_both_replicas_sign_once(replicas: Replicas) -> None:
    token = replicas.a.token("orders")

    async def race() -> list[int]:
        async def attempt(ep: Endpoint) -> int:
            csr = make_csr(ec.generate_private_key(ec.SECP256R1())).decode()
            async with ep.async_admin() as http:
                r = await http.post(
                    "/v1/sign", json={"csr": csr}, headers={"authorization": f"Bearer {token}"}
                )
                return r.status_code

        return list(await asyncio.gather(*(attempt(ep) for ep in [replicas.a, replicas.b] * 4)))

    codes = asyncio.run(race())
    assert sorted(codes) == [200] + [401] * 7, codes
