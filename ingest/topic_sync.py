"""Topics follow the database: every stream's topic and every tenant's DLQ.  The services
here decide (what a topic should be, which topics may go); ``ingest.kafka_admin`` does the
I/O; ``ingest.tasks`` runs them after the commit that asked for them, with retries."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.utils import timezone

from devices.models import DeviceGroup, Stream, min_insync_replicas
from devices.registry import subjects_delete, value_subject
from ingest import kafka_admin
from tenants.audit import Actor, audit_record
from tenants.models import Tenant

DLQ_PARTITIONS = 3
DLQ_RETENTION_MS = 168 * 3_600_000


def stream_spec(stream: Stream) -> kafka_admin.TopicSpec:
    return kafka_admin.TopicSpec(stream.topic, stream.partitions, stream.replication_factor, stream.topic_config())


def dlq_spec(tenant: Tenant) -> kafka_admin.TopicSpec:
    rf = settings.SLUICE_DEFAULT_REPLICATION_FACTOR
    config = {"retention.ms": str(DLQ_RETENTION_MS), "min.insync.replicas": str(min_insync_replicas(rf))}
    return kafka_admin.TopicSpec(tenant.dlq_topic, DLQ_PARTITIONS, rf, config)


def stream_provision(*, stream: Stream) -> list[str]:
    """Make the real topic match the stream; records the outcome on the stream."""
    try:
        changes = kafka_admin.ensure_topic(admin_client_for_platform(), stream_spec(stream))
    except Exception as exc:
        Stream.objects.filter(pk=stream.pk).update(status=Stream.Status.FAILED, last_error=str(exc)[:2000])
        raise
    Stream.objects.filter(pk=stream.pk).update(
        status=Stream.Status.PROVISIONED, last_error="", provisioned_at=timezone.now()
    )
    if changes:
        audit_record(actor=Actor.system("provision"), tenant=stream.tenant, action="stream.provision", obj=stream,
                     after={"changes": changes})  # fmt: skip
    return changes


def tenant_dlq_provision(*, tenant: Tenant) -> list[str]:
    return kafka_admin.ensure_topic(admin_client_for_platform(), dlq_spec(tenant))


@dataclass
class DriftReport:
    drift: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)


def topics_reconcile(*, tenant: Tenant | None = None, fix: bool) -> DriftReport:
    """Compare every stream's and DLQ's topic with the cluster; with ``fix``, repair it.
    Topics under a tenant's prefix that no stream owns are reported, never deleted."""
    admin = admin_client_for_platform()
    tenants = [tenant] if tenant is not None else list(Tenant.objects.all())
    report = DriftReport()
    existing = kafka_admin.topic_names(admin)
    for item in tenants:
        specs = [stream_spec(s) for s in item.streams.select_related("tenant")] + [dlq_spec(item)]
        for spec in specs:
            found = kafka_admin.drift(spec, kafka_admin.describe(admin, spec.name))
            report.drift += found
            if fix and found:
                report.fixed += kafka_admin.ensure_topic(admin, spec)
        owned = {s.name for s in specs}
        report.unmanaged += sorted(t for t in existing if t.startswith(item.topic_prefix) and t not in owned)
    if fix and report.fixed:
        audit_record(actor=Actor.system("reconcile"), tenant=tenant, action="topics.reconcile", object_type="topics",
                     after={"drift": report.drift, "fixed": report.fixed})  # fmt: skip
    return report


def topics_delete(*, names: list[str]) -> list[str]:
    """Delete these topics, except those a stream or a tenant's DLQ owns: the deletion was
    queued when a stream (or tenant) went, and by the time it runs a new stream may own the
    same topic name again.  Never delete a topic a stream owns."""
    owned = {stream.topic for stream in Stream.objects.select_related("tenant")}
    owned |= {tenant.dlq_topic for tenant in Tenant.objects.all()}
    return kafka_admin.delete_topics(admin_client_for_platform(), [n for n in names if n not in owned])


def subjects_release(*, prefix: str = "", subjects: list[str] | None = None) -> list[str]:
    """Delete a deleted tenant's subjects (by topic prefix) or a deleted stream's value
    subject, unless something owns it again by the time this runs."""
    if prefix and Tenant.objects.filter(slug=prefix.split(".")[1]).exists():
        return []  # a new tenant took the slug (its reservation ended): its subjects are its own
    used = set(DeviceGroup.objects.values_list("schema_subject", flat=True))
    used |= {value_subject(stream.topic) for stream in Stream.objects.select_related("tenant")}
    return subjects_delete(prefix=prefix, subjects=[s for s in subjects or () if s not in used])


def admin_client_for_platform() -> AdminClient:
    return kafka_admin.admin_client(settings.SLUICE_RUNTIME)
