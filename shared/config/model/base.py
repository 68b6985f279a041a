"""The envelope every policy document shares: ``apiVersion``, ``kind``, ``name``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from shared.config.model.types import Name, Spec

API_VERSION = "meshgate/v1"


class Document(Spec):
    """Fields common to every kind."""

    KIND: ClassVar[str] = ""

    api_version: Literal["meshgate/v1"] = Field(alias="apiVersion")
    name: Name
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``Kind/name``, as used in error messages and logs."""
        return f"{self.KIND}/{self.name}"
