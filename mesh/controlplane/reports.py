"""What sidecars report with their heartbeats (versions, certificate expiry, inbound traffic by
caller), kept in memory for the dashboard: a few recent samples per instance, turned into the edges of
the live traffic graph (requests per second, error rate, P99 latency, policy denials).

In memory per control-plane replica: with several replicas, each shows what reached it (a sidecar
heartbeats to one replica at a time). Instances silent for ``keep`` seconds are forgotten.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.controlplane.schemas import ReportBody, TrafficCounts


@dataclass
class Sample:
    """One report of one instance."""

    at: float
    report: ReportBody


@dataclass
class InstanceReports:
    """The recent samples of one instance (newest last)."""

    service: str
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=64))


@dataclass(frozen=True)
class Edge:
    """Observed calls from ``source`` to ``target`` over the window."""

    source: str
    target: str
    rps: float
    error_rate: float
    denied_rps: float
    p99_ms: float | None
    requests: int

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "target": self.target,
            "rps": round(self.rps, 3),
            "errorRate": round(self.error_rate, 4),
            "deniedRps": round(self.denied_rps, 3),
            "p99Ms": None if self.p99_ms is None else round(self.p99_ms, 2),
            "requests": self.requests,
        }


def _restarted(new: TrafficCounts, old: TrafficCounts) -> bool:
    """Any counter went down (as Prometheus's rate() reads a reset), or the histogram changed shape."""
    if new.buckets != old.buckets or len(new.counts) != len(old.counts):
        return True
    pairs = [(new.requests, old.requests), (new.errors, old.errors), (new.denied, old.denied)]
    pairs += list(zip(new.counts, old.counts, strict=True))
    return any(a < b for a, b in pairs)


def _delta(new: TrafficCounts, old: TrafficCounts | None) -> tuple[int, int, int, list[int]]:
    """Counts between two cumulative reports; after a restart of the sidecar, the new counts as they are."""
    if old is None or _restarted(new, old):
        return new.requests, new.errors, new.denied, list(new.counts)
    counts = [a - b for a, b in zip(new.counts, old.counts, strict=True)]
    return new.requests - old.requests, new.errors - old.errors, new.denied - old.denied, counts


def quantile(buckets: list[float], cumulative: list[int], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram (linear inside a bucket, as Prometheus's
    histogram_quantile); None without observations. The +Inf bucket answers with the last bound."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    lower, below = 0.0, 0
    for i, count in enumerate(cumulative):
        upper = buckets[i] if i < len(buckets) else math.inf
        if count >= rank:
            if math.isinf(upper):
                return buckets[-1] if buckets else None
            inside = count - below
            share = (rank - below) / inside if inside else 1.0
            return lower + (upper - lower) * share
        lower, below = upper, count
    return buckets[-1] if buckets else None


class ReportBook:
    """Reports by instance id; thread-safe; ``clock`` for tests."""

    def __init__(self, keep: float = 120.0, clock: Callable[[], float] = time.time) -> None:
        self.keep = keep
        self.clock = clock
        self._instances: dict[str, InstanceReports] = {}
        self._lock = threading.Lock()

    def record(self, instance_id: str, service: str, report: ReportBody) -> None:
        """Keep one report."""
        now = self.clock()
        with self._lock:
            entry = self._instances.get(instance_id)
            if entry is None or entry.service != service:
                entry = self._instances[instance_id] = InstanceReports(service)
            entry.samples.append(Sample(now, report))
            for key in [k for k, v in self._instances.items() if now - v.samples[-1].at > self.keep]:
                del self._instances[key]

    def latest(self, instance_id: str) -> ReportBody | None:
        """The newest report of an instance, or None."""
        with self._lock:
            entry = self._instances.get(instance_id)
            return entry.samples[-1].report if entry is not None else None

    def edges(self, window: float = 30.0) -> list[Edge]:
        """Calls observed in the last ``window`` seconds, summed over the target's instances."""
        now = self.clock()
        sums: dict[tuple[str, str], list[float]] = {}
        hists: dict[tuple[str, str], tuple[list[float], list[int]]] = {}
        with self._lock:
            entries = [(e.service, list(e.samples)) for e in self._instances.values()]
        for service, samples in entries:
            if now - samples[-1].at > window * 2:
                continue
            recent = [s for s in samples if now - s.at <= window]
            if not recent:
                continue
            older = [s for s in samples if now - s.at > window]
            # A rate needs two reports: the first one after a (control-plane) restart holds counts of
            # unknown age. The base is the last report before the window, else the window's first.
            base = older[-1] if older else recent[0] if len(recent) > 1 else None
            if base is None:
                continue
            span = max(recent[-1].at - base.at, 1.0)
            newest = recent[-1].report.inbound
            for caller, counts in newest.items():
                old = base.report.inbound.get(caller)
                requests, errors, denied, delta = _delta(counts, old)
                if requests <= 0 and denied <= 0:
                    continue
                key = (caller, service)
                acc = sums.setdefault(key, [0.0, 0.0, 0.0, 0.0])
                acc[0] += requests / span
                acc[1] += errors
                acc[2] += denied / span
                acc[3] += requests
                bounds, cum = hists.get(key, (list(counts.buckets), [0] * len(delta)))
                if bounds == counts.buckets and len(cum) == len(delta):
                    hists[key] = (bounds, [a + b for a, b in zip(cum, delta, strict=True)])
        edges = []
        for (source, target), (rps, failed, denied_rps, total) in sorted(sums.items()):
            bounds, cum = hists.get((source, target), ([], []))
            p99 = quantile(bounds, cum, 0.99)
            edges.append(
                Edge(
                    source,
                    target,
                    rps,
                    failed / total if total else 0.0,
                    denied_rps,
                    None if p99 is None else p99 * 1000,
                    int(total),
                )
            )
        return edges
