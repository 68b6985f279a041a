"""Ring hash keeps one ring while the endpoint set stays: a retry (the tried endpoint excluded) or an
ejection walks past the missing endpoints instead of rebuilding the ring for every pick.

Ring builds are counted through the hash function: a pick hashes its key once, a build hashes every
point of the ring (``replicas`` per endpoint)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from mesh.outbound import balancer as balancer_module
from mesh.outbound.balancer import RingHash
from mesh.outbound.endpoints import Endpoint

REPLICAS = 100


@dataclass
class HashCount:
    calls: int = 0
    on: bool = True
    rings: dict[frozenset[str], RingHash] = field(default_factory=dict)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[HashCount]:
    count = HashCount()
    real = balancer_module._hash

    def counting(text: str) -> int:
        if count.on:
            count.calls += 1
        return real(text)

    monkeypatch.setattr(balancer_module, "_hash", counting)
    yield count


def eps(prefix: str, n: int) -> list[Endpoint]:
    return [Endpoint(f"{prefix}-{i}", "127.0.0.1", 10000 + i, "") for i in range(n)]


def reference(endpoints: list[Endpoint], key: str, count: HashCount) -> str:
    """What a ring built from exactly ``endpoints`` picks (not counted; one such ring per set)."""
    count.on = False
    try:
        ring = count.rings.setdefault(frozenset(e.id for e in endpoints), RingHash(REPLICAS))
        chosen = ring.pick(endpoints, key)
    finally:
        count.on = True
    assert chosen is not None
    return chosen.id


def test_retries_and_ejections_pick_without_rebuilding_the_ring(hashes: HashCount) -> None:
    endpoints = eps("ep", 50)
    balancer = RingHash(REPLICAS)
    assert balancer.pick(endpoints, "warm") is not None  # the one build
    assert hashes.calls == 50 * REPLICAS + 1
    rng = random.Random(5)
    ejected = set(rng.sample([e.id for e in endpoints], 10))
    available = [e for e in endpoints if e.id not in ejected]
    hashes.calls = 0
    picks = 0
    for i in range(40):
        key = f"user-{i}"
        first = balancer.pick(endpoints, key)
        assert first is not None
        # the retry: every endpoint but the one tried
        retry_set = [e for e in endpoints if e is not first]
        retry = balancer.pick(retry_set, key)
        assert retry is not None and retry is not first
        # a second retry, candidates in another order
        again_set = [e for e in reversed(endpoints) if e is not first and e is not retry]
        again = balancer.pick(again_set, key)
        # with ten endpoints ejected, and its retry
        during = balancer.pick(available, key)
        assert during is not None
        during_retry = balancer.pick([e for e in available if e is not during], key)
        picks += 5
        # exactly what a ring of the candidates alone picks: consistent hashing unchanged
        assert first.id == reference(endpoints, key, hashes)
        assert retry.id == reference(retry_set, key, hashes)
        assert again is not None and again.id == reference(again_set, key, hashes)
        assert during.id == reference(available, key, hashes)
        if first.id not in ejected:
            assert during is first  # an ejection moves only the keys of the ejected endpoints
        assert during_retry is not None and during_retry is not during
    assert hashes.calls == picks  # one hash per pick (its key): no ring was built again
    assert balancer.pick(endpoints, None) is not None  # no header: least-request, no ring
    assert hashes.calls == picks


def test_a_changing_endpoint_set_rebuilds_once_per_change_and_stays_bounded(hashes: HashCount) -> None:
    current = eps("old", 20)
    newer = eps("new", 20) + eps("newest", 20)
    balancer = RingHash(REPLICAS)
    keys = [f"k{i}" for i in range(5)]
    builds: list[int] = []  # points hashed by each build

    def pick(endpoints: list[Endpoint], key: str) -> Endpoint:
        before = hashes.calls
        chosen = balancer.pick(endpoints, key)
        built = hashes.calls - before - 1
        if built:
            builds.append(built)
        assert chosen is not None and chosen.id == reference(endpoints, key, hashes)
        return chosen

    def traffic() -> None:
        for key in keys:
            first = pick(current, key)
            pick([e for e in current if e is not first], key)  # its retry
        hashes.rings.clear()

    traffic()
    assert builds == [20 * REPLICAS]
    # a rolling deploy, twice over: one endpoint replaced at a time, traffic with retries in between
    for changes, fresh in enumerate(newer, start=1):
        current = [*current[1:], fresh]
        traffic()
        assert len(builds) == 1 + changes  # one build per change of the set, none for the retries
    # endpoints gone for good are not kept for ever: no ring larger than about twice the live ones
    assert max(builds) <= (2 * 20 + 8) * REPLICAS
    # scaled down to five: the ring drops the others once, then stays
    current = current[:5]
    traffic()
    traffic()
    assert len(builds) == 1 + len(newer) + 1 and builds[-1] == 5 * REPLICAS
