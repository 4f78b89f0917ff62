"""Streams become real Kafka topics with the configured partitions, retention and
compression; drift is reported and repaired; tenant deletion follows its topic policy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from config.celery import app
from config.env import Runtime
from devices import services as device_services
from devices.models import Stream
from ingest import kafka_admin as topics
from ingest import topic_sync
from tenants.audit import Actor
from tenants.models import AuditEvent, Tenant
from tenants.services import tenant_create, tenant_delete
from tests.conftest import unique_slug

pytestmark = [pytest.mark.integration, pytest.mark.django_db]
ACTOR = Actor.system("test")


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Run Celery tasks in-process, so the on-commit hooks reach the real Kafka right away.
    (A real worker through Redis is covered by test_celery.py.)"""
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager = False
    app.conf.task_eager_propagates = False


@pytest.fixture
def fresh_tenant(
    services: Runtime, eager_tasks: None, django_capture_on_commit_callbacks: Callable[..., Any]
) -> Tenant:
    with django_capture_on_commit_callbacks(execute=True):
        return tenant_create(actor=ACTOR, slug=unique_slug("t"), name="Provisioning test")


def topic_state(admin: AdminClient, name: str) -> topics.TopicState:
    return topics.describe(admin, name)


def test_tenant_gets_a_dlq_topic(fresh_tenant: Tenant, kafka_admin: AdminClient) -> None:
    state = topic_state(kafka_admin, fresh_tenant.dlq_topic)
    assert state.exists
    assert state.config["retention.ms"] == str(168 * 3_600_000)


def test_stream_becomes_a_topic_with_its_settings(
    fresh_tenant: Tenant, kafka_admin: AdminClient, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    # when a stream is created
    with django_capture_on_commit_callbacks(execute=True):
        stream = device_services.stream_create(actor=ACTOR, tenant=fresh_tenant, region="eu", type="temperature",
                                        partitions=4, compression="lz4")  # fmt: skip
    # then the real topic has its partitions, 6 h retention and compression, and the stream says so
    state = topic_state(kafka_admin, f"iot.{fresh_tenant.slug}.eu.temperature")
    assert state.partitions == 4
    assert state.config["retention.ms"] == str(6 * 3_600_000)
    assert state.config["compression.type"] == "lz4"
    assert state.config["cleanup.policy"] == "delete"
    assert state.config["min.insync.replicas"] == "1"  # min(2, replication factor 1 here)
    stream.refresh_from_db()
    assert stream.status == Stream.Status.PROVISIONED

    # when it is changed
    with django_capture_on_commit_callbacks(execute=True):
        device_services.stream_update(actor=ACTOR, stream=stream, partitions=6, compression="zstd")
    # then the topic follows
    state = topic_state(kafka_admin, stream.topic)
    assert (state.partitions, state.config["compression.type"]) == (6, "zstd")


def test_enriched_and_custom_retention(
    fresh_tenant: Tenant, kafka_admin: AdminClient, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        enriched = device_services.stream_create(actor=ACTOR, tenant=fresh_tenant, region="eu", type="power",
                                          retention_class="enriched")  # fmt: skip
        custom = device_services.stream_create(actor=ACTOR, tenant=fresh_tenant, region="us", type="power",
                                        retention_class="custom", custom_retention_hours=12)  # fmt: skip
    assert topic_state(kafka_admin, enriched.topic).config["retention.ms"] == str(168 * 3_600_000)
    assert enriched.topic.endswith(".eu.power.enriched")
    assert topic_state(kafka_admin, custom.topic).config["retention.ms"] == str(12 * 3_600_000)


def test_reconcile_reports_and_repairs_drift(
    fresh_tenant: Tenant, kafka_admin: AdminClient, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    # given a provisioned stream whose topic someone changed behind Sluice's back
    with django_capture_on_commit_callbacks(execute=True):
        stream = device_services.stream_create(actor=ACTOR, tenant=fresh_tenant, region="eu", type="gps", partitions=2)
    resource = ConfigResource(ConfigResource.Type.TOPIC, stream.topic, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])  # fmt: skip
    kafka_admin.incremental_alter_configs([resource])[resource].result(30)
    kafka_admin.delete_topics([fresh_tenant.dlq_topic])[fresh_tenant.dlq_topic].result(30)

    # when reconcile only reports
    report = topic_sync.topics_reconcile(tenant=fresh_tenant, fix=False)
    # then it names both drifts and changes nothing
    assert f"{stream.topic}: retention.ms=1000, expected {6 * 3_600_000}" in report.drift
    assert f"{fresh_tenant.dlq_topic}: topic is missing" in report.drift
    assert report.fixed == []

    # when it fixes, then the cluster matches again, and the repair is audited
    fixed = topic_sync.topics_reconcile(tenant=fresh_tenant, fix=True)
    assert fixed.fixed
    assert topic_sync.topics_reconcile(tenant=fresh_tenant, fix=False).drift == []
    assert AuditEvent.objects.filter(action="topics.reconcile", tenant_slug=fresh_tenant.slug).exists()


@pytest.mark.parametrize(("policy", "survives"), [("delete", False), ("keep", True)])
def test_tenant_deletion_follows_its_topic_policy(
    services: Runtime, eager_tasks: None, kafka_admin: AdminClient,
    django_capture_on_commit_callbacks: Callable[..., Any], policy: str, survives: bool,
) -> None:  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        tenant = tenant_create(actor=ACTOR, slug=unique_slug("t"), name="Leaving", topic_deletion_policy=policy)
        stream = device_services.stream_create(actor=ACTOR, tenant=tenant, region="eu", type="temperature")
    topic = stream.topic
    assert topic_state(kafka_admin, topic).exists
    with django_capture_on_commit_callbacks(execute=True):
        tenant_delete(actor=ACTOR, tenant=tenant, confirm=tenant.slug)
    assert topic_state(kafka_admin, topic).exists is survives
    assert topic_state(kafka_admin, f"iot.{tenant.slug}.dlq").exists is survives


def test_a_late_deletion_never_removes_a_topic_a_stream_owns_again(
    fresh_tenant: Tenant, kafka_admin: AdminClient, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    # given a stream whose topic name was queued for deletion before it was created again
    with django_capture_on_commit_callbacks(execute=True):
        stream = device_services.stream_create(actor=ACTOR, tenant=fresh_tenant, region="eu", type="humidity")
    from ingest.tasks import topics_delete_task

    # when the stale deletion finally runs (a retry), with the tenant's DLQ named too
    deleted = topics_delete_task(names=[stream.topic, fresh_tenant.dlq_topic, f"iot.{fresh_tenant.slug}.gone"])
    # then the owned topics are untouched
    assert deleted == []
    assert topic_state(kafka_admin, stream.topic).exists
    assert topic_state(kafka_admin, fresh_tenant.dlq_topic).exists
