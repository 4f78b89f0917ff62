"""Idempotency-Key end to end: retries through the real nginx never write a record twice,
as counted by a consumer reading the real topic; and what a key keeps when Kafka did not
answer in time (in-process app, real Redis, registry and Kafka)."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import pytest
import redis
import redis.asyncio

from config.env import Runtime
from ingest import idempotency, kafka
from ingest.app import IngestApp
from ingest.kafka import IngestProducer
from tests.ingest.test_app import Client, nginx_headers
from tests.integration.test_ingest import Sender, consume, topic_size
from tests.integration.test_ingest import make_sender as make_sender  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
BATCH = {"records": [{"celsius": 20.5}, {"celsius": 20.6}, {"celsius": 20.7}]}


def test_a_retry_with_the_same_key_gets_the_first_answer_and_writes_nothing(
    services: Runtime, make_sender: Any
) -> None:
    sender: Sender = make_sender()
    key = {"Idempotency-Key": '"4f1c2d9e-7a41-4c53-9a0b-2f6d8e1b5c07"'}

    # when a device sends a batch with a key, and sends it again (its answer was lost, say)
    first = sender.post(BATCH, headers=key)
    again = sender.post(BATCH, headers=key)
    bare = sender.post(BATCH, headers={"Idempotency-Key": "4f1c2d9e-7a41-4c53-9a0b-2f6d8e1b5c07"})

    # then the retries answer with the first answer, its request id, and say it is a replay
    assert first[0] == 200, first[1]
    assert "Idempotency-Replayed" not in first[2]
    for status, body, headers in (again, bare):
        assert (status, body) == (200, first[1])
        assert headers["Idempotency-Replayed"] == "true"
        assert headers["X-Request-Id"] == first[2]["X-Request-Id"]
    # and a consumer reads each record exactly once, at the offsets the answer named (and the
    # topic's high watermarks say no other record was ever written)
    messages = consume(sender.topic, services, expected=3)
    assert len(messages) == 3
    assert [{"partition": m.partition(), "offset": m.offset()} for m in messages] == first[1]["records"]
    assert topic_size(sender.topic, services) == 3


def test_a_key_is_the_devices_own_and_names_one_body(services: Runtime, make_sender: Any) -> None:
    one: Sender = make_sender()
    other: Sender = make_sender(tenant=one.device.tenant)
    key = {"Idempotency-Key": "batch-0001"}
    assert one.post(BATCH, headers=key)[0] == 200

    # another device's same key is another key: written
    status, body, headers = other.post(BATCH, headers=key)
    assert status == 200, body
    assert "Idempotency-Replayed" not in headers

    # the same key with another body is refused, and nothing is written
    status, body, _ = one.post({"celsius": 99.0}, headers=key)
    assert (status, body["error"]["code"]) == (422, "idempotency_key_reused"), body
    assert topic_size(one.topic, services) == 3
    assert topic_size(other.topic, services) == 3


@pytest.mark.parametrize("value", ['"', '""', "a" * 256, "with space", 'in"side', "back\\slash", "é"])
def test_a_malformed_key_is_400_before_anything_is_written(services: Runtime, make_sender: Any, value: str) -> None:
    sender: Sender = make_sender()
    status, body, _ = sender.post(BATCH, headers={"Idempotency-Key": value})
    assert (status, body["error"]["code"]) == (400, "invalid_idempotency_key"), body
    assert topic_size(sender.topic, services) == 0


def test_a_refused_request_frees_its_key(services: Runtime, make_sender: Any) -> None:
    # given a request refused by the schema (nothing written)
    sender: Sender = make_sender()
    key = {"Idempotency-Key": "reading-7"}
    invalid = {"records": [{"celsius": "warm"}]}
    status, body, _ = sender.post(invalid, headers=key)
    assert (status, body["error"]["code"]) == (422, "schema_validation_failed")

    # when it is sent again, then it is judged again (not replayed): a refusal keeps nothing
    status, body, headers = sender.post(invalid, headers=key)
    assert status == 422
    assert "Idempotency-Replayed" not in headers
    assert topic_size(sender.topic, services) == 0


def test_concurrent_requests_with_one_key_write_once(services: Runtime, make_sender: Any) -> None:
    # given a device that fires the same request eight times at once
    sender: Sender = make_sender()
    key = {"Idempotency-Key": "burst-1"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: sender.post(BATCH, headers=key), range(8)))

    # then each answer is the one write's (200) or "in use" (409 + Retry-After), nothing else
    statuses = sorted(a[0] for a in answers)
    assert set(statuses) <= {200, 409}, [a[1] for a in answers]
    written = [a for a in answers if a[0] == 200]
    assert written
    assert all(a[1] == written[0][1] for a in written)
    for status, body, headers in answers:
        if status == 409:
            assert body["error"]["code"] == "idempotency_key_in_use"
            assert headers["Retry-After"] == "1"
    # and once it has finished, a retry gets its answer; the topic has each record once
    status, body, headers = sender.post(BATCH, headers=key)
    assert (status, body, headers["Idempotency-Replayed"]) == (200, written[0][1], "true")
    assert len(consume(sender.topic, services, expected=3)) == 3
    assert topic_size(sender.topic, services) == 3


def _redis(services: Runtime) -> redis.Redis:
    return redis.Redis.from_url(services.redis_url())


def test_a_request_kafka_answered_too_late_is_settled_for_its_retry(
    services: Runtime, make_sender: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker that stops waiting for Kafka at once (its records are delivered later)
    sender: Sender = make_sender()
    client = Client(IngestApp())
    monkeypatch.setattr(kafka, "DELIVERY_WAIT_SECONDS", 0.0)
    headers = nginx_headers(sender.issued, **{"Idempotency-Key": "late-1"})
    body = b'{"records": [{"celsius": 1.5}, {"celsius": 1.6}]}'
    try:
        # when a request with a key gets its 503
        answer = client.request(body=body, headers=headers)
        assert (answer.status, answer.code) == (503, "kafka_unavailable"), answer.body
        assert "retry with the same Idempotency-Key" in answer.body["error"]["message"]
        # then the key stays held while librdkafka still has the records
        keys = _redis(services).keys(f"{idempotency.KEY_PREFIX}:*:{sender.device.pk}:*")
        assert len(keys) == 1
        assert _redis(services).ttl(keys[0]) > idempotency.CLAIM_SECONDS
        # and once Kafka acknowledged them, a retry gets the 200 they earned, without a write
        deadline = time.monotonic() + 15
        retried = client.request(body=body, headers=headers)
        while retried.status == 409 and time.monotonic() < deadline:
            assert retried.code == "idempotency_key_in_use"
            client.settle(0.2)
            retried = client.request(body=body, headers=headers)
    finally:
        client.close()
    assert retried.status == 200, retried.body
    assert retried.headers["idempotency-replayed"] == "true"
    assert retried.headers["x-request-id"] == answer.headers["x-request-id"]
    messages = consume(sender.topic, services, expected=2)
    assert [{"partition": m.partition(), "offset": m.offset()} for m in messages] == retried.body["records"]
    assert topic_size(sender.topic, services) == 2


def test_records_kafka_never_confirmed_leave_the_key_saying_so(
    services: Runtime, make_sender: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker whose producer's broker never answers and which gives up after 2 s
    sender: Sender = make_sender()
    client = Client(IngestApp())
    client.worker()._producer = IngestProducer(
        {
            "bootstrap.servers": "127.0.0.1:1",
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 2000,
            "log_level": 0,
        }
    )
    monkeypatch.setattr(kafka, "DELIVERY_WAIT_SECONDS", 0.5)
    headers = nginx_headers(sender.issued, **{"Idempotency-Key": "lost-1"})
    try:
        # when the request gets its 503, and is retried while the records are in doubt
        answer = client.request(headers=headers)
        assert (answer.status, answer.code) == (503, "kafka_unavailable")
        waiting = client.request(headers=headers)
        assert waiting.code == "idempotency_key_in_use"
        assert waiting.headers["retry-after"] == "5"  # Kafka is away: no point in asking every second
        # then once librdkafka gave up, the key answers that the outcome is unknown, for good
        client.settle(3.0)
        final = client.request(headers=headers)
        assert (final.status, final.code) == (409, "idempotency_outcome_unknown"), final.body
        assert "new Idempotency-Key" in final.body["error"]["message"]
        assert client.request(headers=headers).code == "idempotency_outcome_unknown"
    finally:
        client.worker()._producer.close(timeout=0)
        client.close()
    assert topic_size(sender.topic, services) == 0


def test_redis_down_refuses_a_request_with_a_key(services: Runtime, make_sender: Any) -> None:
    sender: Sender = make_sender()
    client = Client(IngestApp())
    worker = client.worker()
    worker.limiter._client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        # the rate limiter's lease may still cover it: the key is what needs Redis
        worker.limiter._take_tenant = _no_redis_needed  # type: ignore[method-assign]
        answer = client.request(headers=nginx_headers(sender.issued, **{"Idempotency-Key": "k-1"}))
    finally:
        client.close()
    assert (answer.status, answer.code) == (503, "idempotency_unavailable")
    assert answer.headers["retry-after"] == "5"
    assert topic_size(sender.topic, services) == 0


async def _no_redis_needed(_budget: Any) -> int:
    return 1_000


def test_a_request_that_fails_unexpectedly_before_producing_frees_its_key(
    services: Runtime, make_sender: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a worker whose schema lookup fails with a bug (a 500, nothing produced)
    sender: Sender = make_sender()
    client = Client(IngestApp())
    headers = nginx_headers(sender.issued, **{"Idempotency-Key": "bug-1"})
    worker = client.worker()
    real_get = worker.schemas.get

    async def broken(subject: str) -> Any:
        raise RuntimeError("a bug")

    try:
        monkeypatch.setattr(worker.schemas, "get", broken)
        assert client.request(headers=headers).status == 500
        client.settle(0.2)  # the key is freed in the background
        # when the bug is gone, then the retry is judged afresh (not "in use" for 90 s)
        monkeypatch.setattr(worker.schemas, "get", real_get)
        retried = client.request(headers=headers)
    finally:
        client.close()
    assert retried.status == 200, retried.body
    assert "idempotency-replayed" not in retried.headers
    assert topic_size(sender.topic, services) == 1


def test_the_same_bytes_as_another_media_type_are_another_body(services: Runtime, make_sender: Any) -> None:
    sender: Sender = make_sender()
    key = {"Idempotency-Key": "media-1"}
    body = b'{"celsius": 1.5}'
    assert sender.post(raw=body, headers=key)[0] == 200
    status, answer, _ = sender.post(raw=body, content_type="application/x-ndjson", headers=key)
    assert (status, answer["error"]["code"]) == (422, "idempotency_key_reused"), answer
