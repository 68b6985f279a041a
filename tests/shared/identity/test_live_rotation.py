"""Root rotation under live mTLS traffic on 127.0.0.1: zero failed requests.

Procedure under test (docs/identity.md): rotate (bundle holds both roots) -> distribute the bundle ->
workloads renew (leaves under the new root) -> finish (old root dropped) -> distribute the bundle.
Clients reconnect in bounded loops throughout, and one long-lived connection opened before the rotation
keeps sending: live connections are never touched by context swaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

import pytest
from cryptography import x509
from identity_testlib import TD, MeshServer, call

from shared.identity.ca import CertificateAuthority
from shared.identity.rotation import CertificateManager
from shared.identity.spiffeid import SpiffeId, workload_id
from shared.identity.svid import verify_chain
from shared.identity.tls import PeerIdentityError, client_context, verify_peer

ORDERS = workload_id(TD, "orders")
WEB = workload_id(TD, "web")


def _signer(ca: CertificateAuthority, identity: SpiffeId):  # type: ignore[no-untyped-def]
    async def sign(csr: bytes) -> Sequence[x509.Certificate]:
        return ca.sign_csr(csr, identity)

    return sign


def test_root_rotation_under_live_traffic_has_zero_failures(ca: CertificateAuthority) -> None:
    old_root = ca.signing_cert
    stale_chain, stale_key = ca.issue(WEB)  # a workload that never renews
    server_mgr = CertificateManager(ORDERS, _signer(ca, ORDERS), ca.bundle())
    client_mgr = CertificateManager(WEB, _signer(ca, WEB), ca.bundle())
    server = MeshServer(server_mgr.server_context, expected=WEB)
    ok: list[int] = []
    resumed: list[bool] = []
    failures: list[str] = []
    long_lived_ok: list[int] = []

    async def reconnecting_client(stop: asyncio.Event, port: int) -> None:
        for _ in range(5000):  # bounded; normally ended by ``stop``
            if stop.is_set():
                return
            try:
                _, replies, was_resumed = await call(port, client_mgr.client_context(), ORDERS)
                ok.append(len(replies))
                resumed.append(was_resumed)
            except (OSError, PeerIdentityError, TimeoutError) as exc:
                failures.append(repr(exc))

    async def long_lived_client(stop: asyncio.Event, port: int) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_mgr.client_context(), server_hostname="long"
        )
        verify_peer(writer.get_extra_info("ssl_object"), TD, ORDERS)
        try:
            for i in range(5000):
                if stop.is_set():
                    return
                writer.write(b"long %d\n" % i)
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 5)
                if not line.startswith(b"ok "):
                    failures.append(f"long-lived connection broke: {line!r}")
                    return
                long_lived_ok.append(i)
                await asyncio.sleep(0.02)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def go() -> None:
        await server_mgr.renew()
        await client_mgr.renew()
        port = await server.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(reconnecting_client(stop, port)) for _ in range(3)]
        tasks.append(asyncio.create_task(long_lived_client(stop, port)))
        try:
            await asyncio.sleep(0.3)
            # 1. rotate: both roots in the bundle; distribute it
            bundle = ca.rotate()
            new_root = ca.signing_cert
            server_mgr.update_bundle(bundle)
            client_mgr.update_bundle(bundle)
            await asyncio.sleep(0.3)
            # 2. workloads renew: their leaves now chain to the new root
            await server_mgr.renew()
            await asyncio.sleep(0.2)
            await client_mgr.renew()
            assert verify_chain(server_mgr.chain, [new_root]) == new_root
            assert verify_chain(client_mgr.chain, [new_root]) == new_root
            await asyncio.sleep(0.3)
            # 3. finish: the old root leaves the bundle; distribute it
            final = ca.finish_rotation()
            assert final.roots == (new_root,) and old_root not in final.roots
            server_mgr.update_bundle(final)
            client_mgr.update_bundle(final)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        # a workload still holding a leaf under the old root is now refused
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await call(port, client_context(stale_chain, stale_key, final), ORDERS)
        await asyncio.sleep(0.05)
        await server.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert failures == []
    assert len(ok) > 50, len(ok)
    assert any(resumed), "no reconnect was resumed"
    assert len(long_lived_ok) > 20
    assert server.errors and all("chain" in e for e in server.errors), server.errors  # only the stale one
