"""``Sidecar.ready``: a certificate that has not expired and a configuration."""

from __future__ import annotations

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
    return one


def test_ready_needs_a_live_certificate_and_a_configuration() -> None:
    assert sidecar(Certs(3600), object()).ready
    assert not sidecar(None, object()).ready
    assert not sidecar(Certs(3600), None).ready
    # the control plane was away past the certificate's end: no new mTLS connection can succeed
    assert not sidecar(Certs(-19), object()).ready
