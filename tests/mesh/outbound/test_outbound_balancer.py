"""Balancers: least-request with power of two choices, round-robin, ring hash."""

from __future__ import annotations

import random
from collections import Counter

from mesh.outbound.balancer import LeastRequest, RingHash, RoundRobin, make_balancer
from mesh.outbound.endpoints import Endpoint


def eps(n: int) -> list[Endpoint]:
    return [
        Endpoint(f"ep-{i}", "127.0.0.1", 10000 + i, f"spiffe://rig.test/ns/default/sa/s{i}") for i in range(n)
    ]


def test_p2c_with_two_endpoints_always_picks_the_less_loaded() -> None:
    a, b = eps(2)
    a.active, b.active = 5, 1
    balancer = LeastRequest(random.Random(1))
    assert {balancer.pick([a, b]).id for _ in range(200)} == {"ep-1"}  # type: ignore[union-attr]


def test_p2c_never_picks_the_most_loaded_of_three() -> None:
    endpoints = eps(3)
    endpoints[0].active = 10
    balancer = LeastRequest(random.Random(2))
    picks = Counter(balancer.pick(endpoints).id for _ in range(600))  # type: ignore[union-attr]
    assert picks["ep-0"] == 0
    assert picks["ep-1"] > 100 and picks["ep-2"] > 100


def test_p2c_spreads_load_when_requests_stay_in_flight() -> None:
    endpoints = eps(4)
    balancer = LeastRequest(random.Random(3))
    for _ in range(400):
        chosen = balancer.pick(endpoints)
        assert chosen is not None
        chosen.active += 1  # every request stays open: P2C must keep the counts close
    counts = [e.active for e in endpoints]
    assert sum(counts) == 400
    assert max(counts) - min(counts) <= 10, counts


def test_p2c_edge_cases() -> None:
    balancer = LeastRequest()
    assert balancer.pick([]) is None
    (only,) = eps(1)
    assert balancer.pick([only]) is only


def test_round_robin_cycles_through_every_endpoint_in_turn() -> None:
    endpoints = eps(3)
    balancer = RoundRobin()
    picks = [balancer.pick(endpoints).id for _ in range(9)]  # type: ignore[union-attr]
    assert Counter(picks) == {"ep-0": 3, "ep-1": 3, "ep-2": 3}
    for i in range(3, 9):
        assert picks[i] == picks[i - 3]  # a fixed cycle
    assert len(set(picks[:3])) == 3
    assert balancer.pick([]) is None


def test_ring_hash_keeps_a_key_on_one_endpoint() -> None:
    endpoints = eps(5)
    balancer = RingHash()
    for key in ("alice", "bob", "carol"):
        owners = {balancer.pick(endpoints, key).id for _ in range(20)}  # type: ignore[union-attr]
        assert len(owners) == 1
    # the order of the endpoint list does not matter
    shuffled = list(reversed(endpoints))
    assert balancer.pick(shuffled, "alice") is balancer.pick(endpoints, "alice")
    # a new balancer (another sidecar) agrees
    assert RingHash().pick(endpoints, "bob").id == balancer.pick(endpoints, "bob").id  # type: ignore[union-attr]


def test_ring_hash_spreads_keys_and_moves_about_one_nth_when_an_endpoint_is_added() -> None:
    keys = [f"user-{i}" for i in range(1000)]
    four = eps(5)[:4]
    five = eps(5)
    balancer = RingHash()
    before = {k: balancer.pick(four, k).id for k in keys}  # type: ignore[union-attr]
    after = {k: balancer.pick(five, k).id for k in keys}  # type: ignore[union-attr]
    load = Counter(before.values())
    assert len(load) == 4 and min(load.values()) > 150, load  # 250 each on average
    moved = [k for k in keys if before[k] != after[k]]
    # ideal: 1/5 of the keys move, all of them to the new endpoint
    assert 120 <= len(moved) <= 300, len(moved)
    assert all(after[k] == "ep-4" for k in moved)


def test_ring_hash_without_the_header_falls_back_to_least_request() -> None:
    a, b = eps(2)
    a.active = 3
    balancer = RingHash()
    assert {balancer.pick([a, b], None).id for _ in range(50)} == {"ep-1"}  # type: ignore[union-attr]
    assert balancer.pick([], "k") is None


def test_make_balancer_names() -> None:
    assert isinstance(make_balancer("round-robin"), RoundRobin)
    assert isinstance(make_balancer("ring-hash"), RingHash)
    assert isinstance(make_balancer("least-request"), LeastRequest)
