"""Applying configuration deltas from the control plane to the last full snapshot."""

from __future__ import annotations

from typing import Any


def apply_delta(current: dict[str, Any] | None, update: dict[str, Any]) -> dict[str, Any]:
    """The full snapshot after ``update`` (a full snapshot replaces; a delta merges into ``current``)."""
    if not update.get("delta") or current is None:
        merged = dict(update)
        merged["endpoints"] = {k: v for k, v in (update.get("endpoints") or {}).items() if v}
        merged["delta"] = False
        return merged
    merged = dict(current)
    for key in ("index", "trustDomain", "policyVersion", "generatedAt"):
        if key in update:
            merged[key] = update[key]
    for key in ("policies", "bundle"):
        if key in update:
            merged[key] = update[key]
    endpoints = dict(current.get("endpoints") or {})
    for service, items in (update.get("endpoints") or {}).items():
        if items:
            endpoints[service] = items
        else:
            endpoints.pop(service, None)
    merged["endpoints"] = endpoints
    merged["delta"] = False
    merged.pop("since", None)
    return merged
