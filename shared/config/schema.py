"""JSON Schema of every policy kind, for editors (``meshgate policy schema``)."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from shared.config.model import KINDS


class _OperatorDefaults(GenerateJsonSchema):
    """Show defaults as operators write them (``24h``, ``20%``) rather than as ``P1D`` / ``0.2``.

    Pydantic applies a field's plain serializer to its default only in serialization mode; the
    editor schema is a validation schema, so without this every duration and percentage default
    would contradict the field's own pattern (and ``0.2`` typed back in would mean 0.2%).
    """

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        inner: Any = schema["schema"]
        while "serialization" not in inner and inner.get("type", "").startswith("function-"):
            inner = inner.get("schema", {})
        serializer = inner.get("serialization", {})
        if "default" in json_schema and serializer.get("type") == "function-plain":
            json_schema["default"] = serializer["function"](self.get_default_value(schema))
        return json_schema


def policy_schema() -> dict[str, Any]:
    """One JSON Schema (2020-12) that accepts any single policy document, dispatching on ``kind``."""
    _, schema = models_json_schema(
        [(cls, "validation") for cls in KINDS.values()],
        ref_template="#/$defs/{model}",
        by_alias=True,
        schema_generator=_OperatorDefaults,
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
