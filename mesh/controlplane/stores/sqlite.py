"""The embedded store: one SQLite file in the data directory (WAL mode), nothing to install.

Heartbeats are kept in memory: they change every few seconds per instance and need no durability.
After a restart every instance gets one TTL of grace before it can be marked critical.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from mesh.controlplane.records import InstanceRecord, TokenRecord
from mesh.controlplane.stores.base import Store, StoreError, TokenProblem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('index', 0);
"""


class SqliteStore(Store):
    """State in ``path``; one writer (this process)."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._heartbeats: dict[str, float] = {}
        self._lock = asyncio.Lock()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        self._db = db
        now = time.time()
        self._heartbeats = {row[0]: now for row in db.execute("SELECT id FROM instances")}

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def index(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='index'").fetchone()
        return int(row[0])

    async def bump_index(self) -> int:
        row = self.db.execute(
            "UPDATE meta SET value = value + 1 WHERE key='index' RETURNING value"
        ).fetchone()
        return int(row[0])

    async def put_instance(self, record: InstanceRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO instances (id, data) VALUES (?, ?)", (record.id, record.to_json())
        )

    async def delete_instance(self, instance_id: str) -> bool:
        self._heartbeats.pop(instance_id, None)
        cur = self.db.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
        return cur.rowcount > 0

    async def list_instances(self) -> list[InstanceRecord]:
        return [InstanceRecord.from_json(row[0]) for row in self.db.execute("SELECT data FROM instances")]

    async def heartbeat(self, instance_id: str, now: float) -> None:
        self._heartbeats[instance_id] = now

    async def heartbeats(self) -> dict[str, float]:
        return dict(self._heartbeats)

    async def put_token(self, record: TokenRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO tokens (id, data) VALUES (?, ?)", (record.id, record.to_json())
        )

    async def get_token(self, token_id: str) -> TokenRecord | None:
        row = self.db.execute("SELECT data FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return TokenRecord.from_json(row[0]) if row else None

    async def take_token(
        self, token_id: str, secret: str, now: float
    ) -> tuple[TokenRecord | None, TokenProblem | None]:
        async with self._lock:
            record, problem = await self.check_token(token_id, secret, now)
            if record is None:
                return None, problem
            if not record.reusable:
                used = TokenRecord(**{**record.__dict__, "used_at": now})
                self.db.execute("UPDATE tokens SET data = ? WHERE id = ?", (used.to_json(), token_id))
            return record, None

    async def get_blob(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT data FROM blobs WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    async def put_blob(self, name: str, data: bytes, *, only_if_absent: bool = False) -> bool:
        verb = "INSERT OR IGNORE" if only_if_absent else "INSERT OR REPLACE"
        cur = self.db.execute(f"{verb} INTO blobs (name, data) VALUES (?, ?)", (name, data))
        return cur.rowcount > 0

    async def describe(self) -> dict[str, Any]:
        try:
            self.db.execute("SELECT 1").fetchone()
            ok = True
        except (sqlite3.Error, StoreError):
            ok = False
        return {"kind": self.kind, "location": str(self.path), "reachable": ok}
