"""Celery tasks for Kafka and the schema registry: each loads by id (or name) and calls one
service.  They retry with backoff while a dependency is away
(``config.errors.DEPENDENCY_RETRY``), because the database already committed and the
cluster must catch up.  The task names keep their ``devices.`` prefix: they are what the
broker's queued messages and the beat schedule (settings) name."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from config.errors import DEPENDENCY_RETRY as RETRY
from devices.models import Stream
from ingest import acl_sync, observed, topic_sync
from tenants.models import Tenant


@shared_task(name="devices.stream_provision", **RETRY)
def stream_provision_task(stream_id: int) -> list[str]:
    stream = Stream.objects.select_related("tenant").filter(pk=stream_id).first()
    return [] if stream is None else topic_sync.stream_provision(stream=stream)


@shared_task(name="devices.tenant_dlq_provision", **RETRY)
def tenant_dlq_provision_task(tenant_id: int) -> list[str]:
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    return [] if tenant is None else topic_sync.tenant_dlq_provision(tenant=tenant)


@shared_task(name="devices.topics_delete", **RETRY)
def topics_delete_task(names: list[str]) -> list[str]:
    return topic_sync.topics_delete(names=names)


@shared_task(name="devices.subjects_delete", **RETRY)
def subjects_delete_task(prefix: str = "", subjects: list[str] | None = None) -> list[str]:
    return topic_sync.subjects_release(prefix=prefix, subjects=subjects)


@shared_task(name="devices.topics_reconcile", **RETRY)
def topics_reconcile_task() -> dict[str, Any]:
    report = topic_sync.topics_reconcile(fix=True)
    return {"drift": report.drift, "fixed": report.fixed, "unmanaged": report.unmanaged}


@shared_task(name="devices.tenant_acls_sync", **RETRY)
def tenant_acls_sync_task(tenant_slug: str, topics: list[str] | None = None) -> dict[str, list[str]]:
    """By slug, not id: after tenant deletion the row is gone but its ACLs must still go
    (``topics``: the tenant's topics as they were when the change was announced)."""
    report = acl_sync.tenant_acls_sync(tenant_slug=tenant_slug, topics=topics or ())
    return {"created": report.created, "deleted": report.deleted}


@shared_task(name="devices.credential_acls_sync", **RETRY)
def credential_acls_sync_task(tenant_slug: str, principals: list[str]) -> dict[str, list[str]]:
    """The grants of a few credentials' principals: the fast path that ends a revoked
    credential's open Kafka session."""
    report = acl_sync.credential_acls_sync(tenant_slug=tenant_slug, principals=principals)
    return {"created": report.created, "deleted": report.deleted}


@shared_task(name="devices.acls_reconcile", **RETRY)
def acls_reconcile_task() -> dict[str, list[str]]:
    report = acl_sync.acls_reconcile(fix=True)
    return {"missing": report.missing, "stale": report.stale, "created": report.created, "deleted": report.deleted}


@shared_task(name="ingest.consumer_lag_refresh", ignore_result=True)
def consumer_lag_refresh_task() -> None:
    """Every 30 s (beat): each tenant consumer's lag, kept for /metrics (ingest.observed).
    No retry: the next run is the retry, and an old figure expires rather than lingers."""
    observed.consumer_lag_refresh()
