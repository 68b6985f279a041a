"""The loaded, validated policy set: every document, where it came from, and a content version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

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

    def to_json(self) -> dict[str, Any]:
        """The set as JSON-ready data, in the YAML field names, with where each document was written
        (for snapshots and ``/config``); :meth:`from_json` reads it back."""
        documents = []
        for doc in self.documents():
            data = doc.model_dump(mode="json", by_alias=True, exclude_none=True)
            origin = self.origin(doc)
            data["x-origin"] = {
                "file": origin.file,
                "line": origin.line,
                "ruleLines": list(origin.rule_lines),
            }
            documents.append(data)
        return {"version": self.version, "documents": documents}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicySet:
        """Rebuild a set from :meth:`to_json` output (as a snapshot carries it).

        Raises ValueError when the data is not such a set (the control plane only sends valid ones).
        """
        from pydantic import ValidationError

        from shared.config.model import KINDS

        by_kind: dict[str, dict[str, Document]] = {kind: {} for kind in KINDS}
        origins: dict[tuple[str, str], Origin] = {}
        try:
            for raw in data["documents"]:
                item = dict(raw)
                where = item.pop("x-origin", None) or {}
                doc = KINDS[item["kind"]].model_validate(item)
                by_kind[doc.KIND][doc.name] = doc
                origins[(doc.KIND, doc.name)] = Origin(
                    str(where.get("file", "<snapshot>")),
                    int(where.get("line", 0)),
                    tuple(int(n) for n in where.get("ruleLines", ())),
                )
            (mesh,) = by_kind["Mesh"].values()
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise ValueError(f"not a policy set: {exc}") from exc
        return cls(
            mesh=cast(Mesh, mesh),
            services=MappingProxyType(cast(dict[str, Service], by_kind["Service"])),
            access_policies=tuple(cast(dict[str, AccessPolicy], by_kind["AccessPolicy"]).values()),
            routes=MappingProxyType(cast(dict[str, Route], by_kind["Route"])),
            auth_providers=MappingProxyType(cast(dict[str, AuthProvider], by_kind["AuthProvider"])),
            rate_limits=MappingProxyType(cast(dict[str, RateLimit], by_kind["RateLimit"])),
            origins=MappingProxyType(origins),
            version=str(data.get("version", "")),
        )
