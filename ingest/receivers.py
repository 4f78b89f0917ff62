"""What ingest does when a lower layer announces a change (``config.hooks``): queue the Kafka
(and schema registry) work it needs, after the announcing transaction commits, so the
broker never sees data the database rolled back.  Connected in ``IngestConfig.ready()``."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from devices.models import Stream
from ingest import tasks
from ingest.acl_sync import kafka_scope
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.rights import RightsChange


def rights_kafka_sync(*, change: RightsChange, extra_principals: Iterable[str] = ()) -> None:
    """Queue, after the current transaction commits, the Kafka work ``change`` needs."""
    scope = kafka_scope(change, extra_principals)
    if scope is None:
        return
    if scope.principals is None:
        slug, topics = scope.tenant_slug, list(scope.topics)
        transaction.on_commit(lambda: tasks.tenant_acls_sync_task.delay(slug, topics))
    else:
        slug, principals = scope.tenant_slug, list(scope.principals)
        transaction.on_commit(lambda: tasks.credential_acls_sync_task.delay(slug, principals))


def tenant_dlq_queue(*, actor: Actor, tenant: Tenant) -> None:
    transaction.on_commit(lambda: tasks.tenant_dlq_provision_task.delay(tenant.pk))


def tenant_topics_queue_deletion(*, topics: list[str], prefix: str) -> None:
    transaction.on_commit(lambda: tasks.topics_delete_task.delay(topics))
    transaction.on_commit(lambda: tasks.subjects_delete_task.delay(prefix=prefix))


def stream_queue_provision(*, stream: Stream) -> None:
    transaction.on_commit(lambda: tasks.stream_provision_task.delay(stream.pk))


def stream_queue_deletion(*, topic: str, subjects: list[str]) -> None:
    transaction.on_commit(lambda: tasks.topics_delete_task.delay([topic]))
    if subjects:
        transaction.on_commit(lambda: tasks.subjects_delete_task.delay(subjects=subjects))
