"""Kafka client quotas from the tenant's plan, on the real broker: each Kafka-direct
credential's principal gets its tenant's producer byte rate and request percentage, the
broker throttles a producer past them, a plan change reaches the broker, and a credential's
end removes its quota."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from certs.models import Certificate
from certs.services import certificate_revoke
from config.env import Runtime
from ingest.kafka_admin import described_quotas as described
from ingest.quotas import user_entity
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
from tenants.services import tenant_update
from tests.integration.test_acls_live import eager_tasks, provision

pytestmark = [pytest.mark.integration, pytest.mark.django_db]
ACTOR = Actor.system("test")
RATE = 50_000  # bytes per second: small, so throttling shows within seconds
# The broker measures a principal's rate over at least (quota.window.num - 1) x
# quota.window.size.seconds = 10 s, so a new principal may send about 10 s' worth at once
# before it is throttled; after t seconds it has been allowed about RATE x (t + 10) bytes.
WINDOW_SECONDS = 10
PAYLOAD = 20 * RATE


def test_a_kafka_direct_producer_is_throttled_to_its_tenants_plan(
    services: Runtime, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    capture = django_capture_on_commit_callbacks
    # given a tenant whose plan allows each Kafka-direct credential RATE bytes per second
    a = provision(capture, "q", {"sensors": "temperature"}, runtime=services)
    Tenant.objects.filter(pk=a.tenant.pk).update(kafka_producer_byte_rate=RATE, kafka_request_percentage=50.0)
    config = a.certificate("sensors")
    entity = user_entity(Certificate.objects.get(tenant=a.tenant).kafka_principal)
    # then its certificate's principal holds exactly that quota, and the change is audited
    assert described([entity]) == {entity: {"producer_byte_rate": float(RATE), "request_percentage": 50.0}}
    assert AuditEvent.objects.filter(action="kafka_quota.set", tenant=a.tenant, object_repr__contains=entity).exists()

    # when it produces as fast as it can (idempotent, acks=all)
    throttled_at: list[float] = []
    producer = Producer({**config, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                         "throttle_cb": lambda event: throttled_at.append(time.monotonic())})  # fmt: skip
    value = b"x" * 10_000
    start = time.monotonic()
    for _ in range(PAYLOAD // len(value)):
        producer.produce(a.streams["temperature"].topic, value=value)
        producer.poll(0)
    assert producer.flush(60) == 0
    elapsed = time.monotonic() - start

    # then the broker told it to slow down (KIP-219: throttle time in its responses) and held
    # it to the quota over its window (unthrottled, this payload takes 2-3 s here)
    assert throttled_at, "the broker never throttled the producer"
    windowed = PAYLOAD / (elapsed + WINDOW_SECONDS)
    print(
        f"{PAYLOAD:,} B in {elapsed:.1f} s ({PAYLOAD / elapsed:,.0f} B/s raw, {windowed:,.0f} B/s over the "
        f"broker's window) against a quota of {RATE:,} B/s; {len(throttled_at)} throttle events"
    )
    assert windowed <= 1.2 * RATE, windowed

    # when the operator raises the plan, then the broker holds the new quota
    with eager_tasks(), capture(execute=True):
        tenant_update(actor=ACTOR, tenant=Tenant.objects.get(pk=a.tenant.pk), kafka_producer_byte_rate=4 * RATE)
    assert described([entity])[entity]["producer_byte_rate"] == float(4 * RATE)

    # when the certificate is revoked, then its quota goes with its ACL
    with eager_tasks(), capture(execute=True):
        certificate_revoke(actor=ACTOR, certificate=Certificate.objects.get(tenant=a.tenant))
    assert described([entity]) == {}
    assert AuditEvent.objects.filter(action="kafka_quota.remove", tenant=a.tenant).exists()


def test_a_quota_request_survives_a_cached_admin_whose_brokers_are_all_in_backoff(services: Runtime) -> None:
    from ingest import kafka_admin

    # given the process's cached quota admin, with every node in reconnect backoff (as after
    # a broker restart: kafka-python then refuses at once, "No node_id provided")
    stale = kafka_admin.quota_admin()
    stale._manager.least_loaded_node = lambda: None  # type: ignore[method-assign]
    # when quotas are described
    found = described(["User:nobody-has-this-principal"])
    # then the request went through a fresh admin, and the stale one is no longer cached
    assert found == {}
    assert kafka_admin.quota_admin() is not stale
