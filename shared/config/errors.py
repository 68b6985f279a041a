"""Validation errors an operator can act on: ``FILE:LINE: Kind/name: field.path: message``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class PolicyError:
    """One problem in the policy folder, with where it is."""

    file: str
    line: int
    ref: str = ""
    field: str = ""
    message: str = ""

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}"]
        if self.ref:
            parts.append(self.ref)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class PolicyLoadError(Exception):
    """Raised by callers that want an exception instead of a list; carries every error of the run."""

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
