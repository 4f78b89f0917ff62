"""Sluice's own metrics as Prometheus scrapes them: ``GET /metrics`` through the real nginx
with the scrape token, after real ingest requests, a Celery task on a real worker, real
consumer groups on the test Kafka and a real ACL reconcile."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from certs.models import Certificate
from certs.platform_pki import PlatformPki
from config.env import Runtime
from devices.models import Consumer
from ingest import observed
from ingest.acl_sync import acls_reconcile
from ingest.kafka import admin_config
from tests.conftest import unique_slug

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(services: Runtime, path: str, token: str | None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(PlatformPki(services.pki_dir).trust_bundle))
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"https://127.0.0.1:{services.ports.web}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(services: Runtime) -> Samples:
    """One scrape as Prometheus does it (the scrape token), parsed by prometheus-client."""
    status, text = get(services, "/metrics", services.metrics_scrape_token)
    assert status == 200, text[:500]
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def eventually(services: Runtime, ready: Callable[[Samples], bool], timeout: float = 15.0) -> Samples:
    """Scrape until ``ready`` (ingest workers flush once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(services)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def histogram_count(samples: Samples, name: str, **labels: str) -> float:
    return value(samples, f"{name}_count", **labels) or 0.0


# -- ingest ----------------------------------------------------------------------------------


def test_ingest_requests_raise_records_bytes_requests_refusals_and_latency(services: Runtime, make_sender: Any) -> None:
    before = scrape(services)
    # given a device of a fresh tenant (its own labels: the counts below are all its)
    sender = make_sender()
    tenant, stream = sender.device.tenant.slug, sender.topic.removeprefix(f"iot.{sender.device.tenant.slug}.")

    # when it sends two accepted requests (3 records in all) and one Kafka never sees
    assert sender.post({"records": [{"celsius": 1.0}, {"celsius": 2.0}]})[0] == 200
    assert sender.post({"celsius": 3.0})[0] == 200
    status, body, _ = sender.post({"celsius": "warm"})
    assert status == 422, body
    code = body["error"]["code"]

    # then the scrape counts them under the tenant and its stream
    def flushed(s: Samples) -> bool:
        return (value(s, "sluice_ingest_requests_total", tenant=tenant, status="422") == 1
                and value(s, "sluice_ingest_requests_total", tenant=tenant, status="200") == 2)  # fmt: skip

    samples = eventually(services, flushed)
    assert value(samples, "sluice_ingest_records_total", tenant=tenant, stream=stream) == 3
    assert (value(samples, "sluice_ingest_bytes_total", tenant=tenant, stream=stream) or 0) > 30
    assert value(samples, "sluice_ingest_requests_total", tenant=tenant, status="200") == 2
    assert value(samples, "sluice_ingest_requests_total", tenant=tenant, status="422") == 1
    assert value(samples, "sluice_ingest_refusals_total", tenant=tenant, code=code) == 1
    # and the latencies: two accepted and one refused answer, two deliveries to Kafka
    for outcome, n in (("accepted", 2), ("refused", 1)):
        grown = histogram_count(samples, "sluice_ingest_request_duration_seconds", outcome=outcome) - histogram_count(
            before, "sluice_ingest_request_duration_seconds", outcome=outcome
        )
        assert grown >= n, outcome
    delivered = histogram_count(samples, "sluice_ingest_delivery_duration_seconds") - histogram_count(
        before, "sluice_ingest_delivery_duration_seconds"
    )
    assert delivered >= 2
    assert (value(samples, "sluice_ingest_delivery_duration_seconds_sum") or 0) > 0
    assert value(samples, "sluice_ingest_producer_queue_messages") is not None
    # and the totals of every node the console reads are still served
    assert (value(samples, "sluice_ingest_records_accepted_total") or 0) >= 3
    # and no device is named anywhere
    assert all(sender.device.device_id not in str(labels) for _, labels in samples)


def test_rate_limited_requests_are_counted_by_scope(services: Runtime, make_sender: Any) -> None:
    # given a device allowed one request per second
    sender = make_sender(rate=1)
    tenant = sender.device.tenant.slug

    # when it sends several at once
    refused = sum(sender.post({"celsius": float(i)})[0] == 429 for i in range(5))
    assert refused

    # then they are counted as its device limit's, and as refusals with their code
    samples = eventually(services, lambda s: value(s, "sluice_ingest_rate_limited_total", tenant=tenant,
                                                   scope="device") == refused)  # fmt: skip
    assert value(samples, "sluice_ingest_rate_limited_total", tenant=tenant, scope="device") == refused
    assert value(samples, "sluice_ingest_refusals_total", tenant=tenant, code="rate_limited") == refused
    assert value(samples, "sluice_ingest_requests_total", tenant=tenant, status="429") == refused


def test_a_request_without_credentials_is_counted_without_a_tenant(services: Runtime) -> None:
    def refusals(samples: Samples) -> float:
        return value(samples, "sluice_ingest_refusals_total", tenant="", code="client_certificate_required") or 0

    before = refusals(scrape(services))
    context = ssl.create_default_context(cafile=str(PlatformPki(services.pki_dir).trust_bundle))
    request = urllib.request.Request(f"https://127.0.0.1:{services.ports.web}/ingest/v1/records", data=b"{}",
                                     headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=30)  # noqa: S310
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["error"]["code"] == "client_certificate_required"
    samples = eventually(services, lambda s: refusals(s) > before)
    assert refusals(samples) == before + 1
    assert (value(samples, "sluice_ingest_requests_total", tenant="", status="401") or 0) >= 1


# -- the scrape token ------------------------------------------------------------------------


def test_the_scrape_token_opens_metrics_and_nothing_else(services: Runtime) -> None:
    token = services.metrics_scrape_token
    # the token scrapes
    status, text = get(services, "/metrics", token)
    assert status == 200
    assert "sluice_state_disk_free_bytes" in text
    # a wrong one, or none, does not
    assert get(services, "/metrics", token[:-2] + "xx")[0] == 401
    assert get(services, "/metrics", None)[0] in (401, 403)
    # and it is no credential anywhere else: the REST API's reads of tenants and tokens
    for path in ("/api/v1/tenants/", "/api/v1/tokens/"):
        assert get(services, path, token)[0] == 401, path


def test_operators_still_read_metrics_with_their_session(operator_client: Any, tenant: Any) -> None:
    response = operator_client.get("/metrics")
    assert response.status_code == 200
    families = text_string_to_metric_families(response.content.decode())
    samples = {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}
    assert value(samples, "sluice_streams", tenant="acme", status="pending") == 1


def test_a_tenant_user_cannot_read_metrics(admin_client: Any) -> None:
    assert admin_client.get("/metrics").status_code == 403


# -- Celery ----------------------------------------------------------------------------------


def test_a_celery_task_run_is_counted_with_its_duration(services: Runtime, celery_worker: Any) -> None:
    from config.celery import ping

    def runs(samples: Samples) -> float:
        return value(samples, "sluice_celery_tasks_total", task="sluice.ping", outcome="success") or 0

    before = scrape(services)
    assert ping.delay("metrics").get(timeout=60) == "metrics"
    samples = eventually(services, lambda s: runs(s) > runs(before))
    assert runs(samples) == runs(before) + 1
    assert (
        histogram_count(samples, "sluice_celery_task_duration_seconds", task="sluice.ping")
        == histogram_count(before, "sluice_celery_task_duration_seconds", task="sluice.ping") + 1
    )


# -- certificates ----------------------------------------------------------------------------


def test_certificate_gauges_count_expiry_and_what_is_at_risk(services: Runtime, make_sender: Any) -> None:
    # given a device whose only certificate expires in five days, and nothing replacing it
    sender = make_sender()
    tenant = sender.device.tenant.slug
    certificate = Certificate.objects.get(serial=sender.issued.certificate.serial)
    Certificate.objects.filter(pk=certificate.pk).update(not_after=timezone.now() + dt.timedelta(days=5))

    samples = scrape(services)
    assert value(samples, "sluice_certificates", tenant=tenant, status="active") == 1
    for within in ("7d", "30d", "90d"):
        assert value(samples, "sluice_certificates_expiring", tenant=tenant, within=within) == 1
    assert value(samples, "sluice_certificates_at_risk", tenant=tenant) == 1
    assert value(samples, "sluice_devices", tenant=tenant) == 1
    ca = sender.device.tenant.cas.get(status="active")
    if ca.crl_next_update is not None:
        assert value(samples, "sluice_crl_next_update_timestamp_seconds", ca=tenant) == ca.crl_next_update.timestamp()
    assert (value(samples, "sluice_crl_next_update_timestamp_seconds", ca="platform") or 0) > time.time()

    # when it expires in 60 days instead, then it is only in the 90-day bucket, and not at risk
    Certificate.objects.filter(pk=certificate.pk).update(not_after=timezone.now() + dt.timedelta(days=60))
    samples = scrape(services)
    assert [value(samples, "sluice_certificates_expiring", tenant=tenant, within=w) for w in ("7d", "30d", "90d")] == [
        0,
        0,
        1,
    ]
    assert value(samples, "sluice_certificates_at_risk", tenant=tenant) == 0


# -- consumer lag ----------------------------------------------------------------------------


def test_consumer_lag_is_what_its_groups_have_not_committed(services: Runtime, make_sender: Any) -> None:
    # given a tenant consumer, and five records in its tenant's stream
    sender = make_sender()
    tenant = sender.device.tenant
    Consumer.objects.create(tenant=tenant, slug="backend")
    assert sender.post({"records": [{"celsius": float(i)} for i in range(5)]})[0] == 200

    # when one of its groups reads them all but commits only after the second
    group = f"{tenant.slug}.backend.{unique_slug('g')}"
    reader = KafkaConsumer({**admin_config(services), "group.id": group, "auto.offset.reset": "earliest",
                            "enable.auto.commit": False})  # fmt: skip
    try:
        reader.subscribe([sender.topic])
        messages: list[Any] = []
        deadline = time.monotonic() + 30
        while len(messages) < 5 and time.monotonic() < deadline:
            message = reader.poll(1.0)
            if message is not None and not message.error():
                messages.append(message)
        assert len(messages) == 5
        second = messages[1]  # one device: one key, one partition
        reader.commit(offsets=[TopicPartition(sender.topic, second.partition(), second.offset() + 1)],
                      asynchronous=False)  # fmt: skip
    finally:
        reader.close()

    # then the lag task measures three records behind, and the scrape says so
    lag = observed.consumer_lag_refresh()
    assert lag[(tenant.slug, "backend")] == 3
    samples = scrape(services)
    assert value(samples, "sluice_consumer_lag_records", tenant=tenant.slug, consumer="backend") == 3


# -- ACL drift -------------------------------------------------------------------------------


def test_acl_drift_is_what_the_last_reconcile_found(
    services: Runtime, make_sender: Any, kafka_admin: AdminClient
) -> None:
    # given a stray binding in a tenant's namespace
    sender = make_sender()
    slug = sender.device.tenant.slug
    stray = AclBinding(ResourceType.TOPIC, sender.topic, ResourcePatternType.LITERAL,
                       f"User:{slug}.sensors.crt_ghost", "*", AclOperation.WRITE, AclPermissionType.ALLOW)  # fmt: skip
    for future in kafka_admin.create_acls([stray]).values():
        future.result(30)
    started = time.time()

    # when a report-only reconcile runs, then the scrape shows its count for the tenant
    report = acls_reconcile(fix=False)
    samples = scrape(services)
    assert report.per_tenant[slug] >= 1
    assert value(samples, "sluice_acl_drift_bindings", tenant=slug) == report.per_tenant[slug]
    assert (value(samples, "sluice_acl_reconcile_timestamp_seconds") or 0) >= started

    # and once repaired, the next reconcile finds none
    acls_reconcile(fix=True)
    acls_reconcile(fix=False)
    assert value(scrape(services), "sluice_acl_drift_bindings", tenant=slug) == 0
