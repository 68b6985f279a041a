"""JSON Schema of every policy kind, for editors (``meshgate policy schema``)."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from shared.config.model import KINDS


def policy_schema() -> dict[str, Any]:
    """One JSON Schema (2020-12) that accepts any single policy document, dispatching on ``kind``."""
    _, schema = models_json_schema(
        [(cls, "validation") for cls in KINDS.values()], ref_template="#/$defs/{model}", by_alias=True
    )
    defs = schema.get("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://meshgate.dev/schema/meshgate-v1.json",
        "title": "Meshgate policy document (apiVersion meshgate/v1)",
        "type": "object",
        "required": ["apiVersion", "kind"],
        "oneOf": [{"$ref": f"#/$defs/{cls.__name__}"} for cls in KINDS.values()],
        "discriminator": {"propertyName": "kind"},
        "$defs": defs,
    }
