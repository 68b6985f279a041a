"""A bounded TTL cache of verdicts, and single-flight sharing of in-flight lookups.

Used by ext_authz (``cache:`` in ``ExtAuthzSettings``) and token introspection. Keys are digests
made by the caller (:func:`digest_key`), so no credential sits in memory as a map key. Allows live
for ``ttl``, denials and rejections for ``deny_ttl``; an absent verdict is never stored, and a
caller that failed to reach its dependency simply does not ``put``. When full, the least recently
used entry goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from gateway.auth.base import Verdict


def digest_key(parts: Iterable[str]) -> str:
    """The hex SHA-256 of ``parts``, each length-prefixed so that no two part lists collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogateescape")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


class DecisionCache:
    """Verdicts by key, each until its own deadline on ``clock`` (monotonic seconds)."""

    def __init__(
        self,
        *,
        ttl: float,
        deny_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl = ttl
        self.deny_ttl = deny_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()
        self.stats: dict[str, int] = {"hits": 0, "misses": 0, "evictions": 0, "expired": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def entry_keys(self) -> list[str]:
        """The stored keys, least recently used first (expired ones included until touched)."""
        return list(self._entries)

    def get(self, key: str) -> Verdict | None:
        """The live verdict for ``key``, or None (a miss; an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            self.stats["misses"] += 1
            return None
        deadline, verdict = entry
        if self._clock() >= deadline:
            del self._entries[key]
            self.stats["expired"] += 1
            self.stats["misses"] += 1
            return None
        self._entries.move_to_end(key)
        self.stats["hits"] += 1
        return verdict

    def put(self, key: str, verdict: Verdict, *, ttl: float | None = None) -> None:
        """Store ``verdict``: an accept for ``ttl``, a denial or rejection for ``deny_ttl``.

        ``ttl`` given here replaces that lifetime for this entry (introspection shortens it to the
        token's ``exp``). An absent verdict, or a lifetime of zero or less, stores nothing (and drops
        an older entry for the key).
        """
        if verdict.identity is not None:
            life = self.ttl
        elif verdict.denial is not None or verdict.reason is not None:
            life = self.deny_ttl
        else:
            return
        if ttl is not None:
            life = ttl
        if life <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self._clock() + life, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats["evictions"] += 1

    def clear(self) -> None:
        """Drop every entry (stats are kept)."""
        self._entries.clear()


class SingleFlight:
    """Concurrent lookups of the same key share one call instead of each making its own.

    The call runs as a task of its own, so a caller that gives up (cancelled) does not cancel it
    for the others; the call must not raise (it returns a verdict for every failure).
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Verdict]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, key: str, call: Callable[[], Coroutine[Any, Any, Verdict]]) -> Verdict:
        """The verdict of the call in flight for ``key``, starting ``call()`` if there is none."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(call(), name=f"auth-lookup-{key[:12]}")
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[Verdict]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    async def close(self) -> None:
        """Cancel the calls still in flight and wait for them to end."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
