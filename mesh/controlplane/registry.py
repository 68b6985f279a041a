"""The service registry: instances, their health, and the change index watchers block on.

Health of an instance is derived, not stored: ``critical`` when its heartbeat is older than its TTL,
otherwise the status its sidecar last reported from the app's check. A sweep once a second turns
health changes into new index values (so watchers hear about them) and reaps instances that have
been critical for longer than ``reap_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mesh.controlplane.records import Health, InstanceRecord
from mesh.controlplane.stores.base import Store

log = logging.getLogger("meshgate.controlplane.registry")


@dataclass(frozen=True)
class InstanceView:
    """An instance with its health as of now."""

    record: InstanceRecord
    health: Health
    last_heartbeat: float | None

    def to_json(self) -> dict[str, object]:
        """The API form of an instance."""
        r = self.record
        return {
            "id": r.id,
            "service": r.service,
            "namespace": r.namespace,
            "address": r.address,
            "port": r.port,
            "identity": r.identity,
            "metadata": r.metadata,
            "health": self.health,
            "checkOutput": r.output,
            "lastHeartbeat": self.last_heartbeat,
            "ttlSeconds": r.ttl_s,
        }


class Registry:
    """Instances in a :class:`Store`, a cached view of them, and change notification."""

    def __init__(
        self, store: Store, *, reap_after: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.reap_after = reap_after
        self.clock = clock
        self.index = 0
        self._instances: dict[str, InstanceRecord] = {}
        self._heartbeats: dict[str, float] = {}
        self._health: dict[str, Health] = {}
        self._critical_since: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._reload_pending = False
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sweep_interval: float = 1.0) -> None:
        """Load the view from the store, listen to other replicas, start the sweep."""
        self.index = await self.store.index()
        await self._reload()
        self.store.on_change(self._remote_change)
        self._sweeper = asyncio.create_task(self._sweep_loop(sweep_interval), name="registry-sweep")

    async def stop(self) -> None:
        """Stop the sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _reload(self) -> None:
        records = await self.store.list_instances()
        self._instances = {r.id: r for r in records}
        self._heartbeats = await self.store.heartbeats()
        now = self.clock()
        self._health = {r.id: self._health_of(r, now) for r in records}

    def _remote_change(self, index: int) -> None:
        if index <= self.index:
            return
        self.index = index
        self._reload_pending = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def sync(self) -> None:
        """Bring the cached view up to date after another replica's change."""
        if self._reload_pending:
            self._reload_pending = False
            await self._reload()

    async def bump(self, reason: str) -> int:
        """Record a change (any kind: registry, policy, bundle) and wake every watcher."""
        self.index = max(self.index, await self.store.bump_index())
        log.debug("index %d: %s", self.index, reason)
        self._wake()
        return self.index

    async def wait_for_change(self, after: int, timeout: float) -> int:
        """Return the index once it is past ``after``, or when ``timeout`` seconds have gone by."""
        deadline = time.monotonic() + timeout
        while self.index <= after:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        await self.sync()
        return self.index

    def _health_of(self, record: InstanceRecord, now: float) -> Health:
        beat = self._heartbeats.get(record.id, record.registered_at)
        if now - beat > record.ttl_s:
            return "critical"
        return record.status

    async def register(self, record: InstanceRecord) -> InstanceRecord:
        """Add or replace an instance (a fresh heartbeat comes with it)."""
        now = self.clock()
        await self.store.put_instance(record)
        await self.store.heartbeat(record.id, now)
        self._instances[record.id] = record
        self._heartbeats[record.id] = now
        self._health[record.id] = self._health_of(record, now)
        self._critical_since.pop(record.id, None)
        await self.bump(f"register {record.id}")
        return record

    def get(self, instance_id: str) -> InstanceRecord | None:
        """An instance by id, from the cached view."""
        return self._instances.get(instance_id)

    async def deregister(self, instance_id: str) -> bool:
        """Remove an instance; False if unknown."""
        removed = await self.store.delete_instance(instance_id)
        known = self._instances.pop(instance_id, None) is not None
        self._heartbeats.pop(instance_id, None)
        self._health.pop(instance_id, None)
        self._critical_since.pop(instance_id, None)
        if removed or known:
            await self.bump(f"deregister {instance_id}")
        return removed or known

    async def heartbeat(self, instance_id: str, status: Health | None = None, output: str = "") -> bool:
        """Record a heartbeat (and the app check's result, if given); False if the id is unknown."""
        record = self._instances.get(instance_id)
        if record is None:
            return False
        now = self.clock()
        await self.store.heartbeat(instance_id, now)
        self._heartbeats[instance_id] = now
        if status is not None and (status != record.status or output != record.output):
            record = record.with_status(status, output)
            self._instances[instance_id] = record
            await self.store.put_instance(record)
        health = self._health_of(record, now)
        if health != self._health.get(instance_id):
            self._health[instance_id] = health
            await self.bump(f"{instance_id} is {health}")
        return True

    async def sweep(self) -> None:
        """Publish health changes (missed heartbeats) and reap instances critical for too long."""
        await self.sync()
        self._heartbeats = await self.store.heartbeats()
        now = self.clock()
        changed = False
        for instance_id, record in list(self._instances.items()):
            health = self._health_of(record, now)
            if health == "critical":
                since = self._critical_since.setdefault(instance_id, now)
                if now - since >= self.reap_after:
                    log.info("reaping %s: critical for %.0fs", instance_id, now - since)
                    await self.store.delete_instance(instance_id)
                    self._instances.pop(instance_id, None)
                    self._health.pop(instance_id, None)
                    self._critical_since.pop(instance_id, None)
                    changed = True
                    continue
            else:
                self._critical_since.pop(instance_id, None)
            if self._health.get(instance_id) != health:
                log.info("%s is now %s", instance_id, health)
                self._health[instance_id] = health
                changed = True
        if changed:
            await self.bump("health sweep")

    async def _sweep_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry sweep failed; retrying")

    def instances(self, service: str | None = None) -> list[InstanceView]:
        """Instances (of one service, or all) with health, sorted by id."""
        out = [
            InstanceView(r, self._health.get(r.id, "critical"), self._heartbeats.get(r.id))
            for r in self._instances.values()
            if service is None or r.service == service
        ]
        return sorted(out, key=lambda v: v.record.id)

    def services(self) -> dict[str, list[InstanceView]]:
        """Instances grouped by service."""
        grouped: dict[str, list[InstanceView]] = {}
        for view in self.instances():
            grouped.setdefault(view.record.service, []).append(view)
        return grouped

    def healthy_endpoints(self, namespace: str | None = None) -> dict[str, list[dict[str, object]]]:
        """What sidecars may send to: passing and warning instances, per service. With ``namespace``
        (the Mesh's), instances of another namespace are listed as ``SERVICE.NAMESPACE``, never
        under the bare name (ns/sandbox/sa/orders got ns/shop/sa/orders' traffic)."""
        out: dict[str, list[dict[str, object]]] = {}
        for view in self.instances():
            if view.health != "critical":
                r = view.record
                key = (
                    r.service
                    if namespace is None or r.namespace == namespace
                    else f"{r.service}.{r.namespace}"
                )
                out.setdefault(key, []).append(
                    {
                        "id": r.id,
                        "address": r.address,
                        "port": r.port,
                        "identity": r.identity,
                        "metadata": r.metadata,
                        "health": view.health,
                    }
                )
        return out
