"""NDJSON batches end to end: through the real nginx into Kafka, and back through
confluent-kafka's deserializers reading the schemas from the registry."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from config.env import Runtime
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
