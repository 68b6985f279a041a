"""Choosing an endpoint: least-request with power of two choices (default), round-robin, ring hash."""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

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
    least-request.

    One ring holds every endpoint seen lately; a pick walks clockwise from the key past the points of
    endpoints not among the candidates (ejected, or already tried by this request), which picks exactly
    what a ring of the candidates alone would. So a retry or an ejection does not rebuild the ring: only
    an endpoint the ring does not know yet does, or a ring mostly made of endpoints gone.
    """

    def __init__(self, replicas: int = 100) -> None:
        self.replicas = replicas
        self._hashes: list[int] = []
        self._owners: list[str] = []
        self._ids: frozenset[str] = frozenset()
        self._fallback = LeastRequest()

    def _build(self, ids: AbstractSet[str]) -> None:
        points = sorted((_hash(f"{eid}#{i}"), eid) for eid in ids for i in range(self.replicas))
        self._hashes = [p for p, _ in points]
        self._owners = [eid for _, eid in points]
        self._ids = frozenset(ids)

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint | None:
        """The endpoint owning ``key`` on the ring of ``endpoints``."""
        if not endpoints:
            return None
        if key is None:
            return self._fallback.pick(endpoints)
        by_id = {e.id: e for e in reversed(endpoints)}  # the first of a repeated id, as a list search
        ids = by_id.keys()
        ring = self._ids
        if not (ids <= ring and len(ring) <= _STALE_PRUNE * len(ids) + _STALE_SLACK):
            # a new endpoint (or most of the ring gone): keep the others while they are not too many,
            # so that the picks of other candidate sets (retries, ejections) keep this ring
            kept = ring | ids
            self._build(kept if len(kept) <= _STALE_KEEP * len(ids) + _STALE_SLACK else ids)
        hashes, owners = self._hashes, self._owners
        n = len(hashes)
        i = bisect.bisect(hashes, _hash(key))
        for _ in range(n):  # bounded: every candidate has points on the ring
            if i >= n:
                i = 0
            endpoint = by_id.get(owners[i])
            if endpoint is not None:
                return endpoint
            i += 1
        return endpoints[0]  # no points at all (replicas < 1)


#: The ring keeps endpoints that are not candidates (ejected, tried, or gone) while they are at most
#: this many times the candidates (plus the slack) when it is built, and is rebuilt once they exceed
#: ``_STALE_PRUNE`` times: bounds both the walk past them and the memory of endpoints gone for good.
_STALE_KEEP = 2
_STALE_PRUNE = 4
_STALE_SLACK = 8


def make_balancer(policy: str) -> Balancer:
    """The balancer a ``Service.trafficPolicy.loadBalancer.policy`` names."""
    if policy == "round-robin":
        return RoundRobin()
    if policy == "ring-hash":
        return RingHash()
    return LeastRequest()
