"""Pure record handling for ingest: parse a request body, validate its records against a
compiled schema, encode them in the Confluent wire format.  No ORM, no network, no settings.

Body shapes (UTF-8):

* ``application/json``, one JSON object: one record; field pointers are ``/<field>``;
* ``application/json``, ``{"records": [object, ...]}``: a batch; pointers are
  ``/records/<i>/<field>``.  An object with a ``records`` key is always a batch envelope,
  so a record that itself has a ``records`` field is sent inside a batch.
* ``application/x-ndjson`` (newline-delimited JSON): a batch of one JSON object per line,
  no envelope; pointers are ``/lines/<n>/<field>`` with ``n`` the line's number in the body,
  from 1 (as an editor shows it).  Blank lines are skipped (a trailing newline is usual).

Parsing is orjson's (RFC 8259 strict: no NaN or Infinity, no number that overflows a 64-bit
float, at most 1024 levels of nesting, UTF-8 only; an integer beyond 64 bits is read as a
float, as most JSON consumers would).  Validation is the schema's compiled validator
(``devices.registry.LatestSchema``, jsonschema-rs): one call per valid record; the full list
of failures is built only for a request that fails.

Wire format (what Confluent's serializers write and deserializers expect): magic byte 0, the
schema id as 4 bytes big-endian, then the payload -- Avro binary (schemaless) for AVRO,
UTF-8 JSON for JSON Schema.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import fastavro
import orjson

from config.errors import InvalidInput, PayloadTooLarge, SchemaValidationFailed, UnsupportedMediaType
from devices import protobuf
from devices.registry import AVRO, PROTOBUF, LatestSchema

MAX_BODY_BYTES = 2**20  # 1 MiB per request
MAX_RECORDS = 500  # per batch
MAX_FIELD_ERRORS = 100  # reported per request; more are summarised
BATCH_KEY = "records"
_DEPTH_LIMIT = "depth limit exceeded"  # orjson's words for nesting beyond 1024 levels


# Not frozen: one is made per request, and a frozen dataclass's __init__ sets each field
# through object.__setattr__ (3x the cost); nothing changes one after it is made.
@dataclass(slots=True)
class Parsed:
    """The records of one request and where they sit in the body (for error pointers)."""

    records: list[dict[str, Any]]
    batch: bool
    lines: list[int] | None = None  # NDJSON: each record's line number (from 1)
    # What the records were read from, for their raw bytes (``raw_records``): the request
    # body, or (a transport that carries one record per message) each record's own bytes.
    body: bytes = b""
    raws: list[bytes] | None = None
    # ``parse_each(keep_malformed=True)``: the records that are not a JSON object, by index
    # (an empty object stands in for each in ``records``), with why: only dead-lettering keeps them.
    malformed: dict[int, dict[str, str]] | None = None

    def pointer(self, index: int) -> str:
        if self.lines is not None:
            return f"/lines/{self.lines[index]}"
        return f"/{BATCH_KEY}/{index}" if self.batch else ""


def escape_pointer(token: str) -> str:
    """One JSON pointer reference token (RFC 6901 §3)."""
    return token.replace("~", "~0").replace("/", "~1")


def _field(pointer: str, code: str, message: str) -> dict[str, str]:
    return {"pointer": pointer or "/", "code": code, "message": message}


JSON = "application/json"
NDJSON = "application/x-ndjson"
_MEDIA = re.compile(r"^\s*(application/json|application/x-ndjson)\s*(;|$)", re.IGNORECASE)
_CHARSET = re.compile(r"charset\s*=\s*\"?([\w-]+)", re.IGNORECASE)


def check_content_type(content_type: str) -> str:
    """``JSON`` or ``NDJSON``, in UTF-8 (RFC 8259 §8.1): anything else is 415."""
    if content_type == JSON:
        return JSON
    media = _MEDIA.match(content_type)
    charset = _CHARSET.search(content_type.partition(";")[2])
    if media is None or (charset and charset.group(1).lower() not in ("utf-8", "utf8")):
        raise UnsupportedMediaType(
            f"Send records as 'Content-Type: application/json' or 'application/x-ndjson' (UTF-8), "
            f"not '{content_type or 'nothing'}'."
        )
    return media.group(1).lower()


def check_size(length: int) -> None:
    if length > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"The request body is {length} bytes; at most {MAX_BODY_BYTES} bytes per request. Split the batch."
        )


def parse_body(body: bytes, media: str = JSON) -> Parsed:
    """The records in ``body``, or ``InvalidInput`` / ``PayloadTooLarge`` saying where it is wrong."""
    check_size(len(body))
    if media == NDJSON:
        return _ndjson(body)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body.strip():
            raise InvalidInput("The body is empty; send one JSON object or {\"records\": [...]}.",
                               code="empty_body") from None  # fmt: skip
        if exc.msg == _DEPTH_LIMIT:
            message = "The body nests arrays or objects too deeply."
            raise InvalidInput(message, code="malformed_json", fields=[_field("", "too_deep", message)]) from None
        message = f"The body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        raise InvalidInput(message, code="malformed_json", fields=[_field("", "malformed_json", message)]) from None
    if not isinstance(document, dict):
        message = 'Send one JSON object (one record) or {"records": [object, ...]} (a batch).'
        raise InvalidInput(message, code="invalid_shape", fields=[_field("", "invalid_shape", message)])
    if BATCH_KEY not in document:
        return Parsed(records=[document], batch=False, body=body)
    return Parsed(records=_batch(document), batch=True, body=body)


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


def _ndjson(body: bytes) -> Parsed:
    """One record per non-blank line; every line that is not a JSON object is named."""
    found: list[dict[str, Any]] = []
    lines: list[int] = []
    wrong: list[dict[str, str]] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            deep = exc.msg == _DEPTH_LIMIT
            text = "it nests arrays or objects too deeply" if deep else f"{exc.msg} (column {exc.colno})"
            wrong.append(_field(f"/lines/{number}", "malformed_json", f"Line {number} is not valid JSON: {text}."))
            continue
        if not isinstance(record, dict):
            wrong.append(_field(f"/lines/{number}", "invalid_shape", f"Line {number} is not a JSON object."))
            continue
        found.append(record)
        lines.append(number)
    if wrong:
        malformed = any(f["code"] == "malformed_json" for f in wrong)
        raise InvalidInput(
            f"{len(wrong)} line(s) of the NDJSON body are not one JSON object each; nothing was produced.",
            code="malformed_json" if malformed else "invalid_shape",
            fields=wrong[:MAX_FIELD_ERRORS],
        )
    if not found:
        raise InvalidInput("The body has no records; send one JSON object per line.", code="empty_body")
    if len(found) > MAX_RECORDS:
        raise PayloadTooLarge(
            f"The batch has {len(found)} records; at most {MAX_RECORDS} per request.", code="too_many_records"
        )
    return Parsed(records=found, batch=True, lines=lines, body=body)


def parse_each(raws: list[bytes], *, keep_malformed: bool = False) -> Parsed:
    """Records that arrived one per message (a transport such as MQTT): each payload is one
    JSON object, its own document (pointers ``/<field>``).  A payload that is not one is
    refused with the batch (400, as an NDJSON line), or with ``keep_malformed`` kept aside in
    ``Parsed.malformed`` for the dead-letter topic, since such a transport has no answer to
    carry a refusal."""
    if len(raws) > MAX_RECORDS:
        raise PayloadTooLarge(f"The batch has {len(raws)} records; at most {MAX_RECORDS}.", code="too_many_records")
    found: list[dict[str, Any]] = []
    wrong: dict[int, dict[str, str]] = {}
    for index, raw in enumerate(raws):
        check_size(len(raw))
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            text = "it nests too deeply" if exc.msg == _DEPTH_LIMIT else f"{exc.msg} (column {exc.colno})"
            wrong[index] = _field("", "malformed_json", f"The record is not valid JSON: {text}.")
            record = {}
        if not isinstance(record, dict):
            wrong[index] = _field("", "invalid_shape", "The record is not a JSON object.")
            record = {}
        found.append(record)
    if not found:
        raise InvalidInput("There are no records.", code="empty_body")
    if wrong and not keep_malformed:
        first = wrong[min(wrong)]
        raise InvalidInput(f"{len(wrong)} record(s) are not one JSON object each; nothing was produced.",
                           code=first["code"], fields=[first])  # fmt: skip
    return Parsed(records=found, batch=False, raws=raws, malformed=wrong or None)


# JSON's strings (with their escapes) and its brackets: enough to find where each record of a
# document already known to be valid JSON begins and ends.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")
_QUOTE = ord('"')


def raw_records(parsed: Parsed) -> list[bytes]:
    """Each record's bytes exactly as the device sent them (JSON whitespace around a record
    left out): a single-record body whole, an NDJSON record's line, a batch envelope's
    array elements as they sit in the body.  Only dead-lettering asks for them, so the
    valid path never pays for finding them."""
    if parsed.raws is not None:
        return parsed.raws
    body = parsed.body
    if parsed.lines is not None:
        lines = body.split(b"\n")
        return [lines[number - 1].strip() for number in parsed.lines]
    if not parsed.batch:
        return [body.strip()]
    # The envelope is an object whose one key is "records" (``_batch`` refuses others), so
    # the records are the objects at depth 3: envelope, array, record.
    found: list[bytes] = []
    depth = start = 0
    for token in _JSON_TOKENS.finditer(body):
        first = body[token.start()]
        if first == _QUOTE:
            continue
        if first in _OPENERS:
            depth += 1
            if depth == 3:
                start = token.start()
        else:
            if depth == 3:
                found.append(body[start : token.end()])
            depth -= 1
    if len(found) != len(parsed.records):  # cannot happen for a body orjson accepted
        raise ValueError(f"found {len(found)} records in the body, parsed {len(parsed.records)}")
    return found


# -- validation --------------------------------------------------------------------------


def validate(parsed: Parsed, schema: LatestSchema) -> None:
    """Raise ``SchemaValidationFailed`` naming every failing field of every record (up to
    ``MAX_FIELD_ERRORS``), so one refusal tells the device all that is wrong."""
    is_valid = schema.validator.is_valid
    if all(is_valid(record) for record in parsed.records):
        return
    errors: list[dict[str, str]] = []
    failing = 0
    for index, record in enumerate(parsed.records):
        found = record_errors(record, schema, parsed.pointer(index))
        failing += bool(found)
        errors += found
    shown = errors[:MAX_FIELD_ERRORS]
    more = f" ({len(errors) - len(shown)} more errors not listed)" if len(errors) > len(shown) else ""
    what = f"{failing} of {len(parsed.records)} records do" if parsed.batch else "The record does"
    raise SchemaValidationFailed(
        f"{what} not match schema '{schema.subject}' version {schema.version}; nothing was produced{more}.",
        fields=shown,
    )


def record_errors(record: Any, schema: LatestSchema, base: str) -> list[dict[str, str]]:
    """Every failure of one record, as JSON pointers into what the device sent, sorted by
    pointer (devices read them in field order).  A missing field is pointed at itself, and
    so is each field a closed object does not allow."""
    out = []
    for error in schema.validator.iter_errors(record):
        here = base + "".join(f"/{escape_pointer(str(token))}" for token in error.instance_path)
        kind = error.kind
        keyword = kind.name
        code = schema.codes.get(keyword, keyword)
        if keyword == "required":
            out.append(_field(f"{here}/{escape_pointer(str(kind.property))}", code,
                              f"'{kind.property}' is required."))  # fmt: skip
        elif keyword == "additionalProperties":
            for name in kind.unexpected:
                out.append(
                    _field(f"{here}/{escape_pointer(str(name))}", code, f"'{name}' is not a field allowed here.")
                )
        else:
            out.append(_field(here, code, _message(error, schema)))
    return sorted(out, key=lambda item: item["pointer"])


def _message(error: Any, schema: LatestSchema) -> str:
    if schema.schema_type == AVRO:
        if error.kind.name in ("minimum", "maximum") and isinstance(error.instance, float):
            return f"{_short(error.instance)} does not fit an Avro float (32 bits); use double."
        if error.kind.name in ("minimum", "maximum"):
            return f"{_short(error.instance)} is outside the range of this Avro integer type."
        if error.kind.name == "not":
            return "JSON has no bytes: this Avro bytes or fixed field cannot be sent as JSON."
    text = error.message
    return text if len(text) <= 300 else text[:297] + "..."


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
    would be read as its default), unions by their first branch that is not null.  Protobuf:
    every field of the first message (``devices.protobuf.sample_record``).  Best
    effort for exotic keywords (``pattern``, ``uniqueItems``, ``not``...): callers that show
    the sample check it with ``validate`` first.  Raises ``NoSample`` when no simple rule
    gives a record."""
    if schema_type == PROTOBUF:
        try:
            return protobuf.sample_record(protobuf.compile_record_type(schema_str).descriptor, text=SAMPLE_STRING)
        except protobuf.SampleTooLarge as exc:
            raise NoSample(str(exc)) from None
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
    return schema.encode(record)
