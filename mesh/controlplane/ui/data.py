"""The dashboard's data, as plain JSON-ready structures built from the control plane's state: the
pages render them on the server and ``/ui/data/*.json`` serves the same structures to the browser."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from shared.policy.matrix import Matrix, access_matrix

if TYPE_CHECKING:
    from mesh.controlplane.core import ControlPlane

#: Matrices by policy version: a policy set is immutable, so one computation per version.
_MATRICES: dict[str, Matrix] = {}


def matrix_of(cp: ControlPlane) -> Matrix | None:
    """The access matrix of the policy set in force (None before one loaded)."""
    current = cp.watcher.current
    if current is None:
        return None
    found = _MATRICES.get(current.version)
    if found is None:
        if len(_MATRICES) > 8:
            _MATRICES.clear()
        found = _MATRICES[current.version] = access_matrix(current)
    return found


def services_data(cp: ControlPlane, now: float | None = None) -> list[dict[str, Any]]:
    """Every declared or registered service with its instances: health, versions, certificate expiry."""
    now = time.time() if now is None else now
    current = cp.watcher.current
    declared = dict(current.services) if current is not None else {}
    registered = cp.registry.services()
    out = []
    for name in sorted(set(declared) | set(registered)):
        spec = declared.get(name)
        instances = []
        for view in registered.get(name, []):
            record = view.record
            report = cp.reports.latest(record.id)
            expires_in = report.certificate_expires_in if report is not None else None
            instances.append(
                {
                    "id": record.id,
                    "address": f"{record.address}:{record.port}",
                    "identity": record.identity,
                    "health": view.health,
                    "checkOutput": record.output,
                    "lastHeartbeatAgo": None
                    if view.last_heartbeat is None
                    else round(now - view.last_heartbeat, 1),
                    "version": report.version if report is not None else None,
                    "policyVersion": report.policy_version if report is not None else None,
                    "certificateExpiresIn": None if expires_in is None else round(expires_in),
                }
            )
        out.append(
            {
                "name": name,
                "declared": spec is not None,
                "protocol": spec.protocol if spec is not None else None,
                "instances": instances,
                "healthy": sum(1 for i in instances if i["health"] == "passing"),
            }
        )
    return out


def matrix_data(cp: ControlPlane) -> dict[str, Any] | None:
    """The matrix as JSON: services, and per cell verdict, markers, deciding rule and probes."""
    matrix = matrix_of(cp)
    if matrix is None:
        return None
    cells = []
    for (source, target), cell in sorted(matrix.cells.items()):
        cells.append(
            {
                "from": source,
                "to": target,
                "verdict": cell.verdict,
                "default": cell.default,
                "audit": cell.audit,
                "rule": cell.rule,
                "reason": cell.reason,
                "probes": [
                    {
                        "method": p.method,
                        "path": p.path,
                        "allowed": p.decision.allowed,
                        "rule": p.decision.rule,
                    }
                    for p in cell.probes
                ],
            }
        )
    return {"services": list(matrix.services), "cells": cells}


def graph_data(cp: ControlPlane, window: float = 30.0) -> dict[str, Any]:
    """Nodes (services) and edges (observed calls over ``window`` seconds), each edge marked
    ``denied`` when the policy denies that caller every request or denials were observed."""
    matrix = matrix_of(cp)
    edges = []
    nodes = {s["name"] for s in services_data(cp)}
    for edge in cp.reports.edges(window):
        data = edge.to_json()
        verdict = None
        if matrix is not None and (edge.source, edge.target) in matrix.cells:
            verdict = matrix.cell(edge.source, edge.target).verdict
        data["policy"] = verdict
        data["denied"] = verdict == "deny" or edge.denied_rps > 0
        edges.append(data)
        nodes.update((edge.source, edge.target))
    return {"window": window, "nodes": sorted(nodes), "edges": edges, "at": time.time()}


def config_data(cp: ControlPlane) -> dict[str, Any]:
    """Policy version and the last load's outcome, errors with file and line."""
    status = cp.watcher.status
    return {
        "ok": status.ok,
        "version": status.version,
        "generation": status.generation,
        "loadedAt": status.loaded_at,
        "lastAttemptAt": status.last_attempt_at,
        "reloadsOk": status.reloads_ok,
        "reloadsFailed": status.reloads_failed,
        "files": list(status.files),
        "errors": [
            {"file": e.file, "line": e.line, "ref": e.ref, "field": e.field, "message": e.message}
            for e in status.errors
        ],
        "policies": [str(p) for p in cp.watcher.paths],
    }
