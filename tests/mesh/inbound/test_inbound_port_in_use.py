"""A second inbound listener on a port another one holds is refused: the listener binds with
SO_REUSEPORT (to rebind on certificate rotation), so without the check a second sidecar given the same
``--inbound`` came up ready and the kernel split new connections between the two (some callers then
met the wrong identity: 503 tls_identity_mismatch)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from meshrig_testlib import TD, mesh, ok_app, run

from mesh.inbound.server import InboundServer


def test_a_second_listener_on_a_held_port_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            ctx = rig.pki.server("billing")
            second = InboundServer(up.handler, lambda: ctx, TD)
            with pytest.raises(OSError) as caught:
                await second.start("127.0.0.1", up.port)
            assert caught.value.errno == errno.EADDRINUSE
            assert str(caught.value) == f"the inbound port 127.0.0.1:{up.port} is in use (another sidecar's?)"
            assert second.server is None
            # the first one still rebinds itself on rotation (SO_REUSEPORT kept for that)
            await up.inbound.renew_listener()

    run(go())


def test_other_bind_failures_are_reported_as_they_are(tmp_path: Path) -> None:
    async def go() -> None:
        async with mesh(tmp_path) as rig:
            up = await rig.upstream(ok_app())
            ctx = rig.pki.server("orders")
            other = InboundServer(up.handler, lambda: ctx, TD)
            with pytest.raises(OSError) as caught:
                await other.start("192.0.2.1", 15999)  # TEST-NET-1: not an address of this machine
            assert caught.value.errno != errno.EADDRINUSE and "in use" not in str(caught.value)

    run(go())
