"""The store interface the registry is written against."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Literal

from mesh.controlplane.records import InstanceRecord, TokenRecord

TokenProblem = Literal["unknown", "expired", "used", "bad-secret"]
ChangeListener = Callable[[int], None]


class StoreError(Exception):
    """The store cannot be opened or reached; the message says which and where."""


class Store(abc.ABC):
    """Durable state: instances, heartbeats, join tokens and the change index.

    ``index`` grows on every change anywhere (this replica or another sharing the store); listeners
    registered with :meth:`on_change` hear about changes made by other replicas.
    """

    kind: str = "store"

    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []

    def on_change(self, listener: ChangeListener) -> None:
        """Call ``listener(index)`` when another replica changes the state."""
        self._listeners.append(listener)

    def _notify(self, index: int) -> None:
        for listener in list(self._listeners):
            listener(index)

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect or create; raises StoreError with a clear message."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    async def index(self) -> int:
        """The current change index."""

    @abc.abstractmethod
    async def bump_index(self) -> int:
        """Record a change; returns the new index and tells other replicas."""

    @abc.abstractmethod
    async def put_instance(self, record: InstanceRecord) -> None:
        """Insert or replace an instance."""

    @abc.abstractmethod
    async def delete_instance(self, instance_id: str) -> bool:
        """Remove an instance; False if it was not there."""

    @abc.abstractmethod
    async def list_instances(self) -> list[InstanceRecord]:
        """Every registered instance."""

    @abc.abstractmethod
    async def heartbeat(self, instance_id: str, now: float) -> None:
        """Record that an instance is alive."""

    @abc.abstractmethod
    async def heartbeats(self) -> dict[str, float]:
        """Last heartbeat time of every instance that has one."""

    @abc.abstractmethod
    async def put_token(self, record: TokenRecord) -> None:
        """Store a join token."""

    @abc.abstractmethod
    async def get_token(self, token_id: str) -> TokenRecord | None:
        """A token record by id, without consuming it."""

    async def check_token(
        self, token_id: str, secret: str, now: float
    ) -> tuple[TokenRecord | None, TokenProblem | None]:
        """What :meth:`take_token` would answer, without consuming anything."""
        record = await self.get_token(token_id)
        if record is None:
            return None, "unknown"
        if not record.secret_matches(secret):
            return None, "bad-secret"
        if record.expires_at <= now:
            return None, "expired"
        if record.used_at is not None and not record.reusable:
            return None, "used"
        return record, None

    @abc.abstractmethod
    async def take_token(
        self, token_id: str, secret: str, now: float
    ) -> tuple[TokenRecord | None, TokenProblem | None]:
        """Check a token and, if single-use, consume it atomically (two racing callers: one wins)."""

    @abc.abstractmethod
    async def get_blob(self, name: str) -> bytes | None:
        """A named blob (shared files such as the CA), or None."""

    @abc.abstractmethod
    async def put_blob(self, name: str, data: bytes, *, only_if_absent: bool = False) -> bool:
        """Store a blob; with ``only_if_absent`` do nothing (and return False) if it exists."""

    @abc.abstractmethod
    async def describe(self) -> dict[str, Any]:
        """State for ``/v1/status``: kind, location, reachable."""
