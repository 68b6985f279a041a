"""``/metrics`` of the control plane, in the Prometheus text format."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.controlplane.core import ControlPlane


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(cp: ControlPlane) -> str:
    """Every control-plane metric, one family after the other."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")

    health: dict[tuple[str, str], int] = {}
    for view in cp.registry.instances():
        key = (view.record.service, view.health)
        health[key] = health.get(key, 0) + 1
    status = cp.watcher.status
    bundle = cp.ca.bundle()
    family("meshgate_controlplane_index", "gauge", "Current change index.", [({}, cp.registry.index)])
    family(
        "meshgate_registry_instances",
        "gauge",
        "Registered instances by service and health.",
        [({"service": s, "health": h}, n) for (s, h), n in sorted(health.items())],
    )
    family(
        "meshgate_policy_reloads_total",
        "counter",
        "Policy folder loads by result.",
        [({"result": "ok"}, status.reloads_ok), ({"result": "error"}, status.reloads_failed)],
    )
    family("meshgate_policy_valid", "gauge", "1 when the last policy load succeeded.", [({}, int(status.ok))])
    family("meshgate_csr_signed_total", "counter", "Certificates signed.", [({}, cp.counters.csr_signed)])
    family("meshgate_csr_rejected_total", "counter", "CSRs refused.", [({}, cp.counters.csr_rejected)])
    family(
        "meshgate_registrations_total",
        "counter",
        "Instance registrations.",
        [({}, cp.counters.registrations)],
    )
    family(
        "meshgate_snapshot_watchers", "gauge", "Blocking queries waiting now.", [({}, cp.counters.watchers)]
    )
    family(
        "meshgate_snapshot_builds_total",
        "counter",
        "Snapshots serialized.",
        [({}, cp.counters.snapshot_builds)],
    )
    family("meshgate_bundle_sequence", "gauge", "SPIFFE bundle sequence.", [({}, bundle.sequence)])
    family(
        "meshgate_ca_expiry_seconds",
        "gauge",
        "Seconds until the signing CA certificate expires.",
        [({}, cp.ca.signing_cert.not_valid_after_utc.timestamp() - time.time())],
    )
    family(
        "meshgate_auth_failures_total",
        "counter",
        "Refused join tokens by reason.",
        [({"reason": k}, v) for k, v in sorted(cp.counters.auth_failures.items())],
    )
    return "\n".join(lines) + "\n"
