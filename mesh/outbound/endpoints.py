"""Endpoints of a service as the control plane's snapshot lists them, with per-endpoint load and
outlier state."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Endpoint:
    """One healthy instance: where its sidecar listens and the SPIFFE ID it must present."""

    id: str
    address: str
    port: int
    identity: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    active: int = 0
    consecutive_5xx: int = 0
    consecutive_connect_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    ejections_decay_at: float = 0.0  # when ``ejections`` next goes down by one (outlier detection)
    ejected_for_connects: bool = False  # the last ejection was for failed connects (not 5xx)
    #: Who connects go to: (id, address, port, identity), the connection pool's key; made once (an
    #: endpoint whose address or identity changes is replaced, see EndpointTable.update).
    peer: tuple[str, str, int, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.peer = (self.id, self.address, self.port, self.identity)

    def available(self, now: float) -> bool:
        """False while ejected by outlier detection."""
        return now >= self.ejected_until


class EndpointTable:
    """service -> endpoints, updated from snapshots; keeps load and outlier state across updates."""

    def __init__(self) -> None:
        self._services: dict[str, list[Endpoint]] = {}

    def update(self, endpoints: Mapping[str, list[Mapping[str, Any]]]) -> None:
        """Adopt the snapshot's ``endpoints``; endpoints that stay (same id, address, port and
        identity) keep their counters; one that changed starts afresh."""
        fresh: dict[str, list[Endpoint]] = {}
        for service, items in endpoints.items():
            known = {e.id: e for e in self._services.get(service, [])}
            out = []
            for item in items:
                old = known.get(str(item["id"]))
                if (
                    old is not None
                    and old.address == item["address"]
                    and old.port == item["port"]
                    and old.identity == str(item.get("identity", ""))
                ):
                    out.append(old)
                else:
                    out.append(
                        Endpoint(
                            id=str(item["id"]),
                            address=str(item["address"]),
                            port=int(item["port"]),
                            identity=str(item.get("identity", "")),
                            metadata=dict(item.get("metadata") or {}),
                        )
                    )
            fresh[service] = out
        self._services = fresh

    def get(self, service: str) -> list[Endpoint]:
        """Every known endpoint of ``service`` (ejected ones included)."""
        return self._services.get(service, [])

    def services(self) -> list[str]:
        """Every service with endpoints."""
        return sorted(self._services)


def now() -> float:
    """The clock outlier detection uses."""
    return time.monotonic()
