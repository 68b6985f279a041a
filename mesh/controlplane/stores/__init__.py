"""Where the control plane keeps its state: an embedded SQLite file, or Redis shared by replicas."""

from __future__ import annotations

from pathlib import Path

from mesh.controlplane.stores.base import Store, StoreError, TokenProblem
from mesh.controlplane.stores.sqlite import SqliteStore


def open_store(spec: str | None, data_dir: Path) -> Store:
    """``None`` -> SQLite in ``data_dir``; ``redis://...`` -> Redis. Raises StoreError for other text."""
    if spec is None or spec == "" or spec.startswith("sqlite:"):
        return SqliteStore(data_dir / "registry.sqlite3")
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from mesh.controlplane.stores.redis import RedisStore

        return RedisStore(spec)
    raise StoreError(f"unknown store {spec!r}: use redis://HOST:PORT/DB, or leave --store out for SQLite")


__all__ = ["SqliteStore", "Store", "StoreError", "TokenProblem", "open_store"]
