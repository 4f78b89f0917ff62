"""Dead-lettering, in-process: the batch option, each record's raw bytes, how a mixed batch
is sorted into the stream's records and the dead letters (with their reasons), and the
per-record answer.  What Kafka receives is tested end to end in
tests/integration/test_ingest_dead_letters.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import Schema

from config.errors import InvalidInput, SchemaValidationFailed
from devices.registry import LatestSchema, _compile
from ingest import pipeline, records, services
from ingest.app import batch_options
from ingest.identity import Writer
from ingest.kafka import DeliveryOutcome, Outgoing

SCHEMA = {"type": "object", "properties": {"celsius": {"type": "number"}, "site": {"type": "string"}},
          "required": ["celsius"], "additionalProperties": False}  # fmt: skip
WRITER = Writer(pk=1, device_id="meter-1", status="active", tenant_id=1, tenant_slug="acme", tenant_status="active",
                tenant_max_records_per_second=100, tenant_max_bytes_per_second=10**6, group_id=1,
                group_slug="sensors", group_tenant_id=1, credential_policy="both", rate_limit_per_second=10,
                schema_subject="iot.acme.eu.temperature-value", stream_tenant_id=1,
                topic="iot.acme.eu.temperature")  # fmt: skip
RECEIVED_AT = 1_704_067_200.25  # 2024-01-01T00:00:00.250Z


def compiled(schema_id: int = 42) -> LatestSchema:
    return _compile("iot.acme.eu.temperature-value", schema_id, 3, Schema(json.dumps(SCHEMA), "JSON"))


# -- the option ------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "dead_letters"), [(b"invalid=reject", False), (b"invalid=dlq", True)])
def test_the_option_is_reject_or_dlq(query: bytes, dead_letters: bool) -> None:
    assert batch_options(query).dead_letters is dead_letters


@pytest.mark.parametrize(
    ("query", "code", "pointer"),
    [
        (b"invalid=DLQ", "invalid_parameter", "/query/invalid"),
        (b"invalid=", "invalid_parameter", "/query/invalid"),
        (b"invalid=dlq&invalid=reject", "invalid_parameter", "/query/invalid"),
        (b"invalids=dlq", "unknown_parameter", "/query/invalids"),
        (b"invalid=dlq&a/b=1", "unknown_parameter", "/query/a~1b"),
        (b"invalid", "invalid_parameter", "/query"),
        (b"invalid=%ff", "invalid_parameter", "/query/invalid"),
        (b"\xff=1", "invalid_parameter", "/query"),
    ],
)
def test_any_other_query_is_refused_with_a_pointer_at_the_parameter(query: bytes, code: str, pointer: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        batch_options(query)
    assert (refused.value.code, refused.value.fields[0]["pointer"]) == (code, pointer)
    assert "dlq" in refused.value.message


# -- raw bytes ---------------------------------------------------------------------------------


def test_a_batchs_records_are_found_as_sent_whatever_their_strings_hold() -> None:
    # given an envelope whose records hold brackets, quotes and escapes inside strings, and whitespace between
    body = b'{ "records" : [ {"site": "a]}{[\\"\\\\", "celsius": 1.50},\n\t{"celsius":2e0} ,{"n":[{"x":[]}]} ] }'
    parsed = records.parse_body(body)

    # then each record's bytes are exactly those of the body, and each parses to the record
    raws = records.raw_records(parsed)
    assert raws == [b'{"site": "a]}{[\\"\\\\", "celsius": 1.50}', b'{"celsius":2e0}', b'{"n":[{"x":[]}]}']
    assert [orjson.loads(raw) for raw in raws] == parsed.records


def test_a_single_record_and_ndjson_lines_are_their_own_bytes() -> None:
    assert records.raw_records(records.parse_body(b' \n{"celsius": 1} \n')) == [b'{"celsius": 1}']
    parsed = records.parse_body(b'{"celsius": 1}\n\n  {"celsius" : "x"}\r\n', records.NDJSON)
    assert records.raw_records(parsed) == [b'{"celsius": 1}', b'{"celsius" : "x"}']


# -- sorting a mixed batch -------------------------------------------------------------------


def sort(body: bytes, media: str = records.JSON) -> services.Prepared:
    return services.records_prepare(writer=WRITER, parsed=records.parse_body(body, media), schema=compiled(),
                                    request_id="req-1", dead_letters=True, received_at=RECEIVED_AT)  # fmt: skip


def test_valid_records_go_to_the_stream_and_invalid_ones_to_the_tenants_dlq_with_their_reasons() -> None:
    # given a batch whose records 1 and 3 do not match the schema
    body = b'{"records": [{"celsius": 1}, {"celsius": "warm"}, {"celsius": 3}, {"site": 7,  "x": 1}]}'

    # when it is sorted
    prepared = sort(body)

    # then the stream gets records 0 and 2, encoded, each saying its place in the request
    assert prepared.topic == "iot.acme.eu.temperature"
    assert prepared.outgoing.indexes == [0, 2]
    assert [orjson.loads(value[5:]) for value in prepared.outgoing.values] == [{"celsius": 1}, {"celsius": 3}]
    # and the tenant's DLQ gets records 1 and 3 as the device sent them, keyed by the device
    dead = prepared.dead
    assert dead is not None
    assert dead.topic == "iot.acme.dlq"
    assert dead.outgoing.key == b"meter-1"
    assert dead.outgoing.indexes == [1, 3]
    assert dead.outgoing.values == [b'{"celsius": "warm"}', b'{"site": 7,  "x": 1}']
    # with the reasons: the first failure in headers of its own, every failure in sluice-errors
    assert dict(dead.outgoing.headers) == {
        "sluice-tenant": b"acme", "sluice-group": b"sensors", "sluice-device": b"meter-1",
        "sluice-request-id": b"req-1", "sluice-topic": b"iot.acme.eu.temperature",
        "sluice-schema-subject": b"iot.acme.eu.temperature-value", "sluice-schema-id": b"42",
        "sluice-received-at": b"2024-01-01T00:00:00.250Z",
    }  # fmt: skip
    first, second = (dict(headers) for headers in dead.outgoing.record_headers or [])
    assert (first["sluice-error-code"], first["sluice-error-pointer"]) == (b"type", b"/records/1/celsius")
    assert [f["pointer"] for f in orjson.loads(second["sluice-errors"])] == [
        "/records/3/celsius", "/records/3/site", "/records/3/x"
    ]  # fmt: skip
    assert second["sluice-error-code"] == b"required"
    assert dead.errors[1]["code"] == SchemaValidationFailed.code


def test_an_ndjson_dead_letter_is_its_line_and_points_at_it() -> None:
    prepared = sort(b'{"celsius": 1}\n{"celsius": null}\n', records.NDJSON)
    assert prepared.dead is not None
    assert prepared.dead.outgoing.values == [b'{"celsius": null}']
    assert dict((prepared.dead.outgoing.record_headers or [[]])[0])["sluice-error-pointer"] == b"/lines/2/celsius"


def test_without_the_option_one_invalid_record_still_refuses_the_batch() -> None:
    with pytest.raises(SchemaValidationFailed):
        services.records_prepare(writer=WRITER, parsed=records.parse_body(b'{"records": [{"celsius": 1}, {}]}'),
                                 schema=compiled(), request_id="r")  # fmt: skip


def test_a_batch_that_is_all_valid_has_no_dead_letters_to_produce() -> None:
    prepared = sort(b'{"records": [{"celsius": 1}, {"celsius": 2}]}')
    assert prepared.dead is not None
    assert prepared.dead.outgoing.values == []
    assert prepared.outgoing.indexes == [0, 1]


# -- producing and answering -----------------------------------------------------------------


class FakeProducer:
    """Acknowledges each record at offset 100 + its index in the request, partition by topic;
    or leaves the DLQ's unreported."""

    def __init__(self, *, dlq_answers: bool = True) -> None:
        self.dlq_answers = dlq_answers
        self.sent: dict[str, Outgoing] = {}

    async def produce_and_wait_async(self, topic: str, outgoing: Outgoing) -> DeliveryOutcome:
        self.sent[topic] = outgoing
        indexes = outgoing.indexes or []
        if topic.endswith(".dlq") and not self.dlq_answers:
            return DeliveryOutcome(delivered=[None] * len(indexes), errors=[None] * len(indexes), queued=len(indexes))
        partition = 1 if topic.endswith(".dlq") else 0
        return DeliveryOutcome(delivered=[(partition, 100 + i) for i in indexes], errors=[None] * len(indexes),
                               queued=len(indexes))  # fmt: skip


def test_the_answer_says_per_record_where_it_went() -> None:
    prepared = sort(b'{"records": [{"celsius": 1}, {"celsius": "warm"}, {"celsius": 3}]}')
    producer = FakeProducer()

    answer = asyncio.run(services.records_produce(producer, prepared))  # type: ignore[arg-type]

    assert set(producer.sent) == {"iot.acme.eu.temperature", "iot.acme.dlq"}
    body = orjson.loads(answer.as_json())
    assert (body["accepted"], body["dead_lettered"], answer.produced) == (2, 1, 2)
    assert (body["topic"], body["dead_letter_topic"]) == ("iot.acme.eu.temperature", "iot.acme.dlq")
    assert body["records"][0] == {"partition": 0, "offset": 100}
    assert body["records"][1]["dead_letter"] == {"partition": 1, "offset": 101}
    assert body["records"][1]["error"]["fields"][0]["pointer"] == "/records/1/celsius"
    assert body["records"][2] == {"partition": 0, "offset": 102}


def test_an_unacknowledged_dead_letter_is_a_503_like_any_record() -> None:
    prepared = sort(b'{"records": [{"celsius": 1}, {"celsius": "warm"}]}')
    with pytest.raises(services.KafkaUnacknowledged) as refused:
        asyncio.run(services.records_produce(FakeProducer(dlq_answers=False), prepared))  # type: ignore[arg-type]
    assert refused.value.outcome.delivered == [(0, 100), None]
    assert refused.value.message.startswith("Kafka did not acknowledge 1 of 2 record(s)")
    # an Idempotency-Key settles into the same per-record answer once Kafka reports
    assert refused.value.answer is not None
    settled = orjson.loads(refused.value.answer(DeliveryOutcome([(0, 100), (1, 5)], [None, None], 2)))
    assert settled["records"][1]["dead_letter"] == {"partition": 1, "offset": 5}


def test_the_pipeline_runs_limits_schema_and_produce_for_any_transport() -> None:
    # given a plane whose limiter counts what it is asked and whose schema is the test's
    taken: list[Any] = []

    class Limiter:
        async def take(self, budget: Any) -> Any:
            taken.append(budget)
            return None

    class Schemas:
        async def get(self, subject: str) -> LatestSchema:
            assert subject == WRITER.schema_subject
            return compiled()

    class Plane:
        limiter, schemas, producer = Limiter(), Schemas(), FakeProducer()

    raws = [b'{"celsius": 1}', b'{"celsius": "x"}', b"\x00"]

    # when a transport that is not HTTP hands it three payloads, asking for dead letters
    answer = asyncio.run(pipeline.ingest_messages(Plane(), WRITER, raws, request_id="mqtt-1",  # type: ignore[arg-type]
                                                  options=pipeline.DEAD_LETTERS))  # fmt: skip

    # then the batch was charged to the device, and each record went where it belongs
    assert (taken[0].records, taken[0].body_bytes, taken[0].device_pk) == (3, 31, 1)
    assert isinstance(answer, services.Sorted)
    assert Plane.producer.sent["iot.acme.eu.temperature"].indexes == [0]
    assert Plane.producer.sent["iot.acme.dlq"].values == [b'{"celsius": "x"}', b"\x00"]
    assert [orjson.loads(answer.as_json())["records"][i]["error"]["code"] for i in (1, 2)] == [
        "schema_validation_failed", "malformed_json"
    ]  # fmt: skip


# -- a transport with one record per message -------------------------------------------------


def test_messages_that_are_not_json_objects_are_dead_letters_when_asked_and_refused_otherwise() -> None:
    # given three MQTT-style payloads: a good one, one that is not JSON, one that is not an object
    raws = [b'{"celsius": 1}', b'{"celsius": 2', b"[1]"]

    # when they are parsed without dead letters, then the batch is refused as malformed
    with pytest.raises(InvalidInput) as refused:
        records.parse_each(raws)
    assert refused.value.code == "malformed_json"

    # and when kept for dead letters, each bad payload is a dead letter with its reason, as sent
    parsed = records.parse_each(raws, keep_malformed=True)
    prepared = services.records_prepare(writer=WRITER, parsed=parsed, schema=compiled(), request_id="m",
                                        dead_letters=True, received_at=RECEIVED_AT)  # fmt: skip
    assert prepared.outgoing.indexes == [0]
    assert prepared.dead is not None
    assert prepared.dead.outgoing.values == [b'{"celsius": 2', b"[1]"]
    assert [dict(h)["sluice-error-code"] for h in prepared.dead.outgoing.record_headers or []] == [
        b"malformed_json", b"invalid_shape"
    ]  # fmt: skip
    # and a message's own fields are pointed at from its root
    bad = records.parse_each([b'{"celsius": "x"}'])
    one = services.records_prepare(writer=WRITER, parsed=bad, schema=compiled(), request_id="m", dead_letters=True,
                                   received_at=RECEIVED_AT).dead  # fmt: skip
    assert one is not None
    assert one.errors[0]["fields"][0]["pointer"] == "/celsius"


def test_malformed_messages_kept_aside_never_reach_the_stream_without_dead_letters() -> None:
    # given a payload kept aside as malformed (its placeholder {} would pass a schema without required fields)
    parsed = records.parse_each([b"not json"], keep_malformed=True)
    lenient = _compile("s-value", 1, 1, Schema(json.dumps({"type": "object"}), "JSON"))

    # when it is prepared all or nothing, then it is refused
    with pytest.raises(InvalidInput) as refused:
        services.records_prepare(writer=WRITER, parsed=parsed, schema=lenient, request_id="m")
    assert refused.value.code == "malformed_json"


# -- the MQTT bridge's own cases ---------------------------------------------------------


def test_a_batch_over_the_rate_goes_to_the_dlq_whole_with_one_reason() -> None:
    # given three messages, one of them not even JSON
    parsed = records.parse_each([b'{"celsius": 1}', b'{"celsius": "x"}', b"nope"], keep_malformed=True)
    # when the bridge keeps them as dead letters for being over the device's rate
    prepared = services.records_dead(writer=WRITER, parsed=parsed, schema=compiled(), request_id="mqtt-1",
                                     received_at=RECEIVED_AT, code="rate_limited", message="Over.")  # fmt: skip
    # then nothing goes to the stream, and each is in the DLQ as sent, with the one reason
    assert prepared.outgoing.values == []
    assert prepared.dead is not None
    letters = prepared.dead.outgoing
    assert letters.values == [b'{"celsius": 1}', b'{"celsius": "x"}', b"nope"]
    assert letters.indexes == [0, 1, 2]
    assert prepared.dead.topic == WRITER.dead_letter_topic
    assert {dict(reason)["sluice-error-code"] for reason in letters.record_headers} == {b"rate_limited"}
    common = dict(letters.headers)
    assert common["sluice-schema-id"] == b"42"
    assert common["sluice-received-at"] == b"2024-01-01T00:00:00.250Z"
    assert common["sluice-topic"] == WRITER.topic.encode()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"status": "disabled"}, "device_disabled"),
        ({"tenant_status": "suspended"}, "tenant_suspended"),
        ({"group_slug": "moved"}, "group_changed"),
        ({"stream_tenant_id": 2}, "tenant_mismatch"),
    ],
)
def test_the_bridge_writes_for_a_device_only_while_it_may(change: dict[str, Any], code: str) -> None:
    from dataclasses import replace

    from config.errors import SluiceError

    # an active device in the topic's group is written for, whatever its group's credential policy
    for policy in ("mtls", "oauth2", "both"):
        writer = replace(WRITER, credential_policy=policy)
        assert services.bridge_verdict(writer, tenant="acme", group="sensors", device="meter-1") is writer
    # a device that is gone, disabled, moved, or whose tenant is suspended is not
    with pytest.raises(SluiceError) as gone:
        services.bridge_verdict(None, tenant="acme", group="sensors", device="meter-1")
    assert gone.value.code == "unknown_device"
    with pytest.raises(SluiceError) as refused:
        services.bridge_verdict(replace(WRITER, **change), tenant="acme", group="sensors", device="meter-1")
    assert refused.value.code == code


def test_a_batch_whose_group_has_no_schema_names_the_subject_and_no_schema_id() -> None:
    parsed = records.parse_each([b'{"celsius": 1}'], keep_malformed=True)
    prepared = services.records_dead(writer=WRITER, parsed=parsed, schema=None, request_id="mqtt-2",
                                     received_at=RECEIVED_AT, code="schema_not_found", message="None.")  # fmt: skip
    assert prepared.dead is not None
    common = dict(prepared.dead.outgoing.headers)
    assert common["sluice-schema-subject"] == WRITER.schema_subject.encode()
    assert common["sluice-schema-id"] == b""
    assert prepared.dead.errors[0]["code"] == "schema_not_found"
