"""The metric families every Meshgate process serves in the same sense (docs/metrics.md): build,
readiness, the configuration in force and its reloads, certificate expiry."""

from __future__ import annotations

import functools
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from shared.telemetry.metrics import Family


@dataclass
class ConfigStatus:
    """The configuration (policy set) a process holds and how its reloads went."""

    version: str | None = None
    reloads: int = 0
    reload_errors: int = 0
    last_reload_ok: bool = False

    def applied(self, version: str) -> None:
        """A new configuration is in force."""
        self.version = version
        self.reloads += 1
        self.last_reload_ok = True

    def failed(self) -> None:
        """A configuration was refused; the one in force stays."""
        self.reload_errors += 1
        self.last_reload_ok = False


@functools.cache
def build_version() -> str:
    """The installed Meshgate version (``unknown`` when not installed as a distribution)."""
    try:
        return metadata.version("meshgate")
    except metadata.PackageNotFoundError:
        return "unknown"


def common_families(
    component: str, *, ready: bool, config: ConfigStatus | None, certificates: Mapping[str, float]
) -> list[Family]:
    """``meshgate_build_info``, ``meshgate_ready``, ``meshgate_config_*`` (when ``config`` is given) and
    ``meshgate_certificate_expiry_seconds`` (one series per ``certificates`` entry: kind -> seconds)."""
    families = [
        Family(
            "meshgate_build_info",
            "gauge",
            "Always 1; the labels say which Meshgate component and version this is.",
            ("component", "version", "python"),
        ).add(1, component, build_version(), platform.python_version()),
        Family("meshgate_ready", "gauge", "1 when the process is ready to serve, else 0.").add(int(ready)),
    ]
    if config is not None:
        info = Family(
            "meshgate_config_info",
            "gauge",
            "Always 1; version is the content hash of the policy set in force (no sample before one).",
            ("version",),
        )
        if config.version:
            info.add(1, config.version)
        families += [
            info,
            Family(
                "meshgate_config_reloads_total",
                "counter",
                "Policy sets put in force (the first one included).",
            ).add(config.reloads),
            Family(
                "meshgate_config_reload_errors_total",
                "counter",
                "Policy sets refused as invalid or unusable; the one in force was kept.",
            ).add(config.reload_errors),
            Family(
                "meshgate_config_last_reload_successful",
                "gauge",
                "1 when the last policy set received or loaded was put in force, else 0.",
            ).add(int(config.last_reload_ok)),
        ]
    expiry = Family(
        "meshgate_certificate_expiry_seconds",
        "gauge",
        "Seconds until a certificate expires (negative once expired); certificate: svid (the process's "
        "own workload certificate) or ca (the certificate the CA signs with).",
        ("certificate",),
    )
    for kind, seconds in sorted(certificates.items()):
        expiry.add(round(seconds), kind)
    families.append(expiry)
    return families
