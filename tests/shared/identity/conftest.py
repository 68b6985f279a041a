"""Fixtures for the identity tests: a fresh CA per test (in tmp_path) and its signing key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from identity_testlib import TD

from shared.identity.ca import CertificateAuthority


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", TD)


@pytest.fixture
def ca_key(ca: CertificateAuthority) -> ec.EllipticCurvePrivateKey:
    """The CA's signing key read back from its key file (to craft certificates the CA would never sign)."""
    key = serialization.load_pem_private_key((ca.directory / "ca-1.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key
