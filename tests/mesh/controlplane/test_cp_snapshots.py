"""Snapshots and deltas: a delta since N carries only what changed after N, and applying it to the
snapshot at N gives exactly the full snapshot now."""

from __future__ import annotations

import gzip
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.controlplane.snapshots import SnapshotBuilder
from shared.registry.delta import apply_delta


def _state(
    builder: SnapshotBuilder,
    index: int,
    endpoints: dict[str, list[dict[str, Any]]],
    policy: str = "v1",
    sequence: int = 1,
) -> None:
    builder.refresh(
        index,
        trust_domain="td",
        endpoints=endpoints,
        policy_version=policy,
        policies={"version": policy, "documents": []},
        bundle_sequence=sequence,
        bundle={"keys": [], "spiffe_sequence": sequence},
    )


def _ep(n: int) -> dict[str, Any]:
    return {"id": f"i{n}", "address": "127.0.0.1", "port": 1000 + n}


def _load(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    return data


def test_delta_holds_only_the_changed_service() -> None:
    b = SnapshotBuilder()
    _state(b, 1, {"a": [_ep(1)], "b": [_ep(2)]})
    _state(b, 2, {"a": [_ep(1)], "b": [_ep(2), _ep(3)]})
    delta = _load(b.render(1))
    assert delta["delta"] is True and delta["index"] == 2
    assert list(delta["endpoints"]) == ["b"]
    assert "policies" not in delta and "bundle" not in delta


def test_removed_service_comes_as_empty_list_in_a_delta_and_is_absent_from_full() -> None:
    b = SnapshotBuilder()
    _state(b, 1, {"a": [_ep(1)], "b": [_ep(2)]})
    _state(b, 2, {"a": [_ep(1)]})
    assert _load(b.render(1))["endpoints"] == {"b": []}
    assert "b" not in _load(b.render())["endpoints"]


def test_policy_and_bundle_changes_are_in_the_delta() -> None:
    b = SnapshotBuilder()
    _state(b, 1, {"a": [_ep(1)]})
    _state(b, 2, {"a": [_ep(1)]}, policy="v2", sequence=2)
    delta = _load(b.render(1))
    assert delta["policyVersion"] == "v2" and delta["policies"]["version"] == "v2"
    assert delta["bundle"]["spiffe_sequence"] == 2 and delta["endpoints"] == {}


def test_index_from_the_future_gets_a_full_snapshot() -> None:
    b = SnapshotBuilder()
    _state(b, 5, {"a": [_ep(1)]})
    full = _load(b.render(99))
    assert full["delta"] is False and full["endpoints"] == {"a": [_ep(1)]}


def test_renders_are_cached_per_index_and_gzip_round_trips() -> None:
    b = SnapshotBuilder()
    _state(b, 1, {"a": [_ep(n) for n in range(100)]})
    first = b.render(compress=True)
    assert b.render(compress=True) is first
    assert _load(gzip.decompress(first))["endpoints"]["a"][99]["id"] == "i99"
    assert len(first) < len(b.render()) / 3


services = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.lists(st.integers(0, 5).map(_ep), max_size=3, unique_by=lambda e: e["id"]),
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(services, st.sampled_from(["v1", "v2", "v3"]), st.integers(1, 3)), min_size=2, max_size=6
    ),
    st.data(),
)
def test_any_delta_applied_to_the_old_snapshot_gives_the_new_full_snapshot(
    history: list[tuple[dict[str, list[dict[str, Any]]], str, int]], data: st.DataObject
) -> None:
    b = SnapshotBuilder()
    views: list[dict[str, Any]] = []
    for i, (endpoints, policy, sequence) in enumerate(history, start=1):
        _state(b, i, endpoints, policy, sequence)
        views.append(apply_delta(None, _load(b.render())))
    since = data.draw(st.integers(1, len(history)))
    merged = apply_delta(views[since - 1], _load(b.render(since)))
    full = views[-1]
    for key in ("index", "policyVersion", "policies", "bundle", "endpoints"):
        assert merged[key] == full[key], key
