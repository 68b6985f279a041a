"""The control plane's certificates over time: a root rotation run against its CA folder (as
``meshgate ca rotate`` does) reaches a watching client as a new bundle and the client renews under the
new root; the control plane renews its own serving certificate before it expires."""

from __future__ import annotations

import asyncio
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any

from cp_testlib import TD, InProcessControlPlane, wait_until
from cryptography import x509

from shared.identity.ca import CertificateAuthority
from shared.identity.svid import SvidError, check_leaf, verify_chain
from shared.registry.client import RegistryClient


def test_a_root_rotation_reaches_a_watching_client_which_renews_under_the_new_root(tmp_path: Path) -> None:
    with InProcessControlPlane(tmp_path / "data", policy_interval=0.1) as plane:
        ep = plane.endpoint
        token = ep.token("orders")
        ca_dir = tmp_path / "data" / "ca"

        async def scenario() -> None:
            client = RegistryClient(ep.url, service="orders", token=token, cache_dir=tmp_path / "c", wait=10)
            seen: list[dict[str, Any]] = []
            arrived = asyncio.Event()
            stop = asyncio.Event()

            def listener(snapshot: dict[str, Any]) -> None:
                seen.append(snapshot)
                arrived.set()

            try:
                await client.bootstrap()
                task = asyncio.create_task(client.watch(listener, stop))
                await asyncio.wait_for(arrived.wait(), 5)
                assert len(seen[-1]["bundle"]["keys"]) == 1
                sequence = seen[-1]["bundle"]["spiffe_sequence"]

                rotated = await asyncio.to_thread(lambda: CertificateAuthority.load(ca_dir).rotate())
                new_root = rotated.roots[-1]
                for _ in range(50):  # bounded: the CA folder is polled every 0.1 s here
                    arrived.clear()
                    await asyncio.wait_for(arrived.wait(), 5)
                    if len(seen[-1]["bundle"]["keys"]) == 2:
                        break
                assert seen[-1]["bundle"]["spiffe_sequence"] > sequence

                assert client.certs is not None
                for _ in range(100):  # the client renews soon after it sees the new root
                    try:
                        verify_chain(client.certs.chain, [new_root])
                        break
                    except SvidError:
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the client did not renew under the new root")
                # and the renewed SVID works with the control plane
                instance = await client.register("127.0.0.1", 15200)
                assert instance
                stop.set()
                await client.deregister()  # a change: the parked blocking query returns
                await asyncio.wait_for(task, 10)
            finally:
                stop.set()
                await client.close()

        asyncio.run(scenario())


async def _half_life_passed(plane: InProcessControlPlane) -> None:
    assert plane.cp is not None
    plane.cp._server_renew_at = 0.0  # as if 12 h of its 24 h certificate had gone by


def test_the_control_plane_renews_its_own_serving_certificate(tmp_path: Path) -> None:
    with InProcessControlPlane(tmp_path / "data", policy_interval=0.1) as plane:

        def served() -> x509.Certificate:
            pem = ssl.get_server_certificate(("127.0.0.1", plane.port), timeout=5)
            return x509.load_pem_x509_certificate(pem.encode())

        first = served()
        assert first.not_valid_after_utc - first.not_valid_before_utc <= timedelta(hours=25)
        plane.run(_half_life_passed(plane))
        renewed = wait_until(
            lambda: (cert := served()).serial_number != first.serial_number and cert,
            5,
            "a renewed certificate",
        )
        assert check_leaf(renewed, TD) == check_leaf(first, TD)
        assert renewed.not_valid_after_utc >= first.not_valid_after_utc
        with plane.endpoint.anon() as http:  # verified against the bundle, as workloads do
            assert http.get("/healthz").status_code == 200


def test_a_client_restarting_from_its_cache_during_a_rotation_still_reaches_the_control_plane(
    tmp_path: Path,
) -> None:
    """During the overlap the control plane serves a certificate from the retiring root, so a workload
    whose cached bundle holds only the old root (it was down when the rotation began) can still verify
    it, and then learns the new bundle from its first snapshot."""
    with InProcessControlPlane(tmp_path / "data", policy_interval=0.1) as plane:
        ep = plane.endpoint
        token = ep.token("orders")
        ca_dir = tmp_path / "data" / "ca"

        async def scenario() -> int:
            first = RegistryClient(ep.url, service="orders", token=token, cache_dir=tmp_path / "c", wait=5)
            try:
                await first.bootstrap()
                await first._accept(await first.fetch(), None)  # the cache now holds the old bundle
            finally:
                await first.close()
            await asyncio.to_thread(lambda: CertificateAuthority.load(ca_dir).rotate())

            def served_by_old_root() -> bool:
                pem = ssl.get_server_certificate(("127.0.0.1", plane.port), timeout=5)
                cert = x509.load_pem_x509_certificate(pem.encode())
                return cert.issuer != plane.cp.ca.signing_cert.subject if plane.cp else False

            await asyncio.to_thread(wait_until, served_by_old_root, 5, "the rotation to be picked up")
            again = RegistryClient(ep.url, service="orders", cache_dir=tmp_path / "c", wait=5)
            try:
                await again.bootstrap()  # cached SVID and bundle only: no token
                snapshot = await again.fetch()
                return len(snapshot["bundle"]["keys"])
            finally:
                await again.close()

        assert asyncio.run(scenario()) == 2
