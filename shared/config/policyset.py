"""The loaded, validated policy set: every document, where it came from, and a content version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.config.model import AccessPolicy, AuthProvider, Document, Mesh, RateLimit, Route, Service


@dataclass(frozen=True)
class Origin:
    """Where a document was written: its file, first line, and the line of each rule (if any)."""

    file: str
    line: int
    rule_lines: tuple[int, ...] = ()

    def at(self, line: int) -> str:
        """``FILE:LINE`` for a line in this document's file."""
        return f"{self.file}:{line}"

    def rule(self, index: int) -> str:
        """``FILE:LINE`` of rule ``index`` (falls back to the document's line)."""
        line = self.rule_lines[index] if index < len(self.rule_lines) else self.line
        return self.at(line)


@dataclass(frozen=True)
class PolicySet:
    """A consistent set of policy documents, swapped as a whole by the watcher."""

    mesh: Mesh
    services: Mapping[str, Service]
    access_policies: tuple[AccessPolicy, ...]
    routes: Mapping[str, Route]
    auth_providers: Mapping[str, AuthProvider]
    rate_limits: Mapping[str, RateLimit]
    origins: Mapping[tuple[str, str], Origin] = field(default_factory=dict)
    version: str = ""

    def origin(self, doc: Document) -> Origin:
        """Where ``doc`` was written (``<memory>:0`` for documents built in code)."""
        return self.origins.get((doc.KIND, doc.name), Origin("<memory>", 0))

    def documents(self) -> list[Document]:
        """Every document, Mesh first, in a stable order."""
        docs: list[Document] = [self.mesh]
        docs.extend(self.services.values())
        docs.extend(self.access_policies)
        docs.extend(self.routes.values())
        docs.extend(self.auth_providers.values())
        docs.extend(self.rate_limits.values())
        return docs

    def to_json(self) -> dict[str, object]:
        """The set as JSON-ready data, in the YAML field names (for snapshots and ``/config``)."""
        return {
            "version": self.version,
            "documents": [
                d.model_dump(mode="json", by_alias=True, exclude_none=True) for d in self.documents()
            ],
        }
