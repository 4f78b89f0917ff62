"""Celery tasks: load by id, call a service.  Kafka work retries with backoff, because the
database already committed and the cluster must catch up."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from confluent_kafka import KafkaException
from redis.exceptions import RedisError

from config.errors import RegistryUnavailable
from devices import services, topics
from devices.models import Stream
from tenants.models import Tenant

RETRY: dict[str, Any] = {
    "autoretry_for": (KafkaException,), "retry_backoff": 2, "retry_backoff_max": 120, "max_retries": 10
}


@shared_task(name="devices.stream_provision", **RETRY)
def stream_provision_task(stream_id: int) -> list[str]:
    stream = Stream.objects.select_related("tenant").filter(pk=stream_id).first()
    return [] if stream is None else services.stream_provision(stream=stream)


@shared_task(name="devices.tenant_dlq_provision", **RETRY)
def tenant_dlq_provision_task(tenant_id: int) -> list[str]:
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    return [] if tenant is None else services.tenant_dlq_provision(tenant=tenant)


@shared_task(name="devices.topics_delete", **RETRY)
def topics_delete_task(names: list[str]) -> list[str]:
    from django.conf import settings

    from ingest.kafka import admin_client

    # The deletion was queued when a stream (or tenant) went; by the time a retry runs, a
    # new stream may own the same topic name again.  Never delete a topic a stream owns.
    owned = {stream.topic for stream in Stream.objects.select_related("tenant")}
    owned |= {tenant.dlq_topic for tenant in Tenant.objects.all()}
    return topics.delete_topics(admin_client(settings.SLUICE_RUNTIME), [n for n in names if n not in owned])


@shared_task(name="devices.subjects_delete", autoretry_for=(RegistryUnavailable,), retry_backoff=2,
             retry_backoff_max=120, max_retries=10)  # fmt: skip
def subjects_delete_task(prefix: str = "", subjects: list[str] | None = None) -> list[str]:
    """Delete a deleted tenant's subjects (by topic prefix) or a deleted stream's value
    subject, unless something owns it again by the time this runs."""
    from devices.models import DeviceGroup
    from ingest.registry import subjects_delete, value_subject

    if prefix and Tenant.objects.filter(slug=prefix.split(".")[1]).exists():
        return []  # a new tenant took the slug (its reservation ended): its subjects are its own
    used = set(DeviceGroup.objects.values_list("schema_subject", flat=True))
    used |= {value_subject(stream.topic) for stream in Stream.objects.select_related("tenant")}
    return subjects_delete(prefix=prefix, subjects=[s for s in subjects or () if s not in used])


@shared_task(name="devices.topics_reconcile", **RETRY)
def topics_reconcile_task() -> dict[str, Any]:
    report = services.topics_reconcile(fix=True)
    return {"drift": report.drift, "fixed": report.fixed, "unmanaged": report.unmanaged}


# ACL writers also retry when the Redis lock that serialises them is busy or unreachable.
ACL_RETRY = {**RETRY, "autoretry_for": (KafkaException, RedisError)}


@shared_task(name="devices.tenant_acls_sync", **ACL_RETRY)
def tenant_acls_sync_task(tenant_slug: str, topics: list[str] | None = None) -> dict[str, list[str]]:
    """By slug, not id: after tenant deletion the row is gone but its ACLs must still go
    (``topics``: the tenant's topics as they were when the change was announced)."""
    from ingest.acl_sync import tenant_acls_sync

    report = tenant_acls_sync(tenant_slug=tenant_slug, topics=topics or ())
    return {"created": report.created, "deleted": report.deleted}


@shared_task(name="devices.credential_acls_sync", **ACL_RETRY)
def credential_acls_sync_task(tenant_slug: str, principals: list[str]) -> dict[str, list[str]]:
    """The grants of a few credentials' principals: the fast path that ends a revoked
    credential's open Kafka session."""
    from ingest.acl_sync import credential_acls_sync

    report = credential_acls_sync(tenant_slug=tenant_slug, principals=principals)
    return {"created": report.created, "deleted": report.deleted}


@shared_task(name="devices.acls_reconcile", **ACL_RETRY)
def acls_reconcile_task() -> dict[str, list[str]]:
    from ingest.acl_sync import acls_reconcile

    report = acls_reconcile(fix=True)
    return {"missing": report.missing, "stale": report.stale, "created": report.created, "deleted": report.deleted}
