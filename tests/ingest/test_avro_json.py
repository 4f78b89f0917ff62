"""devices.avro_json: the JSON Schema of an Avro schema's JSON records accepts what the Avro
writer would write faithfully and refuses what it would write wrongly or not at all.  Pure."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from devices.avro_json import avro_json_schema
from devices.registry import compile_json_schema

LINKED: dict[str, Any] = {
    "type": "record", "name": "Node", "namespace": "t",
    "fields": [{"name": "value", "type": "int"}, {"name": "next", "type": ["null", "t.Node"], "default": None}],
}  # fmt: skip
READING: dict[str, Any] = {
    "type": "record", "name": "Reading", "namespace": "t",
    "fields": [
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "celsius", "type": "float"},
        {"name": "site", "type": "string"},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "extra", "type": {"type": "map", "values": "double"}, "default": {}},
        {"name": "unit", "type": {"type": "enum", "name": "Unit", "symbols": ["C", "F"]}, "default": "C"},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"},
         "default": "00000000-0000-4000-8000-000000000000"},
    ],
}  # fmt: skip


def validator(avro: Any) -> Any:
    return compile_json_schema(avro_json_schema(fastavro.parse_schema(avro)))


@pytest.mark.parametrize(
    "record",
    [
        {"at": 1764756000123, "celsius": 21.5, "site": "oslo"},
        {"at": 0, "celsius": -3.4e38, "site": "", "tags": ["a"], "extra": {"x": 1.5}, "unit": "F"},
    ],
)
def test_what_it_accepts_the_avro_writer_writes_and_reads_back(record: dict[str, Any]) -> None:
    assert validator(READING).is_valid(record)
    parsed = fastavro.parse_schema(READING)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    decoded = fastavro.schemaless_reader(io.BytesIO(buffer.getvalue()), parsed, None)
    # (timestamp-millis comes back as a datetime; a float keeps 24 bits of precision)
    assert decoded["site"] == record["site"]
    assert decoded["celsius"] == pytest.approx(record["celsius"], rel=1e-6)
    assert decoded["tags"] == record.get("tags", [])


@pytest.mark.parametrize(
    "record",
    [
        {"celsius": 21.5, "site": "oslo"},  # a field without a default is missing
        {"at": 1, "celsius": 21.5, "site": "oslo", "room": 3},  # a field the schema does not have
        {"at": 2**63, "celsius": 21.5, "site": "oslo"},  # beyond a long
        {"at": 1, "celsius": 1e39, "site": "oslo"},  # beyond a float: the writer would store infinity
        {"at": 1, "celsius": "warm", "site": "oslo"},
        {"at": True, "celsius": 1.0, "site": "oslo"},  # a boolean is not a number here
        {"at": 1, "celsius": 1.0, "site": "oslo", "unit": "K"},
        {"at": 1, "celsius": 1.0, "site": "oslo", "extra": {"x": "high"}},
        {"at": 1, "celsius": 1.0, "site": "oslo", "id": "not-a-uuid"},  # the writer checks uuid strings
    ],
)
def test_what_it_refuses(record: dict[str, Any]) -> None:
    assert not validator(READING).is_valid(record)


def test_recursive_records_follow_their_reference() -> None:
    linked = validator(LINKED)
    assert linked.is_valid({"value": 1, "next": {"value": 2, "next": None}})
    assert not linked.is_valid({"value": 1, "next": {"value": "two"}})
