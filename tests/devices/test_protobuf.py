"""Protobuf streams without the network: a .proto compiled by protoc into the JSON Schema
devices' JSON records are checked against, and the encoder that writes them in the
Confluent wire format (read back with protobuf's own parser)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from google.protobuf import json_format

from config.errors import SchemaValidationFailed
from devices.protobuf import FIRST_MESSAGE_INDEXES, compile_record_type
from devices.registry import LatestSchema, RecordNotEncodable, _compile
from ingest import records

RICH = """
syntax = "proto3";
package acme.telemetry;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

message Reading {
  double celsius = 1;
  string site_name = 2;
  int64 seq = 3;
  uint32 count = 4;
  float ratio = 5;
  repeated string tags = 6;
  map<string, double> extra = 7;
  Unit unit = 8;
  google.protobuf.Timestamp at = 9;
  Inner inner = 10;
  oneof where { string room = 11; int32 floor = 12; }
  bytes raw = 13;
  google.protobuf.DoubleValue maybe = 14;
  bool ok = 15;
  enum Unit { CELSIUS = 0; FAHRENHEIT = 1; }
  message Inner { uint32 n = 1; Inner next = 2; }
}

message NotTheRecordType { string x = 1; }
"""
PLAIN = """
syntax = "proto3";
message Reading {
  double celsius = 1;
  string site = 2;
  int32 seq = 3;
  repeated float samples = 4;
  map<string, Point> points = 5;
  Point at = 6;
  bool ok = 7;
  optional double site_temperature = 8;
  message Point { double x = 1; double y = 2; double z_value = 3; }
}
"""
VALID = {
    "celsius": 21.5, "siteName": "berlin-1", "seq": "9007199254740993", "count": 7, "ratio": 0.5,
    "tags": ["a", "b"], "extra": {"h": 1.0}, "unit": "FAHRENHEIT", "at": "2026-12-04T10:00:00Z",
    "inner": {"n": 3, "next": {"n": 4}}, "room": "r1", "raw": "AAEC", "maybe": None, "ok": True,
}  # fmt: skip


def compiled(text: str, schema_id: int = 42) -> LatestSchema:
    return _compile("iot.acme.eu.temperature-value", schema_id, 3, Schema(text, "PROTOBUF"))


def failures(schema: LatestSchema, body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(SchemaValidationFailed) as refused:
        records.validate(records.parse_body(json.dumps(body).encode()), schema)
    return [(f["pointer"], f["code"]) for f in refused.value.fields]


def test_the_first_message_is_the_record_type_and_a_valid_record_round_trips() -> None:
    schema = compiled(RICH)
    records.validate(records.parse_body(json.dumps(VALID).encode()), schema)
    (value,) = schema.encode_all([VALID])
    # the Confluent wire format: magic byte, schema id, the message indexes [0], the payload
    assert value[:5] == struct.pack(">bI", 0, 42)
    assert value[5:6] == FIRST_MESSAGE_INDEXES
    message = compile_record_type(RICH).message_class.FromString(value[6:])
    assert message.DESCRIPTOR.full_name == "acme.telemetry.Reading"
    back = json_format.MessageToDict(message)
    assert back["siteName"] == "berlin-1"
    assert back["seq"] == "9007199254740993"  # 64 bits, beyond a double's exact integers
    assert (back["unit"], back["at"], back["inner"]["next"]["n"]) == ("FAHRENHEIT", "2026-12-04T10:00:00Z", 4)
    # proto names are accepted as well as JSON names
    (same,) = schema.encode_all([{**{k: v for k, v in VALID.items() if k != "siteName"}, "site_name": "berlin-1"}])
    assert same == value


def test_every_failure_is_pointed_at_with_its_code() -> None:
    schema = compiled(RICH)
    bad = {"celsius": "warm", "seq": 2**70, "count": -1, "ratio": 1e39, "tags": ["a", 2], "unit": "KELVIN",
           "at": "yesterday", "inner": {"n": 1.5, "next": {"m": 1}}, "raw": "not base64!", "extra": {"h": "x"},
           "nope": 1}  # fmt: skip
    assert failures(schema, bad) == [
        ("/at", "format"), ("/celsius", "type"), ("/count", "range"), ("/extra/h", "type"),
        ("/inner/n", "type"), ("/inner/next/m", "unknown_field"), ("/nope", "unknown_field"),
        ("/ratio", "range"), ("/raw", "format"), ("/seq", "type"), ("/tags/1", "type"), ("/unit", "type"),
    ]  # fmt: skip


def test_what_only_the_encoder_can_refuse_names_the_record() -> None:
    schema = compiled(RICH)
    ok = {"celsius": 1.0}
    with pytest.raises(RecordNotEncodable) as refused:
        schema.encode_all([ok, {"room": "a", "floor": 2}])  # two fields of one oneof
    assert refused.value.index == 1
    assert "oneof" in refused.value.reason
    with pytest.raises(RecordNotEncodable):
        schema.encode_all([{"seq": "99999999999999999999"}])  # digits, but beyond 64 bits


def test_a_plain_message_is_built_by_its_constructor_with_the_same_bytes() -> None:
    proto = compile_record_type(PLAIN)
    fast = proto.encoder(b"P")
    record = {"celsius": 21.5, "site": "b", "seq": -3, "samples": [1, 2.5], "points": {"a": {"x": 1, "y": 2}},
              "at": {"x": 0.5}, "ok": False}  # fmt: skip
    reference = b"P" + FIRST_MESSAGE_INDEXES + json_format.ParseDict(record, proto.message_class()).SerializeToString()
    assert fast(record) == reference
    assert fast({"celsius": 1}) == b"P" + FIRST_MESSAGE_INDEXES + proto.message_class(celsius=1.0).SerializeToString()
    # fields by their JSON names give the same bytes (renamed for the constructor), nested too
    by_json_name = b"P" + FIRST_MESSAGE_INDEXES + proto.message_class(site_temperature=1.5).SerializeToString()
    assert fast({"siteTemperature": 1.5}) == fast({"site_temperature": 1.5}) == by_json_name
    nested = {"at": {"x": 1.0}, "points": {"p": {"y": 2.0}}, "siteTemperature": 3.0}
    assert (
        fast(nested)
        == b"P" + FIRST_MESSAGE_INDEXES + json_format.ParseDict(nested, proto.message_class()).SerializeToString()
    )
    # one field by both names is for the JSON parser to refuse
    with pytest.raises(json_format.ParseError):
        fast({"siteTemperature": 1.5, "site_temperature": 2.5})
    # what the constructor cannot take goes to the JSON parser, which says why
    with pytest.raises(json_format.ParseError):
        fast({"seq": "x"})


def test_a_recursive_message_validates_at_any_depth() -> None:
    schema = compiled(RICH)
    deep: dict[str, Any] = {"n": 1}
    for _ in range(20):
        deep = {"n": 1, "next": deep}
    records.validate(records.parse_body(json.dumps({"inner": deep}).encode()), schema)
    deep["next"]["n"] = -1
    assert failures(schema, {"inner": deep}) == [("/inner/next/n", "range")]


def test_a_proto2_required_field_is_required() -> None:
    schema = compiled('syntax = "proto2";\nmessage R { required double celsius = 1; optional string site = 2; }')
    assert failures(schema, {"site": "x"}) == [("/celsius", "required")]


def test_the_serialized_form_is_the_files_own_descriptor() -> None:
    import base64

    from google.protobuf import descriptor_pb2

    from devices.registry import serialized_descriptor

    parsed = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(serialized_descriptor(RICH)))
    assert parsed.package == "acme.telemetry"
    assert [m.name for m in parsed.message_type] == ["Reading", "NotTheRecordType"]
    assert list(parsed.dependency) == ["google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"]


# -- what the constructor must not be trusted with (review findings, each one a case) ------


def _both_encoders(text: str) -> tuple[Any, Any]:
    proto = compile_record_type(text)
    reference = proto.message_class

    def parse(record: Any) -> bytes:
        return b"P" + FIRST_MESSAGE_INDEXES + json_format.ParseDict(record, reference()).SerializeToString()

    return proto.encoder(b"P"), parse


def test_two_fields_of_one_oneof_are_refused_even_in_a_plain_message() -> None:
    fast, _ = _both_encoders('syntax = "proto3";\nmessage R { oneof w { string room = 1; int32 floor = 2; } }')
    with pytest.raises(json_format.ParseError):
        fast({"room": "a", "floor": 2})


def test_a_message_inside_itself_is_refused_past_protobufs_depth() -> None:
    fast, parse = _both_encoders('syntax = "proto3";\nmessage N { N next = 1; int32 a = 2; }')
    deep: dict[str, Any] = {"a": 1}
    for _ in range(150):
        deep = {"next": deep}
    with pytest.raises(json_format.ParseError):
        fast(deep)
    assert fast({"next": {"a": 2}}) == parse({"next": {"a": 2}})


def test_a_json_name_that_is_another_fields_name_goes_where_protobuf_puts_it() -> None:
    text = 'syntax = "proto3";\nmessage R { int32 a = 1 [json_name="b"]; int32 b = 2 [json_name="c"]; }'
    fast, parse = _both_encoders(text)
    assert fast({"b": 5}) == parse({"b": 5}) == b"P" + FIRST_MESSAGE_INDEXES + b"\x08\x05"


@pytest.mark.parametrize(
    "text",
    [
        'syntax = "proto2";\nmessage R { optional int32 foo_bar = 1; optional int32 fooBar = 2; }',
        'syntax = "proto3";\n'
        + "".join(f"message M{i} {{ M{i + 1} a = 1; }}\n" for i in range(400))
        + "message M400 {}",
    ],
    ids=["json-name-clash", "400-deep"],
)
def test_a_proto_the_runtime_refuses_is_a_proto_error(text: str) -> None:
    from devices.protobuf import ProtoError

    with pytest.raises(ProtoError):
        compile_record_type(text)


def test_a_sample_that_would_double_with_every_level_is_no_sample() -> None:
    from ingest import records

    text = 'syntax = "proto3";\n' + "".join(f"message M{i} {{ M{i + 1} a = 1; M{i + 1} b = 2; }}\n" for i in range(30))
    with pytest.raises(records.NoSample):
        records.sample_record(schema_str=text + "message M30 { int32 x = 1; }", schema_type="PROTOBUF")
