"""``shared.registry.client.RegistryClient`` against a real control plane: join with token and CA pin,
register/heartbeat/deregister, renew over mTLS, watch with blocking queries, and static stability
from the disk cache while the control plane is down."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cp_testlib import TD, Endpoint, InProcessControlPlane, register_body

from mesh.controlplane.core import ca_pin
from mesh.controlplane.records import JoinToken
from shared.identity.ca import CertificateAuthority
from shared.identity.spiffeid import workload_id
from shared.identity.tls import server_context
from shared.registry.client import ControlPlaneUnavailable, RegistryClient

ORDERS = workload_id(TD, "orders")


def _client(ep: Endpoint, tmp_path: Path, service: str = "orders", **kw: Any) -> RegistryClient:
    return RegistryClient(
        ep.url, service=service, token=ep.token(service), cache_dir=tmp_path / "cache", **kw
    )


def _views(ep: Endpoint, service: str) -> dict[str, dict[str, Any]]:
    with ep.admin() as http:
        return {v["id"]: v for v in http.get(f"/v1/services/{service}").json()}


def test_client_joins_registers_heartbeats_and_deregisters(ep: Endpoint, tmp_path: Path) -> None:
    async def scenario() -> None:
        client = _client(ep, tmp_path)
        try:
            await client.bootstrap()
            assert client.identity == ORDERS
            instance = await client.register("127.0.0.1", 15101, metadata={"zone": "a"})
            view = (await asyncio.to_thread(_views, ep, "orders"))[instance]
            assert view["identity"] == str(ORDERS) and view["metadata"] == {"zone": "a"}
            await client.heartbeat("warning", "slow")
            view = (await asyncio.to_thread(_views, ep, "orders"))[instance]
            assert view["health"] == "warning" and view["checkOutput"] == "slow"
            snap = await client.fetch()
            assert instance in {e["id"] for e in snap["endpoints"]["orders"]}
            await client.deregister()
            assert instance not in await asyncio.to_thread(_views, ep, "orders")
        finally:
            await client.close()

    asyncio.run(scenario())
    assert (tmp_path / "cache" / "svid.pem").exists()
    assert (tmp_path / "cache" / "svid.key").stat().st_mode & 0o077 == 0


def test_client_refuses_a_token_from_another_mesh(ep: Endpoint, tmp_path: Path) -> None:
    other_mesh = CertificateAuthority.init(tmp_path / "other-ca", TD)  # same name, different root
    real = JoinToken.parse(ep.token("orders"))
    assert real is not None
    foreign = str(JoinToken(ca_pin(other_mesh), real.id, real.secret))

    async def scenario() -> None:
        client = RegistryClient(ep.url, service="orders", token=foreign, cache_dir=tmp_path / "cache")
        try:
            with pytest.raises(ControlPlaneUnavailable, match="CA pin"):
                await client.bootstrap()
        finally:
            await client.close()

    asyncio.run(scenario())
    # the secret never reached the control plane: the real token is still unspent
    assert _join_works(ep, str(real), tmp_path / "cache2")


def _join_works(ep: Endpoint, token: str, cache: Path) -> bool:
    async def scenario() -> bool:
        client = RegistryClient(ep.url, service="orders", token=token, cache_dir=cache)
        try:
            await client.bootstrap()
            return client.identity == ORDERS
        finally:
            await client.close()

    return asyncio.run(scenario())


def test_client_reports_a_spent_token_clearly(ep: Endpoint, tmp_path: Path) -> None:
    token = ep.token("orders")
    assert _join_works(ep, token, tmp_path / "a")
    with pytest.raises(ControlPlaneUnavailable, match=r"401.*already used"):
        _join_works(ep, token, tmp_path / "b")


def test_client_renews_its_svid_over_mtls(ep: Endpoint, tmp_path: Path) -> None:
    async def scenario() -> None:
        client = _client(ep, tmp_path)
        try:
            await client.bootstrap()
            assert client.certs is not None
            before = client.certs.chain[0]
            await client.certs.renew()  # POST /v1/sign authenticated by the current SVID
            after = client.certs.chain[0]
            assert after.serial_number != before.serial_number
            assert after.public_key() != before.public_key()
            # the renewed certificate is accepted by the control plane
            await client.register("127.0.0.1", 15102)
        finally:
            await client.close()

    asyncio.run(scenario())


def test_heartbeat_registers_again_when_the_control_plane_forgot_the_instance(
    ep: Endpoint, tmp_path: Path
) -> None:
    async def scenario() -> None:
        client = _client(ep, tmp_path)
        try:
            await client.bootstrap()
            instance = await client.register("127.0.0.1", 15103)
            async with ep.async_admin() as http:
                assert (await http.delete(f"/v1/register/{instance}")).status_code == 200
            await client.heartbeat()
            assert instance in await asyncio.to_thread(_views, ep, "orders")
        finally:
            await client.close()

    asyncio.run(scenario())


def test_watch_follows_changes(ep: Endpoint, tmp_path: Path) -> None:
    async def scenario() -> None:
        client = _client(ep, tmp_path, wait=10.0)
        seen: list[dict[str, Any]] = []
        stop = asyncio.Event()
        arrived = asyncio.Event()

        def listener(snapshot: dict[str, Any]) -> None:
            seen.append(snapshot)
            arrived.set()

        try:
            await client.bootstrap()
            task = asyncio.create_task(client.watch(listener, stop))
            await asyncio.wait_for(arrived.wait(), 5)
            first = seen[-1]["index"]
            arrived.clear()
            async with ep.async_admin() as http:
                r = await http.post("/v1/register", json=register_body("web", 7, id="web-watched"))
                assert r.status_code == 201
            await asyncio.wait_for(arrived.wait(), 5)
            assert seen[-1]["index"] > first
            assert "web-watched" in {e["id"] for e in seen[-1]["endpoints"]["web"]}
            stop.set()
            # the watch is parked in a blocking query: it ends at the next answer (a change here)
            async with ep.async_admin() as http:
                await http.delete("/v1/register/web-watched")
            await asyncio.wait_for(task, 5)
        finally:
            stop.set()
            await client.close()

    asyncio.run(scenario())


def _handshake_alpn(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> str | None:
    """A TLS handshake through memory BIOs; the ALPN protocol the client ended up with."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="peer")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return client.selected_alpn_protocol()
    raise AssertionError("handshake did not finish")


def test_control_plane_calls_leave_the_mesh_client_context_on_h2(
    shared_cp: InProcessControlPlane, ep: Endpoint, tmp_path: Path
) -> None:
    """The SVID's client context is the one the sidecar dials peers with (ALPN h2); talking HTTP/1.1 to
    the control plane must not change it."""
    assert shared_cp.cp is not None
    peer_chain, peer_key = shared_cp.cp.ca.issue(workload_id(TD, "web"))
    peer = server_context(peer_chain, peer_key, shared_cp.cp.ca.bundle())

    async def scenario() -> ssl.SSLContext:
        client = _client(ep, tmp_path)
        try:
            await client.bootstrap()
            await client.fetch()
            assert client.certs is not None
            return client.certs.client_context()
        finally:
            await client.close()

    assert _handshake_alpn(asyncio.run(scenario()), peer) == "h2"


def test_static_stability_a_new_client_starts_from_its_cache_while_the_control_plane_is_down(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    with InProcessControlPlane(tmp_path / "data") as plane:
        ep = plane.endpoint
        token = ep.token("orders")

        async def before_outage() -> tuple[int, int]:
            client = RegistryClient(ep.url, service="orders", token=token, cache_dir=cache)
            stop = asyncio.Event()
            try:
                await client.bootstrap()
                await client.register("127.0.0.1", 15104)
                await asyncio.wait_for(client.watch(lambda _s: stop.set(), stop), 10)
                assert client.certs is not None
                return client.index, client.certs.chain[0].serial_number
            finally:
                await client.close()

        cached_index, serial = asyncio.run(before_outage())
        url = ep.url
    # the control plane is gone (its port closed); the token is spent
    assert (cache / "snapshot.json").exists()

    async def during_outage() -> tuple[float, dict[str, Any]]:
        client = RegistryClient(url, service="orders", cache_dir=cache, timeout=2.0)
        stop = asyncio.Event()
        got: list[tuple[float, dict[str, Any]]] = []

        def listener(snapshot: dict[str, Any]) -> None:
            got.append((time.monotonic(), snapshot))
            stop.set()

        try:
            started = time.monotonic()
            await client.bootstrap()  # no token and no control plane: cached SVID and snapshot
            assert client.identity == ORDERS
            assert client.certs is not None and client.certs.chain[0].serial_number == serial
            await asyncio.wait_for(client.watch(listener, stop), 5)
            return got[0][0] - started, got[0][1]
        finally:
            await client.close()

    elapsed, snapshot = asyncio.run(during_outage())
    assert elapsed < 1.0
    assert snapshot["index"] == cached_index
    assert snapshot["endpoints"]["orders"][0]["port"] == 15104


def test_without_cache_or_control_plane_the_client_says_what_is_missing(tmp_path: Path) -> None:
    async def scenario() -> None:
        client = RegistryClient("https://127.0.0.1:9", service="orders", cache_dir=tmp_path / "empty")
        try:
            with pytest.raises(ControlPlaneUnavailable, match="no trust bundle"):
                await client.bootstrap()
        finally:
            await client.close()

    asyncio.run(scenario())


def test_an_expired_certificate_is_renewed_with_a_reusable_join_token(ep: Endpoint, tmp_path: Path) -> None:
    """The control plane was away past the certificate's end: it refuses the expired SVID's mTLS,
    so renewals failed for ever and the sidecar never recovered (a restart failed too: its
    single-use token was spent). A reusable token now signs the renewal; a spent one says what to do."""

    async def scenario(reusable: bool) -> str:
        client = RegistryClient(
            ep.url,
            service="orders",
            token=ep.token("orders", reusable=reusable),
            cache_dir=tmp_path / f"cache-{reusable}",
        )
        try:
            await client.bootstrap()
            assert client.certs is not None
            before = client.certs.chain[0]
            client.certs.seconds_to_expiry = lambda: -5.0  # type: ignore[method-assign]
            try:
                await client.certs.renew()
            except Exception as exc:
                return str(exc)
            assert client.certs.chain[0].serial_number != before.serial_number
            return "renewed"
        finally:
            await client.close()

    assert asyncio.run(scenario(True)) == "renewed"
    message = asyncio.run(scenario(False))
    assert "certificate has expired" in message and "already used" in message
    assert "new join token" in message
