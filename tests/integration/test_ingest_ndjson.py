"""NDJSON batches and Protobuf streams end to end: through the real nginx into Kafka, and
back through confluent-kafka's deserializers reading the schemas from the registry."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import json_format

from config.env import Runtime
from devices.protobuf import compile_record_type
from devices.registry import registry_client
from tests.integration.test_ingest import Sender, consume, topic_size
from tests.integration.test_ingest import make_sender as make_sender  # the fixture
from tests.schemas import READING_AVRO, READING_JSON

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
NDJSON = "application/x-ndjson"


@pytest.mark.parametrize(("schema_type", "schema"), [("JSON", READING_JSON), ("AVRO", READING_AVRO)])
def test_an_ndjson_batch_is_written_in_order_and_reads_back_through_a_deserializer(
    services: Runtime, make_sender: Any, schema_type: str, schema: dict[str, Any]
) -> None:
    sender: Sender = make_sender(schema_type, schema)
    batch = [{"celsius": 20.0 + i, "site": f"site-{i}"} for i in range(4)]
    body = "\n".join(f'{{"celsius": {r["celsius"]}, "site": "{r["site"]}"}}' for r in batch[:2])
    body += "\r\n\n" + "\n".join(f'{{"celsius": {r["celsius"]}, "site": "{r["site"]}"}}' for r in batch[2:]) + "\n"

    # when a device POSTs one record per line
    status, answer, _ = sender.post(raw=body.encode(), content_type=NDJSON)

    # then each line is a record, in order, and a consumer deserializes them as sent
    assert status == 200, answer
    assert answer["accepted"] == 4
    messages = consume(sender.topic, services, expected=4)
    assert [{"partition": m.partition(), "offset": m.offset()} for m in messages] == answer["records"]
    client = registry_client()
    deserializer: Any = (
        AvroDeserializer(client) if schema_type == "AVRO" else JSONDeserializer(None, schema_registry_client=client)
    )
    context = SerializationContext(sender.topic, MessageField.VALUE)
    assert [deserializer(m.value(), context) for m in messages] == batch
    assert [dict(m.headers())["sluice-record-index"] for m in messages] == [b"0", b"1", b"2", b"3"]


def test_ndjson_refusals_point_at_line_numbers_and_write_nothing(services: Runtime, make_sender: Any) -> None:
    sender: Sender = make_sender("JSON", READING_JSON)

    # a line that is not JSON, and one that is not an object
    status, answer, _ = sender.post(raw=b'{"celsius": 1}\n{"celsius": \n[2]\n', content_type=NDJSON)
    assert (status, answer["error"]["code"]) == (400, "malformed_json"), answer
    assert [f["pointer"] for f in answer["error"]["fields"]] == ["/lines/2", "/lines/3"]

    # a record the schema refuses, named by its line (blank lines count)
    status, answer, _ = sender.post(raw=b'{"celsius": 1}\n\n{"celsius": "warm"}\n', content_type=NDJSON)
    assert (status, answer["error"]["code"]) == (422, "schema_validation_failed"), answer
    assert [f["pointer"] for f in answer["error"]["fields"]] == ["/lines/3/celsius"]

    # nothing at all
    status, answer, _ = sender.post(raw=b"\n\n", content_type=NDJSON)
    assert (status, answer["error"]["code"]) == (400, "empty_body")
    assert topic_size(sender.topic, services) == 0


def wire_schema_id(value: bytes) -> int:
    return int.from_bytes(value[1:5], "big")


PROTO = """syntax = "proto3";
package acme.telemetry;
import "google/protobuf/timestamp.proto";

message Reading {
  double celsius = 1;
  string site_name = 2;
  int64 seq = 3;
  Unit unit = 4;
  google.protobuf.Timestamp at = 5;
  enum Unit { CELSIUS = 0; FAHRENHEIT = 1; }
}
"""


def test_json_records_are_written_as_protobuf_that_a_deserializing_consumer_reads(
    services: Runtime, make_sender: Any
) -> None:
    # given a stream whose schema is a .proto
    sender: Sender = make_sender("PROTOBUF", PROTO)
    batch = [{"celsius": 21.5, "siteName": "berlin-1", "seq": "9007199254740993", "unit": "FAHRENHEIT",
              "at": "2026-12-04T10:00:00Z"}, {"celsius": -3.0, "site_name": "oslo-2", "seq": 2}]  # fmt: skip

    # when a device sends JSON records, as a JSON batch and as NDJSON
    status, answer, _ = sender.post({"records": batch})
    assert status == 200, answer
    ndjson = "\n".join(json.dumps(r) for r in batch).encode()
    status, answer, _ = sender.post(raw=ndjson, content_type=NDJSON)
    assert status == 200, answer

    # then confluent-kafka's ProtobufDeserializer reads them (the framing: magic byte, schema
    # id, message indexes), holding what was sent.  It is given the message class, not the
    # registry: it would ask the registry for the schema as a serialized descriptor
    # (format=serialized), which Apicurio's Confluent API does not serve (it sends the text).
    messages = consume(sender.topic, services, expected=4)
    reading = compile_record_type(PROTO).message_class
    deserializer = ProtobufDeserializer(reading, {"use.deprecated.format": False})
    context = SerializationContext(sender.topic, MessageField.VALUE)
    read = [json_format.MessageToDict(deserializer(m.value(), context)) for m in messages]
    registered = registry_client().get_latest_version(sender.subject).schema_id
    assert {wire_schema_id(m.value()) for m in messages} == {registered}
    assert read[0] == {"celsius": 21.5, "siteName": "berlin-1", "seq": "9007199254740993", "unit": "FAHRENHEIT",
                       "at": "2026-12-04T10:00:00Z"}  # fmt: skip
    assert read[1] == {"celsius": -3.0, "siteName": "oslo-2", "seq": "2"}
    assert read[2:] == read[:2]


def test_protobuf_refusals_point_into_the_json_and_write_nothing(services: Runtime, make_sender: Any) -> None:
    sender: Sender = make_sender("PROTOBUF", PROTO)
    status, answer, _ = sender.post({"records": [{"celsius": 1.0}, {"celsius": "warm", "unit": "KELVIN", "x": 1}]})
    assert (status, answer["error"]["code"]) == (422, "schema_validation_failed"), answer
    assert [(f["pointer"], f["code"]) for f in answer["error"]["fields"]] == [
        ("/records/1/celsius", "type"), ("/records/1/unit", "type"), ("/records/1/x", "unknown_field")]  # fmt: skip
    status, answer, _ = sender.post(raw=b'{"celsius": 1}\n{"seq": "99999999999999999999"}\n', content_type=NDJSON)
    assert (status, answer["error"]["code"]) == (422, "schema_validation_failed"), answer
    assert [(f["pointer"], f["code"]) for f in answer["error"]["fields"]] == [("/lines/2", "not_encodable")]
    assert topic_size(sender.topic, services) == 0
