"""Choosing an endpoint: least-request with power of two choices (default), round-robin, ring hash."""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence

from mesh.outbound.endpoints import Endpoint


class Balancer:
    """Picks one of ``endpoints`` (already filtered to available ones), or None if there are none."""

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint | None:
        """The endpoint for this request."""
        raise NotImplementedError


class LeastRequest(Balancer):
    """Power of two choices: sample two, take the one with fewer requests in flight."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint | None:
        """P2C over active request counts."""
        n = len(endpoints)
        if n == 0:
            return None
        if n == 1:
            return endpoints[0]
        a, b = self.rng.sample(range(n), 2)
        first, second = endpoints[a], endpoints[b]
        return first if first.active <= second.active else second


class RoundRobin(Balancer):
    """Each endpoint in turn."""

    def __init__(self) -> None:
        self.next = 0

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint | None:
        """The next endpoint in order."""
        if not endpoints:
            return None
        self.next = (self.next + 1) % (1 << 30)
        return endpoints[self.next % len(endpoints)]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class RingHash(Balancer):
    """Consistent hashing on a request header's value: the same value reaches the same endpoint while
    the set of endpoints allows; a change moves only about 1/N of the keys. Without the header,
    least-request."""

    def __init__(self, replicas: int = 100) -> None:
        self.replicas = replicas
        self._ring: tuple[list[int], list[str]] | None = None
        self._ids: tuple[str, ...] = ()
        self._fallback = LeastRequest()

    def _build(self, endpoints: Sequence[Endpoint]) -> tuple[list[int], list[str]]:
        ids = tuple(sorted(e.id for e in endpoints))
        if self._ring is None or ids != self._ids:
            points = sorted((_hash(f"{eid}#{i}"), eid) for eid in ids for i in range(self.replicas))
            self._ring = ([p for p, _ in points], [eid for _, eid in points])
            self._ids = ids
        return self._ring

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint | None:
        """The endpoint owning ``key`` on the ring."""
        if not endpoints:
            return None
        if key is None:
            return self._fallback.pick(endpoints)
        hashes, owners = self._build(endpoints)
        i = bisect.bisect(hashes, _hash(key)) % len(hashes)
        owner = owners[i]
        return next(e for e in endpoints if e.id == owner)


def make_balancer(policy: str) -> Balancer:
    """The balancer a ``Service.trafficPolicy.loadBalancer.policy`` names."""
    if policy == "round-robin":
        return RoundRobin()
    if policy == "ring-hash":
        return RingHash()
    return LeastRequest()
