"""The ingest view and services without nginx: the test client adds nginx's headers itself
(with the real proxy secret).  Dependencies that fail are real clients pointed at closed
ports; what Kafka, the registry and Redis do when they work is tested end to end in
tests/integration/test_ingest.py."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest
import redis
from confluent_kafka.schema_registry import SchemaRegistryClient
from django.conf import settings
from django.test import Client
from django.utils import timezone

from certs.models import Certificate
from certs.services import Issued, certificate_issue_generated
from devices.models import Device, DeviceGroup, Stream
from ingest import identity, ratelimit, registry
from ingest.kafka import IngestProducer, OutgoingRecord, ingest_producer_config
from ingest.services import _kafka_failure, ingest_authorize
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.services import tenant_create

ACTOR = Actor.system("test")
CLOSED_PORT = 1


@pytest.fixture
def issued(db: None) -> Issued:
    tenant = tenant_create(actor=ACTOR, slug="acme", name="Acme")
    stream = Stream.objects.create(tenant=tenant, region="eu", type="temperature", partitions=1)
    group = DeviceGroup.objects.create(tenant=tenant, slug="sensors", region="eu", device_type="temperature",
                                       stream=stream, schema_subject="iot.acme.eu.temperature-value")  # fmt: skip
    device = Device.objects.create(tenant=tenant, group=group, device_id="meter-1")
    return certificate_issue_generated(actor=ACTOR, device=device, passphrase="long passphrase")


@pytest.fixture(autouse=True)
def fresh_schema_cache() -> None:
    registry.latest_schema_forget()


def post(issued: Issued | None, body: bytes = b'{"celsius": 1}', **headers: str) -> Any:
    forwarded = {"X-Sluice-Proxy-Secret": settings.SLUICE_PROXY_SECRET, "X-Sluice-Client-Verify": "NONE"}
    if issued is not None:
        forwarded |= {"X-Sluice-Client-Verify": "SUCCESS",
                      "X-Sluice-Client-Cert": quote(issued.certificate.certificate_pem)}  # fmt: skip
    client = Client(enforce_csrf_checks=True)
    return client.post("/ingest/v1/records", data=body, content_type=headers.pop("content_type", "application/json"),
                       headers={**forwarded, **headers}, secure=True)  # fmt: skip


def no_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "rate_limit_take", lambda *_a, **_k: None)


def test_without_a_certificate_it_is_401(db: None) -> None:
    response = post(None)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_certificate_required"


def test_it_needs_no_csrf_token_and_only_accepts_post(issued: Issued, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a registry that cannot be reached (so the request stops before Kafka)
    no_rate_limit(monkeypatch)
    monkeypatch.setattr(registry, "registry_client", lambda: SchemaRegistryClient(
        {"url": f"http://127.0.0.1:{CLOSED_PORT}/apis/ccompat/v7", "timeout": 2, "max.retries": 0}))  # fmt: skip
    # then a POST without any CSRF token gets past CSRF, and GET is not allowed
    answer = post(issued)
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, "registry_unavailable")
    refused = Client().get("/ingest/v1/records")
    assert (refused.status_code, refused.json()["error"]["code"], refused["Allow"]) == (
        405, "method_not_allowed", "POST"
    )  # fmt: skip


def test_an_unreachable_registry_is_503_with_retry_after(issued: Issued, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a registry URL nothing listens on
    no_rate_limit(monkeypatch)
    monkeypatch.setattr(registry, "registry_client", lambda: SchemaRegistryClient(
        {"url": f"http://127.0.0.1:{CLOSED_PORT}/apis/ccompat/v7", "timeout": 2, "max.retries": 0}))  # fmt: skip

    # when the device sends a record
    response = post(issued)

    # then it is told to come back, and why
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "registry_unavailable"
    assert int(response["Retry-After"]) > 0


def test_an_unreachable_rate_limiter_fails_closed(issued: Issued, monkeypatch: pytest.MonkeyPatch) -> None:
    # given Redis is unreachable
    dead = redis.Redis(host="127.0.0.1", port=CLOSED_PORT, socket_connect_timeout=0.5, socket_timeout=0.5)
    monkeypatch.setattr(ratelimit, "redis_client", lambda: dead)
    monkeypatch.setattr("ingest.metrics.redis_client", lambda: dead)

    # when the device sends a record
    response = post(issued)

    # then nothing is accepted unmetered: 503 with Retry-After
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "rate_limiter_unavailable"
    assert "Retry-After" in response


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"status": Certificate.Status.REVOKED}, "certificate_revoked"),
        ({"status": Certificate.Status.SUPERSEDED, "overlap_until": None}, "certificate_superseded"),
    ],
)
def test_the_database_status_of_the_certificate_counts(issued: Issued, change: dict[str, Any], code: str) -> None:
    # given nginx still accepts the certificate (its CRL not yet reloaded), but the database
    # already marks it
    Certificate.objects.filter(pk=issued.certificate.pk).update(**change)

    # when the device sends, then it is refused with the database's reason
    response = post(issued)
    assert (response.status_code, response.json()["error"]["code"]) == (403, code)


def test_a_superseded_certificate_works_during_its_overlap(issued: Issued) -> None:
    Certificate.objects.filter(pk=issued.certificate.pk).update(
        status=Certificate.Status.SUPERSEDED, overlap_until=timezone.now() + timezone.timedelta(days=1)
    )
    row, writer = identity.certificate_writer(issued.certificate.fingerprint_sha256) or (None, None)
    assert ingest_authorize(certificate=row, writer=writer).device_id == "meter-1"


@pytest.mark.parametrize(
    ("model", "change", "code"),
    [
        (Tenant, {"status": Tenant.Status.SUSPENDED}, "tenant_suspended"),
        (Device, {"status": Device.Status.DISABLED}, "device_disabled"),
        (DeviceGroup, {"credential_policy": DeviceGroup.CredentialPolicy.OAUTH2}, "credential_not_allowed"),
    ],
)
def test_identity_refusals(issued: Issued, model: Any, change: dict[str, Any], code: str) -> None:
    model.objects.all().update(**change)
    response = post(issued)
    assert (response.status_code, response.json()["error"]["code"]) == (403, code)


def test_identity_is_checked_before_the_body(issued: Issued) -> None:
    Tenant.objects.all().update(status=Tenant.Status.SUSPENDED)
    response = post(issued, body=b"x" * (2**20 + 10), content_type="text/plain")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "tenant_suspended")


def test_a_declared_length_over_the_limit_is_413_before_reading(issued: Issued) -> None:
    response = post(issued, body=b"{}" * (2**19 + 1))
    assert (response.status_code, response.json()["error"]["code"]) == (413, "payload_too_large")


def test_the_producer_is_idempotent_with_acks_all(db: None) -> None:
    config = ingest_producer_config(settings.SLUICE_RUNTIME)
    assert (config["enable.idempotence"], config["acks"]) == (True, "all")
    assert config["security.protocol"] == "SSL"


def test_records_kafka_did_not_acknowledge_are_503_and_said_to_be_uncertain() -> None:
    # given a producer whose broker never answers, giving up on a record after one second
    producer = IngestProducer({"bootstrap.servers": f"127.0.0.1:{CLOSED_PORT}", "enable.idempotence": True,
                               "acks": "all", "message.timeout.ms": 1000, "log_level": 0})  # fmt: skip
    try:
        # when a request's two records are produced
        outcome = asyncio.run(
            producer.produce_and_wait_async("iot.acme.eu.temperature", [OutgoingRecord(b"k", b"v", [])] * 2, timeout=5)
        )
    finally:
        producer.close(timeout=0)

    # then the outcome is incomplete, and the error says what may have been written
    assert not outcome.complete
    error = _kafka_failure("iot.acme.eu.temperature", outcome)
    assert (error.status, error.code, error.retry_after) == (503, "kafka_unavailable", 5)
    assert "did not acknowledge 2 of 2 record(s)" in error.message
    assert "may or may not have been written" in error.message
