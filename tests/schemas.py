"""Value schemas shared by the ingest tests (unit and integration)."""

from __future__ import annotations

from typing import Any

READING_JSON: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"celsius": {"type": "number"}, "site": {"type": "string"}},
    "required": ["celsius"],
}
READING_AVRO: dict[str, Any] = {
    "type": "record",
    "name": "Reading",
    "namespace": "io.sluice.test",
    "fields": [
        {"name": "celsius", "type": "double"},
        {"name": "site", "type": ["null", "string"], "default": None},
    ],
}
# The same record with a union default, an array and an enum.
READING_AVRO_RICH: dict[str, Any] = {
    **READING_AVRO,
    "fields": [
        *READING_AVRO["fields"],
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "unit", "type": {"type": "enum", "name": "Unit", "symbols": ["C", "F"]}, "default": "C"},
    ],
}
