"""ingest.records.sample_record: the record the onboarding page offers as a device's first
POST.  Each sample must pass the very check ingest applies (``records.validate`` under the
schema compiled the way ``registry.latest_schema`` compiles it).  Pure: no network."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from config.onboarding_forms import AVRO_EXAMPLE
from devices.registry import AVRO, JSON, PROTOBUF, LatestSchema, _compile
from ingest import records
from tests.schemas import READING_AVRO_RICH as READING_AVRO
from tests.schemas import READING_JSON

# The Avro default the onboarding form offers, and the schemas the integration tests use.
FORM_DEFAULT_AVRO = json.loads(AVRO_EXAMPLE)
VIBRATION_AVRO = {
    "type": "record",
    "name": "Vibration",
    "namespace": "com.example.telemetry",
    "fields": [
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "axes", "type": {"type": "map", "values": {"type": "array", "items": "float"}}},
        {"name": "ok", "type": "boolean"},
        {"name": "count", "type": "int"},
        {"name": "raw", "type": ["null", "bytes", "string"], "default": None},
        {"name": "gps", "type": {"type": "record", "name": "Point", "fields": [
            {"name": "lat", "type": "double"}, {"name": "lon", "type": "double"}]}},
        {"name": "previous", "type": ["null", "Point"], "default": None},
        {"name": "parent", "type": ["null", "Vibration"], "default": None},
    ],
}  # fmt: skip
CONSTRAINED_JSON = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["ts", "kelvin", "level", "unit", "schema", "mode", "name", "tags", "position", "battery", "note"],
    "properties": {
        "ts": {"type": "string", "format": "date-time"},
        "kelvin": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
        "level": {"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 3},
        "unit": {"enum": ["K", "C"]},
        "schema": {"const": 2},
        "mode": {"type": ["null", "boolean"]},
        "name": {"type": "string", "minLength": 10, "maxLength": 12},
        "tags": {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 2},
        "position": {"$ref": "#/$defs/point"},
        "battery": {"allOf": [{"type": "object", "required": ["volts"], "properties": {"volts": {"type": "number"}}},
                              {"required": ["percent"], "properties": {"percent": {"type": "integer", "minimum": 1}}}]},
        "note": {"oneOf": [{"type": "null"}, {"type": "string", "maxLength": 3}]},
        "optional": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "$defs": {"point": {"type": "object", "required": ["lat"], "properties": {"lat": {"minimum": -90}}}},
}  # fmt: skip
DRAFT4_JSON = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "required": ["pressure", "depth"],
    "properties": {
        "pressure": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        "depth": {"type": "integer", "maximum": -10, "exclusiveMaximum": True},
    },
}


def _text(schema_type: str, schema: Any) -> str:
    return schema if schema_type == PROTOBUF else json.dumps(schema)  # a .proto is text already


def compiled(schema_type: str, schema: Any) -> LatestSchema:
    return _compile("iot.acme.eu.temperature-value", 42, 1, Schema(_text(schema_type, schema), schema_type))


def sample(schema_type: str, schema: Any) -> dict[str, Any]:
    return records.sample_record(schema_str=_text(schema_type, schema), schema_type=schema_type)


READING_PROTO = """syntax = "proto3";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
message Reading {
  double celsius = 1;
  string site_name = 2;
  int64 seq = 3;
  repeated string tags = 4;
  map<string, float> axes = 5;
  Unit unit = 6;
  google.protobuf.Timestamp at = 7;
  oneof where { string room = 8; int32 floor = 9; }
  Reading previous = 10;
  bytes raw = 11;
  google.protobuf.Int32Value count = 12;
  Gps gps = 13;
  enum Unit { C = 0; F = 1; }
  message Gps { double lat = 1; double lon = 2; }
}
"""


@pytest.mark.parametrize(
    ("schema_type", "schema"),
    [
        (AVRO, FORM_DEFAULT_AVRO),
        (AVRO, READING_AVRO),
        (AVRO, VIBRATION_AVRO),
        (JSON, READING_JSON),
        (JSON, CONSTRAINED_JSON),
        (JSON, DRAFT4_JSON),
        (JSON, {"type": "object"}),
        (PROTOBUF, READING_PROTO),
    ],
    ids=["form-default-avro", "reading-avro", "vibration-avro", "reading-json", "constrained-json", "draft4-json",
         "open-json", "reading-protobuf"],
)  # fmt: skip
def test_the_sample_passes_the_validation_ingest_applies(schema_type: str, schema: Any) -> None:
    # given a schema as the registry would hold it
    latest = compiled(schema_type, schema)

    # when a sample is built from its text
    record = sample(schema_type, schema)

    # then ingest accepts it as one record and can encode it for Kafka
    records.validate(records.Parsed(records=[record], batch=False), latest)
    assert records.wire_value(record, latest)[:5] == b"\x00\x00\x00\x00\x2a"


def test_the_form_default_gets_a_realistic_timestamp_and_round_trips_through_avro() -> None:
    record = sample(AVRO, FORM_DEFAULT_AVRO)
    assert record == {"device_id": "example", "ts": 1_704_067_200_000, "celsius": 0.0}
    # and a consumer decodes the same record (the timestamp as its logical type, a datetime)
    latest = compiled(AVRO, FORM_DEFAULT_AVRO)
    decoded = fastavro.schemaless_reader(io.BytesIO(records.wire_value(record, latest)[5:]), latest.parsed, None)
    assert {**decoded, "ts": int(decoded["ts"].timestamp() * 1000)} == record


def test_avro_fields_are_all_present_with_unions_nested_records_and_collections() -> None:
    record = sample(AVRO, VIBRATION_AVRO)
    assert record == {
        "id": "00000000-0000-4000-8000-000000000000",
        "day": 19_723,  # 2024-01-01
        "at": 1_704_067_200_000_000,
        "axes": {"key": [0.0]},
        "ok": True,
        "count": 0,
        "raw": "example",  # bytes cannot travel in JSON: the next non-null branch
        "gps": {"lat": 0.0, "lon": 0.0},
        "previous": {"lat": 0.0, "lon": 0.0},
        "parent": None,  # the record itself: only null ends the recursion
    }
    assert sample(AVRO, READING_AVRO) == {"celsius": 0.0, "site": "example", "tags": ["example"], "unit": "C"}


def test_protobuf_samples_hold_every_field_by_its_json_name() -> None:
    assert sample(PROTOBUF, READING_PROTO) == {
        "celsius": 0.0,
        "siteName": "example",
        "seq": 0,
        "tags": ["example"],
        "axes": {"example": 0.0},
        "unit": "C",
        "at": "2024-01-01T00:00:00Z",
        "room": "example",
        "raw": "AA==",
        "count": 0,
        "gps": {"lat": 0.0, "lon": 0.0},
    }  # fmt: skip (one field of the oneof; the record inside itself left out)


def test_json_samples_hold_only_the_required_properties_within_their_constraints() -> None:
    assert sample(JSON, READING_JSON) == {"celsius": 0.0}
    record = sample(JSON, CONSTRAINED_JSON)
    assert "optional" not in record
    assert (record["ts"], record["unit"], record["schema"], record["level"]) == ("2024-01-01T00:00:00Z", "K", 2, 3)
    assert 0 < record["kelvin"] <= 0.5
    assert len(record["name"]) == 10
    assert record["battery"] == {"volts": 0.0, "percent": 1}
    assert record["position"] == {"lat": 0.0}
    assert sample(JSON, DRAFT4_JSON) == {"pressure": 1.0, "depth": -11}


@pytest.mark.parametrize(
    ("schema_type", "schema"),
    [
        (AVRO, {"type": "record", "name": "Blob", "fields": [{"name": "data", "type": "bytes"}]}),
        (AVRO, {"type": "record", "name": "Loop", "fields": [{"name": "next", "type": "Loop"}]}),
        (AVRO, "string"),
        (JSON, {"type": "string"}),
    ],
    ids=["avro-bytes", "avro-endless-recursion", "avro-not-a-record", "json-not-an-object"],
)
def test_schemas_no_json_object_can_satisfy_give_no_sample(schema_type: str, schema: Any) -> None:
    with pytest.raises(records.NoSample):
        sample(schema_type, schema)
