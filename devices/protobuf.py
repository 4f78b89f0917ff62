"""Protobuf streams: a registered ``.proto`` as descriptors, as the JSON Schema of the JSON
records devices send, and as the encoder that writes them.

Devices send JSON (the proto3 JSON mapping); Kafka gets Protobuf binary in the Confluent
wire format.  The schema text is compiled by ``protoc`` (grpcio-tools' build of it, run as
its own process, so a bad schema's diagnostics come back as text) into a
``FileDescriptorSet``; the record type is the file's **first message**, as Confluent's
serializers and deserializers assume unless told otherwise.  A schema may import
Protobuf's well-known types (``google/protobuf/timestamp.proto`` and the others protoc
ships) and nothing else: Sluice registers self-contained schemas.

Validation is the JSON Schema equivalent of the message (``json_schema``), checked by the
same compiled validator as JSON Schema and Avro streams, so errors carry the same JSON
pointers; type by type (what a device sends):

* ``double`` / ``float``: a JSON number (a float within +-FLOAT32_MAX).
* 32-bit integers: a JSON integer in range; 64-bit integers: a JSON integer in range or a
  string of decimal digits (the proto3 JSON form of 64-bit values).
* ``bool``, ``string``: the JSON type; ``bytes``: a base64 string.
* an enum: one of its value names, or its number.
* a message: an object whose fields are named by their JSON name (lowerCamelCase) or
  their proto name; any other key is refused; proto2 ``required`` fields are required.
* ``repeated``: an array; ``map<K, V>``: an object of V values.
* well-known types: ``Timestamp`` an RFC 3339 date-time string, ``Duration`` like
  ``"1.5s"``, the wrappers their wrapped type (or null), ``Struct`` an object, ``Value``
  anything, ``ListValue`` an array, ``FieldMask`` a string, ``Empty`` an object.
* a ``oneof``: at most one of its fields (refused by the encoder otherwise, pointing at the
  record).

Encoding is protobuf's own JSON parser (``json_format.ParseDict``) into the message class
built from the descriptors (upb), then ``SerializeToString``; what it still refuses (a
64-bit string out of range, two fields of one oneof) is a 422 for that record.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
FLOAT32_MAX = 3.4028234663852886e38
PROTOC_TIMEOUT = 20  # seconds
SCHEMA_FILE = "record.proto"
MAX_SAMPLE_FIELDS = 2_000  # a sample record larger than this is no sample
# What a Protobuf-stream refusal is called, by the JSON Schema keyword that refused it.
PROTOBUF_CODES = {
    "anyOf": "type",
    "minimum": "range",
    "maximum": "range",
    "additionalProperties": "unknown_field",
    "pattern": "format",
}
# The first message of the file: the Confluent wire format's message indexes ([0]),
# written as the single byte 0.
FIRST_MESSAGE_INDEXES = b"\x00"

_INTEGERS = {
    FieldDescriptor.TYPE_INT32: INT32, FieldDescriptor.TYPE_SINT32: INT32, FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_UINT32: UINT32, FieldDescriptor.TYPE_FIXED32: UINT32,
}  # fmt: skip
_LONGS = {
    FieldDescriptor.TYPE_INT64: INT64, FieldDescriptor.TYPE_SINT64: INT64, FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT64: UINT64, FieldDescriptor.TYPE_FIXED64: UINT64,
}  # fmt: skip
_BASE64 = r"^[A-Za-z0-9+/_-]*={0,2}$"
_WRAPPERS = {
    "google.protobuf.DoubleValue": {"type": "number"},
    "google.protobuf.FloatValue": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
    "google.protobuf.Int64Value": None,  # filled below (64-bit forms)
    "google.protobuf.UInt64Value": None,
    "google.protobuf.Int32Value": {"type": "integer", "minimum": INT32[0], "maximum": INT32[1]},
    "google.protobuf.UInt32Value": {"type": "integer", "minimum": UINT32[0], "maximum": UINT32[1]},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "pattern": _BASE64},
}


def _long(bounds: tuple[int, int]) -> dict[str, Any]:
    digits = r"^[0-9]+$" if bounds[0] == 0 else r"^-?[0-9]+$"
    return {"anyOf": [{"type": "integer", "minimum": bounds[0], "maximum": bounds[1]},
                      {"type": "string", "pattern": digits}]}  # fmt: skip


_WRAPPERS["google.protobuf.Int64Value"] = _long(INT64)
_WRAPPERS["google.protobuf.UInt64Value"] = _long(UINT64)
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object", "maxProperties": 0},
    **{name: {"anyOf": [schema, {"type": "null"}]} for name, schema in _WRAPPERS.items() if schema is not None},
}


_DIAGNOSTIC = re.compile(r"^\S+\.proto:")


class ProtoError(ValueError):
    """The schema text is not a ``.proto`` Sluice can use; the message says why."""


def _protoc_include() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).parent / "_proto"


def compile_proto(schema_str: str) -> descriptor_pb2.FileDescriptorSet:
    """The schema and the well-known types it imports, compiled by protoc (blocking, ~0.1 s)."""
    with tempfile.TemporaryDirectory(prefix="sluice-proto-") as tmp:
        source = Path(tmp) / SCHEMA_FILE
        source.write_text(schema_str, encoding="utf-8")
        out = Path(tmp) / "set.pb"
        argv = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={tmp}", f"--proto_path={_protoc_include()}",
                f"--descriptor_set_out={out}", "--include_imports", SCHEMA_FILE]  # fmt: skip
        try:
            done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=PROTOC_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ProtoError(f"protoc did not finish within {PROTOC_TIMEOUT} s") from None
        if done.returncode != 0:
            # protoc's own diagnostics name the file ("record.proto:3:9: ..."); the lines its
            # logging library adds (warnings, timestamps) are left out.
            lines = [line.replace(f"{tmp}/", "").replace(f"{SCHEMA_FILE}:", "line ", 1)
                     for line in done.stderr.strip().splitlines() if _DIAGNOSTIC.match(line)]  # fmt: skip
            raise ProtoError("; ".join(lines[:5]) or f"protoc failed (exit {done.returncode})")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    schema_file = files.file[-1]
    if not schema_file.message_type:
        raise ProtoError("the schema defines no message; the first message is the record type")
    outside = [name for name in schema_file.dependency if not name.startswith("google/protobuf/")]
    if outside:
        raise ProtoError(f"imports {', '.join(outside)}: only Protobuf's well-known types may be imported")
    return files


@dataclass(frozen=True)
class CompiledProto:
    """The record type of one registered ``.proto``."""

    descriptor: Descriptor
    message_class: type[Any]
    json_schema: dict[str, Any]

    def encoder(self, prefix: bytes) -> Callable[[Any], bytes]:
        """Wire format (``prefix``: magic byte and schema id) of one validated JSON record;
        raises ``json_format.ParseError`` for what the JSON Schema could not say.

        A message whose fields are all plain (numbers of at most 32 bits, doubles, floats,
        booleans, strings, such messages, lists and string-keyed maps of them; no oneof of
        several fields, no message inside itself, no JSON name that is another field's proto
        name: ``_plain``) is built by its constructor, which takes the fields' proto names
        (~1.5 us for a small record), or after its JSON names (``siteName`` for ``site_name``) are renamed; a record the
        constructor still refuses, and any record of another message, by
        ``json_format.ParseDict`` (~40 us), which reads the JSON mapping's special forms
        (64-bit strings, base64, enum names, timestamps) and says what is wrong."""
        make, parse, head = self.message_class, json_format.ParseDict, prefix + FIRST_MESSAGE_INDEXES

        def encode(record: Any) -> bytes:
            return head + parse(record, make()).SerializeToString()

        if not _plain(self.descriptor, set()):
            return encode
        rename = _Renamer(self.descriptor)

        def encode_plain(record: Any) -> bytes:
            try:
                return head + make(**record).SerializeToString()
            except (TypeError, ValueError):
                pass
            try:
                return head + make(**rename(record)).SerializeToString()
            except (TypeError, ValueError):
                return encode(record)  # says precisely what is wrong

        return encode_plain


class _Renamer:
    """A record with its fields' JSON names (and those of the messages inside it) turned
    into their proto names, as the message's constructor takes them."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.top = descriptor.full_name
        # message -> (JSON name -> proto name, proto name -> (message inside, "one"/"list"/"map"))
        self.tables: dict[str, tuple[dict[str, str], dict[str, tuple[str, str]]]] = {}
        self._add(descriptor)

    def _add(self, descriptor: Descriptor) -> None:
        if descriptor.full_name in self.tables:
            return
        renames = {f.json_name: f.name for f in descriptor.fields if f.json_name != f.name}
        children: dict[str, tuple[str, str]] = {}
        self.tables[descriptor.full_name] = (renames, children)
        for field in descriptor.fields:
            message = field.message_type
            if message is None:
                continue
            if message.GetOptions().map_entry:
                value = message.fields_by_name["value"].message_type
                if value is not None:
                    children[field.name] = (value.full_name, "map")
                    self._add(value)
            else:
                children[field.name] = (message.full_name, "list" if field.is_repeated else "one")
                self._add(message)

    def __call__(self, record: Any) -> Any:
        return self._rename(record, self.top)

    def _rename(self, value: Any, message: str) -> Any:
        if not isinstance(value, dict):
            raise TypeError("not an object")
        renames, children = self.tables[message]
        out = {}
        for key, item in value.items():
            name: str = renames.get(key) or key
            child = children.get(name)
            if child is not None and item is not None:
                inner, mode = child
                if mode == "one":
                    item = self._rename(item, inner)
                elif mode == "list":
                    item = [self._rename(each, inner) for each in item]
                else:
                    item = {k: self._rename(each, inner) for k, each in item.items()}
            out[name] = item
        if len(out) != len(value):
            raise ValueError("a field named twice (by its JSON name and its proto name)")
        return out


def compile_record_type(schema_str: str) -> CompiledProto:
    """The schema's first message, ready to validate and encode (blocking: runs protoc)."""
    files = compile_proto(schema_str)
    try:
        pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            pool.Add(file)
        schema_file = files.file[-1]
        package = f"{schema_file.package}." if schema_file.package else ""
        descriptor = pool.FindMessageTypeByName(package + schema_file.message_type[0].name)
        return CompiledProto(descriptor, message_factory.GetMessageClass(descriptor), json_schema(descriptor))
    except (TypeError, KeyError) as exc:  # what protoc lets through and the runtime refuses
        raise ProtoError(str(exc) or type(exc).__name__) from None
    except RecursionError:
        raise ProtoError("its messages nest too deeply to follow") from None


_PLAIN = {
    FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_STRING,
    *_INTEGERS,
}  # fmt: skip


def _plain(descriptor: Descriptor, seen: set[str]) -> bool:
    """Whether the constructor reads every valid JSON record of ``descriptor`` it accepts
    as ``ParseDict`` would (see ``CompiledProto.encoder``)."""
    if descriptor.full_name in seen:
        return False  # a message inside itself: the constructor would follow any depth
    seen.add(descriptor.full_name)
    names = {field.name for field in descriptor.fields}
    if any(len(oneof.fields) > 1 for oneof in descriptor.oneofs):
        return False  # the constructor keeps the last field of a oneof without a word
    if any(field.json_name != field.name and field.json_name in names for field in descriptor.fields):
        return False  # a JSON name that is another field's proto name
    for field in descriptor.fields:
        message = field.message_type
        if message is None:
            if field.type not in _PLAIN:
                return False
        elif message.GetOptions().map_entry:
            key, value = message.fields_by_name["key"], message.fields_by_name["value"]
            if key.type != FieldDescriptor.TYPE_STRING or not (
                value.type in _PLAIN or (value.message_type is not None and _plain_message(value.message_type, seen))
            ):
                return False
        elif not _plain_message(message, seen):
            return False
    return True


def _plain_message(message: Descriptor, seen: set[str]) -> bool:
    return message.full_name not in _WELL_KNOWN and _plain(message, set(seen))


def json_schema(descriptor: Descriptor) -> dict[str, Any]:
    """The JSON Schema of the proto3 JSON form of ``descriptor``'s messages (messages are
    ``$defs`` entries, so recursive messages work)."""
    defs: dict[str, Any] = {}
    _message(descriptor, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": _ref(descriptor), "$defs": defs}


def _ref(descriptor: Descriptor) -> str:
    return f"#/$defs/{descriptor.full_name}"


def _message(descriptor: Descriptor, defs: dict[str, Any]) -> None:
    if descriptor.full_name in defs:
        return
    defs[descriptor.full_name] = {}  # placed first: a recursive field refers to it
    properties: dict[str, Any] = {}
    required: list[str] = []
    schemas = [(field, _field(field, defs)) for field in descriptor.fields]
    # Proto names first, JSON names last: where a JSON name is another field's proto name,
    # the JSON name wins, as in protobuf's JSON parser.
    properties |= {field.name: schema for field, schema in schemas}
    properties |= {field.json_name: schema for field, schema in schemas}
    required += [field.json_name for field, _ in schemas if field.is_required]  # proto2's `required`
    body: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        body["required"] = required
    defs[descriptor.full_name] = body


def _field(field: FieldDescriptor, defs: dict[str, Any]) -> dict[str, Any]:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        return {"type": "object", "additionalProperties": _single(message.fields_by_name["value"], defs)}
    single = _single(field, defs)
    if field.is_repeated:
        return {"type": "array", "items": single}
    return single


def _single(field: FieldDescriptor, defs: dict[str, Any]) -> dict[str, Any]:
    kind = field.type
    if kind in _INTEGERS:
        low, high = _INTEGERS[kind]
        return {"type": "integer", "minimum": low, "maximum": high}
    if kind in _LONGS:
        return _long(_LONGS[kind])
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return {"type": "number"}
    if kind == FieldDescriptor.TYPE_FLOAT:
        return {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    if kind == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == FieldDescriptor.TYPE_STRING:
        return {"type": "string"}
    if kind == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "pattern": _BASE64}
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        names = [value.name for value in field.enum_type.values]
        return {"anyOf": [{"enum": names}, {"type": "integer", "minimum": INT32[0], "maximum": INT32[1]}]}
    message = field.message_type
    assert message is not None  # TYPE_MESSAGE or TYPE_GROUP
    if message.full_name in _WELL_KNOWN:
        return _WELL_KNOWN[message.full_name]
    _message(message, defs)
    return {"$ref": _ref(message)}


SAMPLE_TIMESTAMP = "2024-01-01T00:00:00Z"
_SAMPLE_WELL_KNOWN: dict[str, Any] = {
    "google.protobuf.Timestamp": SAMPLE_TIMESTAMP,
    "google.protobuf.Duration": "1s",
    "google.protobuf.Struct": {},
    "google.protobuf.Value": None,
    "google.protobuf.ListValue": [],
    "google.protobuf.FieldMask": "",
    "google.protobuf.Empty": {},
}


class SampleTooLarge(ValueError):
    """A sample of every field would hold more than ``MAX_SAMPLE_FIELDS`` values."""


def sample_record(
    descriptor: Descriptor, *, text: str, expanding: tuple[str, ...] = (), budget: list[int] | None = None
) -> dict[str, Any]:
    """Every field of the message with a value of its type (JSON names; the first field of
    each oneof only; a message field that would contain itself left out, as proto3 allows).
    Raises ``SampleTooLarge`` past ``MAX_SAMPLE_FIELDS`` values (a message that holds two of
    the next, each two of the next, ... doubles with every level)."""
    budget = [MAX_SAMPLE_FIELDS] if budget is None else budget
    budget[0] -= len(descriptor.fields)
    if budget[0] < 0:
        raise SampleTooLarge(f"A sample of every field would hold more than {MAX_SAMPLE_FIELDS} values.")
    out: dict[str, Any] = {}
    oneofs_used: set[str] = set()
    expanding = (*expanding, descriptor.full_name)
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.full_name in oneofs_used:
                continue
            oneofs_used.add(oneof.full_name)
        message = field.message_type
        if message is not None and message.full_name in expanding:
            continue
        if message is not None and message.GetOptions().map_entry:
            key = _sample_single(message.fields_by_name["key"], text, expanding, budget)
            out[field.json_name] = {str(key).lower(): _sample_single(message.fields_by_name["value"], text, expanding,
                                                                     budget)}  # fmt: skip
            continue
        value = _sample_single(field, text, expanding, budget)
        out[field.json_name] = [value] if field.is_repeated else value
    return out


def _sample_single(field: FieldDescriptor, text: str, expanding: tuple[str, ...], budget: list[int]) -> Any:
    kind = field.type
    if kind in _INTEGERS or kind in _LONGS:
        return 0
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.0
    if kind == FieldDescriptor.TYPE_BOOL:
        return True
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind == FieldDescriptor.TYPE_BYTES:
        return "AA=="
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return field.enum_type.values[0].name
    message = field.message_type
    assert message is not None
    if message.full_name in _SAMPLE_WELL_KNOWN:
        return _SAMPLE_WELL_KNOWN[message.full_name]
    if message.full_name in _WRAPPERS:
        return _sample_single(message.fields_by_name["value"], text, expanding, budget)
    return sample_record(message, text=text, expanding=expanding, budget=budget)
