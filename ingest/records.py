"""Pure record handling for ingest: parse a request body, validate its records against a
schema, encode them in the Confluent wire format.  No ORM, no network, no settings.

Body shapes (``Content-Type: application/json``, UTF-8):

* one JSON object: one record; field pointers are ``/<field>``;
* ``{"records": [object, ...]}``: a batch; pointers are ``/records/<i>/<field>``.  An object
  with a ``records`` key is always a batch envelope, so a record that itself has a
  ``records`` field is sent inside a batch.

Wire format (what Confluent's serializers write and deserializers expect): magic byte 0, the
schema id as 4 bytes big-endian, then the payload -- Avro binary (schemaless) for AVRO,
UTF-8 JSON for JSON Schema.
"""

from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

import fastavro
import fastavro.validation

from config.errors import InvalidInput, PayloadTooLarge, SchemaValidationFailed, UnsupportedMediaType
from ingest.registry import AVRO, LatestSchema

MAX_BODY_BYTES = 2**20  # 1 MiB per request
MAX_RECORDS = 500  # per batch
MAX_FIELD_ERRORS = 100  # reported per request; more are summarised
MAGIC_BYTE = 0
BATCH_KEY = "records"


@dataclass(frozen=True)
class Parsed:
    """The records of one request and where they sit in the body (for error pointers)."""

    records: list[dict[str, Any]]
    batch: bool

    def pointer(self, index: int) -> str:
        return f"/{BATCH_KEY}/{index}" if self.batch else ""


def escape_pointer(token: str) -> str:
    """One JSON pointer reference token (RFC 6901 §3)."""
    return token.replace("~", "~0").replace("/", "~1")


def _field(pointer: str, code: str, message: str) -> dict[str, str]:
    return {"pointer": pointer or "/", "code": code, "message": message}


def check_content_type(content_type: str) -> None:
    """Only JSON, in UTF-8 (RFC 8259 §8.1): anything else is 415."""
    media, _, params = content_type.partition(";")
    charset = re.search(r"charset\s*=\s*\"?([\w-]+)", params, re.IGNORECASE)
    if media.strip().lower() != "application/json" or (charset and charset.group(1).lower() not in ("utf-8", "utf8")):
        raise UnsupportedMediaType(
            f"Send records as 'Content-Type: application/json' (UTF-8), not '{content_type or 'nothing'}'."
        )


def check_size(length: int) -> None:
    if length > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"The request body is {length} bytes; at most {MAX_BODY_BYTES} bytes per request. Split the batch."
        )


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON (RFC 8259 §6).
    raise ValueError(f"{name} is not valid JSON")


def parse_body(body: bytes) -> Parsed:
    """The records in ``body``, or ``InvalidInput`` / ``PayloadTooLarge`` saying where it is wrong."""
    check_size(len(body))
    if not body.strip():
        raise InvalidInput("The request body is empty; send one JSON object or {\"records\": [...]}.",
                           code="empty_body")  # fmt: skip
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"The body is not UTF-8 (byte {exc.start}).", code="malformed_json") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        message = f"The body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        raise InvalidInput(message, code="malformed_json", fields=[_field("", "malformed_json", message)]) from None
    except ValueError as exc:
        message = f"The body is not valid JSON: {exc}."
        raise InvalidInput(message, code="malformed_json", fields=[_field("", "malformed_json", message)]) from None
    if not isinstance(document, dict):
        message = 'Send one JSON object (one record) or {"records": [object, ...]} (a batch).'
        raise InvalidInput(message, code="invalid_shape", fields=[_field("", "invalid_shape", message)])
    if BATCH_KEY not in document:
        return Parsed(records=[document], batch=False)
    return Parsed(records=_batch(document), batch=True)


def _batch(document: dict[str, Any]) -> list[dict[str, Any]]:
    extra = sorted(key for key in document if key != BATCH_KEY)
    if extra:
        message = 'A batch envelope holds only "records"; put fields inside the records.'
        fields = [_field(f"/{escape_pointer(key)}", "unknown_key", message) for key in extra]
        raise InvalidInput(
            f'Unknown key(s) next to "records": {", ".join(extra)}. An object with "records" is a batch envelope.',
            code="invalid_shape",
            fields=fields,
        )
    records = document[BATCH_KEY]
    if not isinstance(records, list):
        message = '"records" must be an array of record objects.'
        raise InvalidInput(message, code="invalid_shape", fields=[_field("/records", "invalid_shape", message)])
    if not records:
        message = '"records" is empty; send at least one record.'
        raise InvalidInput(message, code="empty_batch", fields=[_field("/records", "empty_batch", message)])
    if len(records) > MAX_RECORDS:
        raise PayloadTooLarge(
            f"The batch has {len(records)} records; at most {MAX_RECORDS} per request.", code="too_many_records"
        )
    not_objects = [i for i, record in enumerate(records) if not isinstance(record, dict)]
    if not_objects:
        fields = [_field(f"/records/{i}", "invalid_shape", "Each record must be a JSON object.")
                  for i in not_objects[:MAX_FIELD_ERRORS]]  # fmt: skip
        raise InvalidInput(f"{len(not_objects)} record(s) are not JSON objects.", code="invalid_shape", fields=fields)
    return records


# -- validation --------------------------------------------------------------------------


def validate(parsed: Parsed, schema: LatestSchema) -> None:
    """Raise ``SchemaValidationFailed`` naming every failing field of every record (up to
    ``MAX_FIELD_ERRORS``), so one refusal tells the device all that is wrong."""
    errors: list[dict[str, str]] = []
    failing = 0
    for index, record in enumerate(parsed.records):
        base = parsed.pointer(index)
        if schema.schema_type == AVRO:
            found = avro_errors(record, schema.parsed, base, schema.parsed.get("__named_schemas", {}))
        else:
            found = json_schema_errors(record, schema.validator, base)
        failing += bool(found)
        errors += found
    if not errors:
        return
    shown = errors[:MAX_FIELD_ERRORS]
    more = f" ({len(errors) - len(shown)} more errors not listed)" if len(errors) > len(shown) else ""
    what = f"{failing} of {len(parsed.records)} records do" if parsed.batch else "The record does"
    raise SchemaValidationFailed(
        f"{what} not match schema '{schema.subject}' version {schema.version}; nothing was produced{more}.",
        fields=shown,
    )


def json_schema_errors(record: Any, validator: Any, base: str) -> list[dict[str, str]]:
    out = []
    for error in validator.iter_errors(record):
        pointer = base + "".join(f"/{escape_pointer(str(p))}" for p in error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            # Point at the missing field itself, not at the object that lacks it.
            missing = next((name for name in error.validator_value
                            if name not in error.instance and error.message.startswith(repr(name))), None)  # fmt: skip
            if missing is not None:
                pointer += f"/{escape_pointer(str(missing))}"
        out.append(_field(pointer, str(error.validator), error.message))
    # jsonschema yields errors in schema-keyword order; devices read them in field order.
    return sorted(out, key=lambda field: field["pointer"])


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}  # fmt: skip


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return " | ".join(_type_name(branch) for branch in schema)
    if isinstance(schema, dict):
        return str(schema.get("name") or schema.get("logicalType") or schema.get("type"))
    return str(schema)


def avro_errors(datum: Any, schema: Any, pointer: str, named: dict[str, Any]) -> list[dict[str, str]]:
    """Every place ``datum`` (a record as JSON gives it) does not fit the parsed Avro
    ``schema``, as JSON pointers.  fastavro's own validator stops at the first problem and
    names fields by dotted Avro names; devices need pointers into what they sent."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        if any(not avro_errors(datum, branch, pointer, named) for branch in schema):
            return []
        return [_field(pointer, "type", f"{_json_type(datum).capitalize()} matches none of {_type_name(schema)}.")]
    kind = schema.get("type") if isinstance(schema, dict) else schema
    if kind == "record":
        if not isinstance(datum, dict):
            return [_field(pointer, "type", f"Expected an object ({_type_name(schema)}), got {_json_type(datum)}.")]
        out: list[dict[str, str]] = []
        known = set()
        for field in schema["fields"]:
            name = field["name"]
            known.add(name)
            here = f"{pointer}/{escape_pointer(name)}"
            if name in datum:
                out += avro_errors(datum[name], field["type"], here, named)
            elif "default" not in field:
                out.append(_field(here, "required", f"'{name}' is required ({_type_name(field['type'])})."))
        # The Avro writer would drop unknown fields without a word; refuse them instead.
        for name in datum:
            if name not in known:
                message = f"'{name}' is not a field of {_type_name(schema)}."
                out.append(_field(f"{pointer}/{escape_pointer(str(name))}", "unknown_field", message))
        return out
    if kind == "array":
        if not isinstance(datum, list):
            return [_field(pointer, "type", f"Expected an array, got {_json_type(datum)}.")]
        out = []
        for index, item in enumerate(datum):
            out += avro_errors(item, schema["items"], f"{pointer}/{index}", named)
        return out
    if kind == "map":
        if not isinstance(datum, dict):
            return [_field(pointer, "type", f"Expected an object (map), got {_json_type(datum)}.")]
        out = []
        for key, value in datum.items():
            out += avro_errors(value, schema["values"], f"{pointer}/{escape_pointer(str(key))}", named)
        return out
    if kind == "enum":
        if datum not in schema["symbols"]:
            return [_field(pointer, "enum", f"{json.dumps(datum)} is not one of {', '.join(schema['symbols'])}.")]
        return []
    if kind in ("int", "long") and isinstance(datum, bool):
        return [_field(pointer, "type", f"Expected {kind}, got a boolean.")]
    if not fastavro.validation.validate(datum, schema, raise_errors=False):
        return [_field(pointer, "type", f"Expected {_type_name(schema)}, got {_json_type(datum)} {_short(datum)}.")]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- encoding ----------------------------------------------------------------------------


def wire_value(record: dict[str, Any], schema: LatestSchema) -> bytes:
    """The Confluent wire format of ``record`` under ``schema``."""
    header = struct.pack(">bI", MAGIC_BYTE, schema.schema_id)
    if schema.schema_type == AVRO:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema.parsed, record)
        return header + buffer.getvalue()
    return header + json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
