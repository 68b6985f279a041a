"""``Sidecar.ready``: a certificate that has not expired and a configuration."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from mesh.sidecar import Sidecar


class Certs:
    def __init__(self, left: float) -> None:
        self.left = left

    def seconds_to_expiry(self) -> float:
        return self.left


def sidecar(certs: Certs | None, engine: object | None) -> Sidecar:
    one = Sidecar.__new__(Sidecar)  # only the state ready() reads
    one.registry = SimpleNamespace(certs=certs)  # type: ignore[assignment]
    one.engine = engine  # type: ignore[assignment]
    one.stopping = asyncio.Event()
    return one


def test_ready_needs_a_live_certificate_and_a_configuration() -> None:
    assert sidecar(Certs(3600), object()).ready
    assert not sidecar(None, object()).ready
    assert not sidecar(Certs(3600), None).ready
    # the control plane was away past the certificate's end: no new mTLS connection can succeed
    assert not sidecar(Certs(-19), object()).ready


def test_readyz_says_why_not_ready_and_is_not_ready_once_stopping() -> None:
    """After /quitquitquit (or SIGTERM) /readyz answered 200 until the admin port closed; and every
    reason not to be ready read "no certificate or configuration", an expired certificate too."""
    assert sidecar(None, object()).why_not_ready() == "no certificate yet"
    assert sidecar(Certs(3600), None).why_not_ready() == "no configuration yet"
    assert sidecar(Certs(-1), object()).why_not_ready().startswith("the certificate has expired")
    live = sidecar(Certs(3600), object())
    assert live.why_not_ready() == "" and live.ready
    live.stopping.set()
    assert live.why_not_ready() == "stopping" and not live.ready
