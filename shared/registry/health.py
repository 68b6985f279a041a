"""The app check a sidecar runs locally (HTTP GET of a path, or a TCP connect) and the loop that
reports it with every heartbeat, as Consul's agent does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared.registry.client import ControlPlaneUnavailable, RegistryClient
from shared.registry.http import HttpClient, HttpError

log = logging.getLogger("meshgate.registry.health")

Status = Literal["passing", "warning", "critical"]


@dataclass(frozen=True)
class AppCheck:
    """``http``: GET ``http://host:port{path}`` (2xx passing, 429 warning, else critical);
    ``tcp``: connect; ``ttl``: nothing to check (passing while the sidecar runs)."""

    type: Literal["http", "tcp", "ttl"] = "ttl"
    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/"
    timeout: float = 2.0

    async def run(self) -> tuple[Status, str]:
        """Check once; returns the status and a short output line."""
        if self.type == "ttl":
            return "passing", ""
        if self.type == "tcp":
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout
                )
            except (OSError, TimeoutError) as exc:
                return "critical", f"tcp {self.host}:{self.port}: {exc or type(exc).__name__}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return "passing", f"tcp {self.host}:{self.port} connected"
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{host}:{self.port}{self.path}"
        try:
            async with HttpClient(
                f"http://{host}:{self.port}", timeout=self.timeout, keep_body=False
            ) as http:
                response = await http.get(self.path)
        except HttpError as exc:
            return "critical", f"GET {url}: {exc}"
        if 200 <= response.status_code < 300:
            return "passing", f"GET {url}: {response.status_code}"
        if response.status_code == 429:
            return "warning", f"GET {url}: 429"
        return "critical", f"GET {url}: {response.status_code}"


async def heartbeat_loop(
    client: RegistryClient,
    check: AppCheck,
    interval: float,
    stop: asyncio.Event | None = None,
    report: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Every ``interval`` seconds: run the check, heartbeat with its result (and ``report()``, when
    given). Never raises on outages."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            status, output = await check.run()
        except Exception as exc:  # a bug or an odd app must not end the heartbeats
            status, output = "critical", f"check failed: {type(exc).__name__}: {exc}"
        try:
            await client.heartbeat(status, output, report() if report is not None else None)
        except ControlPlaneUnavailable as exc:
            log.warning("heartbeat failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
