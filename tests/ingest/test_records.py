"""ingest.records: body shapes, schema validation with JSON pointers, and the Confluent wire
format.  Pure: no network, no database."""

from __future__ import annotations

import io
import json
import struct
import time
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from config.errors import InvalidInput, PayloadTooLarge, SchemaValidationFailed, SluiceError, UnsupportedMediaType
from devices.registry import LatestSchema, _compile
from ingest import records
from tests.schemas import READING_AVRO_RICH as AVRO_SCHEMA

JSON_SCHEMA = {
    "type": "object",
    "properties": {"celsius": {"type": "number"}, "a/b": {"type": "string"}},
    "required": ["celsius"],
}


def compiled(schema_type: str, schema: Any, schema_id: int = 42) -> LatestSchema:
    return _compile("iot.acme.eu.temperature-value", schema_id, 3, Schema(json.dumps(schema), schema_type))


def refusal(body: bytes) -> SluiceError:
    with pytest.raises(SluiceError) as refused:
        records.parse_body(body)
    return refused.value


# -- body shapes -------------------------------------------------------------------------


def test_one_object_is_one_record_and_records_is_a_batch() -> None:
    single = records.parse_body(b'{"celsius": 1}')
    batch = records.parse_body(b'{"records": [{"celsius": 1}, {"celsius": 2}]}')
    assert (single.records, single.batch, single.pointer(0)) == ([{"celsius": 1}], False, "")
    assert (len(batch.records), batch.batch, batch.pointer(1)) == (2, True, "/records/1")


@pytest.mark.parametrize(
    ("body", "error", "code", "pointer"),
    [
        (b"", InvalidInput, "empty_body", None),
        (b"  \n", InvalidInput, "empty_body", None),
        (b'{"celsius": ', InvalidInput, "malformed_json", "/"),
        (b'{"celsius": NaN}', InvalidInput, "malformed_json", "/"),
        (b"\xff\xfe", InvalidInput, "malformed_json", None),
        (b"[1, 2]", InvalidInput, "invalid_shape", "/"),
        (b'"text"', InvalidInput, "invalid_shape", "/"),
        (b'{"records": {}}', InvalidInput, "invalid_shape", "/records"),
        (b'{"records": [{}, []]}', InvalidInput, "invalid_shape", "/records/1"),
        (b'{"records": [{}], "topic": "iot.other.eu.x"}', InvalidInput, "invalid_shape", "/topic"),
        (b'{"records": []}', InvalidInput, "empty_batch", "/records"),
        (json.dumps({"records": [{}] * 501}).encode(), PayloadTooLarge, "too_many_records", None),
        (b" " * (2**20 + 1), PayloadTooLarge, "payload_too_large", None),
    ],
)
def test_bad_bodies_are_refused_with_a_stable_code(
    body: bytes, error: type[SluiceError], code: str, pointer: str | None
) -> None:
    refused = refusal(body)
    assert (type(refused), refused.code) == (error, code)
    if pointer is not None:
        assert refused.fields[0]["pointer"] == pointer


def test_malformed_json_says_where() -> None:
    refused = refusal(b'{\n  "celsius": 1,\n  "site" "x"\n}')
    assert "line 3, column 10" in refused.message


def test_the_batch_limit_is_inclusive() -> None:
    assert len(records.parse_body(json.dumps({"records": [{}] * 500}).encode()).records) == 500


@pytest.mark.parametrize(
    ("content_type", "media"),
    [("application/json", records.JSON), ("application/json; charset=utf-8", records.JSON),
     ("Application/JSON", records.JSON), ("application/x-ndjson", records.NDJSON),
     ("application/x-ndjson; charset=UTF-8", records.NDJSON)],
)  # fmt: skip
def test_json_and_ndjson_content_types_are_accepted(content_type: str, media: str) -> None:
    assert records.check_content_type(content_type) == media


@pytest.mark.parametrize("content_type", ["", "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=iso-8859-1", "application/ndjsonx",
                                          "application/x-ndjson; charset=latin1"])  # fmt: skip
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as refused:
        records.check_content_type(content_type)
    assert refused.value.status == 415


def ndjson(body: bytes) -> records.Parsed:
    return records.parse_body(body, records.NDJSON)


def test_ndjson_is_one_record_per_line_and_blank_lines_are_skipped() -> None:
    parsed = ndjson(b'{"celsius": 1}\r\n\n{"celsius": 2, "records": []}\n')
    assert parsed.records == [{"celsius": 1}, {"celsius": 2, "records": []}]
    assert (parsed.batch, parsed.pointer(0), parsed.pointer(1)) == (True, "/lines/1", "/lines/3")


def test_every_ndjson_line_that_is_not_an_object_is_named_by_its_number() -> None:
    with pytest.raises(InvalidInput) as refused:
        ndjson(b'{"celsius": 1}\n[1, 2]\n{"celsius": \n\n"text"\n')
    assert refused.value.code == "malformed_json"
    assert [(f["pointer"], f["code"]) for f in refused.value.fields] == [
        ("/lines/2", "invalid_shape"), ("/lines/3", "malformed_json"), ("/lines/5", "invalid_shape")]  # fmt: skip
    assert "Line 3 is not valid JSON" in refused.value.fields[1]["message"]
    with pytest.raises(InvalidInput) as refused:
        ndjson(b"[1]\n")
    assert refused.value.code == "invalid_shape"


@pytest.mark.parametrize("body", [b"", b"\n\n", b"  \r\n"])
def test_an_ndjson_body_without_records_is_empty(body: bytes) -> None:
    with pytest.raises(InvalidInput) as refused:
        ndjson(body)
    assert refused.value.code == "empty_body"


def test_the_ndjson_batch_limit_is_the_same() -> None:
    assert len(ndjson(b"{}\n" * 500).records) == 500
    with pytest.raises(PayloadTooLarge) as refused:
        ndjson(b"{}\n" * 501)
    assert refused.value.code == "too_many_records"


def test_ndjson_validation_errors_point_at_lines() -> None:
    schema = compiled("JSON", JSON_SCHEMA)
    with pytest.raises(SchemaValidationFailed) as refused:
        records.validate(ndjson(b'{"celsius": 1}\n\n{"celsius": "warm"}\n'), schema)
    assert [f["pointer"] for f in refused.value.fields] == ["/lines/3/celsius"]


# -- validation --------------------------------------------------------------------------


def failures(body: dict[str, Any], schema: LatestSchema) -> list[tuple[str, str]]:
    with pytest.raises(SchemaValidationFailed) as refused:
        records.validate(records.parse_body(json.dumps(body).encode()), schema)
    assert refused.value.status == 422
    return [(field["pointer"], field["code"]) for field in refused.value.fields]


def test_json_schema_failures_point_at_each_field_of_each_record() -> None:
    schema = compiled("JSON", JSON_SCHEMA)
    batch = {"records": [{"celsius": 1}, {"celsius": "warm"}, {"a/b": 3}]}
    assert failures(batch, schema) == [
        ("/records/1/celsius", "type"),
        ("/records/2/a~1b", "type"),
        ("/records/2/celsius", "required"),
    ]
    assert failures({"celsius": None}, schema) == [("/celsius", "type")]


def test_avro_failures_point_at_each_field_and_refuse_unknown_fields() -> None:
    schema = compiled("AVRO", AVRO_SCHEMA)
    bad = {"site": 5, "tags": ["ok", 7], "unit": "K", "extra": True}
    assert failures({"records": [{"celsius": 1.5}, bad]}, schema) == [
        ("/records/1/celsius", "required"),
        ("/records/1/extra", "unknown_field"),
        ("/records/1/site", "type"),
        ("/records/1/tags/1", "type"),
        ("/records/1/unit", "enum"),
    ]


def test_valid_records_pass() -> None:
    records.validate(records.parse_body(b'{"celsius": 21}'), compiled("AVRO", AVRO_SCHEMA))
    records.validate(records.parse_body(b'{"records": [{"celsius": 21.5, "a/b": "x"}]}'), compiled("JSON", JSON_SCHEMA))


# -- wire format -------------------------------------------------------------------------


def test_avro_records_are_magic_byte_schema_id_and_avro_binary() -> None:
    schema = compiled("AVRO", AVRO_SCHEMA, schema_id=70000)
    value = records.wire_value({"celsius": 21.5, "site": "berlin"}, schema)
    assert value[:5] == b"\x00" + struct.pack(">I", 70000)
    decoded = fastavro.schemaless_reader(io.BytesIO(value[5:]), fastavro.parse_schema(AVRO_SCHEMA), None)
    assert decoded == {"celsius": 21.5, "site": "berlin", "tags": [], "unit": "C"}


def test_json_records_are_magic_byte_schema_id_and_utf8_json() -> None:
    value = records.wire_value({"celsius": 21.5, "a/b": "Zürich"}, compiled("JSON", JSON_SCHEMA, schema_id=7))
    assert value[:5] == b"\x00\x00\x00\x00\x07"
    assert json.loads(value[5:].decode("utf-8")) == {"celsius": 21.5, "a/b": "Zürich"}


# -- hostile or odd input (each a clear 4xx, never a 500) ---------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"celsius": 1e400}', b'{"celsius": -1e999}'],
    ids=["nested-100k-deep", "overflow", "negative-overflow"],
)
def test_unreadable_numbers_and_absurd_nesting_are_malformed_json(body: bytes) -> None:
    error = refusal(body)
    assert (type(error), error.code) == (InvalidInput, "malformed_json")


def test_a_value_too_big_for_an_avro_float_is_refused_not_written_as_infinity() -> None:
    schema = compiled("AVRO", {"type": "record", "name": "R", "fields": [{"name": "v", "type": "float"}]})
    with pytest.raises(SchemaValidationFailed) as refused:
        records.validate(records.parse_body(b'{"v": 1e300}'), schema)
    assert [(f["pointer"], f["code"]) for f in refused.value.fields] == [("/v", "range")]
    records.validate(records.parse_body(b'{"v": 1.5}'), schema)


def test_a_top_level_avro_union_or_primitive_refuses_objects_cleanly() -> None:
    for avro in (["null", "string"], "string"):
        with pytest.raises(SchemaValidationFailed):
            records.validate(records.parse_body(b'{"v": 1}'), compiled("AVRO", avro))


def test_a_json_schema_with_an_unresolvable_reference_is_a_409_not_a_500() -> None:
    # (compiled when the worker reads the schema: nothing is fetched from the network)
    with pytest.raises(SluiceError) as refused:
        compiled("JSON", {"type": "object", "properties": {"v": {"$ref": "https://example.invalid/v.json"}}})
    assert (refused.value.status, refused.value.code) == (409, "schema_not_supported")


def test_a_pattern_that_needs_backtracking_is_refused_and_a_slow_one_runs_in_linear_time() -> None:
    # a lookahead cannot run on the linear-time engine: the schema is refused, not run
    with pytest.raises(SluiceError) as refused:
        compiled("JSON", {"type": "object", "properties": {"v": {"type": "string", "pattern": "^(?=a)a+$"}}})
    assert refused.value.code == "schema_not_supported"
    # the classic catastrophic pattern is answered at once, whatever the input's length
    schema = compiled("JSON", {"type": "object", "properties": {"v": {"type": "string", "pattern": "^(a+)+$"}}})
    began = time.perf_counter()
    with pytest.raises(SchemaValidationFailed):
        records.validate(records.parse_body(json.dumps({"v": "a" * 50_000 + "!"}).encode()), schema)
    assert time.perf_counter() - began < 1.0  # a backtracking engine takes longer than the universe has


def test_formats_are_checked() -> None:
    schema = compiled("JSON", {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}})
    records.validate(records.parse_body(b'{"at": "2026-12-03T10:00:00Z"}'), schema)
    assert failures({"at": "yesterday"}, schema) == [("/at", "format")]


def test_a_schema_without_a_draft_is_read_as_draft_07_like_the_registry_reads_it() -> None:
    # tuple "items" and "dependencies" mean what draft-07 says (2020-12 reads both otherwise)
    schema = compiled("JSON", {"type": "object", "properties": {"pair": {"type": "array", "items": [
        {"type": "integer"}, {"type": "string"}]}}, "dependencies": {"lat": ["lon"]}})  # fmt: skip
    records.validate(records.parse_body(b'{"pair": [1, "x"], "lat": 1, "lon": 2}'), schema)
    assert failures({"pair": ["x", 1]}, schema) == [("/pair/0", "type"), ("/pair/1", "type")]
    assert failures({"lat": 1}, schema) == [("/lon", "required")]  # a missing field is pointed at itself
    # a schema that names its draft gets that draft
    named = compiled("JSON", {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                              "properties": {"pair": {"prefixItems": [{"type": "integer"}]}}})  # fmt: skip
    assert failures({"pair": ["x"]}, named) == [("/pair/0", "type")]


def test_avro_integers_and_floats_are_range_checked_and_bytes_refused() -> None:
    avro = {"type": "record", "name": "R", "fields": [
        {"name": "i", "type": "int"}, {"name": "l", "type": "long"}, {"name": "b", "type": ["null", "bytes"],
                                                                       "default": None}]}  # fmt: skip
    schema = compiled("AVRO", avro)
    records.validate(records.parse_body(b'{"i": 2147483647, "l": -9223372036854775808}'), schema)
    assert failures({"i": 2**31, "l": 1, "b": "AAE="}, schema) == [("/b", "type"), ("/i", "range")]
    assert failures({"i": True, "l": 1}, schema) == [("/i", "type")]
