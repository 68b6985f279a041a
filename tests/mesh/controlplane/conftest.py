"""Fixtures for the control-plane tests: in-process control planes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cp_testlib import Endpoint, InProcessControlPlane


@pytest.fixture(scope="module")
def shared_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessControlPlane]:
    """One control plane for a whole module (tests use their own service names or instance ids)."""
    with InProcessControlPlane(tmp_path_factory.mktemp("cp") / "data") as plane:
        yield plane


@pytest.fixture(scope="module")
def ep(shared_cp: InProcessControlPlane) -> Endpoint:
    return shared_cp.endpoint


@pytest.fixture
def fresh_cp(tmp_path: Path) -> Iterator[InProcessControlPlane]:
    """A control plane of this test's own (short sweep: 0.1 s; reaping after 60 s)."""
    with InProcessControlPlane(tmp_path / "data") as plane:
        yield plane
