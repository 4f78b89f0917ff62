"""When someone's right to write may have changed: the one place that tells the enforcers.

The data plane (``/ingest/v1``) keeps, per worker, a cache of "who may write where"
(certificate or OAuth client -> device, group, stream, tenant).  Every service that grants,
changes or takes away such a right -- revoking or superseding a certificate, disabling,
moving or deleting a device, changing or deleting a group, suspending, changing or
deleting a tenant, revoking an OAuth client -- calls ``rights_changed`` inside its
transaction.  After the commit (never before: an enforcer must not act on what the database
rolled back) one message goes out on the Redis channel ``CHANNEL``; every ingest worker
subscribes to it and drops the cached entries the message names.  The message names
scopes, not verdicts: a worker that dropped an entry re-reads the database at the next
request, so the database stays the only authority.

The same announcement drives Kafka: ``ingest.acl_sync.queue_kafka_sync`` resolves it (now,
while the rows exist) to the principals or the tenant whose ACLs and quotas may have
changed, and queues their sync as a Celery task after the commit; beat's reconcile is the
backstop.  Kafka authorizes every request, so an open session is stopped by that sync.

Delivery is best effort (Redis pub/sub has no replay): a worker that loses its subscription
must treat its cache as stale (re-read or refuse) until it has subscribed again, and every
cached entry also expires after a short TTL.  Publishing is retried briefly; a publish that
still fails is logged, and that TTL bounds how long a worker can miss it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db import transaction

from config.hooks import Hook

log = logging.getLogger("sluice.rights")

CHANNEL = "sluice:rights"
PUBLISH_ATTEMPTS = 3

# Kafka's ACLs and client quotas are made by ingest, a layer above this one: it connects its
# sync (``ingest.receivers.rights_kafka_sync``, keyword arguments ``change`` and
# ``extra_principals``) in IngestConfig.ready(), so this module never imports ingest.
kafka_sync = Hook("tenants.rights.kafka_sync")


@dataclass(frozen=True)
class RightsChange:
    """The scopes whose rights changed: a whole tenant, or some of its groups, devices
    (database keys), certificates (serials, lowercase hex) and OAuth clients (client ids)."""

    tenant_id: int
    whole_tenant: bool = False
    groups: frozenset[int] = field(default_factory=frozenset)
    devices: frozenset[int] = field(default_factory=frozenset)
    certificates: frozenset[str] = field(default_factory=frozenset)
    clients: frozenset[str] = field(default_factory=frozenset)

    def to_message(self) -> bytes:
        return json.dumps(
            {
                "tenant": self.tenant_id,
                "whole_tenant": self.whole_tenant,
                "groups": sorted(self.groups),
                "devices": sorted(self.devices),
                "certificates": sorted(self.certificates),
                "clients": sorted(self.clients),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_message(cls, data: bytes | str) -> RightsChange:
        """Parse a message; raises ValueError (or KeyError/TypeError) when it is not one."""
        raw = json.loads(data)
        return cls(
            tenant_id=int(raw["tenant"]),
            whole_tenant=bool(raw.get("whole_tenant", False)),
            groups=frozenset(int(g) for g in raw.get("groups", ())),
            devices=frozenset(int(d) for d in raw.get("devices", ())),
            certificates=frozenset(str(c) for c in raw.get("certificates", ())),
            clients=frozenset(str(c) for c in raw.get("clients", ())),
        )


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.SLUICE_RUNTIME.redis_url(), socket_timeout=2, socket_connect_timeout=2)


def publish(change: RightsChange) -> bool:
    """Send ``change`` now (callers use ``rights_changed``, which waits for the commit).
    True when Redis took the message."""
    message = change.to_message()
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            _client().publish(CHANNEL, message)
            return True
        except redis.RedisError as exc:
            if attempt == PUBLISH_ATTEMPTS:
                log.error("rights: could not publish %s (%s); caches expire it by their TTL", message, exc)
    return False


def rights_changed(
    *,
    tenant_id: int,
    whole_tenant: bool = False,
    groups: Iterable[int] = (),
    devices: Iterable[int] = (),
    certificates: Iterable[str] = (),
    clients: Iterable[str] = (),
    kafka_principals: Iterable[str] = (),
) -> None:
    """Announce, after the current transaction commits, that rights in these scopes changed.
    Call it inside the transaction that changes them (outside one, Django runs the
    announcement at once).  ``kafka_principals`` names Kafka principals the scopes no
    longer lead to (a moved device's OAuth clients under the group it left)."""
    change = RightsChange(
        tenant_id=tenant_id,
        whole_tenant=whole_tenant,
        groups=frozenset(groups),
        devices=frozenset(devices),
        certificates=frozenset(s.lower() for s in certificates),
        clients=frozenset(clients),
    )
    transaction.on_commit(lambda: publish(change))
    kafka_sync(change=change, extra_principals=tuple(kafka_principals))
