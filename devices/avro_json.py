"""An Avro schema as the JSON Schema of the JSON records devices send for it: pure, no I/O.

Devices send JSON; Avro decides what is a valid record.  Checking a record against the Avro
schema in Python costs tens of microseconds; this module turns the (fastavro-parsed) Avro
schema once into an equivalent JSON Schema, so the same compiled validator that checks
JSON Schema streams (jsonschema-rs) checks Avro streams too, with the same JSON pointers,
and fastavro only writes records that passed.  What "equivalent" means here, type by type
(the JSON a device sends -> what fastavro would write):

* ``null``, ``boolean``, ``string``: the JSON type of the same name.
* ``int`` / ``long``: a JSON integer within the signed 32 / 64-bit range (fastavro would
  silently wrap a larger one); booleans are not integers.
* ``float`` / ``double``: a JSON number; a float within +-FLOAT32_MAX (fastavro would store
  infinity without a word).
* ``bytes`` and ``fixed`` (and the ``decimal`` logical type over them): JSON has no bytes,
  so no JSON record can hold one: refused.
* ``enum``: one of its symbols.  ``array`` / ``map``: items / values of the element schema.
* ``record``: an object with its fields; a field without a default is required; a field
  the schema does not have is refused (fastavro would drop it without a word).
* a union: any of its branches (fastavro writes the first branch that fits).
* named types are ``$defs`` entries referenced by ``$ref``, so recursive schemas work.
* logical types keep their underlying type's rule (timestamps are integers), except
  ``uuid``: a string in UUID form, as fastavro's writer insists.
"""

from __future__ import annotations

from typing import Any

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
FLOAT32_MAX = 3.4028234663852886e38
PRIMITIVES: dict[str, dict[str, Any]] = {
    "null": {"type": "null"},
    "boolean": {"type": "boolean"},
    "int": {"type": "integer", "minimum": INT32[0], "maximum": INT32[1]},
    "long": {"type": "integer", "minimum": INT64[0], "maximum": INT64[1]},
    "float": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
    "double": {"type": "number"},
    "string": {"type": "string"},
    # JSON has no bytes: nothing a device sends can be one.
    "bytes": {"not": {}, "description": "Avro bytes"},
}
# What an Avro-stream refusal is called, by the JSON Schema keyword that refused it (the
# codes ingest answered with before it compiled Avro schemas this way).
AVRO_CODES = {
    "anyOf": "type",
    "minimum": "range",
    "maximum": "range",
    "not": "type",
    "additionalProperties": "unknown_field",
}


def _def_name(fullname: str) -> str:
    # JSON pointer tokens escape "~" and "/"; Avro names hold neither, only letters,
    # digits, "_" and ".".
    return fullname


def avro_json_schema(parsed: Any) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of records for the fastavro-parsed schema ``parsed``."""
    defs: dict[str, Any] = {}
    root = _convert(parsed, defs)
    document: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **root}
    if defs:
        document["$defs"] = defs
    return document


def _convert(schema: Any, defs: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return dict(PRIMITIVES[schema])
        # A named type defined earlier (fastavro writes later uses as its full name).
        return {"$ref": f"#/$defs/{_def_name(schema)}"}
    if isinstance(schema, list):
        return {"anyOf": [_convert(branch, defs) for branch in schema]}
    if not isinstance(schema, dict):
        raise ValueError(f"not an Avro schema: {schema!r}")
    kind = schema.get("type")
    if kind in ("record", "error"):
        return _named(schema, defs, lambda: _record(schema, defs))
    if kind == "enum":
        return _named(schema, defs, lambda: {"enum": list(schema["symbols"])})
    if kind == "fixed":
        return _named(schema, defs, lambda: dict(PRIMITIVES["bytes"]))
    if kind == "array":
        return {"type": "array", "items": _convert(schema["items"], defs)}
    if kind == "map":
        return {"type": "object", "additionalProperties": _convert(schema["values"], defs)}
    if schema.get("logicalType") == "uuid" and kind == "string":
        return {"type": "string", "format": "uuid"}  # fastavro's writer refuses any other string
    if isinstance(kind, str | list | dict):
        # {"type": "long", "logicalType": ...} and the like: the underlying type's rule.
        return _convert(kind, defs)
    raise ValueError(f"not an Avro schema: {schema!r}")


def _named(schema: dict[str, Any], defs: dict[str, Any], build: Any) -> dict[str, Any]:
    name = _def_name(str(schema["name"]))
    if name not in defs:
        defs[name] = True  # a placeholder, so a recursive reference finds the name
        defs[name] = build()
    return {"$ref": f"#/$defs/{name}"}


def _record(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    properties = {}
    required = []
    for field in schema["fields"]:
        properties[field["name"]] = _convert(field["type"], defs)
        if "default" not in field:
            required.append(field["name"])
    converted: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        converted["required"] = required
    return converted
