"""What ingest does when a lower layer announces a change (``config.hooks``): queue the Kafka
(and schema registry) work it needs, after the announcing transaction commits, so the
broker never sees data the database rolled back.  Connected in ``IngestConfig.ready()``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Task
from django.db import transaction
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from devices.models import Stream
from ingest import tasks
from ingest.acl_sync import kafka_scope
from tenants.audit import Actor
from tenants.models import Tenant
from tenants.rights import RightsChange

log = logging.getLogger("sluice.ingest")


def queue_after_commit(task: Task, *args: Any, **kwargs: Any) -> None:
    """Queue ``task`` once the current transaction commits.  By then the change is done, so
    a broker (Redis) that cannot take the message must not turn it into an error for the
    request that made it: the failure is logged, and the periodic reconciles (topics and
    ACLs, every 5 minutes, ``CELERY_BEAT_SCHEDULE``) make Kafka match the database once
    Redis is back.  A deletion queued meanwhile is only logged: its topics stay, reported
    as unmanaged by the topic reconcile."""

    def send() -> None:
        try:
            task.delay(*args, **kwargs)
        except (OperationalError, RedisError, OSError) as exc:
            log.error("could not queue %s %s %s (%s); the periodic reconcile will catch up", task.name, args,
                      kwargs, exc)  # fmt: skip

    transaction.on_commit(send)


def rights_kafka_sync(*, change: RightsChange, extra_principals: Iterable[str] = ()) -> None:
    """Queue, after the current transaction commits, the Kafka work ``change`` needs."""
    scope = kafka_scope(change, extra_principals)
    if scope is None:
        return
    if scope.principals is None:
        slug, topics = scope.tenant_slug, list(scope.topics)
        queue_after_commit(tasks.tenant_acls_sync_task, slug, topics)
    else:
        slug, principals = scope.tenant_slug, list(scope.principals)
        queue_after_commit(tasks.credential_acls_sync_task, slug, principals)


def tenant_dlq_queue(*, actor: Actor, tenant: Tenant) -> None:
    queue_after_commit(tasks.tenant_dlq_provision_task, tenant.pk)


def tenant_topics_queue_deletion(*, topics: list[str], prefix: str) -> None:
    queue_after_commit(tasks.topics_delete_task, topics)
    queue_after_commit(tasks.subjects_delete_task, prefix=prefix)


def stream_queue_provision(*, stream: Stream) -> None:
    queue_after_commit(tasks.stream_provision_task, stream.pk)


def stream_queue_deletion(*, topic: str, subjects: list[str]) -> None:
    queue_after_commit(tasks.topics_delete_task, [topic])
    if subjects:
        queue_after_commit(tasks.subjects_delete_task, subjects=subjects)
