"""The compiled Avro encoder writes exactly fastavro's bytes, for every record the stream's
validator lets through; and leaves to fastavro what it does not compile.  Pure: no services."""

from __future__ import annotations

import io
import math
import random
import string
import uuid
from typing import Any

import fastavro
import jsonschema_rs
import pytest

from bench.ingestbench.workload import AVRO_SCHEMA, RECORD
from devices.avro_encoder import SMALL, compile_encoder
from devices.avro_json import FLOAT32_MAX, INT32, INT64, avro_json_schema

SCHEMAS: dict[str, Any] = {
    "the benchmark's reading": AVRO_SCHEMA,
    "every primitive, optional in both orders": {
        "type": "record", "name": "Everything", "namespace": "t.sluice",
        "fields": [
            {"name": "flag", "type": "boolean"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "s", "type": "string"},
            {"name": "n", "type": "null"},
            {"name": "oi", "type": ["null", "int"], "default": None},
            {"name": "ol", "type": ["long", "null"], "default": 7},
            {"name": "of", "type": ["null", "float"], "default": None},
            {"name": "ob", "type": ["null", "boolean"], "default": None},
            {"name": "di", "type": "int", "default": -3},
            {"name": "ds", "type": "string", "default": "fallback ü"},
        ],
    },
    "nested records, enums, arrays and maps": {
        "type": "record", "name": "Gateway", "namespace": "t.sluice",
        "fields": [
            {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["OK", "WARN", "FAIL"]}},
            {"name": "previous", "type": ["null", "State"], "default": None},
            {"name": "position", "type": {"type": "record", "name": "Position", "fields": [
                {"name": "lat", "type": "double"}, {"name": "lon", "type": "double"},
                {"name": "alt", "type": ["null", "float"], "default": None}]}},
            {"name": "history", "type": {"type": "array", "items": "Position"}},
            {"name": "tags", "type": {"type": "map", "values": "string"}},
            {"name": "counters", "type": {"type": "map", "values": {"type": "array", "items": "long"}}},
            {"name": "last", "type": ["null", "Position"], "default": None},
            {"name": "nothing", "type": {"type": "array", "items": "null"}, "default": []},
        ],
    },
    "a recursive list": {
        "type": "record", "name": "Node", "namespace": "t.sluice",
        "fields": [{"name": "value", "type": "long"}, {"name": "next", "type": ["null", "Node"], "default": None}],
    },
    "logical types": {
        "type": "record", "name": "Times", "namespace": "t.sluice",
        "fields": [
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "tod", "type": {"type": "int", "logicalType": "time-millis"}},
            {"name": "tod_us", "type": {"type": "long", "logicalType": "time-micros"}},
            {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "maybe", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
            {"name": "unknown", "type": {"type": "int", "logicalType": "made-up"}},
        ],
    },
    "an array at the top": {"type": "array", "items": ["null", "double"]},
    "a string at the top": "string",
}  # fmt: skip


def sample(schema: Any, named: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (as orjson would read it) valid for ``schema``."""
    if isinstance(schema, str):
        if schema in named:
            return sample(named[schema], named, rng, depth)
        return primitive(schema, rng)
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"] if depth > 3 else schema  # recursion ends
        return sample(rng.choice(branches), named, rng, depth + 1)
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        record = {}
        for field in schema["fields"]:
            if "default" in field and rng.random() < 0.3:
                continue  # left out: fastavro writes the default
            record[field["name"]] = sample(field["type"], named, rng, depth + 1)
        return record
    if kind == "enum":
        named[schema["name"]] = schema
        return rng.choice(schema["symbols"])
    if kind == "array":
        return [sample(schema["items"], named, rng, depth + 1) for _ in range(rng.choice((0, 1, 3)))]
    if kind == "map":
        return {text(rng): sample(schema["values"], named, rng, depth + 1) for _ in range(rng.choice((0, 1, 3)))}
    if schema.get("logicalType") == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128)))
    return sample(kind, named, rng, depth)


def text(rng: random.Random) -> str:
    size = rng.choice((0, 1, 10, 63, 64, SMALL - 1, SMALL, SMALL + 5))
    return "".join(rng.choice(string.ascii_letters + "äö€😀 ") for _ in range(size))


def integer(rng: random.Random, low: int, high: int) -> Any:
    value = rng.choice((0, 1, -1, 63, -64, 64, -65, SMALL - 1, SMALL, -SMALL, -SMALL - 1, low, high,
                        rng.randint(low, high), rng.randint(-1000, 1000)))  # fmt: skip
    return float(value) if rng.random() < 0.1 and abs(value) < 2**53 else value  # "5.0" is an integer in JSON Schema


def primitive(name: str, rng: random.Random) -> Any:
    if name == "null":
        return None
    if name == "boolean":
        return rng.random() < 0.5
    if name == "int":
        return integer(rng, *INT32)
    if name == "long":
        return integer(rng, *INT64)
    if name == "float":
        return rng.choice((0, 1.5, -2.25, FLOAT32_MAX, -FLOAT32_MAX, 3.4e-38, rng.uniform(-1e6, 1e6), 7))
    if name == "double":
        return rng.choice((0.0, -0.0, 1e308, -1e-308, 5e-324, rng.uniform(-1e12, 1e12), 12, 2**60))
    if name == "string":
        return text(rng)
    raise AssertionError(name)


def fastavro_bytes(parsed: Any, record: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    return buffer.getvalue()


def integral(value: Any) -> Any:
    """``value`` with every integral float as an int: what fastavro is given for the
    comparison.  JSON's 5.0 is an integer to the validator, and fastavro writes it as 5 in an
    ``int`` field but refuses it in a ``["null", "int"]`` union (the compiled encoder writes 5
    in both; a float field's bytes are the same for 5 and 5.0)."""
    if isinstance(value, float) and value.is_integer() and not (value == 0 and math.copysign(1.0, value) < 0):
        return int(value)  # (-0.0 kept: in a double field its sign is written)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_the_compiled_encoder_writes_fastavros_bytes_for_every_valid_record(name: str) -> None:
    parsed = fastavro.parse_schema(SCHEMAS[name])
    encoder = compile_encoder(parsed)
    assert encoder is not None
    validator = jsonschema_rs.validator_for(avro_json_schema(parsed))
    rng = random.Random(name)
    for _ in range(300):
        record = sample(SCHEMAS[name], {}, rng)
        assert validator.is_valid(record), record  # what ingest would encode
        assert encoder(record) == fastavro_bytes(parsed, integral(record)), record


def test_the_benchmarks_record_and_a_record_using_every_default() -> None:
    parsed = fastavro.parse_schema(AVRO_SCHEMA)
    encoder = compile_encoder(parsed)
    assert encoder is not None
    assert encoder(RECORD) == fastavro_bytes(parsed, RECORD)
    required = {k: v for k, v in RECORD.items() if k not in ("pressure_hpa", "co2_ppm", "status")}
    assert encoder(required) == fastavro_bytes(parsed, required)


def test_an_integral_float_in_an_optional_int_is_written_as_the_integer() -> None:
    # JSON 612.0 is an integer to the validator; fastavro's union refused it (ingest answered
    # 422 "could not be encoded"), the compiled encoder writes 612 as a plain int field does
    parsed = fastavro.parse_schema(AVRO_SCHEMA)
    encoder = compile_encoder(parsed)
    assert encoder is not None
    record = {**RECORD, "co2_ppm": 612.0, "battery_percent": 87.0}
    assert jsonschema_rs.validator_for(avro_json_schema(parsed)).is_valid(record)
    with pytest.raises(ValueError, match="do not match"):
        fastavro_bytes(parsed, record)
    assert encoder(record) == fastavro_bytes(parsed, RECORD)


@pytest.mark.parametrize(
    "schema",
    [
        "bytes",
        {"type": "fixed", "name": "F", "size": 4},
        {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 2},
        ["int", "string"],
        ["null", "int", "string"],
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["double", "long"]}]},
    ],
    ids=["bytes", "fixed", "decimal", "two-types", "null-and-two-types", "a union field"],
)
def test_what_it_does_not_compile_is_left_to_fastavro(schema: Any) -> None:
    assert compile_encoder(fastavro.parse_schema(schema)) is None


def test_names_in_the_schema_cannot_inject_code() -> None:
    # field names and enum symbols are only ever quoted (repr) or looked up, never spliced
    schema = {
        "type": "record", "name": "R", "fields": [
            {"name": "x", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
            {"name": "y_import_os", "type": "string", "default": "'); import os; ('"},
        ],
    }  # fmt: skip
    parsed = fastavro.parse_schema(schema)
    encoder = compile_encoder(parsed)
    assert encoder is not None
    assert encoder({"x": "B"}) == fastavro_bytes(parsed, {"x": "B"})
