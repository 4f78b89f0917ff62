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
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import fastavro
import fastavro.validation
import referencing.exceptions

from config.errors import Conflict, InvalidInput, PayloadTooLarge, SchemaValidationFailed, UnsupportedMediaType
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


def _finite_float(text: str) -> float:
    # A literal like 1e400 overflows to inf, which no JSON consumer can read back.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range for a 64-bit float")
    return value


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
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        message = "The body nests arrays or objects too deeply."
        raise InvalidInput(message, code="malformed_json", fields=[_field("", "too_deep", message)]) from None
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
        try:
            if schema.schema_type == AVRO:
                named = schema.parsed.get("__named_schemas", {}) if isinstance(schema.parsed, dict) else {}
                found = avro_errors(record, schema.parsed, base, named)
            else:
                found = json_schema_errors(record, schema.validator, base)
        except RecursionError:
            found = [_field(base, "too_deep", "The record nests too deeply to validate.")]
        except referencing.exceptions.Unresolvable as exc:
            raise Conflict(
                f"Schema '{schema.subject}' version {schema.version} refers to '{exc.ref}', which Sluice cannot "
                "resolve (only references inside the schema are supported); register a self-contained schema.",
                code="schema_not_supported",
            ) from None
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
    if kind == "float" and isinstance(datum, int | float) and not isinstance(datum, bool) and abs(datum) > FLOAT32_MAX:
        # The Avro writer would store this as infinity without a word.
        return [_field(pointer, "range", f"{_short(datum)} does not fit an Avro float (32 bits); use double.")]
    if not fastavro.validation.validate(datum, schema, raise_errors=False):
        return [_field(pointer, "type", f"Expected {_type_name(schema)}, got {_json_type(datum)} {_short(datum)}.")]
    return []


FLOAT32_MAX = 3.4028234663852886e38


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- samples -----------------------------------------------------------------------------

# Fixed, realistic values keep samples deterministic (pages, tests): 2024-01-01T00:00:00Z.
SAMPLE_EPOCH_SECONDS = 1_704_067_200
SAMPLE_STRING = "example"
_SAMPLE_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "device@example.com",
    "idn-email": "device@example.com",
    "hostname": "device.example.com",
    "idn-hostname": "device.example.com",
    "ipv4": "192.0.2.1",  # RFC 5737 documentation range
    "ipv6": "2001:db8::1",  # RFC 3849 documentation prefix
    "uri": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "duration": "PT1S",
}
# Avro logical types over int/long whose zero would be a confusing sample (1970).
_AVRO_LOGICAL_SAMPLES = {
    "date": SAMPLE_EPOCH_SECONDS // 86_400,
    "timestamp-millis": SAMPLE_EPOCH_SECONDS * 1_000,
    "timestamp-micros": SAMPLE_EPOCH_SECONDS * 1_000_000,
    "local-timestamp-millis": SAMPLE_EPOCH_SECONDS * 1_000,
    "local-timestamp-micros": SAMPLE_EPOCH_SECONDS * 1_000_000,
    "uuid": _SAMPLE_FORMATS["uuid"],
}
_AVRO_PRIMITIVE_SAMPLES: dict[str, Any] = {"null": None, "boolean": True, "int": 0, "long": 0, "float": 0.0,
                                           "double": 0.0, "string": SAMPLE_STRING}  # fmt: skip
_JSON_TYPE_ORDER = ("object", "string", "number", "integer", "boolean", "array", "null")
_MAX_SAMPLE_DEPTH = 32


class NoSample(ValueError):
    """No record of this schema can be written as JSON by a simple rule (Avro ``bytes`` or
    ``fixed``, a JSON Schema whose root is not an object, a recursion without an exit)."""


def sample_record(*, schema_str: str, schema_type: str) -> dict[str, Any]:
    """A small record that fits the schema, for an operator to copy as a device's first POST.

    JSON Schema: the required properties only, each with a value honouring ``const``,
    ``enum``, the numeric bounds, ``minLength``/``maxLength`` and the common ``format``s.
    Avro: every field, so what consumers decode is exactly the sample (a field left out
    would be read as its default), unions by their first branch that is not null.  Best
    effort for exotic keywords (``pattern``, ``uniqueItems``, ``not``...): callers that show
    the sample check it with ``validate`` first.  Raises ``NoSample`` when no simple rule
    gives a record."""
    document = json.loads(schema_str)
    if schema_type == AVRO:
        parsed = fastavro.parse_schema(document)
        sample = _avro_sample(parsed, parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}, ())
    else:
        sample = _json_sample(document, document, 0)
    if not isinstance(sample, dict):
        raise NoSample(f"Records of this schema are {_json_type(sample)}, not JSON objects; ingest takes objects.")
    return sample


def _avro_sample(schema: Any, named: dict[str, Any], expanding: tuple[str, ...]) -> Any:
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        # First branch that is not null (the interesting value), else null.
        for branch in [b for b in schema if b != "null"] + [b for b in schema if b == "null"]:
            try:
                return _avro_sample(branch, named, expanding)
            except NoSample:
                continue
        raise NoSample("No branch of the union can be written as JSON.")
    kind = schema.get("type") if isinstance(schema, dict) else schema
    if isinstance(schema, dict) and schema.get("logicalType") in _AVRO_LOGICAL_SAMPLES:
        return _AVRO_LOGICAL_SAMPLES[schema["logicalType"]]
    if kind in _AVRO_PRIMITIVE_SAMPLES:
        return _AVRO_PRIMITIVE_SAMPLES[kind]
    if kind == "record":
        name = schema["name"]
        if name in expanding:
            # A record that contains itself ends only where a union offers null.
            raise NoSample(f"Record {name} contains itself.")
        return {field["name"]: _avro_sample(field["type"], named, (*expanding, name)) for field in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return [_avro_sample(schema["items"], named, expanding)]
    if kind == "map":
        return {"key": _avro_sample(schema["values"], named, expanding)}
    # bytes, fixed (and decimal over them): JSON has no bytes, and ingest reads JSON.
    raise NoSample(f"Avro {_type_name(schema)} cannot be written in a JSON record.")


def _json_sample(schema: Any, root: Any, depth: int) -> Any:
    if depth > _MAX_SAMPLE_DEPTH:
        raise NoSample("The schema nests deeper than a sample can follow.")
    if schema is True or schema == {}:
        return None if depth else {}
    if not isinstance(schema, dict):
        raise NoSample("The schema allows no value.")
    schema = _json_merge_all_of(_json_resolve(schema, root), root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for keyword in ("oneOf", "anyOf"):
        if schema.get(keyword):
            base = {key: value for key, value in schema.items() if key not in ("oneOf", "anyOf")}
            branches = sorted(
                schema[keyword], key=lambda branch: isinstance(branch, dict) and branch.get("type") == "null"
            )
            for branch in branches:
                try:
                    return _json_sample({**base, **branch} if isinstance(branch, dict) else branch, root, depth + 1)
                except NoSample:
                    continue
            raise NoSample(f"No branch of {keyword} gives a sample.")
    kind = _json_kind(schema, top=depth == 0)
    if kind == "object":
        properties, others = schema.get("properties", {}), schema.get("additionalProperties", True)
        return {
            name: _json_sample(properties.get(name, others), root, depth + 1) for name in schema.get("required", [])
        }
    if kind == "array":
        count = max(schema.get("minItems", 1), 1)
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        return [_json_sample(schema.get("items", True), root, depth + 1) for _ in range(count)]
    if kind == "string":
        return _json_string(schema)
    if kind in ("number", "integer"):
        return _json_number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    return None


def _json_resolve(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/definitions/...``, ``#/$defs/...``); others give up."""
    seen = 0
    while isinstance(schema.get("$ref"), str):
        reference = schema["$ref"]
        if not reference.startswith("#") or seen > _MAX_SAMPLE_DEPTH:
            raise NoSample(f"Cannot follow $ref {reference}.")
        target = root
        for token in filter(None, reference[1:].split("/")):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or token not in target:
                raise NoSample(f"Cannot follow $ref {reference}.")
            target = target[token]
        if not isinstance(target, dict):
            raise NoSample(f"Cannot follow $ref {reference}.")
        # Keywords next to $ref apply too (draft 2019-09 on); the target's lose to them.
        schema = {**target, **{key: value for key, value in schema.items() if key != "$ref"}}
        seen += 1
    return schema


def _json_merge_all_of(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """Fold ``allOf`` into one schema: properties and required lists unite, the rest of
    each part is laid over the schema (enough for the usual "base + extension" use)."""
    parts = schema.get("allOf")
    if not parts:
        return schema
    merged = {key: value for key, value in schema.items() if key != "allOf"}
    for part in parts:
        if not isinstance(part, dict):
            continue
        part = _json_merge_all_of(_json_resolve(part, root), root)
        properties = {**merged.get("properties", {}), **part.get("properties", {})}
        required = list(dict.fromkeys([*merged.get("required", []), *part.get("required", [])]))
        merged = {**part, **merged, "properties": properties, "required": required}
    return merged


def _json_kind(schema: dict[str, Any], *, top: bool) -> str | None:
    declared = schema.get("type")
    if isinstance(declared, str):
        return declared
    if isinstance(declared, list) and declared:
        # The first type that is not null, in an order that prefers what ingest takes at the top.
        return min(declared, key=lambda kind: (kind == "null", _JSON_TYPE_ORDER.index(kind)
                                               if kind in _JSON_TYPE_ORDER else len(_JSON_TYPE_ORDER)))  # fmt: skip
    # No type: infer it from the keywords that only apply to one.
    if top or {"properties", "required", "additionalProperties"} & schema.keys():
        return "object"
    if {"items", "minItems", "maxItems"} & schema.keys():
        return "array"
    if {"minLength", "maxLength", "format", "pattern"} & schema.keys():
        return "string"
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} & schema.keys():
        return "number"
    return None


def _json_string(schema: dict[str, Any]) -> str:
    text = _SAMPLE_FORMATS.get(schema.get("format", ""), SAMPLE_STRING)
    minimum, maximum = schema.get("minLength", 0), schema.get("maxLength")
    if len(text) < minimum:
        text += "x" * (minimum - len(text))
    if maximum is not None and len(text) > maximum:
        text = text[: max(maximum, minimum)]
    return text


def _json_number(schema: dict[str, Any], *, integer: bool) -> int | float:
    """Zero, or the nearest value the bounds allow, rounded up to ``multipleOf``.  Draft 4
    spells an open bound as ``"exclusiveMinimum": true`` next to ``minimum``; draft 6 on,
    as a number of its own."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low_open, high_open = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(low_open, bool):
        low, low_open = (None, low) if low_open else (low, None)
    if isinstance(high_open, bool):
        high, high_open = (None, high) if high_open else (high, None)
    value: float = 0
    if low is not None and value < low:
        value = low
    if low_open is not None and value <= low_open:
        value = low_open + 1
    if high is not None and value > high:
        value = high
    if high_open is not None and value >= high_open:
        value = high_open - 1
    lowest = low if low is not None else low_open
    highest = high if high is not None else high_open
    if lowest is not None and highest is not None and not lowest <= value <= highest:
        value = (lowest + highest) / 2  # a range narrower than 1
    step = schema.get("multipleOf")
    if step:
        value = math.ceil(value / step) * step
    return math.ceil(value) if integer else float(value)


# -- encoding ----------------------------------------------------------------------------


def wire_value(record: dict[str, Any], schema: LatestSchema) -> bytes:
    """The Confluent wire format of ``record`` under ``schema``."""
    header = struct.pack(">bI", MAGIC_BYTE, schema.schema_id)
    if schema.schema_type == AVRO:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema.parsed, record)
        return header + buffer.getvalue()
    return header + json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
