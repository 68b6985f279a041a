"""In-process pieces: the cache of keys known to be over their limit, and the ``allow-local`` buckets.

Both are bounded (oldest entry evicted first) and keyed by ``(document name and limits, key
digest)``, never by the raw key: a RateLimit changed under the same name starts afresh here.
Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

Slot = tuple[str, str]  # (RateLimit name and limits, key digest)


@dataclass(frozen=True)
class CachedDenial:
    """A denial Redis gave: requests of at least ``cost`` are denied until ``until``."""

    until: float
    cost: int
    stored_at: float
    remaining: tuple[int, ...]
    reset_s: tuple[float, ...]  # per limit, as of ``stored_at``


class DeniedCache:
    """Keys already over their limit, answered from memory until their retry time passes."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, max_entries)
        self._entries: OrderedDict[Slot, CachedDenial] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, slot: Slot, cost: int, now: float) -> CachedDenial | None:
        entry = self._entries.get(slot)
        if entry is None:
            return None
        if now >= entry.until:
            del self._entries[slot]
            return None
        return entry if cost >= entry.cost else None

    def put(self, slot: Slot, entry: CachedDenial) -> None:
        self._entries.pop(slot, None)
        self._entries[slot] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(frozen=True)
class LocalOutcome:
    allowed: bool
    retry_s: float
    remaining: tuple[int, ...]
    reset_s: tuple[float, ...]


class LocalBuckets:
    """GCRA per key in this process (failure mode ``allow-local``): the same arithmetic as the Lua
    script, on the local monotonic clock. Each gateway process enforces the limits on its own, so N
    replicas admit up to N times the limit while Redis is away."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max(1, max_keys)
        self._tats: OrderedDict[Slot, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def decide(
        self,
        slot: Slot,
        periods_s: Sequence[float],
        requests: Sequence[int],
        bursts: Sequence[int],
        cost: int,
        now: float,
    ) -> LocalOutcome:
        tats = self._tats.get(slot)
        if tats is None or len(tats) != len(periods_s):
            tats = [now] * len(periods_s)
        current = [max(tat, now) for tat in tats]
        intervals = [period / req for period, req in zip(periods_s, requests, strict=True)]
        taus = [burst * interval for burst, interval in zip(bursts, intervals, strict=True)]
        new = [tat + cost * interval for tat, interval in zip(current, intervals, strict=True)]
        retry = 0.0
        for i, period in enumerate(periods_s):
            wait = period if cost > bursts[i] else new[i] - taus[i] - now
            if wait > 1e-6:
                retry = max(retry, wait)
        allowed = retry == 0.0
        final = new if allowed else current
        if allowed:
            self._tats.pop(slot, None)
            self._tats[slot] = final
            while len(self._tats) > self.max_keys:
                self._tats.popitem(last=False)
        remaining = tuple(
            max(0, math.floor((tau - (tat - now)) / interval + 1e-9))
            for tau, tat, interval in zip(taus, final, intervals, strict=True)
        )
        return LocalOutcome(allowed, retry, remaining, tuple(tat - now for tat in final))

    def clear(self) -> None:
        self._tats.clear()
