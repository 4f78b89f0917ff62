"""Dead letters over HTTPS end to end: a device POSTs a mixed batch through nginx with
``?invalid=dlq``; the valid records land in its stream and the invalid ones in its tenant's
DLQ topic on the real Kafka, as sent, with their reasons in headers; the tenant's consumer
granted ``dead_letters`` reads them with its own credentials, and nobody of another tenant
can.  Without the option a batch stays all or nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError

from config.env import Runtime
from devices.registry import registry_client
from tests.integration.test_acls_live import Provisioned, provision
from tests.integration.test_ingest import Sender, consume, topic_size
from tests.integration.test_kafka_consumers import capture as capture  # the fixture
from tests.integration.test_kafka_consumers import make_reader, new_consumer
from tests.integration.test_metrics_live import eventually, value
from tests.schemas import READING_JSON

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Records 1 and 3 break the schema (celsius is a number and required, site a string);
# record 3 is spaced oddly on purpose: its dead letter keeps the bytes as they were sent.
MIXED = (b'{"records": [{"celsius": 21.5, "site": "berlin-1"}, {"celsius": "warm"},\n'
         b'  {"celsius": 22.0},   {"site":  7, "colour": 3}  ]}')  # fmt: skip


@pytest.fixture
def tenant_a(services: Runtime, capture: Callable[..., Any]) -> Provisioned:
    """A tenant made through the services: its DLQ topic exists, as it does for every tenant."""
    return provision(capture, "dla", {"sensors": "temperature"}, runtime=services)


@pytest.fixture
def tenant_b(services: Runtime, capture: Callable[..., Any]) -> Provisioned:
    return provision(capture, "dlb", {"sensors": "temperature"}, runtime=services)


def read_all(config: dict[str, Any], topic: str, group: str, want: int) -> tuple[list[Any], set[int]]:
    """Read ``topic`` from the start with ``config``'s credentials: the records, and error codes seen."""
    consumer = new_consumer(config, group)
    consumer.subscribe([topic])
    got: list[Any] = []
    errors: set[int] = set()
    try:
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is None:
                if len(got) >= want or errors:
                    break
                continue
            if message.error():
                errors.add(message.error().code())
            else:
                got.append(message)
    finally:
        consumer.close()
    return got, errors


def test_a_mixed_batch_with_dlq_writes_the_valid_records_and_dead_letters_the_others(
    services: Runtime, tenant_a: Provisioned, tenant_b: Provisioned, make_sender: Callable[..., Sender]
) -> None:
    # given a device of tenant A, and a consumer of A granted the dead letters
    sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)
    dlq = tenant_a.tenant.dlq_topic
    reader = make_reader(tenant_a, "ops", dead_letters=True)

    # when it POSTs a batch with two invalid records, asking for dead letters
    status, body, headers = sender.post(raw=MIXED, query="?invalid=dlq")

    # then the answer is per record: 0 and 2 in the stream, 1 and 3 in the DLQ with why
    assert status == 200, body
    assert (body["accepted"], body["dead_lettered"], body["topic"], body["dead_letter_topic"]) == (
        2, 2, sender.topic, dlq)  # fmt: skip
    outcomes = body["records"]
    assert [("dead_letter" in outcome) for outcome in outcomes] == [False, True, False, True]
    assert outcomes[1]["error"]["code"] == "schema_validation_failed"
    assert [f["pointer"] for f in outcomes[3]["error"]["fields"]] == ["/records/3/celsius", "/records/3/site"]
    # and the stream holds the valid records where the answer says, saying their place in the request
    stream = consume(sender.topic, services, expected=2)
    assert {(m.partition(), m.offset()) for m in stream} == {(o["partition"], o["offset"]) for o in outcomes[::2]}
    assert sorted(dict(m.headers())["sluice-record-index"] for m in stream) == [b"0", b"2"]
    assert sorted(json.loads(m.value()[5:])["celsius"] for m in stream) == [21.5, 22.0]
    # and A's consumer reads the dead letters with its own credentials (certificate and token):
    # the bytes as sent, keyed by the device, with the reasons in headers
    by_token, errors = read_all(reader.configs["oauth"], dlq, f"{reader.group_prefix}dlq-oauth", want=2)
    assert (len(by_token), errors) == (2, set())
    letters, errors = read_all(reader.configs["mtls"], dlq, f"{reader.group_prefix}dlq", want=2)
    assert errors == set()
    assert [m.value() for m in letters] == [b'{"celsius": "warm"}', b'{"site":  7, "colour": 3}']
    assert {m.key() for m in letters} == {sender.device.device_id.encode()}
    first = dict(letters[0].headers())
    schema_id = registry_client().get_latest_version(sender.subject).schema_id
    assert {name: first[name] for name in (
        "sluice-tenant", "sluice-group", "sluice-device", "sluice-request-id", "sluice-record-index", "sluice-topic",
        "sluice-schema-id", "sluice-error-code", "sluice-error-pointer")} == {
        "sluice-tenant": tenant_a.tenant.slug.encode(), "sluice-group": sender.device.group.slug.encode(),
        "sluice-device": sender.device.device_id.encode(), "sluice-request-id": headers["X-Request-ID"].encode(),
        "sluice-record-index": b"1", "sluice-topic": sender.topic.encode(), "sluice-schema-id": str(schema_id).encode(),
        "sluice-error-code": b"type", "sluice-error-pointer": b"/records/1/celsius",
    }  # fmt: skip
    assert first["sluice-received-at"].endswith(b"Z")
    assert [f["pointer"] for f in orjson.loads(dict(letters[1].headers())["sluice-errors"])] == [
        "/records/3/celsius", "/records/3/site"]  # fmt: skip
    assert {(m.partition(), m.offset()) for m in letters} == {
        (o["dead_letter"]["partition"], o["dead_letter"]["offset"]) for o in outcomes[1::2]}  # fmt: skip
    # and the metrics count the dead letters by reason
    labels = {"tenant": tenant_a.tenant.slug, "code": "schema_validation_failed", "transport": "https"}
    samples = eventually(services, lambda s: value(s, "sluice_ingest_dead_letters_total", **labels) == 2)
    assert value(samples, "sluice_ingest_dead_letters_total", **labels) == 2

    # and nothing reached tenant B: its DLQ is empty, and B's consumer may not read A's
    assert topic_size(tenant_b.tenant.dlq_topic, services) == 0
    theirs = make_reader(tenant_b, "ops", dead_letters=True)
    for kind, config in theirs.configs.items():
        got, refused = read_all(config, dlq, f"{theirs.group_prefix}{kind}", want=1)
        assert (got, KafkaError.TOPIC_AUTHORIZATION_FAILED in refused) == ([], True), kind


def test_without_the_option_a_mixed_batch_is_refused_and_nothing_is_written(
    services: Runtime, tenant_a: Provisioned, make_sender: Callable[..., Sender]
) -> None:
    # given a device of A
    sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)

    # when it POSTs the same mixed batch without the option, or with invalid=reject
    refusals = [sender.post(raw=MIXED, query=query) for query in ("", "?invalid=reject")]

    # then it is the all-or-nothing 422 it always was, and neither the stream nor the DLQ got anything
    for status, body, _ in refusals:
        assert (status, body["error"]["code"]) == (422, "schema_validation_failed"), body
    assert topic_size(sender.topic, services) == 0
    assert topic_size(tenant_a.tenant.dlq_topic, services) == 0


def test_ndjson_dead_letters_are_the_lines_as_sent_and_bad_options_are_400(
    services: Runtime, tenant_a: Provisioned, make_sender: Callable[..., Sender]
) -> None:
    sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)
    # a misspelt option or value is refused, and nothing is written
    for query, code in (("?invalid=DLQ", "invalid_parameter"), ("?dlq=1", "unknown_parameter")):
        status, body, _ = sender.post(raw=b'{"celsius": "warm"}', query=query)
        assert (status, body["error"]["code"]) == (400, code), body
        assert "invalid=" in body["error"]["message"] or "'invalid'" in body["error"]["message"]

    status, body, _ = sender.post(raw=b'{"celsius": 1}\n{"celsius" :true}\n', content_type="application/x-ndjson",
                                  query="?invalid=dlq")  # fmt: skip

    assert status == 200, body
    assert body["records"][1]["error"]["fields"][0]["pointer"] == "/lines/2/celsius"
    (letter,) = consume(tenant_a.tenant.dlq_topic, services, expected=1)
    assert letter.value() == b'{"celsius" :true}'
    assert dict(letter.headers())["sluice-error-pointer"] == b"/lines/2/celsius"
    assert topic_size(sender.topic, services) == 1


def test_a_retry_with_the_same_idempotency_key_writes_no_dead_letter_twice(
    services: Runtime, tenant_a: Provisioned, make_sender: Callable[..., Sender]
) -> None:
    # given a device that sent a mixed batch with dead letters and an Idempotency-Key
    sender = make_sender("JSON", READING_JSON, tenant=tenant_a.tenant)
    key = {"Idempotency-Key": '"dlq-batch-1"'}
    first = sender.post(raw=MIXED, query="?invalid=dlq", headers=key)
    assert first[0] == 200, first[1]

    # when it retries the same batch with the same key, and sends it with the key but without the option
    again = sender.post(raw=MIXED, query="?invalid=dlq", headers=key)
    other = sender.post(raw=MIXED, headers=key)

    # then the retry is the first answer replayed, and the key named the request with its option
    assert (again[0], again[1], again[2]["Idempotency-Replayed"]) == (200, first[1], "true")
    assert (other[0], other[1]["error"]["code"]) == (422, "idempotency_key_reused")
    # and each topic holds its records once
    assert topic_size(sender.topic, services) == 2
    assert topic_size(tenant_a.tenant.dlq_topic, services) == 2
